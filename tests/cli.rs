//! remote-shim's and home-agent's command lines: exit statuses (the program's, 128+N for a signal, 126/127
//! when it cannot start, as `env` reports them natively), clear failures for an unreachable or silent home
//! and for a wrong or missing token (with nothing touched at home), stdin/environment/cwd passing through,
//! and `--home local`, which needs neither root nor namespaces.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use homeward::{
    agent_bin, assert_same_tree, deterministic_env, run_with, shim_bin, skip_unless_root, Agent, Compare,
    Hosts, Run, Times, Token,
};

/// A failing start must be reported within this long.
const FAIL_WITHIN: Duration = Duration::from_secs(10);

/// remote-shim run plainly (no namespaces) in `dir`, with the deterministic environment.
fn plain_shim(dir: &Path, shim_args: &[&str], program: &[&str]) -> Run {
    let mut cmd = Command::new(shim_bin());
    cmd.args(shim_args).arg("--").args(program);
    cmd.env_clear().envs(deterministic_env(dir)).current_dir(dir);
    run_with(cmd, None, Duration::from_secs(60))
}

fn plain(dir: &Path, program: &[&str]) -> Run {
    let mut cmd = Command::new(program[0]);
    cmd.args(&program[1..]).env_clear().envs(deterministic_env(dir)).current_dir(dir);
    run_with(cmd, None, Duration::from_secs(60))
}

#[test]
fn home_local_runs_cat_without_root_or_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello through --home local\n").unwrap();
    let native = plain(dir.path(), &["cat", "hello.txt"]);
    native.assert_success();
    let local = plain_shim(dir.path(), &["--home", "local"], &["cat", "hello.txt"]);
    homeward::compare_with(&native, &local, &Compare::new().stderr());

    let local = plain_shim(dir.path(), &["--home", "local"], &["cp", "hello.txt", "copy.txt"]);
    local.assert_success();
    assert_eq!(
        std::fs::read(dir.path().join("copy.txt")).unwrap(),
        std::fs::read(dir.path().join("hello.txt")).unwrap()
    );
    let missing = plain_shim(dir.path(), &["--home", "local"], &["cat", "missing.txt"]);
    homeward::compare_with(&plain(dir.path(), &["cat", "missing.txt"]), &missing, &Compare::new().stderr());
}

#[test]
fn closed_port_fails_fast_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    assert_never_starts(dir.path(), &addr, "home was unreachable");
}

#[test]
fn silent_home_fails_within_ten_seconds_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts TCP connections (the kernel does, from the backlog) but never says anything.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    assert_never_starts(dir.path(), &addr, "home never answered");
    drop(listener);
}

/// Runs `touch ran` in `dir` with home at `addr` (and a token): remote-shim must fail in time, name the
/// address, and the program must not have run.
#[track_caller]
fn assert_never_starts(dir: &Path, addr: &str, why: &str) {
    let token = dir.join("token");
    std::fs::write(&token, "some-token\n").unwrap();
    let run = plain_shim(dir, &["--home", addr, "--token-file", token.to_str().unwrap()], &["touch", "ran"]);
    assert_failed_start(&run, addr);
    assert!(!dir.join("ran").exists(), "the program ran although {why}:\n{run}");
}

#[track_caller]
fn assert_failed_start(run: &Run, addr: &str) {
    assert!(!run.timed_out && run.code() != 0, "remote-shim should fail when home is unreachable:\n{run}");
    assert!(run.elapsed < FAIL_WITHIN, "remote-shim took {:?} (limit {FAIL_WITHIN:?}):\n{run}", run.elapsed);
    assert!(run.stderr().contains(addr), "remote-shim's message should name {addr}:\n{run}");
}

#[test]
fn agent_without_token_refuses_non_loopback_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let agent = |listen: &str| {
        let mut cmd = Command::new(agent_bin());
        cmd.args(["--listen", listen])
            .env_clear()
            .envs(deterministic_env(dir.path()))
            .current_dir(dir.path());
        cmd
    };
    let run = run_with(agent("0.0.0.0:0"), None, FAIL_WITHIN);
    assert!(!run.timed_out && run.code() != 0, "home-agent must refuse 0.0.0.0 without a token:\n{run}");
    assert!(!run.stdout().contains("listening on"), "{run}");
    assert!(!run.stderr().trim().is_empty(), "home-agent should say why it refuses:\n{run}");
    // Loopback without a token is fine: the refusal above is about the address, not a broken agent.
    let loopback = Agent::start(agent("127.0.0.1:0"));
    assert!(loopback.addr().ip().is_loopback());
}

#[test]
fn program_not_found_exits_127_like_env() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let native = hosts.native_copy();
    let missing = "homeward-no-such-program";
    let native_run = hosts.run_native(&native, ".", &["env", missing]);
    let remote = hosts.run_remote(".", &[missing]);
    homeward::compare_with(&native_run, &remote, &Compare::new());
    remote.assert_code(127);
    assert!(remote.stderr().contains(missing), "the message should name the program:\n{remote}");
    // Also by path, at home.
    let remote = hosts.run_remote(".", &["./not-here"]);
    homeward::compare_with(&hosts.run_native(&native, ".", &["env", "./not-here"]), &remote, &Compare::new());
}

#[test]
fn program_not_executable_exits_126_like_env() {
    skip_unless_root!();
    let hosts = Hosts::start();
    hosts.write_mode("not-executable.sh", "#!/bin/sh\necho should not run\n", 0o644);
    hosts.mkdir("a-directory");
    let native = hosts.native_copy();
    for program in ["./not-executable.sh", "./a-directory"] {
        let native_run = hosts.run_native(&native, ".", &["env", program]);
        let remote = hosts.run_remote(".", &[program]);
        homeward::compare_with(&native_run, &remote, &Compare::new());
        remote.assert_code(126);
    }
}

#[test]
fn exit_status_and_signals_pass_through() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let native = hosts.native_copy();
    for script in ["exit 0", "exit 1", "exit 7", "exit 255", "kill -TERM $$", "kill -KILL $$", "kill -INT $$"]
    {
        hosts.cmd(&["sh", "-c", script]).check(&native);
    }
    hosts.run_remote(".", &["sh", "-c", "exit 7"]).assert_code(7);
    let killed = hosts.run_remote(".", &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(
        killed.status.code(),
        Some(143),
        "remote-shim should exit 128+15, not die of the signal:\n{killed}"
    );
}

#[test]
fn home_scripts_run_by_their_interpreter() {
    skip_unless_root!();
    let hosts = Hosts::start();
    hosts.write_mode("bin/hello.sh", "#!/bin/sh\necho \"hello from $0 with $# args: $*\"\npwd\n", 0o755);
    let native = hosts.native_copy();
    hosts.cmd(&["./bin/hello.sh", "a", "b c"]).check_with(&native, &Compare::new().stderr());
    hosts.cmd(&["./hello.sh", "from bin"]).cwd("bin").check(&native);
}

#[test]
fn wrong_or_missing_token_touches_nothing_at_home() {
    skip_unless_root!();
    let hosts = Hosts::start();
    hosts.write("existing.txt", "untouched\n");
    let wrong = hosts.scratch().join("wrong-token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let before = hosts.snapshot();

    for token in [Token::File(wrong.clone()), Token::None] {
        let run = hosts.cmd(&["sh", "-c", "touch newfile; echo more >> existing.txt"]).token(token).remote();
        assert!(run.code() != 0, "remote-shim must fail without the right token:\n{run}");
        assert!(run.elapsed < FAIL_WITHIN, "refusal took {:?}:\n{run}", run.elapsed);
        assert_same_tree(&before, &hosts.snapshot(), Times::MtimeCtime);
    }
    let wrong_env =
        hosts.cmd(&["touch", "newfile"]).token(Token::None).env("HOMEWARD_TOKEN", "not-the-token").remote();
    assert!(wrong_env.code() != 0, "{wrong_env}");
    assert_same_tree(&before, &hosts.snapshot(), Times::MtimeCtime);

    // The same command with the right token does reach home: the checks above could have failed.
    hosts.cmd(&["touch", "newfile"]).remote().assert_success();
    assert!(hosts.exists("newfile"));
}

#[test]
fn token_from_the_environment() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let run =
        hosts.cmd(&["touch", "via-env"]).token(Token::None).env("HOMEWARD_TOKEN", hosts.token()).remote();
    run.assert_success();
    assert!(hosts.exists("via-env"), "{run}");
}

#[test]
fn stdin_environment_and_cwd_pass_through() {
    skip_unless_root!();
    let hosts = Hosts::start();
    hosts.write("sub/dir/file.txt", "in a subdirectory\n");
    let native = hosts.native_copy();
    let input: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    hosts.cmd(&["cat"]).stdin(&input).check(&native);
    hosts.cmd(&["sh", "-c", "cat > from-stdin.bin; wc -c from-stdin.bin"]).stdin(&input).check(&native);
    assert_eq!(hosts.read("from-stdin.bin"), input);
    hosts
        .cmd(&["sh", "-c", "echo to-stderr >&2; echo to-stdout"])
        .check_with(&native, &Compare::new().stderr());
    hosts.cmd(&["env"]).env("HOMEWARD_TEST_VAR", "a value with spaces").check(&native);
    for cwd in ["sub", "sub/dir"] {
        hosts.cmd(&["pwd"]).cwd(cwd).check(&native);
        hosts.cmd(&["/bin/pwd", "-P"]).cwd(cwd).check(&native);
        hosts.cmd(&["ls", "-a"]).cwd(cwd).check(&native);
    }
    hosts.cmd(&["cat", "file.txt"]).cwd("sub/dir").check(&native);
    hosts.cmd(&["sh", "-c", "umask; cd .. && pwd && ls"]).cwd("sub/dir").check(&native);
}

/// An old kernel, emulated: a launcher installs a plain seccomp filter that makes `seccomp(2)` fail with
/// ENOSYS (as on a kernel without it) and execs remote-shim, which must say so clearly and run nothing.
#[test]
fn kernel_without_seccomp_user_notification_is_a_clear_error() {
    homeward::require_tools!("gcc");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("no_seccomp.c");
    std::fs::write(
        &src,
        r#"
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_seccomp, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = 4, .filter = f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        perror("installing the test filter");
        return 99;
    }
    execv(argv[1], argv + 1);
    perror("exec");
    return 98;
}
"#,
    )
    .unwrap();
    let launcher = dir.path().join("no_seccomp");
    let built = Command::new("gcc").arg("-o").arg(&launcher).arg(&src).status().unwrap();
    assert!(built.success(), "compiling the launcher failed");

    let mut cmd = Command::new(&launcher);
    cmd.arg(shim_bin()).args(["--home", "local", "--", "touch", "ran"]);
    cmd.env_clear().envs(deterministic_env(dir.path())).current_dir(dir.path());
    let run = run_with(cmd, None, Duration::from_secs(60));
    assert_eq!(run.code(), 125, "remote-shim must fail as itself (125):\n{run}");
    assert!(
        run.stderr().contains("seccomp user notification"),
        "the message must name the missing feature:\n{run}"
    );
    assert!(!dir.path().join("ran").exists(), "the program ran without a supervisor:\n{run}");
}

/// The program starts with the signal mask it would have natively, and SIGPIPE not ignored (Rust ignores
/// it in remote-shim itself, and exec keeps ignored signals ignored): `a | head` must kill `a` silently.
#[test]
fn sigpipe_is_not_ignored_and_the_mask_is_native() {
    let dir = tempfile::tempdir().unwrap();
    let probe = ["sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status"];
    let field = |run: &Run, name: &str| {
        let line = run.stdout().lines().find(|l| l.starts_with(name)).map(str::to_string).unwrap_or_default();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap_or("0"), 16).unwrap()
    };
    let native = plain(dir.path(), &probe);
    native.assert_success();
    let shim = plain_shim(dir.path(), &["--home", "local"], &probe);
    shim.assert_success();
    let sigpipe = 1u64 << (libc::SIGPIPE - 1);
    assert_eq!(field(&shim, "SigIgn") & sigpipe, field(&native, "SigIgn") & sigpipe, "SIGPIPE:\n{shim}");
    assert_eq!(field(&shim, "SigBlk"), field(&native, "SigBlk"), "blocked signals:\n{native}\n{shim}");
}
