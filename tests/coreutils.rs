//! coreutils, find and tar against home's files: every step runs natively in a copy and remotely under
//! `remote-shim` with the home directory hidden, outputs are compared, and then home's disk is compared
//! with the native copy from outside.

use homeward::{assert_same_tree, require_tools, skip_unless_root, Compare, Hosts, Times, Tree};

/// A fixed time for every file, so that listings with times are comparable (2009-02-13 23:31:30 UTC).
const FIXED: i64 = 1_234_567_890;

/// Text, a larger text, binary data larger than one read, nested directories, an empty directory and a
/// script, all with fixed times.
fn sample_home(hosts: &Hosts) {
    hosts.write("a.txt", "alpha\nbeta\ngamma\n");
    hosts.write("b.txt", (1..=500).map(|i| format!("line {i}\n")).collect::<String>());
    hosts.write("bin.dat", (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>());
    hosts.write("sub/c.txt", "c in sub\n");
    hosts.write("sub/deeper/d.txt", "d\n");
    hosts.write_mode("sub/deeper/e.sh", "#!/bin/sh\necho e\n", 0o755);
    hosts.mkdir("sub/empty");
    hosts.write_mode("script.sh", "#!/bin/sh\necho script\n", 0o644);
    hosts.touch_all(FIXED);
}

#[test]
fn reading_tools_match_native() {
    skip_unless_root!();
    let hosts = Hosts::start();
    sample_home(&hosts);
    let native = hosts.native_copy();
    let before = hosts.snapshot();

    hosts.check(&native, &["cat", "a.txt", "b.txt"]);
    hosts.check(&native, &["cat", "bin.dat"]);
    hosts.check(&native, &["sha256sum", "a.txt", "b.txt", "bin.dat", "sub/c.txt", "sub/deeper/d.txt"]);
    hosts.check(&native, &["head", "-n", "3", "b.txt"]);
    hosts.check(&native, &["tail", "-n", "3", "b.txt"]);
    hosts.check(&native, &["tail", "-c", "100", "bin.dat"]);
    hosts.check(&native, &["wc", "a.txt", "b.txt", "bin.dat"]);
    hosts.check(&native, &["ls"]);
    hosts.check(&native, &["ls", "-l"]);
    hosts.check(&native, &["ls", "-lR", "--time-style=+%s", "sub"]);
    hosts.check(&native, &["ls", "-ld", "sub", "sub/empty", "a.txt"]);
    hosts
        .check(&native, &["stat", "-c", "%n %F %a %s %h %U %G %Y", "a.txt", "sub", "sub/empty", "script.sh"]);
    hosts.cmd(&["find", "."]).check_with(&native, &Compare::new().sorted_lines());
    hosts
        .cmd(&["find", ".", "-printf", "%y %m %n %s %T@ %p\n"])
        .check_with(&native, &Compare::new().sorted_lines());
    hosts
        .cmd(&["find", ".", "-name", "*.txt", "-size", "-2k"])
        .check_with(&native, &Compare::new().sorted_lines());
    hosts.cmd(&["du", "-a"]).check_with(&native, &Compare::new().sorted_lines());
    hosts.check(&native, &["du", "-s", "--apparent-size", "-b", "sub"]);
    hosts.check(&native, &["cmp", "a.txt", "b.txt"]);
    hosts.cmd(&["cat", "a.txt", "missing.txt"]).check_with(&native, &Compare::new().stderr());
    hosts.check(&native, &["test", "-d", "sub/empty"]);
    hosts.check(&native, &["test", "-x", "script.sh"]);
    hosts.check(&native, &["./sub/deeper/e.sh"]);

    // Reading changed nothing at home (access times aside).
    assert_same_tree(&before, &hosts.snapshot(), Times::Mtime);
}

#[test]
fn changing_tools_match_native_and_reach_home() {
    skip_unless_root!();
    let hosts = Hosts::start();
    sample_home(&hosts);
    let native = hosts.native_copy();
    let check = |argv: &[&str]| hosts.cmd(argv).check_with(&native, &Compare::new().stderr());

    check(&["cp", "-r", "sub", "sub2"]);
    check(&["cp", "-a", "sub", "sub3"]);
    check(&["cp", "bin.dat", "sub2/bin-copy.dat"]);
    check(&["mv", "sub2/c.txt", "sub2/moved.txt"]);
    check(&["mv", "b.txt", "sub2/"]);
    check(&["mv", "sub3/deeper", "deeper-moved"]);
    check(&["ln", "-s", "a.txt", "link-a"]);
    check(&["ln", "-s", "../a.txt", "sub/up-link"]);
    check(&["ln", "-s", "nowhere", "dangling"]);
    check(&["ln", "a.txt", "hard-a"]);
    check(&["readlink", "link-a", "sub/up-link", "dangling"]);
    check(&["readlink", "-f", "sub/up-link"]);
    check(&["chmod", "0640", "a.txt"]);
    check(&["chmod", "-R", "g+w,o-r", "sub3"]);
    check(&["chmod", "+x", "script.sh"]);
    check(&["touch", "-d", "2001-02-03 04:05:06", "a.txt"]);
    check(&["touch", "-d", "@1000000000", "created.txt"]);
    check(&["touch", "-h", "-d", "@1500000000", "link-a"]);
    check(&["truncate", "-s", "5", "sub3/c.txt"]);
    check(&["truncate", "-s", "1M", "sparse.bin"]);
    check(&["truncate", "-s", "+100", "sub2/moved.txt"]);
    check(&["mkdir", "-p", "x/y/z"]);
    check(&["rmdir", "x/y/z"]);
    check(&["rm", "-r", "sub3/empty", "dangling"]);
    check(&["rm", "missing"]);
    check(&["rmdir", "sub"]);
    check(&["ls", "-l", "--time-style=full-iso", "a.txt", "created.txt", "link-a", "hard-a", "script.sh"]);
    // Times set by `touch -d` are compared; files written during the runs carry each run's own "now".
    check(&["stat", "-c", "%n %a %s %h %Y", "a.txt", "hard-a"]);
    check(&["stat", "-c", "%n %a %s %h", "sub3/c.txt", "sparse.bin", "sub2/moved.txt"]);
    check(&["sha256sum", "sub2/moved.txt", "sparse.bin", "sub2/bin-copy.dat"]);
    hosts.assert_home_matches(&native, Times::Ignore);

    // Make every time fixed again, through the shim (utimensat on files, directories and symlinks), and
    // now the whole listing, times included, must agree.
    check(&["find", ".", "-exec", "touch", "-h", "-d", "@1234567890", "{}", "+"]);
    check(&["ls", "-lR"]);
    hosts.cmd(&["du", "-a"]).check_with(&native, &Compare::new().sorted_lines());
    hosts
        .cmd(&["find", ".", "-printf", "%y %m %n %s %T@ %p %l\n"])
        .check_with(&native, &Compare::new().sorted_lines());
    hosts.assert_home_matches(&native, Times::Mtime);

    check(&["rm", "-r", "sub2"]);
    check(&["rm", "-rf", "sub3", "deeper-moved", "link-a"]);
    check(&["ls", "-la", "--time-style=+"]);
    hosts.assert_home_matches(&native, Times::Ignore);
    assert!(!hosts.exists("sub2") && hosts.exists("sub/up-link") && hosts.exists("sparse.bin"));
}

#[test]
fn tar_create_then_extract() {
    skip_unless_root!();
    require_tools!("tar", "diff");
    let hosts = Hosts::start();
    sample_home(&hosts);
    hosts.symlink("../a.txt", "sub/link");
    hosts.touch_all(FIXED);
    let native = hosts.native_copy();
    let check = |argv: &[&str]| hosts.cmd(argv).check_with(&native, &Compare::new().stderr());

    check(&["tar", "--sort=name", "-cf", "archive.tar", "sub", "a.txt", "bin.dat"]);
    // Same input, same times, sorted: the archives must be identical byte for byte.
    check(&["sha256sum", "archive.tar"]);
    check(&["tar", "-tvf", "archive.tar"]);
    check(&["mkdir", "extracted"]);
    check(&["tar", "-xf", "archive.tar", "-C", "extracted"]);
    check(&["diff", "-r", "sub", "extracted/sub"]);
    check(&["cmp", "bin.dat", "extracted/bin.dat"]);
    check(&["tar", "-czf", "archive.tgz", "-C", "extracted", "."]);
    check(&["tar", "-tzf", "archive.tgz"]);
    // archive.tgz holds `.` of `extracted`, whose mtime is the moment each run extracted: its bytes differ
    // between any two runs, native or not; its listing was compared above.
    hosts.assert_home_matches_excluding(&native, Times::Ignore, &["archive.tgz"]);

    // From outside: tar restored contents, modes, links and times at home.
    let original = Tree::read(&hosts.path("sub"));
    let extracted = Tree::read(&hosts.path("extracted/sub"));
    assert_same_tree(&original, &extracted, Times::Mtime);
    assert_eq!(hosts.read("extracted/bin.dat"), hosts.read("bin.dat"));
    assert_eq!(hosts.read("archive.tar"), std::fs::read(native.join("archive.tar")).unwrap());
}
