//! Load: 64 concurrent jobs of 8 threads each against one home-agent. Every thread loops on create, write,
//! stat, read back and compare for the run's length. No call may fail, every job must make progress
//! (fairness: the slowest job does at least a tenth of the fastest's work), and the agent's memory must
//! stay bounded (its peak RSS is measured and printed).
//!
//! The run lasts 20 s; `HOMEWARD_LOAD_SECS` makes it longer (minutes, for a soak).

use std::process::Command;
use std::time::{Duration, Instant};

use homeward::{have_tools, skip_or_fail, skip_unless_root, Hosts};

const JOBS: usize = 64;
const THREADS: usize = 8;
/// The agent's resident memory may not exceed this at any moment of the run.
const MAX_AGENT_RSS_KIB: u64 = 768 << 10;

const WORKER: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define THREADS 8
static int seconds;
static long done[THREADS];

static void fail(const char *what, long id) {
    fprintf(stderr, "thread %ld: %s failed: %s\n", id, what, strerror(errno));
    exit(1);
}

static void *work(void *arg) {
    long id = (long)arg;
    char name[32], data[4096], back[4096];
    snprintf(name, sizeof name, "t%ld", id);
    memset(data, 'a' + id, sizeof data);
    time_t end = time(NULL) + seconds;
    while (time(NULL) < end) {
        int fd = open(name, O_CREAT | O_TRUNC | O_WRONLY, 0644);
        if (fd < 0) fail("open for writing", id);
        if (write(fd, data, sizeof data) != sizeof data) fail("write", id);
        if (close(fd)) fail("close", id);
        struct stat st;
        if (stat(name, &st)) fail("stat", id);
        if (st.st_size != sizeof data) { errno = 0; fail("size check", id); }
        fd = open(name, O_RDONLY);
        if (fd < 0) fail("open for reading", id);
        if (read(fd, back, sizeof back) != sizeof back) fail("read", id);
        if (memcmp(back, data, sizeof data)) { errno = 0; fail("compare", id); }
        close(fd);
        done[id]++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    seconds = atoi(argv[1]);
    pthread_t threads[THREADS];
    for (long i = 0; i < THREADS; i++)
        if (pthread_create(&threads[i], NULL, work, (void *)i)) { fprintf(stderr, "pthread_create\n"); return 1; }
    long total = 0, least = -1;
    for (long i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        total += done[i];
        if (least < 0 || done[i] < least) least = done[i];
    }
    printf("%ld %ld\n", total, least);
    return 0;
}
"#;

/// The agent's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn sixty_four_jobs_of_eight_threads_share_one_agent_fairly_in_bounded_memory() {
    skip_unless_root!();
    if let Err(why) = have_tools(&["gcc"]) {
        return skip_or_fail(&why);
    }
    let seconds: u64 = std::env::var("HOMEWARD_LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let hosts = Hosts::start();
    // The worker is built outside the home directory: the job runs it from this machine's disk.
    let worker = hosts.scratch().join("load-worker");
    let source = hosts.scratch().join("load-worker.c");
    std::fs::write(&source, WORKER).unwrap();
    let gcc = Command::new("gcc").args(["-O2", "-pthread", "-o"]).arg(&worker).arg(&source).output().unwrap();
    assert!(gcc.status.success(), "gcc: {}", String::from_utf8_lossy(&gcc.stderr));
    let worker = worker.display().to_string();
    let scratch = hosts.scratch().display().to_string();
    for job in 0..JOBS {
        hosts.mkdir(&format!("job{job}"));
    }

    let agent = hosts.agent_pid();
    let before = rss_kib(agent);
    let (runs, peak) = std::thread::scope(|s| {
        let jobs: Vec<_> = (0..JOBS)
            .map(|job| {
                let (hosts, worker, scratch) = (&hosts, &worker, &scratch);
                s.spawn(move || {
                    hosts
                        .cmd(&[worker.as_str(), &seconds.to_string()])
                        .cwd(&format!("job{job}"))
                        .shim_arg("--local")
                        .shim_arg(scratch)
                        .timeout(Duration::from_secs(seconds * 4 + 120))
                        .remote()
                })
            })
            .collect();
        let mut peak = before;
        let start = Instant::now();
        while !jobs.iter().all(|j| j.is_finished())
            && start.elapsed() < Duration::from_secs(seconds * 5 + 180)
        {
            peak = peak.max(rss_kib(agent));
            std::thread::sleep(Duration::from_millis(100));
        }
        (jobs.into_iter().map(|j| j.join().unwrap()).collect::<Vec<_>>(), peak)
    });
    let mut totals = Vec::new();
    for (job, run) in runs.iter().enumerate() {
        run.assert_success();
        let fields: Vec<u64> = run.stdout().split_whitespace().filter_map(|f| f.parse().ok()).collect();
        let [total, least] = fields[..] else { panic!("job {job} printed no counts:\n{run}") };
        assert!(least > 0, "a thread of job {job} made no progress:\n{run}");
        totals.push(total);
    }
    let (slowest, fastest) = (*totals.iter().min().unwrap(), *totals.iter().max().unwrap());
    let sum: u64 = totals.iter().sum();
    eprintln!(
        "{JOBS} jobs x {THREADS} threads for {seconds} s: {sum} iterations (slowest job {slowest}, fastest \
         {fastest}); agent RSS {before} KiB before, {peak} KiB at peak, {} KiB after",
        rss_kib(agent)
    );
    assert!(
        slowest * 10 >= fastest,
        "unfair: the slowest job did {slowest} iterations, the fastest {fastest}"
    );
    assert!(peak <= MAX_AGENT_RSS_KIB, "the agent grew to {peak} KiB (limit {MAX_AGENT_RSS_KIB} KiB)");
    // Every session closed: a fresh job still gets served.
    hosts.cmd(&["true"]).remote().assert_success();
}
