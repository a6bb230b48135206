//! The content copies kept on the remote side (close-to-open consistency) are never served stale: a file
//! changed at home is read anew when the program opens it again, or when `fstat` shows the change on a
//! descriptor it holds; a file the job itself writes is read from home, at the right offset; transfers from
//! a copied file start at the offset the program's reads left.

use homeward::{require_tools, skip_unless_root, Hosts};
use std::time::Duration;

/// The remote program waits for `go` at home, created by the test after it changed the data.
const CHANGED_AT_HOME: &str = r#"
import os, time
def wait(name):
    while not os.path.exists(name):
        time.sleep(0.02)
    os.remove(name)
def mark(name):
    open(name, "w").close()

print("first", open("data.txt").read())
kept = open("data.txt")
print("kept", kept.read())
mark("ready1"); wait("go1")
# Reopened after the change: the new content, same size and all.
print("reopened", open("data.txt").read())
# The descriptor opened before the change: fstat shows the new version, and reads follow it.
st = os.fstat(kept.fileno())
print("fstat size", st.st_size)
kept.seek(0)
print("kept after fstat", kept.read())
mark("ready2"); wait("go2")
print("grown", open("data.txt").read())
"#;

#[test]
fn a_file_changed_at_home_is_read_anew() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("data.txt", "version-1\n");
    hosts.write("script.py", CHANGED_AT_HOME);
    let remote = std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["python3", "script.py"]).remote());
        hosts.wait_for("ready1");
        // Same size, so only the times (and the bytes) tell the versions apart.
        hosts.write("data.txt", "version-2\n");
        hosts.write("go1", "");
        hosts.wait_for("ready2");
        hosts.write("data.txt", "version-3, longer\n");
        hosts.write("go2", "");
        run.join().expect("the remote run")
    });
    remote.assert_success();
    assert_eq!(
        remote.stdout(),
        "first version-1\n\nkept version-1\n\nreopened version-2\n\nfstat size 10\n\
         kept after fstat version-2\n\ngrown version-3, longer\n\n",
        "{}",
        remote
    );
}

/// The job reads a file through one descriptor while writing it through another.
const OWN_WRITES: &str = r#"
import os
r = os.open("data.txt", os.O_RDONLY)
print("start", os.read(r, 4))
w = os.open("data.txt", os.O_WRONLY)
os.pwrite(w, b"WXYZ", 4)
# Written by the job: the reader sees it, from where it stood.
print("after write", os.read(r, 6))
print("pread", os.pread(r, 8, 0))
os.ftruncate(w, 6)
print("end", os.lseek(r, 0, os.SEEK_END))
# A reader opened after the write sees it too.
print("new reader", open("data.txt").read())
"#;

#[test]
fn the_jobs_own_writes_are_seen_by_its_readers() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("data.txt", "0123456789ab");
    hosts.write("script.py", OWN_WRITES);
    let remote = hosts.cmd(&["python3", "script.py"]).remote();
    remote.assert_success();
    assert_eq!(
        remote.stdout(),
        "start b'0123'\nafter write b'WXYZ89'\npread b'0123WXYZ'\nend 6\nnew reader 0123WX\n",
        "{}",
        remote
    );
    assert_eq!(hosts.read("data.txt"), b"0123WX");
}

/// Offsets move as the kernel moves them on a copied file: reads, seeks, sendfile from the current
/// offset, a child sharing the description.
const OFFSETS: &str = r#"
import os, sys
fd = os.open("data.txt", os.O_RDONLY)
print("read", os.read(fd, 3))
r, w = os.pipe()
print("sent", os.sendfile(w, fd, None, 4), os.read(r, 100))
print("tell", os.lseek(fd, 0, os.SEEK_CUR))
pid = os.fork()
if pid == 0:
    os.read(fd, 2)
    os._exit(0)
os.waitpid(pid, 0)
print("after child", os.lseek(fd, 0, os.SEEK_CUR), os.read(fd, 100))
print("end", os.lseek(fd, -2, os.SEEK_END), os.read(fd, 5))
print("fstat", os.fstat(fd).st_size)
"#;

#[test]
fn offsets_of_a_copied_file_move_as_the_kernels_do() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("data.txt", "abcdefghijklmnop");
    hosts.write("script.py", OFFSETS);
    let remote = hosts.cmd(&["python3", "script.py"]).remote();
    remote.assert_success();
    assert_eq!(
        remote.stdout(),
        "read b'abc'\nsent 4 b'defg'\ntell 7\nafter child 9 b'jklmnop'\nend 14 b'op'\nfstat 16\n",
        "{}",
        remote
    );
}

/// A file larger than an open brings along is read ahead chunk by chunk: reads at the end first, then from
/// the start, then after a change at home, all give home's bytes.
const LARGE: &str = r#"
import hashlib, os, time
def wait(name):
    while not os.path.exists(name):
        time.sleep(0.02)
    os.remove(name)
fd = os.open("big.bin", os.O_RDONLY)
print("tail", os.pread(fd, 8, os.fstat(fd).st_size - 8))
os.lseek(fd, -4, os.SEEK_END)
print("end", os.read(fd, 100))
os.lseek(fd, 0, os.SEEK_SET)
h = hashlib.sha256()
while True:
    b = os.read(fd, 65536)
    if not b:
        break
    h.update(b)
print("sha", h.hexdigest())
open("ready", "w").close(); wait("go")
with open("big.bin", "rb") as f:
    print("sha again", hashlib.sha256(f.read()).hexdigest())
"#;

fn big(version: u8) -> Vec<u8> {
    (0..5_000_000u32).map(|i| (i % 251) as u8 ^ version).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    let dir = tempfile_dir();
    let path = dir.join("data");
    std::fs::write(&path, data).unwrap();
    let out = std::process::Command::new("sha256sum").arg(&path).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("homeward-cache-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn large_files_are_read_ahead_and_read_anew_after_a_change() {
    skip_unless_root!();
    require_tools!("python3", "sha256sum");
    let hosts = Hosts::start();
    let (v1, v2) = (big(0), big(1));
    hosts.write("big.bin", &v1);
    hosts.write("script.py", LARGE);
    let remote = hosts.cmd(&["python3", "script.py"]).remote_while("", &[&|| hosts.write("big.bin", &v2)]);
    remote.assert_success();
    let expected = format!(
        "tail b'{}'\nend b'{}'\nsha {}\nsha again {}\n",
        escape(&v1[v1.len() - 8..]),
        escape(&v1[v1.len() - 4..]),
        sha256_hex(&v1),
        sha256_hex(&v2)
    );
    assert_eq!(remote.stdout(), expected, "{remote}");
}

/// Python's repr of bytes, for the bytes used here.
fn escape(b: &[u8]) -> String {
    b.iter()
        .map(|&c| match c {
            b'\\' => "\\\\".to_string(),
            b'\'' => "\\'".to_string(),
            b'\t' => "\\t".to_string(),
            b'\n' => "\\n".to_string(),
            b'\r' => "\\r".to_string(),
            0x20..=0x7e => (c as char).to_string(),
            _ => format!("\\x{c:02x}"),
        })
        .collect()
}

/// Lookups answered from the attribute cache follow changes made at home: attributes, a file appearing, a
/// directory renamed above the file, entries listed before a change.
const LOOKUPS: &str = r#"
import os, time
def show(tag):
    for p in ["data.txt", "new.txt", "sub/deep/x.txt", "moved/deep/x.txt"]:
        try:
            st = os.stat(p)
            print(tag, p, oct(st.st_mode & 0o777), st.st_size)
        except OSError as e:
            print(tag, p, e.strerror)
    print(tag, "listing", sorted(os.listdir("sub/deep")) if os.path.isdir("sub/deep") else None)
    for e in sorted(os.scandir("."), key=lambda e: e.name):
        if e.name.endswith(".txt"):
            print(tag, "entry", e.name, e.stat().st_size)
show("before")
open("ready", "w").close()
# Cached again after the job's own change emptied the cache; from here on the job changes nothing, so
# only home's flushes can tell it what changed.
show("again")
while not os.path.exists("go"):
    time.sleep(0.02)
show("after")
"#;

#[test]
fn cached_lookups_follow_changes_at_home() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("data.txt", "1234");
    hosts.write("sub/deep/x.txt", "x");
    hosts.write("script.py", LOOKUPS);
    let changes: &dyn Fn() = &|| {
        // Time for the program to look everything up again (into the cache) before home changes.
        std::thread::sleep(Duration::from_millis(1500));
        hosts.write("data.txt", "123456");
        hosts.chmod("data.txt", 0o600);
        hosts.write("new.txt", "new!");
        std::fs::rename(hosts.path("sub"), hosts.path("moved")).expect("rename at home");
        hosts.write("moved/deep/y.txt", "y");
    };
    let remote = hosts.cmd(&["python3", "script.py"]).remote_while("", &[changes]);
    remote.assert_success();
    let out = remote.stdout();
    let before = "before data.txt 0o644 4\nbefore new.txt No such file or directory\n\
                  before sub/deep/x.txt 0o644 1\nbefore moved/deep/x.txt No such file or directory\n\
                  before listing ['x.txt']\nbefore entry data.txt 4\n";
    let after = "after data.txt 0o600 6\nafter new.txt 0o644 4\n\
                 after sub/deep/x.txt No such file or directory\nafter moved/deep/x.txt 0o644 1\n\
                 after listing None\nafter entry data.txt 6\nafter entry new.txt 4\n";
    assert!(out.starts_with(before), "{remote}");
    assert!(out.ends_with(after), "{remote}");
}

/// The job's own changes through a symbolic link reach the cached answers about the file it points to.
const THROUGH_LINKS: &str = r#"
import os
os.symlink("target.txt", "link")
print("before", oct(os.stat("target.txt").st_mode & 0o777), os.stat("target.txt").st_size)
os.chmod("link", 0o600)
print("chmod", oct(os.stat("target.txt").st_mode & 0o777))
open("link", "w").close()
print("truncated", os.stat("target.txt").st_size)
os.utime("link", (1_000_000_000, 1_000_000_000))
print("utime", int(os.stat("target.txt").st_mtime))
print("missing", os.path.exists("new-target.txt"))
os.symlink("new-target.txt", "dangling")
with open("dangling", "w") as f:
    f.write("made through a link")
print("created", os.path.exists("new-target.txt"), os.stat("new-target.txt").st_size)
"#;

#[test]
fn changes_through_symbolic_links_reach_cached_answers() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("target.txt", "some content");
    hosts.chmod("target.txt", 0o644);
    hosts.write("script.py", THROUGH_LINKS);
    let remote = hosts.cmd(&["python3", "script.py"]).remote();
    remote.assert_success();
    assert_eq!(
        remote.stdout(),
        "before 0o644 12\nchmod 0o600\ntruncated 0\nutime 1000000000\nmissing False\ncreated True 19\n",
        "{remote}"
    );
}

/// The job's own removal of a link's target, and a child reading a copied file from where its parent
/// left it.
const OWN_CHANGES: &str = r#"
import os, subprocess
with open("lib.so.1", "w") as f:
    f.write("x")
os.symlink("lib.so.1", "lib.so")
print("stat", os.stat("lib.so").st_size)
os.unlink("lib.so.1")
print("after unlink", os.path.exists("lib.so"))
with open("data.txt", "rb", buffering=0) as f:
    f.read(4)
    print("child", subprocess.run(["cat"], stdin=f, capture_output=True).stdout)
"#;

#[test]
fn own_changes_and_inherited_offsets_are_kept() {
    skip_unless_root!();
    require_tools!("python3", "cat");
    let hosts = Hosts::start();
    hosts.write("data.txt", "0123456789");
    hosts.write("script.py", OWN_CHANGES);
    let remote = hosts.cmd(&["python3", "script.py"]).remote();
    remote.assert_success();
    assert_eq!(remote.stdout(), "stat 1\nafter unlink False\nchild b'456789'\n", "{remote}");
}

/// A writer opened before a reader, writing after the reader's copy was taken.
const WRITER_FIRST: &str = r#"
import os
w = os.open("data.txt", os.O_WRONLY)
r = os.open("data.txt", os.O_RDONLY)
print("before", os.pread(r, 10, 0))
os.pwrite(w, b"AB", 2)
print("after", os.pread(r, 10, 0))
os.close(w)
r2 = os.open("data.txt", os.O_RDONLY)
print("reopened", os.read(r2, 10))
"#;

#[test]
fn a_writer_opened_first_still_makes_later_copies_stale() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("data.txt", "0123456789");
    hosts.write("script.py", WRITER_FIRST);
    let remote = hosts.cmd(&["python3", "script.py"]).remote();
    remote.assert_success();
    assert_eq!(
        remote.stdout(),
        "before b'0123456789'\nafter b'01AB456789'\nreopened b'01AB456789'\n",
        "{remote}"
    );
}

/// A small copy's reads are the kernel's (the upper half of the range: not one of them is notified), and
/// every change the job makes to its file reaches them: writes through another descriptor, a truncate, a
/// hole, an append, a shell's `>>` (a pumped alias), an emptying open, a truncate by path; a map and a
/// dup of it too.
const NATIVE_READS: &str = r#"
import mmap, os, subprocess
p = "f.txt"
r = os.open(p, os.O_RDONLY)
print(os.read(r, 100), os.isatty(r))
w = os.open(p, os.O_WRONLY)
os.write(w, b"TWO\n")
print(os.pread(r, 100, 0), os.lseek(r, 0, os.SEEK_CUR))
os.lseek(r, 0, os.SEEK_SET)
print(os.read(r, 100))
os.ftruncate(w, 2)
print(os.pread(r, 100, 0))
os.pwrite(w, b"xyz", 10)
print(os.pread(r, 100, 0))
os.close(w)
with open(p, "a") as a:
    a.write("appended\n")
print(os.pread(r, 100, 0))
subprocess.run("echo shell >> f.txt", shell=True, check=True)
print(os.pread(r, 100, 0))
open(p, "w").close()
print(os.pread(r, 100, 0))
with open(p, "wb") as f:
    f.write(b"final!")
m = mmap.mmap(r, 0, prot=mmap.PROT_READ)
print(m[:])
m.close()
os.truncate(p, 3)
d = os.dup(r)
print(os.pread(d, 100, 0), os.fstat(d).st_size)
"#;

#[test]
fn copies_read_by_the_kernel_follow_the_jobs_changes() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("script.py", NATIVE_READS);
    hosts.write("f.txt", "one\n");
    let native = hosts.native_copy();
    let trace = hosts.user_home().join("trace.jsonl");
    let both = hosts
        .cmd(&["python3", "script.py"])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("UTF-8"))
        .check(&native);
    assert!(both.remote.stdout().starts_with("b'one\\n' False\nb'TWO\\n' 4\n"), "{}", both.remote);
    // The reader's reads and seeks never reached the supervisor.
    let lines = homeward::trace_lines(&trace);
    let reader = homeward::trace_opened(&lines, "f.txt", Some("O_RDONLY|O_CLOEXEC"));
    let notified: Vec<&str> = lines
        .iter()
        .filter(|l| l["args"][0].as_i64() == Some(reader))
        .filter_map(|l| l["call"].as_str())
        .collect();
    assert!(
        !notified.iter().any(|c| ["read", "pread64", "lseek", "ioctl"].contains(c)),
        "reads of the copy were notified: {notified:?}\n{}",
        both.remote
    );
}

/// A copy too large for the upper half goes stale when the job rewrites its file; a map of it made then
/// shows the file as it is.
const MAP_STALE: &str = r#"
import hashlib, mmap, os
r = os.open("big.bin", os.O_RDONLY)
while os.read(r, 1 << 20):
    pass
with open("big.bin", "r+b") as f:
    f.write(b"changed by the job")
m = mmap.mmap(r, 0, prot=mmap.PROT_READ)
print(m[:18], hashlib.sha256(m[:]).hexdigest())
"#;

#[test]
fn a_map_of_a_stale_copy_shows_the_file_as_it_is() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("script.py", MAP_STALE);
    hosts.write("big.bin", big(1));
    let native = hosts.native_copy();
    let both = hosts.cmd(&["python3", "script.py"]).check(&native);
    assert!(both.native.stdout().starts_with("b'changed by the job'"), "{}", both.native);
}

/// Bytes the job read ahead from home, from `--stats`' report (0 when it read none ahead).
fn read_ahead(stderr: &str) -> u64 {
    stderr
        .lines()
        .find(|l| l.contains("of which by readahead:"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Versions kept on the remote machine's disk (`--cache DIR`): a later job's open of a file home has not
/// changed since reads it from there instead of from home; once home changes the file, the next job reads
/// the new version from home; `--cache none` keeps nothing.
#[test]
fn versions_kept_on_disk_serve_later_jobs_until_home_changes_the_file() {
    skip_unless_root!();
    require_tools!("python3", "sha256sum");
    let hosts = Hosts::start();
    let (v1, v2) = (big(0), big(1));
    hosts.write("lib.bin", &v1);
    let cache = hosts.scratch().join("disk-cache");
    let cache_arg = cache.display().to_string();
    let hash = "import hashlib; print(hashlib.sha256(open('lib.bin', 'rb').read()).hexdigest())";
    let job = |cache: &str| {
        let run = hosts
            .cmd(&["python3", "-c", hash])
            .shim_arg("--stats")
            .shim_arg("--cache")
            .shim_arg(cache)
            .remote();
        run.assert_success();
        run
    };
    let first = job(&cache_arg);
    assert_eq!(first.stdout().trim(), sha256_hex(&v1), "{first}");
    assert!(
        read_ahead(&first.stderr()) >= v1.len() as u64,
        "the first job reads the file from home:\n{first}"
    );
    let second = job(&cache_arg);
    assert_eq!(second.stdout().trim(), sha256_hex(&v1), "{second}");
    assert_eq!(
        read_ahead(&second.stderr()),
        0,
        "the second job reads the file from the disk cache:\n{second}"
    );
    hosts.write("lib.bin", &v2);
    let changed = job(&cache_arg);
    assert_eq!(changed.stdout().trim(), sha256_hex(&v2), "a file changed at home is read anew:\n{changed}");
    assert!(read_ahead(&changed.stderr()) >= v2.len() as u64, "{changed}");
    let versions = std::fs::read_dir(cache.join("versions")).map(|d| d.count()).unwrap_or(0);
    assert!(versions >= 2, "both versions are on disk ({versions} files)");
    let _ = std::fs::remove_dir_all(&cache);
    let none = job("none");
    assert_eq!(none.stdout().trim(), sha256_hex(&v2), "{none}");
    assert!(!cache.exists(), "--cache none writes nothing");
}
