//! Process transparency on two emulated hosts: home pids (deputies), signals sent at home reaching the
//! program, the program's signals to home processes executed at home, children and threads, and deputies
//! that end with the job (or with remote-shim killed by SIGKILL).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use homeward::{shim_bin, skip_unless_root, Compare, Hosts};

/// Deputies of the agent `agent`: (pid, cmdline) of its children named `homeward-deputy…`.
fn deputies(agent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("homeward-deputy") && parent_of(pid) == Some(agent) {
            out.push((pid, cmdline));
        }
    }
    out
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Waits until `path` holds a pid (written by the program), at most 30 s.
fn wait_for_pid(path: &Path) -> i32 {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(pid) = s.trim().parse() {
                return pid;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the program never wrote its pid to {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn home_sigterm_to_the_printed_pid_ends_the_program_with_143() {
    skip_unless_root!();
    let hosts = Hosts::start();
    std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["sh", "-c", "echo $$ > pid; exec sleep 60"]).remote());
        let pid = wait_for_pid(&hosts.path("pid"));
        let deps = deputies(hosts.agent_pid());
        assert!(
            deps.iter().any(|(p, _)| *p as i32 == pid),
            "the pid the program printed ({pid}) is not a live deputy at home; deputies: {deps:?}"
        );
        let killed = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(killed.success());
        let run = run.join().unwrap();
        assert_eq!(run.code(), 143, "killed at home by SIGTERM, the job must end with 143:\n{run}");
    });
    wait_until("deputies gone after the job", || deputies(hosts.agent_pid()).is_empty());
}

#[test]
fn a_signal_handler_runs_when_home_signals() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let script = r#"
import os, signal, time
got = []
signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
open("pid", "w").write(str(os.getpid()))
deadline = time.time() + 30
while not got and time.time() < deadline:
    time.sleep(0.02)
open("got", "w").write("usr1" if got else "nothing")
"#;
    hosts.write("handler.py", script);
    std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["python3", "handler.py"]).remote());
        let pid = wait_for_pid(&hosts.path("pid"));
        assert!(Command::new("kill").args(["-USR1", &pid.to_string()]).status().unwrap().success());
        run.join().unwrap().assert_success();
    });
    assert_eq!(hosts.read("got"), b"usr1", "the program's SIGUSR1 handler did not run");
}

/// The program kills a home process. remote-shim runs as `nobody`, the home process belongs to root and the
/// agent runs as root: a local kill would fail with EPERM, so success proves it ran at home.
#[test]
fn the_programs_kill_of_a_home_process_lands_at_home() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
    let token = hosts.scratch().join("token-for-nobody");
    std::fs::copy(hosts.token_file(), &token).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let nobody = |argv: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).args(argv).current_dir("/tmp");
        homeward::run_with(cmd, None, Duration::from_secs(60))
    };
    // Control: natively, nobody cannot signal root's process.
    let native = nobody(&["kill", "-TERM", &victim.id().to_string()]);
    assert_ne!(
        native.code(),
        0,
        "nobody could kill root's process natively; the test proves nothing:\n{native}"
    );
    let shim = shim_bin().display().to_string();
    let addr = hosts.addr().to_string();
    let through_shim = |argv: &[&str]| {
        let mut full = vec![shim.as_str(), "--home", &addr, "--token-file", token.to_str().unwrap(), "--"];
        full.extend_from_slice(argv);
        nobody(&full)
    };
    let remote = through_shim(&["kill", "-TERM", &victim.id().to_string()]);
    assert_eq!(remote.code(), 0, "the kill should have run at home with the agent's rights:\n{remote}");
    let status = victim.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM));
    // And home's errno comes back: a pid that does not exist at home.
    let missing = through_shim(&["sh", "-c", "kill -0 999999999 2>/dev/null; echo $?"]);
    assert_eq!(missing.stdout().trim(), "1", "kill of a missing home pid must fail:\n{missing}");
}

#[test]
fn timeout_pipelines_and_parallel_make_behave_as_natively() {
    skip_unless_root!();
    let hosts = Hosts::start();
    for i in 0..6 {
        hosts.write(&format!("src/m{i}.c"), format!("int f{i}(void) {{ return {i}; }}\n"));
    }
    hosts.write(
        "src/main.c",
        "#include <stdio.h>\nint f0(void),f1(void),f2(void),f3(void),f4(void),f5(void);\n\
         int main(void){printf(\"%d\\n\", f0()+f1()+f2()+f3()+f4()+f5());return 0;}\n",
    );
    hosts.write(
        "src/Makefile",
        "OBJS=main.o m0.o m1.o m2.o m3.o m4.o m5.o\napp: $(OBJS)\n\tgcc -o $@ $(OBJS)\n%.o: %.c\n\tgcc -c $< -o $@\n",
    );
    let native = hosts.native_copy();
    let how = Compare::new().stderr();
    hosts.cmd(&["timeout", "1", "sleep", "5"]).check_with(&native, &how);
    hosts
        .cmd(&["sh", "-c", "seq 1 5000 | sort -rn | head -3 && ls src | wc -l && echo $(( $$ > 0 ))"])
        .check_with(&native, &how);
    hosts.cmd(&["sh", "-c", "make -s -j4 >/dev/null && ./app"]).cwd("src").check_with(&native, &how);
    hosts.cmd(&["sh", "-c", "ls src/*.c | xargs -P 4 -n 1 wc -c | sort"]).check_with(&native, &how);
}

#[test]
fn python_subprocess_multiprocessing_and_64_threads() {
    skip_unless_root!();
    let hosts = Hosts::start();
    hosts.write(
        "job.py",
        r#"
import os, subprocess, threading
from multiprocessing import Pool

def work(i):
    with open(f"mp/{i}.txt", "w") as f:
        f.write(str(i * i))
    return open(f"mp/{i}.txt").read()

def thread(i):
    with open(f"th/{i}.txt", "w") as f:
        f.write("x" * i)
    assert os.path.getsize(f"th/{i}.txt") == i

if __name__ == "__main__":
    os.makedirs("mp", exist_ok=True)
    os.makedirs("th", exist_ok=True)
    print(subprocess.run(["sh", "-c", "ls -1 | sort | head -3"], capture_output=True, text=True).stdout, end="")
    with Pool(4) as p:
        print(p.map(work, range(16)))
    threads = [threading.Thread(target=thread, args=(i,)) for i in range(64)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(sorted(os.path.getsize(f"th/{n}") for n in os.listdir("th"))[-3:])
"#,
    );
    let native = hosts.native_copy();
    hosts.cmd(&["python3", "job.py"]).check_with(&native, &Compare::new().stderr());
    assert_eq!(hosts.read("mp/7.txt"), b"49");
}

#[test]
fn deputies_go_when_remote_shim_is_killed() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let agent = hosts.agent_pid();
    std::thread::scope(|s| {
        // `sleep` is a grandchild of remote-shim: as root the job's pid namespace dies with remote-shim's
        // init, grandchildren included.
        let run = s.spawn(|| hosts.cmd(&["sh", "-c", "echo $$ > pid; sleep 67; echo never"]).remote());
        wait_for_pid(&hosts.path("pid"));
        wait_until("a deputy at home", || !deputies(agent).is_empty());
        wait_until("the job's sleep", || !sleepers("67").is_empty());
        // The remote-shim process of this job: the one connected to our agent's port.
        let port = hosts.addr().port().to_string();
        let shim = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.starts_with(shim_bin().to_str().unwrap()) && c.contains(&port)
                })
            })
            .expect("the remote-shim process");
        assert!(Command::new("kill").args(["-KILL", &shim.to_string()]).status().unwrap().success());
        let run = run.join().unwrap();
        assert_eq!(run.code(), 137, "{run}");
    });
    wait_until("deputies gone after remote-shim was killed", || deputies(agent).is_empty());
    wait_until("the job's grandchild gone after remote-shim was killed", || sleepers("67").is_empty());
}

/// Processes running `sleep SECONDS`.
fn sleepers(seconds: &str) -> Vec<u32> {
    let wanted = format!("sleep\0{seconds}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted.as_bytes()))
        .collect()
}

/// With root, the job runs in its own pid namespace where each process has its deputy's pid: fork's return
/// value, waitpid's, the child's getpid, `/proc/self` and the deputy at home all agree.
#[test]
fn fork_wait_getpid_and_proc_self_agree_with_home() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let script = r#"
import os, threading, time
open("parent", "w").write(str(os.getpid()))
r, w = os.pipe()
p = os.fork()
if p == 0:
    os.close(r)
    os.write(w, str(os.getpid()).encode())
    os.close(w)
    while not os.path.exists("release"):
        time.sleep(0.02)
    os._exit(7)
os.close(w)
child_says = int(os.read(r, 100))
open("forked", "w").write(str(p))
waited, status = os.waitpid(p, 0)
ids = [p, child_says, waited, os.WEXITSTATUS(status), os.getpid(), int(os.readlink("/proc/self")), threading.get_native_id()]
open("ids", "w").write(" ".join(map(str, ids)))
"#;
    hosts.write("ids.py", script);
    let agent = hosts.agent_pid();
    std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["python3", "ids.py"]).remote());
        let parent = wait_for_pid(&hosts.path("parent"));
        let forked = wait_for_pid(&hosts.path("forked"));
        let deps = deputies(agent);
        for pid in [parent, forked] {
            assert!(
                deps.iter().any(|(p, _)| *p as i32 == pid),
                "pid {pid} (the program's, or its fork's return value) is not a live deputy at home: {deps:?}"
            );
        }
        hosts.write("release", "");
        run.join().unwrap().assert_success();
        let ids: Vec<i32> =
            String::from_utf8(hosts.read("ids")).unwrap().split(' ').map(|n| n.parse().unwrap()).collect();
        let [fork, child_getpid, waited, status, getpid, proc_self, gettid] = ids[..] else {
            panic!("{ids:?}")
        };
        assert_eq!(
            (fork, child_getpid, waited, status),
            (forked, forked, forked, 7),
            "fork, child getpid, wait"
        );
        assert_eq!((getpid, proc_self, gettid), (parent, parent, parent), "getpid, /proc/self, gettid");
    });
    wait_until("deputies gone after the job", || deputies(agent).is_empty());
}

/// SIGSTOP, SIGCONT and SIGKILL sent at home to a deputy, which cannot catch them, take effect on the
/// program through the deputy's fate.
#[test]
fn home_stop_cont_and_kill_reach_the_program() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let state = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_string))
    };
    let home_kill = |sig: &str, pid: i32| {
        assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    };
    std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["sh", "-c", "echo $$ > pid; exec sleep 61"]).remote());
        let pid = wait_for_pid(&hosts.path("pid"));
        wait_until("the job's sleep", || !sleepers("61").is_empty());
        let local = sleepers("61")[0];
        home_kill("-STOP", pid);
        wait_until("the program stopped", || state(local).as_deref() == Some("T"));
        home_kill("-CONT", pid);
        wait_until("the program continued", || state(local).as_deref() == Some("S"));
        home_kill("-KILL", pid);
        let run = run.join().unwrap();
        assert_eq!(run.code(), 137, "killed at home by SIGKILL, the job must end with 137:\n{run}");
    });
}

/// Runs `argv` on a terminal (a pty), types Ctrl-C once it printed `ready`; returns its exit status and
/// what it printed.
fn ctrl_c_on_a_terminal(argv: &[&str]) -> (i32, String) {
    let driver = r#"
import os, pty, signal, sys
signal.alarm(30)
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
out = b""
while b"ready" not in out:
    out += os.read(fd, 1024)
os.write(fd, b"\x03")
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
print(out.decode(errors="replace"))
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(driver).args(argv).current_dir("/tmp");
    let run = homeward::run_with(cmd, None, Duration::from_secs(60));
    let out = run.stdout();
    let (code, printed) = out.split_once('\n').unwrap_or((&out, ""));
    (
        code.trim().parse().unwrap_or_else(|_| panic!("the terminal driver failed:\n{run}")),
        printed.to_string(),
    )
}

/// Ctrl-C on remote-shim's terminal reaches the program as the kernel delivers it: its handler runs, or it
/// dies by SIGINT (130); remote-shim and the job's init survive it.
#[test]
fn ctrl_c_on_the_terminal_reaches_the_program() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let shim = shim_bin().display().to_string();
    let addr = hosts.addr().to_string();
    let token = hosts.token_file().display().to_string();
    let under_shim = |program: &[&str]| {
        let mut argv = vec![shim.as_str(), "--home", &addr, "--token-file", &token, "--"];
        argv.extend_from_slice(program);
        ctrl_c_on_a_terminal(&argv)
    };
    let handler = "import signal, sys, time\n\
        signal.signal(signal.SIGINT, lambda *a: (print('caught', flush=True), sys.exit(3)))\n\
        print('ready', flush=True)\n\
        time.sleep(30)\n";
    let (code, printed) = under_shim(&["python3", "-c", handler]);
    assert_eq!(code, 3, "the program's SIGINT handler should have run and exited 3:\n{printed}");
    assert!(printed.contains("caught"), "{printed}");
    let (code, printed) = under_shim(&["sh", "-c", "echo ready; sleep 30; echo never"]);
    assert_eq!(code, 130, "Ctrl-C should end the program by SIGINT:\n{printed}");
    assert!(!printed.contains("never"), "{printed}");
}

/// Forks once (which makes home start spares), then again after the test signalled every deputy at home
/// but the program's own (the spares waiting for the job's forks), and says how that child ended.
const FORK_AFTER_SIGNAL: &str = r#"
import os, time
# The job's first fork asks home for the spares.
first = os.fork()
if first == 0:
    os._exit(0)
os.waitpid(first, 0)
time.sleep(0.5)
with open("pid.tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename("pid.tmp", "pid")
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.01)
os.remove("go")
child = os.fork()
if child == 0:
    time.sleep(2)
    os._exit(0)
_, status = os.waitpid(child, 0)
print("signal", os.WTERMSIG(status)) if os.WIFSIGNALED(status) else print("exit", os.WEXITSTATUS(status))
"#;

/// A deputy started ahead of a fork (a spare) is the future process's: a signal sent to it at home before
/// the fork reaches the process the fork makes.
#[test]
fn a_signal_to_a_spare_deputy_reaches_the_process_that_takes_it() {
    skip_unless_root!();
    let hosts = Hosts::start();
    hosts.write("fork.py", FORK_AFTER_SIGNAL);
    let agent = hosts.agent_pid();
    let signal_spares = || {
        let own: u32 = String::from_utf8_lossy(&hosts.read("pid")).parse().expect("the program's pid");
        let spares: Vec<u32> =
            deputies(agent).into_iter().map(|(pid, _)| pid).filter(|&pid| pid != own).collect();
        assert!(!spares.is_empty(), "no spare deputies at home: {:?}", deputies(agent));
        for pid in spares {
            // (The first child's deputy may be ending: it is gone, or its signal is no news.)
            // SAFETY: kill takes integers only.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        // The deputies forward the signals to the agent, which reports them to the shim.
        std::thread::sleep(Duration::from_millis(300));
    };
    let remote = hosts.cmd(&["python3", "fork.py"]).remote_while("", &[&signal_spares]);
    remote.assert_success();
    assert_eq!(remote.stdout(), format!("signal {}\n", libc::SIGTERM), "{remote}");
}
