//! Read-only opens answered without home (remote-shim's `lazy`): reopening an unchanged home file costs no
//! round trip, a change made at home between two opens is always seen, and a descriptor opened that way
//! still holds locks that home's processes see, and answers `fstat`.

use homeward::{require_tools, skip_unless_root, skip_unless_unprivileged, Hosts};
use std::path::Path;

/// Opens and reads `data.txt` (by its absolute path) `argv[1]` times.
const REOPEN: &str = r#"
import os, sys
p = os.path.abspath("data.txt")
for i in range(int(sys.argv[1])):
    with open(p) as f:
        assert f.read() == "hello\n"
print("ok")
"#;

/// The `openat` lines of a `--trace` file that name `path`, as (round trips, line).
fn opens_of(trace: &Path, path: &str) -> Vec<(u32, String)> {
    let text = std::fs::read_to_string(trace).unwrap_or_else(|e| panic!("read {}: {e}", trace.display()));
    let quoted = format!("\"{path}\"");
    let field = |l: &str, name: &str| -> u64 {
        let value = l.split(&format!("\"{name}\":")).nth(1).and_then(|r| r.split([',', '}']).next());
        value.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no {name} in {l}"))
    };
    // In the order of the calls (`seq`): a call the supervisor answered itself is recorded once its
    // handler ends, which may be after the program's next call.
    let mut opens: Vec<(u64, u32, String)> = text
        .lines()
        .filter(|l| l.contains("\"call\":\"openat\"") && l.contains(&quoted))
        .map(|l| (field(l, "seq"), field(l, "rtt") as u32, l.to_string()))
        .collect();
    opens.sort_by_key(|(seq, _, _)| *seq);
    opens.into_iter().map(|(_, rtt, line)| (rtt, line)).collect()
}

#[test]
fn reopening_an_unchanged_file_costs_no_round_trip() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("data.txt", "hello\n");
    hosts.write("reopen.py", REOPEN);
    let trace = hosts.user_home().join("trace.jsonl");
    let run = |n: &str, traced: bool| {
        let mut cmd = hosts.cmd(&["python3", "reopen.py", n]).shim_arg("--stats");
        if traced {
            cmd = cmd.shim_arg("--trace").shim_arg(trace.to_str().expect("a UTF-8 path"));
        }
        let run = cmd.remote();
        run.assert_success();
        assert_eq!(run.stdout(), "ok\n", "{run}");
        run.round_trips()
    };
    let once = run("1", false);
    let many = run("41", true);
    // Only the first open goes home: the 40 others (and their fstat, ioctl, reads) are answered here.
    assert!(many <= once + 3, "41 opens took {many} round trips, one open {once}");
    let data = hosts.path("data.txt");
    let opens = opens_of(&trace, data.to_str().expect("a UTF-8 path"));
    assert_eq!(opens.len(), 41, "{opens:?}");
    let home: Vec<_> = opens.iter().filter(|(rtt, _)| *rtt > 0).collect();
    assert_eq!(home.len(), 1, "opens that went home: {home:?}");
}

/// Shows the file through two opens (the second is answered without home when the first left it leased
/// and cached), then, for each change the test makes at home, again.
const CHANGES: &str = r#"
import errno, os, time
p = os.path.abspath("data.txt")
def wait(name):
    while not os.path.exists(name):
        time.sleep(0.01)
    os.remove(name)
def show(step):
    try:
        with open(p) as f:
            a = f.read()
        with open(p) as f:
            b = f.read()
        print(step, repr(a), a == b)
    except OSError as e:
        print(step, errno.errorcode[e.errno])
show("start")
for step in ["inplace", "append", "truncate", "renamed", "chmod", "deleted"]:
    open("ready", "w").close()
    wait("go")
    show(step)
"#;

#[test]
fn a_change_at_home_between_two_opens_is_seen() {
    skip_unless_root!();
    require_tools!("python3");
    skip_unless_unprivileged!("needs setpriv or runuser to drop privileges for EACCES");
    // The agent runs as nobody, so a file made unreadable is unreadable at home.
    let hosts = Hosts::builder().unprivileged().start();
    hosts.mkdir("w");
    hosts.chown_to_nobody("w");
    hosts.write("w/data.txt", "hello\n");
    hosts.write("w/changes.py", CHANGES);
    let data = hosts.path("w/data.txt");
    let changes: [&dyn Fn(); 6] = [
        // In place, same size: only the bytes and the times tell the versions apart.
        &|| {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&data).expect("open for writing");
            f.write_all_at(b"HELLO\n", 0).expect("write in place");
        },
        &|| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&data).expect("open for appending");
            f.write_all(b" more\n").expect("append");
        },
        &|| std::fs::OpenOptions::new().write(true).open(&data).and_then(|f| f.set_len(3)).expect("truncate"),
        &|| {
            hosts.write("w/data.new", "replaced\n");
            std::fs::rename(hosts.path("w/data.new"), &data).expect("rename over");
        },
        &|| hosts.chmod("w/data.txt", 0o600),
        &|| std::fs::remove_file(&data).expect("delete"),
    ];
    let remote = hosts.cmd(&["python3", "changes.py"]).cwd("w").remote_while("w", &changes);
    remote.assert_success();
    assert_eq!(
        remote.stdout(),
        "start 'hello\\n' True\ninplace 'HELLO\\n' True\nappend 'HELLO\\n more\\n' True\n\
         truncate 'HEL' True\nrenamed 'replaced\\n' True\nchmod EACCES\ndeleted ENOENT\n",
        "{remote}"
    );
}

/// Opens `data.txt` twice (the second open is answered without home), takes a read lock through the
/// second descriptor, shows its `fstat`, and holds the lock until told to end.
const LOCKS: &str = r#"
import fcntl, os, time
p = os.path.abspath("data.txt")
with open(p) as f:
    f.read()
fd = os.open(p, os.O_RDONLY)
st = os.fstat(fd)
print("fstat", st.st_size, st.st_ino)
fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 0, 0)
print("locked")
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.01)
fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0)
print("fstat again", os.fstat(fd).st_size)
open("unlocked", "w").close()
"#;

/// Whether a home process may take a write lock on `path` (without waiting).
fn home_can_lock(path: &Path) -> bool {
    let probe = "import fcntl, sys\nf = open(sys.argv[1], 'r+')\ntry:\n    \
                 fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('free')\nexcept OSError:\n    print('held')\n";
    let out = std::process::Command::new("python3")
        .args(["-c", probe])
        .arg(path)
        .output()
        .expect("run python3 at home");
    assert!(out.status.success(), "{out:?}");
    match String::from_utf8_lossy(&out.stdout).trim() {
        "free" => true,
        "held" => false,
        other => panic!("unexpected probe output {other:?}"),
    }
}

#[test]
fn a_lazily_opened_descriptor_holds_locks_home_sees() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("data.txt", "some data\n");
    hosts.write("locks.py", LOCKS);
    let data = hosts.path("data.txt");
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&data).expect("stat data.txt"));
    let trace = hosts.user_home().join("trace.jsonl");
    let remote = std::thread::scope(|s| {
        let run = s.spawn(|| {
            hosts.cmd(&["python3", "locks.py"]).shim_arg("--trace").shim_arg(trace.to_str().unwrap()).remote()
        });
        hosts.wait_for("ready");
        let held = !home_can_lock(&data);
        hosts.write("go", "");
        hosts.wait_for("unlocked");
        let freed = home_can_lock(&data);
        (run.join().expect("the remote run"), held, freed)
    });
    let (remote, held, freed) = remote;
    remote.assert_success();
    assert_eq!(remote.stdout(), format!("fstat 10 {ino}\nlocked\nfstat again 10\n"), "{remote}");
    assert!(held, "a home process could take a write lock over the job's read lock:\n{remote}");
    assert!(freed, "the job's lock was not released at home");
    let opens = opens_of(&trace, data.to_str().expect("a UTF-8 path"));
    assert_eq!(opens.len(), 2, "{opens:?}");
    assert_eq!(opens[1].0, 0, "the second open went home: {}", opens[1].1);
}

/// Opens of one unchanged file answered without home share its copy: each is a description of its own
/// (offsets, flags, locks), as native opens are.
const SHARED: &str = r#"
import fcntl, os, subprocess, sys, time
p = os.path.abspath("lib.bin")
with open(p, "rb") as f:
    f.read()
a = os.open(p, os.O_RDONLY)
b = os.open(p, os.O_RDONLY)
print(os.read(a, 4), os.read(b, 2), os.read(a, 2))
c = os.dup(a)
print(os.read(c, 2), os.read(a, 2), os.lseek(b, 0, os.SEEK_CUR), os.lseek(a, 0, os.SEEK_CUR))
fcntl.flock(b, fcntl.LOCK_SH)
fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
try:
    fcntl.flock(os.open(p, os.O_RDONLY), fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("second lock taken")
except BlockingIOError:
    print("second lock refused")
child = f"""import fcntl, os
fd = os.open({p!r}, os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    print("child locked", os.read(fd, 3))
except BlockingIOError:
    print("child refused", os.read(fd, 3))
"""
sys.stdout.flush()
subprocess.run([sys.executable, "-c", child], check=True)
fcntl.flock(b, fcntl.LOCK_UN)
subprocess.run([sys.executable, "-c", child], check=True)
fcntl.fcntl(a, fcntl.F_SETFL, fcntl.fcntl(a, fcntl.F_GETFL) | os.O_NONBLOCK)
nonblock = lambda fd: bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
print(nonblock(a), nonblock(b), os.read(a, 2), os.read(b, 2))
print(os.fstat(a).st_size, os.fstat(b).st_size, os.fstat(c).st_size, os.read(b, 100))
# A lock a child takes through the descriptor it inherited is the description's: it stays when the child
# ends (a shell's `exec 9<file; flock 9`), past a collection of what nobody holds.
d = os.open(p, os.O_RDONLY)
take = f"import fcntl; fcntl.flock({d}, fcntl.LOCK_EX)"
subprocess.run([sys.executable, "-c", take], pass_fds=[d], check=True)
time.sleep(1.2)
try:
    fcntl.flock(os.open(p, os.O_RDONLY), fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("taken after the child")
except BlockingIOError:
    print("held after the child")
os.close(d)
# Moved below the range (a pipe the supervisor fills from home), at the description's offset.
e = os.open(p, os.O_RDONLY)
os.read(e, 3)
os.dup2(e, 0)
print(sys.stdin.buffer.read(4))
"#;

#[test]
fn opens_sharing_a_copy_are_descriptions_of_their_own() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("lib.bin", "0123456789abcdefghij");
    hosts.write("shared.py", SHARED);
    let native = hosts.native_copy();
    let trace = hosts.user_home().join("trace.jsonl");
    let cmd =
        hosts.cmd(&["python3", "shared.py"]).shim_arg("--trace").shim_arg(trace.to_str().expect("UTF-8"));
    let both = cmd.check_with(&native, &homeward::Compare::new());
    let run = &both.remote;
    assert!(run.stdout().contains("second lock refused\nchild refused"), "{run}");
    assert!(run.stdout().ends_with("held after the child\nb'3456'\n"), "{run}");
    // The opens after the first were answered here.
    let path = hosts.path("lib.bin");
    let opens = opens_of(&trace, path.to_str().expect("a UTF-8 path"));
    let home = opens.iter().filter(|(rtt, _)| *rtt > 0).count();
    assert!(opens.len() >= 5 && home <= 2, "{opens:?}");
}
