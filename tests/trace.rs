//! The trace harness on two emulated hosts: each real program runs natively with `--home none` (same
//! interception, this machine's kernel) and forwarded to home, both with `--trace`, and `trace-diff` must
//! find the two traces equivalent.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use homeward::{run_with, shim_bin, skip_unless_root, Hosts, NativeCopy};

fn trace_diff_bin() -> PathBuf {
    shim_bin().with_file_name("trace-diff")
}

/// Runs `argv` both ways with traces and returns trace-diff's verdict (its run, for messages).
fn both_ways(hosts: &Hosts, native: &NativeCopy, name: &str, argv: &[&str]) -> homeward::Run {
    let left = hosts.scratch().join(format!("{name}.native.jsonl"));
    let right = hosts.scratch().join(format!("{name}.forwarded.jsonl"));
    let shim = shim_bin().display().to_string();
    let mut local = vec![shim.as_str(), "--home", "none", "--trace", left.to_str().unwrap(), "--"];
    local.extend_from_slice(argv);
    let n = hosts.cmd(&local).native(native);
    let f = hosts.cmd(argv).shim_arg("--trace").shim_arg(right.to_str().unwrap()).remote();
    assert_eq!(n.code(), f.code(), "{name}: exit statuses differ\nnative:\n{n}\nforwarded:\n{f}");
    assert_eq!(n.stdout(), f.stdout(), "{name}: outputs differ\nnative:\n{n}\nforwarded:\n{f}");
    let mut cmd = Command::new(trace_diff_bin());
    cmd.arg(&left).arg(&right);
    run_with(cmd, None, Duration::from_secs(60))
}

#[test]
fn real_programs_trace_the_same_native_and_forwarded() {
    skip_unless_root!();
    let hosts = Hosts::start();
    hosts.mkdir("tree/sub");
    for i in 0..5 {
        hosts.write(&format!("tree/f{i}.txt"), format!("file {i}\n").repeat(i + 1));
    }
    hosts.write("tree/sub/deep.txt", "deep\n");
    hosts.write(
        "prog.py",
        "import os\nfor n in sorted(os.listdir('tree')): print(n, os.stat('tree/' + n).st_size)\n",
    );
    hosts.write("hello.c", "#include <stdio.h>\nint main(void){puts(\"hi\");return 0;}\n");
    hosts.write("Makefile", "hello: hello.c\n\tgcc -o hello hello.c\n");
    hosts.touch_all(1_600_000_000);
    let native = hosts.native_copy();
    let corpus: &[(&str, &[&str])] = &[
        ("cat", &["cat", "tree/f3.txt"]),
        ("ls", &["ls", "-l", "--time-style=+%s", "tree"]),
        ("stat", &["stat", "-c", "%n %s %a", "tree/f1.txt"]),
        ("find", &["find", "tree", "-name", "*.txt"]),
        ("du", &["du", "-s", "tree"]),
        ("cp", &["cp", "-r", "tree", "copy"]),
        ("mv", &["mv", "copy", "moved"]),
        ("sha256sum", &["sha256sum", "tree/f4.txt"]),
        ("tar", &["tar", "--sort=name", "--mtime=@0", "-cf", "t.tar", "tree"]),
        (
            "sqlite3",
            &["sqlite3", "db.sqlite", "create table t(x); insert into t values(1); select * from t;"],
        ),
        ("git", &["git", "init", "-q", "repo"]),
        ("python3", &["python3", "prog.py"]),
        ("make", &["make", "-s"]),
        ("rm", &["rm", "-r", "moved"]),
    ];
    let mut failures = Vec::new();
    for (name, argv) in corpus {
        let verdict = both_ways(&hosts, &native, name, argv);
        if verdict.code() != 0 {
            failures.push(format!("{name}:\n{}", verdict.stdout()));
        }
    }
    assert!(failures.is_empty(), "traces diverge for {} programs:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn trace_diff_reports_a_real_divergence() {
    skip_unless_root!();
    let hosts = Hosts::start();
    hosts.write("present.txt", "x");
    let native = hosts.native_copy();
    // The native side lacks the file: the same program takes a different path (ENOENT), which must show.
    std::fs::remove_file(native.path().join("present.txt")).unwrap();
    let verdict = both_ways_allowing_difference(&hosts, &native);
    assert_eq!(verdict.code(), 1, "trace-diff should report the divergence:\n{verdict}");
    assert!(verdict.stdout().contains("ENOENT"), "{verdict}");
    let html = hosts.scratch().join("report.html");
    let mut cmd = Command::new(trace_diff_bin());
    cmd.arg("--json").arg("--html").arg(&html);
    cmd.arg(hosts.scratch().join("cat.native.jsonl")).arg(hosts.scratch().join("cat.forwarded.jsonl"));
    let json = run_with(cmd, None, Duration::from_secs(60));
    assert!(json.stdout().contains("\"equivalent\":false"), "{json}");
    assert!(std::fs::read_to_string(&html).unwrap().contains("ENOENT"));
}

fn both_ways_allowing_difference(hosts: &Hosts, native: &NativeCopy) -> homeward::Run {
    let left = hosts.scratch().join("cat.native.jsonl");
    let right = hosts.scratch().join("cat.forwarded.jsonl");
    let shim = shim_bin().display().to_string();
    hosts
        .cmd(&[
            shim.as_str(),
            "--home",
            "none",
            "--trace",
            left.to_str().unwrap(),
            "--",
            "cat",
            "present.txt",
        ])
        .native(native);
    hosts.cmd(&["cat", "present.txt"]).shim_arg("--trace").shim_arg(right.to_str().unwrap()).remote();
    let mut cmd = Command::new(trace_diff_bin());
    cmd.arg(&left).arg(&right);
    run_with(cmd, None, Duration::from_secs(60))
}

#[test]
fn stats_show_calls_by_family_and_round_trips() {
    skip_unless_root!();
    let hosts = Hosts::start();
    hosts.write("a.txt", "hello\n");
    let run =
        hosts.cmd(&["sh", "-c", "cat a.txt; cat missing 2>/dev/null; true"]).shim_arg("--stats").remote();
    run.assert_success();
    let err = run.stderr();
    for needle in
        ["remote-shim --stats", "openat", "read", "round trips to home:", "intercepted calls not handled"]
    {
        assert!(err.contains(needle), "--stats output lacks {needle:?}:\n{run}");
    }
    let trips: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("round trips to home: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a round-trip count");
    assert!(trips > 0, "{run}");
}
