//! Tests of the test harness itself: the emulation of two hosts really hides home's data from the remote
//! side, native runs really see their copy, and the comparisons really catch differences. The other test
//! files trust all of this.

use std::process::Command;
use std::time::{Duration, Instant};

use homeward::{
    differences, run, run_with, skip_unless_root, sort_lines, Compare, Hosts, Kind, Times, Tree, NOBODY,
};

fn printf(text: &str) -> homeward::Run {
    let mut cmd = Command::new("printf");
    cmd.arg("%s").arg(text);
    run(cmd)
}

#[test]
fn compare_reports_status_and_a_line_diff() {
    let (a, b) = (printf("one\ntwo\nthree\n"), printf("one\n2\nthree\n"));
    let report = differences(&a, &b, &Compare::new()).expect("different stdout must be reported");
    assert!(report.contains("stdout differs"), "{report}");
    assert!(report.contains("-two") && report.contains("+2"), "{report}");
    assert!(report.contains("=== native run ===") && report.contains("printf"), "{report}");
    assert!(differences(&a, &a, &Compare::new()).is_none());

    let failing = run(Command::new("false"));
    let report = differences(&a, &failing, &Compare::new().ignore_stdout()).expect("status differs");
    assert!(report.contains("status: native exit 0, remote exit 1"), "{report}");
}

#[test]
fn compare_normalizations() {
    let (a, b) = (printf("b\na\n"), printf("a\nb\n"));
    assert!(differences(&a, &b, &Compare::new()).is_some());
    assert!(differences(&a, &b, &Compare::new().sorted_lines()).is_none());
    assert_eq!(sort_lines("b\na\nc"), "a\nb\nc");
    let c = printf("a\nB\n");
    assert!(differences(&b, &c, &Compare::new().normalize(|s| s.to_lowercase())).is_none());
}

#[test]
fn binary_outputs_are_compared_bytewise() {
    let mut cmd = Command::new("printf");
    cmd.arg(r"\000\001\377");
    let (a, b) = (run(cmd), printf("\u{1}"));
    let report = differences(&a, &b, &Compare::new()).expect("binary outputs differ");
    assert!(report.contains("binary") || report.contains("stdout differs"), "{report}");
}

#[test]
fn timeouts_kill_the_whole_process_group() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 60 & sleep 60; echo never"]);
    let start = Instant::now();
    let run = run_with(cmd, None, Duration::from_millis(300));
    assert!(run.timed_out, "{run}");
    assert!(start.elapsed() < Duration::from_secs(5), "the background sleep kept the test waiting: {run}");
    assert_eq!(run.code(), 128 + 9);
}

#[test]
fn tree_differences_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for root in [&a, &b] {
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), "same").unwrap();
        std::os::unix::fs::symlink("sub/f", root.join("link")).unwrap();
    }
    assert!(Tree::read(&a).differences(&Tree::read(&b), Times::Ignore).is_empty());

    std::fs::write(b.join("sub/f"), "diff").unwrap();
    std::fs::remove_file(b.join("link")).unwrap();
    std::os::unix::fs::symlink("elsewhere", b.join("link")).unwrap();
    std::fs::write(b.join("extra"), "").unwrap();
    let diffs = Tree::read(&a).differences(&Tree::read(&b), Times::Ignore);
    let text = diffs.join("\n");
    assert!(text.contains("sub/f: content differs from byte 0"), "{text}");
    assert!(text.contains("link: link target"), "{text}");
    assert!(text.contains("extra: unexpected"), "{text}");
    assert_eq!(Tree::read(&b).get("link").map(|e| e.kind), Some(Kind::Symlink));
}

#[test]
fn emulation_hides_home_and_native_runs_see_their_copy() {
    skip_unless_root!();
    let hosts = Hosts::builder().without_agent().start();
    hosts.write("where.txt", "home\n");
    let native = hosts.native_copy();
    std::fs::write(native.join("where.txt"), "copy\n").unwrap();

    let seen = hosts.run_native(&native, ".", &["cat", "where.txt"]);
    seen.assert_success();
    assert_eq!(seen.stdout(), "copy\n", "{seen}");
    let pwd = hosts.run_native(&native, ".", &["pwd"]);
    assert_eq!(pwd.stdout().trim_end(), hosts.home().to_str().unwrap(), "{pwd}");
    let outside = hosts.outside(&["cat", "where.txt"]);
    assert_eq!(outside.stdout(), "home\n", "{outside}");

    // A native run that writes leaves home alone, and its effects are visible in the copy.
    hosts.run_native(&native, ".", &["touch", "made-natively"]).assert_success();
    assert!(native.join("made-natively").exists());
    assert!(!hosts.exists("made-natively"));
}

#[test]
fn private_network_namespace_has_only_loopback() {
    skip_unless_root!();
    let hosts = Hosts::builder().netns().without_agent().start();
    let addrs = hosts.netns_exec(&["ip", "-o", "addr", "show"]);
    addrs.assert_success();
    assert!(addrs.stdout().lines().all(|l| l.contains(" lo ")), "{addrs}");
    assert!(addrs.stdout().contains("127.0.0.1"), "{addrs}");
}

#[test]
fn unprivileged_hosts_run_native_commands_as_nobody() {
    skip_unless_root!();
    let hosts = Hosts::builder().unprivileged().without_agent().start();
    let native = hosts.native_copy();
    let id = hosts.run_native(&native, ".", &["id", "-u"]);
    assert_eq!(id.stdout().trim(), NOBODY.to_string(), "{id}");
}
