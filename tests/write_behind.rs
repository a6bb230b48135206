//! Write-behind (remote-shim/src/behind.rs): writes to a regular file on a roomy local disk at home, and
//! lock releases, are answered at once and sent without waiting. Every later call of the job still sees
//! them; a file system short of room gets every write waited for, so its partial counts and `ENOSPC` are
//! the kernel's (tests/mounts.rs, which mounts a small file system); a write that fails at home after all
//! is reported by the file's next `fsync`.

use homeward::{require_tools, skip_unless_root, skip_unless_unprivileged, trace_lines, trace_opened, Hosts};
use std::process::Command;
use std::time::{Duration, Instant};

/// Writes in small pieces and checks, after each batch, what every other way of looking at the file sees:
/// another descriptor, `stat`, a child process, an `flock` taken and released around the batch.
const ORDERED: &str = r#"
import fcntl, os, subprocess
w = os.open("out.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
r = os.open("out.txt", os.O_RDONLY)
total = 0
for batch in range(20):
    fcntl.flock(w, fcntl.LOCK_EX)
    for i in range(100):
        line = b"%04d-%03d\n" % (batch, i)
        total += os.write(w, line)
    fcntl.flock(w, fcntl.LOCK_UN)
    seen = os.read(r, 1 << 20)
    assert len(seen) == 900, (batch, len(seen))
    assert os.stat("out.txt").st_size == total, (batch, os.stat("out.txt").st_size, total)
    tail = subprocess.run(["tail", "-n", "1", "out.txt"], capture_output=True).stdout
    assert tail == b"%04d-099\n" % batch, tail
os.pwrite(w, b"HEAD", 0)
assert os.pread(r, 4, 0) == b"HEAD"
os.close(w)
print("ok", total)
"#;

/// The stats line counting calls sent behind.
fn sent_behind(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("calls sent behind (no wait): "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn writes_sent_behind_are_seen_by_every_later_call() {
    skip_unless_root!();
    require_tools!("python3", "tail");
    let hosts = Hosts::start();
    hosts.write("ordered.py", ORDERED);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["python3", "ordered.py"]).shim_arg("--stats").check(&native);
    assert_eq!(both.remote.stdout(), "ok 18000\n", "{}", both.remote);
    // 2,000 writes and 20 unlocks went without waiting.
    let behind = sent_behind(&both.remote.stderr());
    assert!(behind >= 2020, "only {behind} calls were sent behind:\n{}", both.remote.stderr());
    let content = hosts.read("out.txt");
    assert_eq!(content.len(), 18000);
    assert!(content.starts_with(b"HEAD-000\n0000-001\n"));
    assert!(content.ends_with(b"0019-099\n"));
}

/// Writes once, waits while home makes the file immutable, writes again, then syncs.
const IMMUTABLE: &str = r#"
import errno, os, time
fd = os.open("locked.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"first\n")
os.fsync(fd)
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.02)
try:
    print("write", os.write(fd, b"second\n"))
except OSError as e:
    print("write", errno.errorcode[e.errno])
try:
    os.fsync(fd)
    print("fsync ok")
except OSError as e:
    print("fsync", errno.errorcode[e.errno])
try:
    os.fsync(fd)
    print("fsync again ok")
except OSError as e:
    print("fsync again", errno.errorcode[e.errno])
"#;

#[test]
fn a_write_that_fails_at_home_after_all_is_reported_by_fsync() {
    skip_unless_root!();
    require_tools!("python3", "chattr");
    let hosts = Hosts::start();
    hosts.write("immutable.py", IMMUTABLE);
    let remote = std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["python3", "immutable.py"]).remote());
        let start = Instant::now();
        while !hosts.exists("ready") {
            assert!(start.elapsed() < Duration::from_secs(20), "the program never got ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ok = Command::new("chattr").arg("+i").arg(hosts.path("locked.txt")).status().expect("chattr");
        assert!(ok.success(), "chattr +i failed");
        hosts.write("go", "");
        run.join().expect("the remote run")
    });
    let _ = Command::new("chattr").arg("-i").arg(hosts.path("locked.txt")).status();
    remote.assert_success();
    // Natively the second write fails at once; sent behind, it is told success and the failure comes with
    // the next fsync, once, as a failed write-back does.
    assert_eq!(remote.stdout(), "write 7\nfsync EPERM\nfsync again ok\n", "{}", remote);
    assert!(remote.stderr().contains("failed at home (EPERM)"), "{}", remote);
    assert_eq!(hosts.read("locked.txt"), b"first\n");
}

/// Seeks relative to the offset, reads and writes at it, in the pattern of `as` (read back, seek back,
/// write), through one description shared with a child and one moved under stdout: every offset and byte
/// as natively.
const OFFSETS: &str = r#"
import os, sys
fd = os.open("obj.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
out = []
for i in range(50):
    os.lseek(fd, 0, os.SEEK_SET)
    seen = os.read(fd, 4096)
    out.append(os.lseek(fd, -(len(seen) // 2), os.SEEK_CUR))
    os.write(fd, b"%03d-" % i * 3)
    out.append(os.lseek(fd, 0, os.SEEK_CUR))
    out.append(os.lseek(fd, 7, os.SEEK_CUR))
    os.write(fd, b"+")
try:
    os.lseek(fd, -10**6, os.SEEK_CUR)
except OSError as e:
    out.append(e.errno)
out.append(os.lseek(fd, 0, os.SEEK_CUR))
pid = os.fork()
if pid == 0:
    os.write(fd, b"child")
    os._exit(0)
os.waitpid(pid, 0)
out.append(os.lseek(fd, 0, os.SEEK_CUR))
out.append(os.lseek(fd, 0, os.SEEK_END))
saved = os.dup(1)
os.dup2(fd, 1)
sys.stdout.write("through stdout\n")
sys.stdout.flush()
os.dup2(saved, 1)
out.append(os.lseek(fd, 0, os.SEEK_CUR))
os.lseek(fd, 0, os.SEEK_SET)
data = os.read(fd, 1 << 20)
print(out)
print(len(data), data[:40], data[-40:])
"#;

#[test]
fn offsets_followed_here_are_the_kernels() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("offsets.py", OFFSETS);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["python3", "offsets.py"]).shim_arg("--stats").check(&native);
    // The seeks relative to a known offset waited for nothing: most waited 0 µs (the p50 column).
    let lseeks: Vec<f64> = both
        .remote
        .stderr()
        .lines()
        .find(|l| l.starts_with("lseek "))
        .map(|l| l.split_whitespace().skip(1).filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    assert!(
        lseeks.len() == 8 && lseeks[5] == 0.0,
        "lseek: calls home local errors ms p50 p99 bytes: {lseeks:?}\n{}",
        both.remote
    );
}

/// A file the job emptied (or made empty by creating it) and writes is read back from what it wrote (no
/// round trip), until anything else changes it: another descriptor's write, a truncate, a child's write
/// through the same description.
const READ_BACK: &str = r#"
import os
fd = os.open("shadow.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"abcdef")
os.lseek(fd, 0, os.SEEK_SET)
print(os.read(fd, 10), os.lseek(fd, 0, os.SEEK_CUR))
os.pwrite(fd, b"Z", 10)
print(os.pread(fd, 20, 0))
pid = os.fork()
if pid == 0:
    os.write(fd, b"child")
    os._exit(0)
os.waitpid(pid, 0)
print(os.pread(fd, 20, 0), os.lseek(fd, 0, os.SEEK_CUR))
other = os.open("shadow.bin", os.O_WRONLY)
os.pwrite(other, b"XY", 1)
print(os.pread(fd, 20, 0))
os.ftruncate(fd, 3)
print(os.pread(fd, 20, 0))
os.write(fd, b"+")
print(os.pread(fd, 20, 0))
# Made empty by a creating open (sqlite's journal, given to its owner: attributes only), then one that
# found content (read at home).
made = os.open("created.bin", os.O_RDWR | os.O_CREAT, 0o644)
st = os.fstat(made)
os.fchown(made, st.st_uid, st.st_gid)
os.write(made, b"journal")
print(os.pread(made, 8, 0), os.pread(made, 8, 7), os.pread(made, 8, 512), os.lseek(made, 0, os.SEEK_CUR))
found = os.open("shadow.bin", os.O_RDWR | os.O_CREAT, 0o644)
os.write(found, b"Q")
print(os.pread(found, 20, 0))
"#;

#[test]
fn a_file_the_job_emptied_is_read_back_from_its_own_writes() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("read_back.py", READ_BACK);
    let native = hosts.native_copy();
    let trace = hosts.user_home().join("trace.jsonl");
    let both = hosts
        .cmd(&["python3", "read_back.py"])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("UTF-8"))
        .check(&native);
    assert!(both.remote.stdout().starts_with("b'abcdef' 6\n"), "{}", both.remote);
    // The created file's three reads (its content, its end, past its end) are answered here.
    let lines = trace_lines(&trace);
    let made = trace_opened(&lines, "created.bin", None);
    let reads: Vec<&str> = lines
        .iter()
        .filter(|l| l["call"] == "pread64" && l["args"][0].as_i64() == Some(made))
        .map(|l| l["where"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(reads, ["local", "local", "local"], "{}", both.remote);
}

/// sqlite's return to SHARED after a commit (a read lock where the description holds a write lock) and
/// its `fchown` of each journal to the database's owner: answered at once, sent behind. A read lock
/// elsewhere still waits for home. Then a home process checks the locks: it may read-lock the downgraded
/// range, not write-lock it, and write-lock neither the range still held for writing nor the other.
const DOWNGRADE: &str = r#"
import fcntl, os, time
fd = os.open("db", os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"x" * 1000)
fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 10, 200)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 100)
fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 10, 100)
st = os.fstat(fd)
os.fchown(fd, st.st_uid, st.st_gid)
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.01)
print("ok")
"#;

/// Whether a home process gets a lock of `kind` ("sh" or "ex") on `len` bytes at `start` of `path`.
fn home_may_lock(path: &std::path::Path, kind: &str, start: u32, len: u32) -> bool {
    let script = format!(
        "import fcntl, os\nfd = os.open({:?}, os.O_RDWR)\ntry:\n    fcntl.lockf(fd, fcntl.LOCK_{} | fcntl.LOCK_NB, {len}, {start})\n    print('yes')\nexcept OSError:\n    print('no')\n",
        path.to_str().expect("UTF-8"),
        kind.to_uppercase()
    );
    let out = Command::new("python3").args(["-c", &script]).output().expect("python3 at home");
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[test]
fn lock_downgrades_and_fchown_to_the_owner_go_behind_and_hold_at_home() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("t.py", DOWNGRADE);
    let trace = hosts.user_home().join("trace.jsonl");
    let db = hosts.path("db");
    let (run, seen) = std::thread::scope(|s| {
        let run = s.spawn(|| {
            hosts
                .cmd(&["python3", "t.py"])
                .shim_arg("--trace")
                .shim_arg(trace.to_str().expect("UTF-8"))
                .remote()
        });
        hosts.wait_for("ready");
        let seen = [
            home_may_lock(&db, "sh", 100, 10),
            home_may_lock(&db, "ex", 100, 10),
            home_may_lock(&db, "ex", 150, 10),
            home_may_lock(&db, "ex", 200, 10),
        ];
        hosts.write("go", "");
        (run.join().expect("the remote run"), seen)
    });
    run.assert_success();
    assert_eq!(seen, [true, false, false, false], "read-lockable, write-lockable: {run}");
    let text = std::fs::read_to_string(&trace).expect("the trace");
    let behind = |call: &str| -> Vec<bool> {
        text.lines()
            .filter(|l| l.contains(&format!("\"call\":\"{call}\"")) && l.contains("\"where\":\"home\""))
            .map(|l| l.contains("\"behind\":1"))
            .collect()
    };
    // The first read lock and the write lock wait for home; the downgrade does not.
    assert_eq!(behind("fcntl"), [false, false, true], "{text}");
    assert_eq!(behind("fchown"), [true], "{text}");
}

/// Creates, writes and removes files: the first two as sqlite does its journal (removed behind; a lookup
/// right after still asks home, until the reply leases the name's absence), the third after home took the directory's write permission away (its
/// removal waits for home and fails as home's does). The agent runs as `nobody`, so permissions bind it.
const REMOVALS: &str = r#"
import os, time
d = os.path.abspath("d")
for name in ["j1", "j2"]:
    p = os.path.join(d, name)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"journal")
    os.fchmod(fd, 0o600)
    os.fsync(fd)
    os.close(fd)
    os.unlink(p)
    print(name, os.path.exists(p))
p = os.path.join(d, "j3")
os.close(os.open(p, os.O_RDWR | os.O_CREAT, 0o644))
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.01)
try:
    os.unlink(p)
    print("j3 removed")
except PermissionError as e:
    print("j3", e.strerror)
"#;

#[test]
fn names_the_job_created_are_removed_behind_while_home_lets_it() {
    skip_unless_root!();
    require_tools!("python3");
    skip_unless_unprivileged!("needs setpriv or runuser to drop privileges for EACCES");
    let hosts = Hosts::builder().unprivileged().start();
    hosts.mkdir("w/d");
    hosts.write("w/t.py", REMOVALS);
    hosts.chown_to_nobody("w");
    hosts.chown_to_nobody("w/d");
    let trace = hosts.user_home().join("trace.jsonl");
    let run = hosts
        .cmd(&["python3", "t.py"])
        .cwd("w")
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("UTF-8"))
        .remote_while("w", &[&|| hosts.chmod("w/d", 0o555)]);
    run.assert_success();
    assert_eq!(run.stdout(), "j1 False\nj2 False\nj3 Permission denied\n", "{run}");
    assert!(!hosts.exists("w/d/j1") && !hosts.exists("w/d/j2") && hosts.exists("w/d/j3"));
    let text = std::fs::read_to_string(&trace).expect("the trace");
    let unlinks: Vec<(bool, bool)> = text
        .lines()
        .filter(|l| l.contains("\"call\":\"unlink\""))
        .map(|l| (l.contains("\"behind\":1"), l.contains("\"errno\":\"EACCES\"")))
        .collect();
    assert_eq!(unlinks, [(true, false), (true, false), (false, true)], "{text}");
}
