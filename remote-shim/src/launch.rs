//! Starting the program: fork, confine the child with the filter, hand the listener to the parent, exec.

use crate::filter::FdRange;
use crate::sys::{self, seccomp};
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The exit statuses of `env` and `timeout` when the program cannot start.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;
pub const EXIT_SHIM_FAILURE: i32 = 125;

pub struct Launched {
    pub child: libc::pid_t,
    pub listener: OwnedFd,
}

/// A forked child waiting for the go-ahead (so nothing runs before home is reachable).
pub struct Pending {
    pub child: libc::pid_t,
    sock: OwnedFd,
}

/// The go-ahead message: a flag byte, then the time namespace offsets (monotonic, boottime) in ns.
const GO_LEN: usize = 17;

/// Forks the program's process. Must be called while this process has a single thread.
///
/// The child waits for [`Pending::start`]; then, if asked, enters a time namespace with the given offsets
/// (on exec), raises its descriptor limit to cover the reserved range, moves its local working directory to
/// `local_cwd` (the exec staging directory; its home cwd is kept at home), installs `filter`, sends the
/// listener to the parent and executes `argv` with a `PATH` search. When the program cannot be started it
/// prints why and exits 127 (not found) or 126 (not executable), as `env` does.
pub fn spawn(
    argv: &[OsString],
    range: FdRange,
    filter: &[libc::sock_filter],
    local_cwd: &Path,
) -> anyhow::Result<Pending> {
    let cargs: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("an argument contains a NUL byte"))?;
    let cwd = CString::new(local_cwd.as_os_str().as_bytes())?;
    let (parent_sock, child_sock) = sys::socketpair()?;
    let child = sys::fork()?;
    if child == 0 {
        drop(parent_sock);
        let code = child_main(&cargs, range, filter, &cwd, child_sock);
        sys::exit_now(code);
    }
    drop(child_sock);
    Ok(Pending { child, sock: parent_sock })
}

impl Pending {
    /// Lets the child go on (in a time namespace with these offsets, if given) and receives its listener.
    pub fn start(self, timens: Option<(i64, i64)>) -> anyhow::Result<Launched> {
        let mut go = [0u8; GO_LEN];
        if let Some((mono, boot)) = timens {
            go[0] = 1;
            go[1..9].copy_from_slice(&mono.to_le_bytes());
            go[9..17].copy_from_slice(&boot.to_le_bytes());
        }
        std::io::Write::write_all(&mut std::fs::File::from(self.sock.try_clone()?), &go)?;
        let listener = sys::recv_fd(self.sock.as_fd())
            .map_err(|e| anyhow::anyhow!("the program's process did not start under the filter: {e}"))?;
        Ok(Launched { child: self.child, listener })
    }
}

fn child_main(
    argv: &[CString],
    range: FdRange,
    filter: &[libc::sock_filter],
    cwd: &CString,
    sock: OwnedFd,
) -> i32 {
    let fail = |what: &str, e: std::io::Error| {
        eprintln!("remote-shim: {what}: {e}");
        EXIT_SHIM_FAILURE
    };
    if let Err(e) = sys::set_parent_death_signal(libc::SIGKILL) {
        return fail("cannot tie the program to the supervisor", e);
    }
    // Rust's runtime ignores SIGPIPE in remote-shim; the program must get the default (die on a closed pipe).
    sys::default_signal(libc::SIGPIPE);
    let mut go = [0u8; GO_LEN];
    if !sys::read_exact(sock.as_fd(), &mut go) {
        // The supervisor gave up (home unreachable): it says why.
        return EXIT_SHIM_FAILURE;
    }
    if go[0] == 1 {
        let mono = i64::from_le_bytes(go[1..9].try_into().unwrap_or_default());
        let boot = i64::from_le_bytes(go[9..17].try_into().unwrap_or_default());
        // Without the privilege to create a time namespace the job keeps this machine's clocks.
        if sys::unshare_time().is_ok() {
            let _ = std::fs::write("/proc/self/timens_offsets", crate::clock::offsets_text(mono, boot));
        }
    }
    match sys::raise_nofile(0, u64::from(range.end())) {
        Ok(n) if n >= u64::from(range.end()) => {}
        Ok(n) => {
            return fail(
                "descriptor limit too low",
                std::io::Error::other(format!("need {} have {n}", range.end())),
            );
        }
        Err(e) => return fail("cannot raise the descriptor limit", e),
    }
    if let Err(e) = sys::chdir(cwd) {
        return fail("cannot enter the staging directory", e);
    }
    if let Err(e) = seccomp::set_no_new_privs() {
        return fail("cannot set no_new_privs", e);
    }
    let listener = match seccomp::install_filter(filter) {
        Ok(l) => l,
        Err(e) => {
            return fail(
                "cannot install the seccomp filter (does this kernel have seccomp user notification?)",
                e,
            )
        }
    };
    if let Err(e) = sys::send_fd(sock.as_fd(), listener.as_fd()) {
        return fail("cannot hand the listener to the supervisor", e);
    }
    drop(listener);
    drop(sock);
    let err = sys::execvp(&argv[0], argv);
    let name = argv[0].to_string_lossy();
    eprintln!("remote-shim: {name}: {err}");
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => EXIT_NOT_FOUND,
        _ => EXIT_NOT_EXECUTABLE,
    }
}

/// Every live process descended from this one (which is a child subreaper, so orphans stay descendants),
/// except deputies of an in-process home agent (`--home local`) and their descendants.
pub fn job_pids(_root: libc::pid_t) -> Vec<u32> {
    let me = std::process::id();
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name may contain spaces and parentheses: fields start after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        if stat.contains("(homeward-deputy)") {
            continue;
        }
        let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok()) else { continue };
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut todo = vec![me];
    while let Some(p) = todo.pop() {
        if let Some(kids) = children.get(&p) {
            for &k in kids {
                out.push(k);
                todo.push(k);
            }
        }
    }
    out
}
