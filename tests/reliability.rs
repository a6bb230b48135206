//! Losing home and the link to it: when home-agent dies, the job does not hang (remote-shim ends it within
//! seconds with a clear message naming home's address, and exits 125; or fails its calls with EIO, or waits,
//! as `--on-home-loss` says); a link cut for 30 s is survived with no write lost or doubled; a killed
//! remote-shim's session is cleaned up at home within seconds; sqlite's commits survive home's loss.

use std::process::Command;
use std::time::{Duration, Instant};

use homeward::{skip_unless_root, Hosts};

#[test]
fn a_dead_home_agent_ends_the_job_with_a_clear_message() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let agent = hosts.agent_pid();
    std::thread::scope(|s| {
        let run =
            s.spawn(|| hosts.cmd(&["sh", "-c", "echo started > started; sleep 60; echo never"]).remote());
        let start = Instant::now();
        while !hosts.exists("started") {
            assert!(start.elapsed() < Duration::from_secs(30), "the job never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(Command::new("kill").args(["-KILL", &agent.to_string()]).status().unwrap().success());
        let killed_at = Instant::now();
        let run = run.join().unwrap();
        assert!(killed_at.elapsed() < Duration::from_secs(10), "the job outlived home by too long:\n{run}");
        assert_eq!(run.code(), 125, "{run}");
        assert!(!run.stdout().contains("never"), "{run}");
        let addr = hosts.addr().to_string();
        assert!(
            run.stderr().contains(&addr) && run.stderr().contains("lost"),
            "message should say so:\n{run}"
        );
    });
}

/// Waits for `what` to hold, polling; panics after `within`.
fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn a_link_cut_for_30_seconds_is_survived_with_no_write_lost_or_doubled() {
    skip_unless_root!();
    let hosts = Hosts::with_netns();
    let log = hosts.path("log");
    // Numbered appends, each a forwarded open and write: some are in flight as the link goes down.
    let script = "i=0; while [ $i -lt 150 ]; do i=$((i+1)); echo $i >> log; sleep 0.05; done; echo finished";
    std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["sh", "-c", script]).timeout(Duration::from_secs(240)).remote());
        wait_for("the job's first 20 lines", Duration::from_secs(60), || lines(&log).len() >= 20);
        hosts.netns_exec(&["ip", "link", "set", "lo", "down"]).assert_success();
        let at_cut = lines(&log).len();
        std::thread::sleep(Duration::from_secs(30));
        // The cut was real: nothing reached home meanwhile.
        assert!(lines(&log).len() <= at_cut + 1, "lines reached home during the cut");
        hosts.netns_exec(&["ip", "link", "set", "lo", "up"]).assert_success();
        let run = run.join().unwrap();
        run.assert_success();
        assert!(run.stdout().contains("finished"), "{run}");
        assert!(run.stderr().contains("reconnected to home"), "the link should have been resumed:\n{run}");
        let expected: Vec<String> = (1..=150).map(|i| i.to_string()).collect();
        assert_eq!(lines(&log), expected, "every append exactly once, in order");
    });
}

#[test]
fn a_killed_remote_shim_is_cleaned_up_at_home_within_seconds() {
    skip_unless_root!();
    let hosts = Hosts::start();
    std::fs::write(hosts.path("lockfile"), "").unwrap();
    let tag = format!("homeward-kill-shim-{}", std::process::id());
    let script = format!("echo locked > locked; sleep 120 # {tag}");
    let free = || {
        let lockfile = hosts.path("lockfile");
        Command::new("flock").arg("-n").arg(&lockfile).arg("true").status().unwrap().success()
    };
    std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["flock", "lockfile", "sh", "-c", &script]).remote());
        wait_for("the job takes its lock", Duration::from_secs(30), || hosts.exists("locked"));
        assert!(!free(), "the job's lock should be held at home");
        let pattern = format!("^[^ ]*remote-shim .*{tag}");
        let pgrep = Command::new("pgrep").args(["-f", &pattern]).output().unwrap();
        let pids = String::from_utf8_lossy(&pgrep.stdout).to_string();
        let pid = pids.lines().next().unwrap_or_else(|| panic!("no remote-shim found for {pattern}"));
        assert!(Command::new("kill").args(["-KILL", pid]).status().unwrap().success());
        let took = wait_for("home releases the lock of a killed remote-shim", Duration::from_secs(10), free);
        eprintln!("lock released {took:?} after the kill");
        let run = run.join().unwrap();
        assert_eq!(run.code(), 137, "{run}");
        wait_for("the session's deputies end", Duration::from_secs(10), || {
            !Command::new("pgrep").args(["-f", &tag]).status().unwrap().success()
        });
    });
}

#[test]
fn with_on_home_loss_eio_the_job_gets_eio_and_goes_on() {
    skip_unless_root!();
    let hosts = Hosts::start();
    std::fs::write(hosts.path("data"), "a line\n").unwrap();
    let script = "echo started > started; sleep 2; read line < data; echo \"read: $?\"; echo went on";
    std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["sh", "-c", script]).shim_arg("--on-home-loss=eio").remote());
        wait_for("the job starts", Duration::from_secs(30), || hosts.exists("started"));
        assert!(Command::new("kill")
            .args(["-KILL", &hosts.agent_pid().to_string()])
            .status()
            .unwrap()
            .success());
        let run = run.join().unwrap();
        run.assert_success();
        assert!(run.stdout().contains("read: 2") && run.stdout().contains("went on"), "{run}");
        assert!(run.stderr().contains("Input/output error"), "{run}");
        assert!(run.stderr().contains("fail with EIO"), "{run}");
    });
}

#[test]
fn with_on_home_loss_wait_the_job_ends_once_home_stayed_away_that_long() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let script = "echo started > started; sleep 60; echo never";
    std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["sh", "-c", script]).shim_arg("--on-home-loss=wait:4").remote());
        wait_for("the job starts", Duration::from_secs(30), || hosts.exists("started"));
        assert!(Command::new("kill")
            .args(["-KILL", &hosts.agent_pid().to_string()])
            .status()
            .unwrap()
            .success());
        let killed_at = Instant::now();
        let run = run.join().unwrap();
        let took = killed_at.elapsed();
        assert_eq!(run.code(), 125, "{run}");
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(14),
            "ended after {took:?}:\n{run}"
        );
        assert!(
            run.stderr().contains("reconnecting for up to 4 s") && run.stderr().contains("lost"),
            "{run}"
        );
    });
}

#[test]
fn sqlite_commits_made_before_home_is_lost_are_all_on_home_disk() {
    skip_unless_root!();
    if let Err(why) = homeward::have_tools(&["sqlite3"]) {
        return homeward::skip_or_fail(&why);
    }
    let hosts = Hosts::start();
    let db = hosts.path("db");
    let sqlite = |sql: &str| {
        let out = Command::new("sqlite3").arg(&db).arg(sql).output().unwrap();
        assert!(out.status.success(), "sqlite3 {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    sqlite("CREATE TABLE t(n INTEGER PRIMARY KEY, pad TEXT)");
    // Each transaction is reported on the job's own stdout once committed (fsync'd at home).
    let script = "i=0; while :; do i=$((i+1)); \
                  sqlite3 db \"BEGIN; INSERT INTO t VALUES($i, hex(randomblob(2000))); COMMIT;\" || exit 1; \
                  echo $i; done";
    std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["sh", "-c", script]).timeout(Duration::from_secs(120)).remote());
        wait_for("30 transactions at home", Duration::from_secs(90), || {
            let out = Command::new("sqlite3").arg(&db).arg("SELECT count(*) FROM t").output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().unwrap_or(0) >= 30
        });
        assert!(Command::new("kill")
            .args(["-KILL", &hosts.agent_pid().to_string()])
            .status()
            .unwrap()
            .success());
        let run = run.join().unwrap();
        assert_eq!(run.code(), 125, "{run}");
        let committed: u32 = run.stdout().lines().last().and_then(|l| l.parse().ok()).unwrap_or(0);
        assert!(committed >= 29, "the job reported {committed} commits:\n{run}");
        assert_eq!(sqlite("PRAGMA integrity_check"), "ok");
        let held: u32 = sqlite("SELECT count(*) FROM t").parse().unwrap();
        let max: u32 = sqlite("SELECT max(n) FROM t").parse().unwrap();
        assert_eq!(held, max, "transactions are whole: none half-applied");
        assert!(held >= committed, "{committed} commits were reported, {held} are on home's disk");
    });
}

#[test]
fn an_idle_job_outlives_a_cut_long_enough_for_home_to_notice() {
    skip_unless_root!();
    let hosts = Hosts::with_netns();
    // Home notices a silent link after its keep-alive ping goes unanswered (30 + 20 s): the session, with
    // the job's open file, must then wait for the shim rather than close.
    let script =
        "exec 3>>log; echo before >&3; echo started > started; sleep 75; echo after >&3 && echo wrote";
    std::thread::scope(|s| {
        let run = s.spawn(|| {
            hosts
                .cmd(&["sh", "-c", script])
                .shim_arg("--on-home-loss=wait:120")
                .timeout(Duration::from_secs(240))
                .remote()
        });
        wait_for("the job starts", Duration::from_secs(30), || hosts.exists("started"));
        hosts.netns_exec(&["ip", "link", "set", "lo", "down"]).assert_success();
        std::thread::sleep(Duration::from_secs(58));
        hosts.netns_exec(&["ip", "link", "set", "lo", "up"]).assert_success();
        let run = run.join().unwrap();
        run.assert_success();
        assert!(run.stdout().contains("wrote"), "{run}");
        assert_eq!(lines(&hosts.path("log")), ["before", "after"], "{run}");
        assert!(hosts.agent_log().contains("waiting 120 s"), "home should have noticed the silent link");
    });
}
