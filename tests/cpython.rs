//! CPython's own regression tests for files, run with cwd and TMPDIR at home: the set of failing tests when
//! forwarded must equal the set when run natively (on a copy of home, at the same path).

use std::collections::BTreeSet;
use std::time::Duration;

use homeward::{require_tools, skip_unless_root, Hosts, Run};

const SUITES: &[&str] = &[
    "test_fileio",
    "test_os",
    "test_shutil",
    "test_tempfile",
    "test_glob",
    "test_posixpath",
    "test_pathlib",
];

/// `(test id, outcome)` of every test that did not pass, from `python3 -m test -v` output.
fn not_passed(run: &Run) -> BTreeSet<String> {
    run.stdout()
        .lines()
        .chain(run.stderr().lines())
        .filter_map(|l| {
            let (name, outcome) = l.rsplit_once(" ... ")?;
            matches!(outcome.trim(), "FAIL" | "ERROR").then(|| format!("{name}: {}", outcome.trim()))
        })
        .collect()
}

#[test]
fn cpython_file_tests_fail_the_same_forwarded_as_natively() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.mkdir("work/tmp");
    let native = hosts.native_copy();
    let tmp = hosts.path("work/tmp").display().to_string();
    let mut argv = vec!["python3", "-m", "test", "-v"];
    argv.extend_from_slice(SUITES);
    let cmd = hosts.cmd(&argv).cwd("work").env("TMPDIR", &tmp).timeout(Duration::from_secs(1500));
    let n = cmd.native(&native);
    assert!(
        n.stdout().contains("[7/7] test_pathlib") && n.stdout().contains(" ... ok"),
        "CPython's test suite did not run natively (is libpython3.11-testsuite installed?):\n{n}"
    );
    let f = cmd.remote();
    let (nf, ff) = (not_passed(&n), not_passed(&f));
    assert_eq!(nf, ff, "failing tests differ\nnative: {nf:#?}\nforwarded: {ff:#?}\nforwarded run:\n{f}");
    assert_eq!(n.code(), f.code(), "exit statuses differ:\nnative:\n{n}\nforwarded:\n{f}");
}
