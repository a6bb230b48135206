//! Round trips the shim saves without changing any answer: a failed exec of a name home does not have is
//! asked once (then answered from the lease cache until home reports a change), and getcwd is answered
//! from each process's cwd path while home's lease on it holds. Each answer is compared with a native
//! run, and with home changed behind the program's back.

use homeward::{require_tools, skip_unless_root, Hosts};
use std::path::Path;

/// The calls of a `--trace` file naming `call` whose first argument is `arg`: (all, those that went home).
fn traced(trace: &Path, call: &str, arg: &str) -> (usize, usize) {
    let text = std::fs::read_to_string(trace).expect("the trace");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("\"call\":\"{call}\"")))
        .filter(|l| arg.is_empty() || l.contains(&format!("\"args\":[\"{arg}\"")))
        .collect();
    let home = lines.iter().filter(|l| l.contains("\"where\":\"home\"")).count();
    (lines.len(), home)
}

/// The first argument of each call `call` in a `--trace` file that went home.
fn home_args(trace: &Path, call: &str) -> Vec<String> {
    let text = std::fs::read_to_string(trace).expect("the trace");
    text.lines()
        .filter(|l| l.contains(&format!("\"call\":\"{call}\"")) && l.contains("\"where\":\"home\""))
        .filter_map(|l| l.strip_prefix("{\"args\":[\"")?.split('"').next().map(str::to_string))
        .collect()
}

/// The `home` column of a `--stats` row.
fn stats_home(stderr: &str, call: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(call)).then(|| cols.nth(1)?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {call} row in --stats:\n{stderr}"))
}

/// exec (in a new process each time, as a shell runs commands) of a missing name, of a name below a file,
/// of a file without execute permission, of a script, and `execvp`'s `$PATH` search through a missing directory:
/// the shell's statuses. `$1` is home's directory (the same path in the native run).
const EXECS: &str = r#"for i in 1 2 3 4; do "$1"/missing-prog 2>/dev/null; echo missing $?; done
for i in 1 2; do "$1"/data.txt/prog 2>/dev/null; echo below-a-file $?; done
for i in 1 2; do "$1"/not-executable 2>/dev/null; echo not-executable $?; done
for i in 1 2; do "$1"/script; echo script $?; done
PATH="$1/nothere:$PATH"
for i in 1 2 3; do env cat </dev/null; echo searched $?; done
"#;

#[test]
fn failed_execs_of_a_name_cost_one_round_trip_with_the_kernels_errors() {
    skip_unless_root!();
    let hosts = Hosts::start();
    hosts.write("data.txt", "data");
    hosts.write_mode("not-executable", "#!/bin/sh\necho ran\n", 0o644);
    hosts.write_mode("script", "#!/bin/sh\necho ran script\n", 0o755);
    hosts.write("execs.sh", EXECS);
    let native = hosts.native_copy();
    let trace = hosts.scratch().join("execs.jsonl");
    let home = hosts.home().display().to_string();
    let both = hosts
        .cmd(&["sh", "execs.sh", &home])
        .shim_arg("--stats")
        .shim_arg("--trace")
        .shim_arg(trace.to_str().unwrap())
        .check(&native);
    both.remote.assert_success();
    assert!(both.remote.stdout().contains("missing 127\n"), "{}", both.remote);
    let at = |name: &str| format!("{home}/{name}");
    assert_eq!(traced(&trace, "execve", &at("missing-prog")), (4, 1), "one round trip for four failures");
    assert_eq!(traced(&trace, "execve", &at("data.txt/prog")), (2, 1), "ENOTDIR is kept too");
    // The lookup of `missing-prog` brought the names of home's directory, which lack `nothere`.
    assert_eq!(traced(&trace, "execve", &at("nothere/cat")), (3, 0), "a $PATH search");
    // Not a lookup's answer: from the real exec each time.
    assert_eq!(traced(&trace, "execve", &at("not-executable")), (2, 2));
    // Every other name (the shells' and env's `$PATH` searches) went home at most once, as `--stats` counts.
    let names = home_args(&trace, "execve");
    assert_eq!(stats_home(&both.remote.stderr(), "execve"), names.len() as u64, "{}", both.remote);
    for name in &names {
        let again = [at("not-executable"), at("script")].contains(name);
        assert!(
            again || names.iter().filter(|n| *n == name).count() == 1,
            "{name} went home twice: {names:?}"
        );
    }
}

/// Waits for `go` after failing to run `tool` (the second failure answered from the cache); then runs it
/// again. `$1` is home's directory.
const APPEARS: &str = r#""$1"/tool 2>/dev/null; echo before $?
"$1"/tool 2>/dev/null; echo again $?
: > ready
while [ ! -e go ]; do sleep 0.02; done
"$1"/tool; echo after $?
"#;

#[test]
fn a_program_made_at_home_after_a_failed_exec_is_found() {
    skip_unless_root!();
    let hosts = Hosts::start();
    hosts.write("appears.sh", APPEARS);
    let home = hosts.home().display().to_string();
    let trace = hosts.scratch().join("appears.jsonl");
    let make_tool: &dyn Fn() = &|| hosts.write_mode("tool", "#!/bin/sh\necho made at home\n", 0o755);
    let remote = hosts
        .cmd(&["sh", "appears.sh", &home])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().unwrap())
        .remote_while("", &[make_tool]);
    remote.assert_success();
    assert_eq!(remote.stdout(), "before 127\nagain 127\nmade at home\nafter 0\n", "{remote}");
    // The second failure was answered from the cache, and the lease's report dropped it.
    assert_eq!(traced(&trace, "execve", &format!("{home}/tool")), (3, 2), "{remote}");
}

/// getcwd after chdir (relative, `..`, fchdir), in a forked child that changes its own cwd, in the parent
/// after the child's change, and after the program removes its own cwd.
const CWDS: &str = r#"
import os
def cwd(tag):
    try:
        print(tag, os.getcwd())
    except OSError as e:
        print(tag, "error", e.errno, e.strerror)
cwd("start"); cwd("again")
os.chdir("a/b"); cwd("a/b"); cwd("a/b again")
os.chdir(".."); cwd("..")
fd = os.open("b/c", os.O_RDONLY | os.O_DIRECTORY)
os.fchdir(fd); cwd("fchdir")
pid = os.fork()
if pid == 0:
    cwd("child")
    os.chdir("/"); cwd("child after chdir")
    os._exit(0)
os.waitpid(pid, 0)
cwd("parent after the child")
os.mkdir("doomed"); os.chdir("doomed"); cwd("doomed")
os.rmdir("../doomed"); cwd("removed"); cwd("removed again")
"#;

#[test]
fn getcwd_follows_chdir_forks_and_removal_as_natively() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.mkdir("a/b/c");
    hosts.write("cwds.py", CWDS);
    let native = hosts.native_copy();
    let trace = hosts.scratch().join("cwds.jsonl");
    let both = hosts
        .cmd(&["python3", "cwds.py"])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().unwrap())
        .check(&native);
    both.remote.assert_success();
    let out = both.remote.stdout();
    assert!(out.contains("removed error 2 No such file or directory"), "{}", both.remote);
    let (all, home) = traced(&trace, "getcwd", "");
    // Repeated ones (and the child's, which inherits its parent's path in the pid namespace) stay local.
    assert!(all >= 13 && all - home >= 4, "getcwd: {home} of {all} went home\n{}", both.remote);
}

/// Prints the cwd before and after home changes it behind the program's back.
const MOVED: &str = r#"
import os, sys, time
home = sys.argv[1]
def cwd(tag):
    try:
        print(tag, os.getcwd())
    except OSError as e:
        print(tag, "error", e.errno, e.strerror)
def wait(name):
    while not os.path.exists(os.path.join(home, name)):
        time.sleep(0.02)
os.chdir("top/mid/leaf"); cwd("before"); cwd("before again")
open(os.path.join(home, "ready1"), "w").close(); wait("go1")
cwd("after the rename")
os.chdir(os.path.join(home, "gone")); cwd("in gone")
open(os.path.join(home, "ready2"), "w").close(); wait("go2")
cwd("after removal")
"#;

#[test]
fn getcwd_sees_a_rename_above_and_a_removal_made_at_home() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.mkdir("top/mid/leaf");
    hosts.mkdir("gone");
    hosts.write("moved.py", MOVED);
    let home = hosts.home().display().to_string();
    let remote = std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["python3", "moved.py", &home]).remote());
        hosts.wait_for("ready1");
        std::fs::rename(hosts.path("top"), hosts.path("renamed")).expect("rename at home");
        hosts.write("go1", "");
        hosts.wait_for("ready2");
        std::fs::remove_dir(hosts.path("gone")).expect("rmdir at home");
        hosts.write("go2", "");
        run.join().expect("the remote run")
    });
    remote.assert_success();
    // What the kernel answers natively for a removed cwd.
    hosts.mkdir("native");
    let native = hosts
        .cmd(&["python3", "-c", "import os\nos.chdir('native'); os.rmdir('../native')\ntry:\n    os.getcwd()\nexcept OSError as e:\n    print('error', e.errno, e.strerror)"])
        .outside();
    native.assert_success();
    let expected = format!(
        "before {home}/top/mid/leaf\nbefore again {home}/top/mid/leaf\nafter the rename {home}/renamed/mid/leaf\n\
         in gone {home}/gone\nafter removal {}",
        native.stdout()
    );
    assert_eq!(remote.stdout(), expected, "{remote}");
}
