//! Tests that mount file systems at home: a change of home's mount table (a directory remounted read-only)
//! voids every lease, since no watch reports it; a file system short of room gets every write waited for.
//! In a test binary of their own, one test at a time: a mount voids the leases of every agent on this
//! machine, which would disturb the round trips other tests count.

use homeward::{require_tools, skip_unless_root, trace_wheres, Hosts};
use std::process::Command;

/// Held by each test for its whole run: one test's mount would void the leases whose round trips another
/// counts.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Access checks for writing a directory, answered here while files come and go in it, and after home
/// remounts it read-only (which no watch reports: home watches its mount table).
const WRITABLE: &str = r#"
import os, time
d = os.path.abspath("d")
def show(step):
    print(step, os.access(d, os.W_OK), os.access(d, os.R_OK | os.W_OK | os.X_OK))
show("start")
open(os.path.join(d, "new"), "w").close()
show("file made")
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.01)
show("read-only")
"#;

/// Undoes the test's bind mount, however the test ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn access_for_writing_is_answered_until_home_remounts_read_only() {
    skip_unless_root!();
    let _alone = one_at_a_time();
    require_tools!("python3", "mount", "umount");
    let hosts = Hosts::start();
    hosts.mkdir("d");
    hosts.write("t.py", WRITABLE);
    let trace = hosts.user_home().join("trace.jsonl");
    let d = hosts.path("d");
    let _unmount = Unmount(d.clone());
    let remount: &dyn Fn() = &|| {
        let mount = |args: &[&str]| {
            let ok = std::process::Command::new("mount").args(args).arg(&d).arg(&d).status();
            assert!(ok.is_ok_and(|s| s.success()), "mount {args:?} failed");
        };
        mount(&["--bind"]);
        mount(&["-o", "remount,bind,ro"]);
    };
    let run = hosts
        .cmd(&["python3", "t.py"])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("UTF-8"))
        .remote_while("", &[remount]);
    run.assert_success();
    assert_eq!(run.stdout(), "start True True\nfile made True True\nread-only False False\n", "{run}");
    let checks = trace_wheres(&trace, "access", &d);
    assert_eq!(checks, ["home", "home", "local", "local", "home", "home"], "{run}");
}

/// Writes 10,000-byte pieces until the file system is full, printing each result.
const FILL: &str = r#"
import errno, os, sys
fs = os.statvfs("small")
if fs.f_blocks * fs.f_frsize > 1 << 20:
    sys.exit("small/ is not the small file system: not filling it")
fd = os.open("small/f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
total = 0
while True:
    try:
        n = os.write(fd, b"x" * 10000)
    except OSError as e:
        print("error", errno.errorcode[e.errno], "after", total)
        break
    total += n
    if n != 10000:
        print("short", n)
try:
    os.fsync(fd)
    print("fsync ok")
except OSError as e:
    print("fsync", errno.errorcode[e.errno])
os.close(fd)
"#;

/// Mounts a 200 KiB tmpfs at `dir`; unmounted when dropped.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: std::path::PathBuf) -> SmallFs {
        std::fs::create_dir_all(&dir).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=200k", "homeward-small"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(ok.success(), "mounting a tmpfs at {} failed", dir.display());
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_file_system_gives_the_kernels_counts_and_errno() {
    skip_unless_root!();
    let _alone = one_at_a_time();
    require_tools!("python3", "mount");
    let hosts = Hosts::start();
    hosts.write("fill.py", FILL);
    let _home_fs = SmallFs::mount(hosts.path("small"));
    let remote = hosts.cmd(&["python3", "fill.py"]).remote();
    remote.assert_success();
    // Natively, on a file system of the same size (the harness's native copy cannot carry a mount).
    let native_dir = hosts.scratch().join("native-fill");
    let _native_fs = SmallFs::mount(native_dir.join("small"));
    let native = Command::new("python3")
        .arg(hosts.path("fill.py"))
        .current_dir(&native_dir)
        .output()
        .expect("python3");
    assert!(native.status.success(), "native run: {}", String::from_utf8_lossy(&native.stderr));
    let native = String::from_utf8_lossy(&native.stdout).into_owned();
    assert!(native.contains("error ENOSPC"), "native run: {native}");
    assert_eq!(remote.stdout(), native, "{}", remote);
}
