//! Behaviours found by running CPython's own suites and real tools under the shim, each as the kernel has
//! it natively (pwritev2's `RWF_APPEND`, `F_GETFL`, `exec 3<>` are checked at the end):
//! what the program lets go of without a notified call (a lock held through a descriptor it closed, since a
//! close is not notified and home's handle goes with the collector; the write access of a script it wrote
//! and closed and now runs), a unix socket reached by the name `getsockname` gives, `getpid` under a storm
//! of signals, and home files open both ways as a child's standard streams.

use homeward::{deterministic_env, require_tools, run_with, shim_bin, skip_unless_root, Hosts};
use std::process::Command;
use std::time::Duration;

/// Locks taken and dropped by closing the descriptor, then asked for by a child through another open: the
/// child gets each at once.
const LOCKS: &str = r#"
import fcntl, os
for name, take in [("flock", lambda fd: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)),
                   ("lockf", lambda fd: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))]:
    for round in range(3):
        fd = os.open("lock", os.O_RDWR | os.O_CREAT, 0o644)
        take(fd)
        os.close(fd)
        pid = os.fork()
        if pid == 0:
            other = os.open("lock", os.O_RDWR)
            try:
                take(other)
                os._exit(0)
            except OSError as e:
                os._exit(e.errno)
        _, status = os.waitpid(pid, 0)
        print(name, round, os.waitstatus_to_exitcode(status))
"#;

#[test]
fn a_lock_goes_with_the_descriptor_the_program_closed() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("locks.py", LOCKS);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["python3", "locks.py"]).check(&native);
    assert!(both.native.stdout().contains("flock 2 0\n") && both.native.stdout().contains("lockf 2 0\n"));
}

/// A server handing out its own address (`getsockname`, as Python's socketserver does): a client
/// connects to it.
const SOCKET_NAME: &str = r#"
import os, socket
s = socket.socket(socket.AF_UNIX)
s.bind(os.path.abspath("x.sock"))
s.listen(1)
c = socket.socket(socket.AF_UNIX)
c.connect(s.getsockname())
peer, _ = s.accept()
c.sendall(b"ping")
print(peer.recv(4))
"#;

#[test]
fn a_unix_socket_is_reached_by_the_name_getsockname_gives() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("sock.py", SOCKET_NAME);
    let run = hosts.cmd(&["python3", "sock.py"]).remote();
    run.assert_success();
    assert_eq!(run.stdout(), "b'ping'\n", "{run}");
}

/// `getpid` between timer signals that a handler without `SA_RESTART` catches, thousands of times: it
/// never fails (natively it cannot).
const PIDS: &str = r#"
import os, random, signal
signal.signal(signal.SIGALRM, lambda *_: None)
me = os.getpid()
bad = 0
for _ in range(3000):
    signal.setitimer(signal.ITIMER_REAL, 1e-6 + random.random() * 1e-5)
    if os.getpid() != me:
        bad += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print("wrong pids:", bad)
"#;

#[test]
fn getpid_never_fails_under_a_storm_of_signals() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("pids.py", PIDS);
    let run = hosts.cmd(&["python3", "pids.py"]).remote();
    run.assert_success();
    assert_eq!(run.stdout(), "wrong pids: 0\n", "{run}");
}

/// Writes a script, closes it and runs it at once (home on this machine: `--home local`): natively the
/// close ends the write access, so the exec is not refused with `ETXTBSY`.
#[test]
fn a_script_written_and_closed_runs_at_once() {
    require_tools!("python3");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let script = r##"
import os
p = os.path.abspath("s.sh")
for i in range(3):
    with open(p, "w") as f:
        f.write("#!/bin/sh\nexit 47\n")
    os.chmod(p, 0o755)
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(p, [p])
        except OSError as e:
            os._exit(e.errno)
    _, status = os.waitpid(pid, 0)
    print(i, os.waitstatus_to_exitcode(status))
"##;
    std::fs::write(dir.path().join("t.py"), script).expect("writing the script");
    let mut cmd = Command::new(shim_bin());
    cmd.args(["--home", "local", "--", "python3", "t.py"]);
    cmd.env_clear().envs(deterministic_env(dir.path())).current_dir(dir.path());
    let run = run_with(cmd, None, Duration::from_secs(60));
    run.assert_success();
    assert_eq!(run.stdout(), "0 47\n1 47\n2 47\n", "{run}");
}

/// Home files open for reading and writing handed to children as their standard streams (Python's
/// `stdin=`/`stdout=` a `TemporaryFile`, a shell's `<>`): the child reads the one and writes the other.
const BOTH_WAYS: &str = r#"
import os, subprocess, tempfile
with tempfile.TemporaryFile(dir=".") as inp, tempfile.TemporaryFile(dir=".") as out:
    inp.write(b"pear\napple\n")
    inp.seek(0)
    subprocess.run(["sort"], stdin=inp, stdout=out, check=True)
    out.seek(0)
    print(out.read())
with open("k.txt", "w") as f:
    f.write("plum\n")
print(subprocess.run("cat <> k.txt", shell=True, capture_output=True).stdout)
"#;

#[test]
fn home_files_open_both_ways_serve_as_a_childs_standard_streams() {
    skip_unless_root!();
    require_tools!("python3", "sort");
    let hosts = Hosts::start();
    hosts.write("both.py", BOTH_WAYS);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["python3", "both.py"]).check(&native);
    assert_eq!(both.native.stdout(), "b'apple\\npear\\n'\nb'plum\\n'\n");
}

/// pwritev2's `RWF_APPEND`, the open flags `F_GETFL` reports, and a shell's `exec 3<>` written through.
const FLAGS: &str = r#"
import fcntl, os, subprocess
with open("a", "w") as f:
    f.write("hello\n")
w = os.open("a", os.O_WRONLY)
print(os.pwritev(w, [b"XY"], 0, os.RWF_APPEND), os.lseek(w, 0, os.SEEK_CUR))
print(os.pwritev(w, [b"Z"], -1, os.RWF_APPEND), os.lseek(w, 0, os.SEEK_CUR))
print(oct(fcntl.fcntl(w, fcntl.F_GETFL)))
os.close(w)
print(open("a").read())
with open("b", "w") as f:
    f.write("hello\n")
subprocess.run("exec 3<> b; printf Z >&3; exec 3>&-", shell=True, check=True)
print(open("b").read())
"#;

#[test]
fn append_flags_and_descriptors_open_both_ways_write_where_the_kernel_does() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("flags.py", FLAGS);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["python3", "flags.py"]).check(&native);
    assert!(both.native.stdout().contains("hello\nXYZ\n") && both.native.stdout().contains("Zello"));
}

/// Fifos at home moved below the range (pumped aliases) whose feed can wait at home for ever: open both
/// ways (the job's own handle is a writer), or read while the writer's home handle waits for the collector.
/// (Each its own fifo: a feed that still waits once its alias is closed takes what is written next.)
const FIFO_ALIASES: &str = r#"
set -e
mkfifo f1 f2 f3 f4
exec 3<>f1; exec 3>&-
(echo late > f2) & read l < f2; echo "got $l"; wait
exec 3<>f3; echo x >&3; read l <&3; exec 3>&-; echo "got $l"
python3 -c 'import os; fd = os.open("f4", os.O_RDWR); os.dup2(fd, 5); os.close(5); os.close(fd)'
rm f1 f2 f3 f4
echo end
"#;

/// The job ends when its last process does, whatever its fifo aliases still wait for at home (remote-shim
/// waited for their feeds and never exited).
#[test]
fn a_job_that_read_fifos_through_aliases_ends_with_its_last_process() {
    skip_unless_root!();
    require_tools!("bash", "python3");
    let hosts = Hosts::start();
    hosts.write("fifos.sh", FIFO_ALIASES);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["bash", "fifos.sh"]).timeout(Duration::from_secs(30)).check(&native);
    assert_eq!(both.native.stdout(), "got late\ngot x\nend\n");
}

/// A lock that waits at home, interrupted by an alarm the program catches: without `SA_RESTART` the call
/// fails at the alarm (`flock -w`'s timeout, Python's handler raising at once); with it, the call goes on
/// until the lock is free and the handler's exception comes after.
const INTERRUPTED_LOCKS: &str = r#"
import fcntl, os, signal, subprocess, time
open("lk", "w").close()
hold = "import fcntl, os, time; fd = os.open('lk', os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); " \
    "fcntl.lockf(fd, fcntl.LOCK_EX); open('held', 'w').close(); time.sleep(3)"
holder = subprocess.Popen(["python3", "-c", hold])
while not os.path.exists("held"):
    time.sleep(0.05)
os.remove("held")
print("flock -w", subprocess.run(["flock", "-w", "0.3", "lk", "true"]).returncode)
class Alarm(Exception):
    pass
def on_alarm(sig, frame):
    raise Alarm()
signal.signal(signal.SIGALRM, on_alarm)
for restart in [False, True]:
    signal.siginterrupt(signal.SIGALRM, not restart)
    for take in ["flock", "lockf"]:
        fd = os.open("lk", os.O_RDWR)
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            if take == "flock":
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                fcntl.lockf(fd, fcntl.LOCK_EX)
            outcome = "locked"
        except Alarm:
            outcome = "alarm"
        waited = "until free" if time.monotonic() - start > 1.5 else "until the alarm"
        print("restart" if restart else "no restart", take, outcome, waited)
        os.close(fd)
        if restart:
            break
holder.wait()
"#;

/// A forwarded call waiting at home is interrupted by a signal the program catches, and restarted when the
/// handler asks for it (it waited for the holder, its handler running only when it returned).
#[test]
fn a_lock_waiting_at_home_is_interrupted_by_a_caught_signal() {
    skip_unless_root!();
    require_tools!("python3", "flock");
    let hosts = Hosts::start();
    hosts.write("locks.py", INTERRUPTED_LOCKS);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["python3", "locks.py"]).timeout(Duration::from_secs(60)).check(&native);
    let expected =
        "flock -w 1\nno restart flock alarm until the alarm\nno restart lockf alarm until the alarm\n\
                    restart flock alarm until free\n";
    assert_eq!(both.native.stdout(), expected);
}
