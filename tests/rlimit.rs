//! The limit on open files (`RLIMIT_NOFILE`) is virtual under remote-shim: the program sees the limits it
//! would have had natively (not the raised one that covers the reserved range), lowering it works, and home
//! files then run out with `EMFILE` at the native count. Every run is compared with the native run.
//!
//! The test process lowers its own soft limit to 1024 first (a common default), below the reserved range's
//! end, so both runs start with a soft limit that remote-shim must raise for its placeholders.

use homeward::{skip_unless_root, skip_unless_unprivileged, Compare, Hosts};

const PROBE_C: &str = r#"#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long ret) {
    if (ret < 0) {
        const char *e = strerrorname_np(errno);
        printf("%s %s\n", name, e ? e : "unknown");
    } else {
        printf("%s %ld\n", name, ret);
    }
    fflush(stdout);
}

static void print_limit(const char *name, const struct rlimit *l) {
    printf("%s %llu %llu\n", name, (unsigned long long)l->rlim_cur, (unsigned long long)l->rlim_max);
    fflush(stdout);
}

static void show(const char *name) {
    struct rlimit l;
    if (getrlimit(RLIMIT_NOFILE, &l)) {
        report(name, -1);
        return;
    }
    print_limit(name, &l);
}

static void *thread_show(void *arg) {
    show("thread");
    return arg;
}

int main(void) {
    show("initial");
    struct rlimit bad = { 100, 50 };
    report("soft_above_hard", setrlimit(RLIMIT_NOFILE, &bad));
    struct rlimit inf = { RLIM_INFINITY, RLIM_INFINITY };
    report("above_nr_open", setrlimit(RLIMIT_NOFILE, &inf));
    report("get_bad_pointer", syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, NULL, (void *)1));
    report("set_bad_pointer", syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, (void *)1, NULL));
    struct rlimit cpu;
    report("other_resource", getrlimit(RLIMIT_CPU, &cpu));

    struct rlimit low = { 32, 64 };
    report("lower", setrlimit(RLIMIT_NOFILE, &low));
    show("lowered");
    struct rlimit higher = { 32, 128 };
    report("raise_hard", setrlimit(RLIMIT_NOFILE, &higher));
    report("lower_again", setrlimit(RLIMIT_NOFILE, &low));
    struct rlimit old;
    report("prlimit_get", prlimit(0, RLIMIT_NOFILE, NULL, &old));
    print_limit("prlimit", &old);
    pthread_t t;
    pthread_create(&t, NULL, thread_show, NULL);
    pthread_join(t, NULL);

    /* Home files until the limit (32 minus the descriptors already open). */
    int fds[64], n = 0, err = 0;
    for (;;) {
        int f = open("file", O_RDONLY);
        if (f < 0) { err = errno; break; }
        fds[n++] = f;
        if (n == 64) break;
    }
    printf("opened %d then %s\n", n, n < 64 ? strerrorname_np(err) : "nothing");
    fflush(stdout);
    if (n == 0) return 1;
    report("create_at_limit", open("created", O_CREAT | O_WRONLY, 0644));
    report("created_exists", access("created", F_OK));
    report("dup_at_limit", dup(fds[0]));
    report("dupfd_at_limit", fcntl(fds[0], F_DUPFD, 0));
    report("dupfd_beyond_limit", fcntl(fds[0], F_DUPFD, 40));
    report("dup2_beyond_limit", dup2(fds[0], 40));
    close(fds[--n]);
    fds[n] = open("file", O_RDONLY);
    report("open_after_one_close", fds[n] < 0 ? -1 : 0);
    if (fds[n] >= 0) n++;
    report("open_one_more", open("file", O_RDONLY) < 0 ? -1 : 0);
    for (int i = 0; i < n; i++) close(fds[i]);
    int again = open("file", O_RDONLY);
    report("open_after_closing", again < 0 ? -1 : 0);
    close(again);

    /* A child inherits the limit; its own change stays its own; prlimit reaches it; exec keeps it. */
    int to_parent[2], to_child[2];
    if (pipe(to_parent) || pipe(to_child)) return 1;
    pid_t child = fork();
    if (child == 0) {
        char b = 0;
        show("child");
        int f = open("file", O_RDONLY);
        report("child_open", f < 0 ? -1 : 0);
        close(f);
        struct rlimit c = { 16, 16 };
        report("child_lower", setrlimit(RLIMIT_NOFILE, &c));
        if (write(to_parent[1], &b, 1) != 1 || read(to_child[0], &b, 1) != 1) _exit(1);
        show("child_after_prlimit");
        close(to_parent[0]); close(to_parent[1]); close(to_child[0]); close(to_child[1]);
        execl("/bin/sh", "sh", "-c", "echo exec $(ulimit -Sn) $(ulimit -Hn); cat file; echo", (char *)NULL);
        _exit(127);
    }
    char b = 0;
    if (read(to_parent[0], &b, 1) != 1) return 1;
    struct rlimit seen;
    report("prlimit_child_get", prlimit(child, RLIMIT_NOFILE, NULL, &seen));
    print_limit("prlimit_child", &seen);
    struct rlimit set = { 12, 14 };
    report("prlimit_child_set", prlimit(child, RLIMIT_NOFILE, &set, NULL));
    if (write(to_child[1], &b, 1) != 1) return 1;
    int status = 0;
    waitpid(child, &status, 0);
    report("child_status", status);
    show("parent_after_child");

    /* A child forked before its parent changes the limit keeps the old one, though it made no call yet. */
    int gate[2], done[2];
    if (pipe(gate) || pipe(done)) return 1;
    pid_t early = fork();
    if (early == 0) {
        if (read(gate[0], &b, 1) != 1) _exit(1);
        show("forked_before_change");
        _exit(0);
    }
    struct rlimit later = { 40, 64 };
    report("change_after_fork", setrlimit(RLIMIT_NOFILE, &later));
    if (write(gate[1], &b, 1) != 1) return 1;
    waitpid(early, &status, 0);

    /* An orphan keeps the limit of its parent, which ended before the orphan made a call. */
    pid_t middle = fork();
    if (middle == 0) {
        struct rlimit m = { 24, 48 };
        report("middle_lower", setrlimit(RLIMIT_NOFILE, &m));
        if (fork() == 0) {
            if (read(gate[0], &b, 1) != 1) _exit(1);
            show("orphan");
            if (write(done[1], &b, 1) != 1) _exit(1);
            _exit(0);
        }
        _exit(0);
    }
    waitpid(middle, &status, 0);
    if (write(gate[1], &b, 1) != 1 || read(done[0], &b, 1) != 1) return 1;
    show("parent_at_end");
    return 0;
}
"#;

/// Lowers this test process's soft limit to 1024 (both runs inherit it), keeping the hard limit.
fn lower_own_soft_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a live, writable `struct rlimit` that the kernel fills.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = lim.rlim_cur.min(1024);
    // SAFETY: `lim` is a live `struct rlimit` that the kernel reads.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

#[test]
fn ulimit_in_a_shell_shows_and_sets_the_native_limit() {
    skip_unless_root!();
    lower_own_soft_limit();
    let hosts = Hosts::start();
    hosts.write("file", "home\n");
    let native = hosts.native_copy();
    let script =
        "ulimit -n; ulimit -Hn; ulimit -n 64; ulimit -n; ulimit -Hn; cat file; ulimit -n 65 || echo refused";
    let both = hosts.cmd(&["sh", "-c", script]).check_with(&native, &Compare::new().stderr());
    both.native.assert_success();
    let out = both.native.stdout();
    assert!(out.starts_with("1024\n"), "the native shell should start with a soft limit of 1024:\n{out}");
    assert!(out.contains("64\n64\nhome\n"), "the native shell should lower its limit to 64:\n{out}");
}

fn probe_home(hosts: &Hosts) {
    hosts.write("file", "home\n");
    hosts.mkdir("bin");
    hosts.gcc(PROBE_C, "bin/rlimit-probe", &["-pthread"]);
}

#[test]
fn a_lowered_limit_runs_out_of_home_files_as_natively_and_is_inherited() {
    skip_unless_root!();
    lower_own_soft_limit();
    let hosts = Hosts::start();
    probe_home(&hosts);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["bin/rlimit-probe"]).check_with(&native, &Compare::new().stderr());
    both.native.assert_success();
    let out = both.native.stdout();
    for line in [
        "initial 1024 ",
        "soft_above_hard EINVAL",
        "above_nr_open EPERM",
        "get_bad_pointer EFAULT",
        "lowered 32 64",
        "thread 32 64",
        " then EMFILE\n",
        "create_at_limit EMFILE",
        "created_exists ENOENT",
        "dup_at_limit EMFILE",
        "dupfd_at_limit EMFILE",
        "dupfd_beyond_limit EINVAL",
        "dup2_beyond_limit EBADF",
        "open_after_one_close 0",
        "open_one_more EMFILE",
        "open_after_closing 0",
        "child 32 64",
        "child_open 0",
        "prlimit_child 16 16",
        "child_after_prlimit 12 14",
        "exec 12 14\nhome\n",
        "parent_after_child 32 64",
        "forked_before_change 32 64",
        "orphan 24 48",
        "parent_at_end 40 64",
    ] {
        assert!(out.contains(line), "the native run should print {line:?}, so the test is wrong:\n{out}");
    }
    assert!(!hosts.exists("created"), "an open refused with EMFILE created its file at home");
}

/// Without root remote-shim has no pid namespace and sets the job's kernel limits as the same user.
#[test]
fn an_unprivileged_job_sees_the_same_limits() {
    skip_unless_root!();
    skip_unless_unprivileged!("needs setpriv or runuser to drop privileges");
    lower_own_soft_limit();
    let hosts = Hosts::builder().unprivileged().start();
    probe_home(&hosts);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["bin/rlimit-probe"]).check_with(&native, &Compare::new().stderr());
    both.native.assert_success();
    let out = both.native.stdout();
    for line in ["raise_hard EPERM", " then EMFILE\n", "prlimit_child 16 16", "exec 12 14\nhome\n"] {
        assert!(out.contains(line), "the native run should print {line:?}, so the test is wrong:\n{out}");
    }
}
