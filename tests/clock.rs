//! Clocks: a job on a machine whose monotonic and boot clocks are skewed from home's (a time namespace
//! shifted by 100000 s emulates it) reads home's clocks; monotonic reads never go back; the wall clock is
//! home's within a second; setting the clock happens at home and fails there as home fails it.

use std::process::Command;
use std::time::Duration;

use homeward::{run_with, shim_bin, skip_unless_root, Hosts, Run};

fn monotonic() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Runs `argv` in a time namespace 100000 s ahead, under remote-shim when `shim` is given.
fn skewed(hosts: &Hosts, shim: bool, argv: &[&str]) -> Run {
    let mut cmd = Command::new("unshare");
    cmd.args(["-T", "--monotonic", "100000", "--boottime", "100000"]);
    if shim {
        cmd.arg(shim_bin()).arg("--home").arg(hosts.addr().to_string());
        cmd.arg("--token-file").arg(hosts.token_file()).arg("--");
    }
    cmd.args(argv).current_dir("/tmp");
    run_with(cmd, None, Duration::from_secs(120))
}

const READ_CLOCKS: &str = r#"
import time
last = 0.0
for _ in range(1_000_000):
    t = time.monotonic()
    assert t >= last, (t, last)
    last = t
print(time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME), time.time())
"#;

#[test]
fn a_skewed_remote_reads_homes_clocks() {
    skip_unless_root!();
    let hosts = Hosts::start();
    // Control: without remote-shim, the emulated remote's clock really is 100000 s ahead.
    let before = monotonic();
    let native = skewed(&hosts, false, &["python3", "-c", "import time; print(time.monotonic())"]);
    native.assert_success();
    let native_mono: f64 = native.stdout().trim().parse().unwrap();
    assert!(native_mono > before + 99_000.0, "the emulated skew is missing:\n{native}");

    let before = monotonic();
    let wall_before =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let run = skewed(&hosts, true, &["python3", "-c", READ_CLOCKS]);
    let after = monotonic();
    run.assert_success();
    let out = run.stdout();
    let v: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(
        v[0] >= before - 0.5 && v[0] <= after + 0.5,
        "job monotonic {} not within home's [{before}, {after}]:\n{run}",
        v[0]
    );
    assert!((v[1] - v[0]).abs() < 100.0 || v[1] > v[0], "boot clock not continued:\n{run}");
    assert!(v[1] < before + 50_000.0, "job boot clock still skewed:\n{run}");
    assert!((v[2] - wall_before).abs() < 60.0, "job wall clock far from home's:\n{run}");
}

#[test]
fn date_in_the_job_is_homes_within_a_second() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let home = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let run = hosts.cmd(&["date", "+%s"]).remote();
    run.assert_success();
    let job: i64 = run.stdout().trim().parse().unwrap();
    assert!((job - home).abs() <= 1 + run.elapsed.as_secs() as i64, "date says {job}, home {home}:\n{run}");
}

/// Home's wall clock ahead of this machine's by an hour (pretended through remote-shim's test hook: on one
/// machine the two cannot really differ): the job's wall-clock reads, which glibc makes through the vDSO, see
/// home's time; its monotonic clock is untouched.
#[test]
fn wall_clock_reads_follow_a_skewed_home() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let before = now();
    let mono_before = monotonic();
    let script = "import time; print(time.time(), time.monotonic(), time.clock_gettime(time.CLOCK_REALTIME))";
    let run = hosts
        .cmd(&["sh", "-c", &format!("date +%s; python3 -c '{script}'")])
        .env("HOMEWARD_TEST_HOME_CLOCK_SKEW_NS", "3600000000000")
        .remote();
    let (after, mono_after) = (now(), monotonic());
    run.assert_success();
    let v: Vec<f64> = run.stdout().split_whitespace().map(|x| x.parse().unwrap()).collect();
    for wall in [v[0], v[1], v[3]] {
        assert!(
            wall >= before + 3600.0 - 1.0 && wall <= after + 3600.0 + 1.0,
            "a wall-clock read ({wall}) is not home's ({}..{}):\n{run}",
            before + 3600.0,
            after + 3600.0
        );
    }
    assert!(v[2] >= mono_before - 0.5 && v[2] <= mono_after + 0.5, "the monotonic clock moved:\n{run}");
}

/// Setting the clock goes home. Agent and program run as `nobody`, so home refuses it (EPERM) exactly as
/// it refuses it natively. The test checks the agent's uid first: with a root agent it would really set
/// home's clock.
#[test]
fn setting_the_clock_fails_at_home_as_home_fails_it() {
    skip_unless_root!();
    let hosts = Hosts::builder().unprivileged().start();
    let agent_uid = std::fs::read_to_string(format!("/proc/{}/status", hosts.agent_pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:").map(|v| v.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .unwrap();
    assert_ne!(agent_uid, "0", "refusing to run: a root agent would set this machine's clock");
    let native = hosts.native_copy();
    hosts.cmd(&["date", "-s", "@1000000000"]).check_with(&native, &homeward::Compare::new().stderr());
}
