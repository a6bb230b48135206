//! Listings that bring small files' content along (`Getdents.content_max`, remote-shim's `lazy::Prefetch`):
//! once a job has opened a few files of the directories it lists, the files of the next listings are
//! opened without a round trip, by absolute or relative paths. Every answer is checked: a file changed at
//! home after the listing is read anew, and home's files are not touched (their access times stay) by
//! what the job only lists.

use homeward::{require_tools, skip_unless_root, Hosts};
use std::time::Duration;

/// Walks `tree` (relative paths, as `os.walk` gives them) reading every file, then waits for the test to
/// change `tree/d0/f0` at home and reads it again, by a relative and an absolute path.
const WALK: &str = r#"
import os, sys, time
total = n = 0
for root, dirs, files in os.walk("tree"):
    dirs.sort()
    for f in sorted(files):
        with open(os.path.join(root, f), "rb") as fh:
            total += len(fh.read())
        n += 1
print(n, total)
if len(sys.argv) > 1:
    open("ready", "w").close()
    while not os.path.exists("go"):
        time.sleep(0.01)
    print(open("tree/d0/f0", "rb").read(), open(os.path.abspath("tree/d0/f0"), "rb").read())
    os.chdir("tree/d0")
    print(open("f0", "rb").read(), open("f1", "rb").read())
"#;

fn make_tree(hosts: &Hosts) {
    for d in 0..20 {
        hosts.mkdir(&format!("tree/d{d}"));
        for f in 0..20 {
            hosts.write(&format!("tree/d{d}/f{f}"), format!("file {d} {f}\n"));
        }
    }
    hosts.write("walk.py", WALK);
}

#[test]
fn files_of_listed_directories_open_without_a_round_trip() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    make_tree(&hosts);
    let expected: usize = (0..20).flat_map(|d| (0..20).map(move |f| format!("file {d} {f}\n").len())).sum();
    let run = hosts.cmd(&["python3", "walk.py"]).shim_arg("--stats").remote();
    run.assert_success();
    assert_eq!(run.stdout(), format!("400 {expected}\n"), "{run}");
    // Without prefetching, each of the 400 opens is a round trip; with it, those of the first listing only
    // (20), besides python's start and the 21 listings (open, two getdents each).
    let trips = run.round_trips();
    let baseline = hosts.cmd(&["python3", "-c", "pass"]).shim_arg("--stats").remote();
    baseline.assert_success();
    let start = baseline.round_trips();
    assert!(trips < start + 150, "{trips} round trips (python alone: {start})\n{run}");
}

#[test]
fn a_file_changed_at_home_after_its_listing_is_read_anew() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    make_tree(&hosts);
    // Same size: only the times tell the versions apart.
    let rewrite: &dyn Fn() = &|| hosts.write("tree/d0/f0", "FILE 0 0\n");
    let remote = hosts.cmd(&["python3", "walk.py", "wait"]).remote_while("", &[rewrite]);
    remote.assert_success();
    assert!(
        remote.stdout().ends_with("b'FILE 0 0\\n' b'FILE 0 0\\n'\nb'FILE 0 0\\n' b'file 0 1\\n'\n"),
        "{remote}"
    );
}

#[test]
fn files_only_listed_keep_their_access_times_at_home() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    make_tree(&hosts);
    // Old access times: a read would move them (relatime updates an access time older than the mtime).
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let set_old = |rel: &str| {
        let f = std::fs::File::options().write(true).open(hosts.path(rel)).expect("open");
        f.set_times(std::fs::FileTimes::new().set_accessed(old)).expect("set the access time");
    };
    for d in 0..20 {
        for f in 0..20 {
            set_old(&format!("tree/d{d}/f{f}"));
        }
    }
    // Reads every file of d0..d9 (prefetching starts), then only lists d10..d19.
    let script = r#"
import os
for d in range(20):
    names = sorted(os.listdir(f"tree/d{d}"))
    if d < 10:
        for f in names:
            open(f"tree/d{d}/{f}", "rb").read()
print("ok")
"#;
    hosts.write("list.py", script);
    let run = hosts.cmd(&["python3", "list.py"]).remote();
    run.assert_success();
    assert_eq!(run.stdout(), "ok\n", "{run}");
    for d in 10..20 {
        for f in 0..20 {
            let accessed =
                std::fs::metadata(hosts.path(&format!("tree/d{d}/f{f}"))).and_then(|m| m.accessed());
            assert_eq!(accessed.expect("atime"), old, "tree/d{d}/f{f} was read at home");
        }
    }
}
