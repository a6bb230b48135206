//! Listings behind negative lookups (decision 5): a lookup that finds a name missing brings the names of
//! the directory it was missing from, and a later lookup of any other name there is answered `ENOENT`
//! without home, as a `$PATH` search or a compiler's probes of its include and library directories need.
//! Checked here: names home makes behind the program's back (a file, a directory below a missing one, a
//! rename, a name reached through a symbolic link) and the job's own creations are found at once, a link
//! whose target is missing elsewhere does not pass that directory's names off as its own; every
//! call that looks names up (stat, lstat, open, access, readlink, statfs, exec, below a missing directory too)
//! answers as the kernel does; and the round trips saved are counted.

use homeward::{require_tools, skip_unless_root, trace_lines, Hosts};
use std::path::Path;

/// Looks names up in `d` (directly, through `lnk -> d`, and relative to `d` as the cwd) before and after
/// each change the test makes at home, printing what each call says.
const PROBES: &str = r#"
import errno, os, subprocess, time
def wait():
    open("ready", "w").close()
    while not os.path.exists("go"):
        time.sleep(0.01)
    os.remove("go")
def err(f):
    try:
        r = f()
        return "ok" if r is None or isinstance(r, (int, os.stat_result)) else str(r)
    except OSError as e:
        return errno.errorcode[e.errno]
def closed(fd):
    os.close(fd)
def show(step, names):
    for name in names:
        print(step, name,
              err(lambda: os.stat(name)),
              err(lambda: os.lstat(name)),
              err(lambda: closed(os.open(name, os.O_RDONLY))),
              err(lambda: str(os.access(name, os.F_OK))),
              err(lambda: os.readlink(name)))
names = ["d/dangling", "d/old", "d/new", "d/sub/x", "d/renamed", "lnk/new", "d/missing/deeper/x", "d/new/x"]
show("start", names)
for step in ["file", "subdir", "rename"]:
    wait()
    show(step, names)
# The job's own creations, by absolute and relative names, and an exec of a name made at home.
fd = os.open(os.path.abspath("d/mine"), os.O_WRONLY | os.O_CREAT, 0o644)
os.close(fd)
os.chdir("d")
print("own", err(lambda: os.stat("mine")), err(lambda: os.stat("../d/mine")), err(lambda: os.stat("theirs")))
os.mkdir("mydir")
print("own", err(lambda: os.stat("mydir/none")), err(lambda: os.stat("mydir")))
print("own", err(lambda: subprocess.run(["./tool"])))
os.chdir("..")
wait()
print("exec", subprocess.run(["d/tool"], capture_output=True).stdout.decode().strip())
"#;

#[test]
fn names_made_at_home_or_by_the_job_are_found_after_a_listing() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("probes.py", PROBES);
    hosts.mkdir("d");
    hosts.write("d/old", "old");
    hosts.symlink("d", "lnk");
    // A dangling link whose target is missing in another directory: that directory is not listed as `d`.
    hosts.mkdir("e");
    hosts.write("e/other", "o");
    hosts.symlink("../e/none", "d/dangling");
    let changes: [&dyn Fn(); 4] = [
        &|| hosts.write("d/new", "new"),
        &|| {
            hosts.mkdir("d/sub");
            hosts.write("d/sub/x", "x");
        },
        &|| std::fs::rename(hosts.path("d/new"), hosts.path("d/renamed")).expect("rename"),
        &|| hosts.write_mode("d/tool", "#!/bin/sh\necho made at home\n", 0o755),
    ];
    let remote = hosts.cmd(&["python3", "probes.py"]).remote_while("", &changes);
    remote.assert_success();
    // stat, lstat, open, access, readlink.
    let expected = "\
start d/dangling ENOENT ok ENOENT False ../e/none
start d/old ok ok ok True EINVAL
start d/new ENOENT ENOENT ENOENT False ENOENT
start d/sub/x ENOENT ENOENT ENOENT False ENOENT
start d/renamed ENOENT ENOENT ENOENT False ENOENT
start lnk/new ENOENT ENOENT ENOENT False ENOENT
start d/missing/deeper/x ENOENT ENOENT ENOENT False ENOENT
start d/new/x ENOENT ENOENT ENOENT False ENOENT
file d/dangling ENOENT ok ENOENT False ../e/none
file d/old ok ok ok True EINVAL
file d/new ok ok ok True EINVAL
file d/sub/x ENOENT ENOENT ENOENT False ENOENT
file d/renamed ENOENT ENOENT ENOENT False ENOENT
file lnk/new ok ok ok True EINVAL
file d/missing/deeper/x ENOENT ENOENT ENOENT False ENOENT
file d/new/x ENOTDIR ENOTDIR ENOTDIR False ENOTDIR
subdir d/dangling ENOENT ok ENOENT False ../e/none
subdir d/old ok ok ok True EINVAL
subdir d/new ok ok ok True EINVAL
subdir d/sub/x ok ok ok True EINVAL
subdir d/renamed ENOENT ENOENT ENOENT False ENOENT
subdir lnk/new ok ok ok True EINVAL
subdir d/missing/deeper/x ENOENT ENOENT ENOENT False ENOENT
subdir d/new/x ENOTDIR ENOTDIR ENOTDIR False ENOTDIR
rename d/dangling ENOENT ok ENOENT False ../e/none
rename d/old ok ok ok True EINVAL
rename d/new ENOENT ENOENT ENOENT False ENOENT
rename d/sub/x ok ok ok True EINVAL
rename d/renamed ok ok ok True EINVAL
rename lnk/new ENOENT ENOENT ENOENT False ENOENT
rename d/missing/deeper/x ENOENT ENOENT ENOENT False ENOENT
rename d/new/x ENOENT ENOENT ENOENT False ENOENT
own ok ok ENOENT
own ENOENT ok
own ENOENT
exec made at home
";
    assert_eq!(remote.stdout(), expected, "{remote}");
}

/// Looks up `argv[1]` missing names in `d`, each by stat, open, access and statfs, and runs a missing program
/// by its absolute name (a shell's `$PATH` search, here by hand).
const MANY: &str = r#"
import os, sys
n = int(sys.argv[1])
for i in range(n):
    for f in (os.stat, lambda p: os.open(p, os.O_RDONLY), lambda p: os.access(p, os.F_OK) or os.stat(p),
              os.statvfs):
        try:
            f("d/missing%d" % i)
            sys.exit("found d/missing%d" % i)
        except FileNotFoundError:
            pass
    try:
        os.execv(os.path.abspath("d/prog%d" % i), ["x"])
    except FileNotFoundError:
        pass
print("ok")
"#;

/// The calls of a `--trace` file with a string argument that holds `text`: (all, those that went home).
fn lookups_of(trace: &Path, text: &str) -> (usize, usize) {
    let lines: Vec<_> = trace_lines(trace)
        .into_iter()
        .filter(|l| {
            l["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v.as_str().is_some_and(|s| s.contains(text))))
        })
        .collect();
    (lines.len(), lines.iter().filter(|l| l["where"] == "home").count())
}

#[test]
fn missing_names_in_a_listed_directory_cost_no_round_trip() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("many.py", MANY);
    hosts.mkdir("d");
    for i in 0..50 {
        hosts.write(&format!("d/present{i}"), "x");
    }
    let trace = hosts.scratch().join("listings.trace");
    let run = hosts
        .cmd(&["python3", "many.py", "40"])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("utf-8 path"))
        .remote();
    run.assert_success();
    assert_eq!(run.stdout(), "ok\n", "{run}");
    let (all, home) = lookups_of(&trace, "d/missing");
    assert_eq!(all, 200, "stat, open, access, stat and statfs of 40 names");
    assert_eq!(home, 1, "only the first lookup goes home: the listing answers the others");
    let (all, home) = lookups_of(&trace, "d/prog");
    assert_eq!((all, home), (40, 0), "the exec's lookups are answered by the same listing");
}

/// Calls whose arguments the kernel refuses (`EINVAL`) before it looks a path up, on missing names of a
/// directory already listed (a cached `ENOENT` must not answer them first), and `statfs("")`.
const ARGUMENTS: &str = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
import platform
SYS = {"statx": 291 if platform.machine() == "aarch64" else 332, "openat2": 437, "faccessat2": 439}
AT_FDCWD = -100
def sys(name, *args):
    r = libc.syscall(SYS[name], *args)
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
try:
    os.stat("d/first")
except FileNotFoundError:
    pass
buf = ctypes.create_string_buffer(512)
p = b"d/none"
print("statx", sys("statx", AT_FDCWD, p, 0, 0x7ff, buf))
print("statx reserved mask", sys("statx", AT_FDCWD, p, 0, ctypes.c_uint(0x80000000), buf))
print("statx both sync flags", sys("statx", AT_FDCWD, p, 0x6000, 0x7ff, buf))
print("statx follow flag", sys("statx", AT_FDCWD, p, 0x400, 0x7ff, buf))
print("faccessat2", sys("faccessat2", AT_FDCWD, p, 0, 0))
print("faccessat2 bad flag", sys("faccessat2", AT_FDCWD, p, 0, 0x400))
class How(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
print("openat2", sys("openat2", AT_FDCWD, p, ctypes.byref(How(0, 0, 0)), 24))
print("openat2 mode without O_CREAT", sys("openat2", AT_FDCWD, p, ctypes.byref(How(0, 0o644, 0)), 24))
for path in ["", "d/none"]:
    try:
        os.statvfs(path)
        print("statfs", repr(path), "ok")
    except OSError as e:
        print("statfs", repr(path), errno.errorcode[e.errno])
"#;

#[test]
fn the_kernels_argument_checks_come_before_a_listed_absence() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("arguments.py", ARGUMENTS);
    hosts.mkdir("d");
    hosts.write("d/present", "x");
    let native = hosts.native_copy();
    let both = hosts.cmd(&["python3", "arguments.py"]).check(&native);
    both.remote.assert_success();
    let expected = "\
statx ENOENT
statx reserved mask EINVAL
statx both sync flags EINVAL
statx follow flag EINVAL
faccessat2 ENOENT
faccessat2 bad flag EINVAL
openat2 ENOENT
openat2 mode without O_CREAT EINVAL
statfs '' ENOENT
statfs 'd/none' ENOENT
";
    assert_eq!(both.remote.stdout(), expected, "{}", both.remote);
}
