//! Starting the program: fork the job's init, which forks the program's process; that one confines itself
//! with the filter, hands the listener to the supervisor and execs.

use crate::filter::FdRange;
use crate::jobinit::{self, Go, JobInit};
use crate::sys::{self, ns, seccomp};
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The exit statuses of `env` and `timeout` when the program cannot start.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;
pub const EXIT_SHIM_FAILURE: i32 = 125;

pub struct Launched {
    /// The program's pid (this machine's).
    pub child: libc::pid_t,
    /// The program's pid as the job sees it (in the job's pid namespace).
    pub child_nspid: i32,
    pub listener: OwnedFd,
    pub init: JobInit,
    /// Init's events: how the processes it reaps ended (see `jobinit`).
    pub events: OwnedFd,
}

/// The job's init, forked and waiting for the go message (so nothing runs before home is reachable).
pub struct Pending {
    pub init: libc::pid_t,
    /// Init is pid 1 of a new pid namespace (see `jobinit`).
    pub in_pid_ns: bool,
    control: OwnedFd,
    events: OwnedFd,
    listener: OwnedFd,
}

/// Forks the job's init (in a new pid and mount namespace when this process may create them). Must be
/// called while this process has a single thread.
///
/// After [`Pending::start`], init forks the program's process, which enters a time namespace with the given
/// offsets if asked (on exec), raises its descriptor limit to cover the reserved range, moves its local
/// working directory to `local_cwd` (the exec staging directory; its home cwd is kept at home), installs the
/// filter (`with_clones` in a pid namespace, where clones must be notified), sends the listener to the
/// supervisor and executes `argv` with a `PATH` search. When the program cannot be started it prints why and
/// exits 127 (not found) or 126 (not executable), as `env` does.
pub fn spawn(
    argv: &[OsString],
    range: FdRange,
    filters: (&[libc::sock_filter], &[libc::sock_filter]),
    local_cwd: &Path,
) -> anyhow::Result<Pending> {
    let cargs: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("an argument contains a NUL byte"))?;
    let cwd = CString::new(local_cwd.as_os_str().as_bytes())?;
    let shim = std::process::id() as libc::pid_t;
    let mut in_pid_ns = true;
    loop {
        let (control, init_control) = sys::socketpair()?;
        let (events, init_events) = sys::socketpair()?;
        let (listener, program_listener) = sys::socketpair()?;
        let init = if in_pid_ns {
            match ns::fork_with(libc::CLONE_NEWPID | libc::CLONE_NEWNS) {
                Ok(pid) => pid,
                // Without the privilege the job shares this machine's pids.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EPERM | libc::EINVAL | libc::ENOSPC | libc::EUSERS)
                    ) =>
                {
                    in_pid_ns = false;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            sys::fork()?
        };
        if init == 0 {
            drop((control, events, listener));
            let side = jobinit::InitSide {
                control: init_control,
                events: init_events,
                program_listener,
                in_pid_ns,
                shim,
            };
            let filter = if in_pid_ns { filters.1 } else { filters.0 };
            let code = jobinit::init_main(side, |go, sock| child_main(&cargs, range, filter, &cwd, sock, go));
            sys::exit_now(code);
        }
        // Init's ends are init's alone: should it die, reads here see end of file.
        drop((init_control, init_events, program_listener));
        // In a namespace, init first says whether it could mount the namespace's /proc.
        let mut ready = [0u8; 1];
        if in_pid_ns && !(sys::read_exact(control.as_fd(), &mut ready) && ready[0] == 1) {
            tracing::debug!("the job's pid namespace has no /proc of its own; running without one");
            let _ = ns::reap(init, true);
            in_pid_ns = false;
            continue;
        }
        return Ok(Pending { init, in_pid_ns, control, events, listener });
    }
}

impl Pending {
    /// Lets init start the program and receives the program's listener.
    pub fn start(self, go: Go) -> anyhow::Result<Launched> {
        let (child_nspid, matched) = jobinit::go(self.control.as_fd(), go)
            .map_err(|e| anyhow::anyhow!("the job's init did not start the program: {e}"))?;
        let listener = sys::recv_fd(self.listener.as_fd())
            .map_err(|e| anyhow::anyhow!("the program's process did not start under the filter: {e}"))?;
        // Only for logs and traces in a namespace (signals go by the namespace's pid, see `JobInit::signal`).
        let child = if self.in_pid_ns { first_child(self.init).unwrap_or(0) } else { child_nspid };
        if self.in_pid_ns && go.pid.is_some() && !matched {
            tracing::debug!("the program could not take its deputy's pid; fork and wait4 show other pids");
        }
        let init = JobInit::new(self.init, self.in_pid_ns, self.in_pid_ns && matched, self.control);
        Ok(Launched { child, child_nspid, listener, init, events: self.events })
    }

    /// Ends init and the job before it started.
    pub fn abandon(self) {
        let _ = sys::kill(self.init, libc::SIGKILL);
        let _ = ns::reap(self.init, true);
    }
}

/// The first child of `pid` (this machine's pid), from `/proc`.
fn first_child(pid: libc::pid_t) -> Option<libc::pid_t> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

fn child_main(
    argv: &[CString],
    range: FdRange,
    filter: &[libc::sock_filter],
    cwd: &CString,
    sock: OwnedFd,
    go: Go,
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
    if let Some((mono, boot)) = go.timens {
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

/// Every process of the job: the live descendants of `root` (this machine's pid): its init, which is their
/// subreaper or their namespace's init, so orphans stay descendants; or remote-shim itself (see
/// [`orphans`]). Deputies of an in-process home agent, children of remote-shim, are not the job's.
pub fn job_pids(root: libc::pid_t) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if stat.contains("(homeward-deputy)") {
            continue;
        }
        let Some(ppid) = crate::procs::stat_fields(&stat).nth(1).and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut todo = vec![root as u32];
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

/// The job's processes left to remote-shim (their subreaper) after its init died.
pub fn orphans() -> Vec<u32> {
    job_pids(std::process::id() as libc::pid_t)
}
