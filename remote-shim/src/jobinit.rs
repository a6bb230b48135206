//! The job's init: the parent of the program and the reaper of the job's orphans.
//!
//! Where remote-shim may (root), init is pid 1 of a new pid namespace with its own `/proc`, and each
//! process of the job gets the pid of its deputy at home: before a fork goes on, the supervisor has init
//! set the namespace's `ns_last_pid` to the deputy's pid minus one (as CRIU does). fork's return value,
//! wait4's, `/proc/self` and getpid then agree with home. Clones are serialized for this: each prepare first
//! waits until the previous clone has taken its pid. When a pid is taken in the namespace already, the
//! process gets another one; getpid still answers home's (see `syscalls::process`).
//!
//! Without the privilege, init is a plain child subreaper and pids are this machine's.
//!
//! Init reports how each child it reaps ended (the program, and the orphans it inherits) on the events
//! socket. When the supervisor closes the control socket, init exits and the kernel kills whatever is left
//! in its namespace; when remote-shim dies, init dies (parent-death signal), and with it the job.
//!
//! Control protocol (supervisor → init): after the go message (see [`Go`]), 9-byte requests, a kind and a
//! little-endian i64: [`PREPARE`] a target (0 for a thread), or [`CANCEL`] the last prepare; 16-byte
//! replies, two little-endian i64: the pid the previous prepared clone took (0 when none was prepared, -1
//! when none was taken within [`CLONE_WAIT`]) and 1 if the target was set.
//! Events (init → supervisor): 8 bytes, the ended child's pid (in init's namespace) and its wait status.

use crate::sys::{self, ns};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Request kind: prepare the next clone.
const PREPARE: u8 = b'p';
/// Request kind: the prepared clone will not happen (its caller was interrupted); nothing to wait for.
const CANCEL: u8 = b'c';
/// How long a prepare waits for the previous clone to take its pid (a fork of a large process copies its
/// page tables first). After that, pids are no longer matched: which pid the slow clone takes is unknown.
const CLONE_WAIT: Duration = Duration::from_secs(1);
const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

/// The go message: time namespace offsets (monotonic, boottime) if the job gets one, and the pid the
/// program should take (its deputy's).
#[derive(Debug, Clone, Copy, Default)]
pub struct Go {
    pub timens: Option<(i64, i64)>,
    pub pid: Option<i32>,
}

pub const GO_LEN: usize = 25;

impl Go {
    fn encode(&self) -> [u8; GO_LEN] {
        let mut b = [0u8; GO_LEN];
        if let Some((mono, boot)) = self.timens {
            b[0] = 1;
            b[1..9].copy_from_slice(&mono.to_le_bytes());
            b[9..17].copy_from_slice(&boot.to_le_bytes());
        }
        b[17..25].copy_from_slice(&i64::from(self.pid.unwrap_or(0)).to_le_bytes());
        b
    }

    fn decode(b: &[u8; GO_LEN]) -> Go {
        let i64_at = |i: usize| i64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let pid = i64_at(17) as i32;
        Go { timens: (b[0] == 1).then(|| (i64_at(1), i64_at(9))), pid: (pid > 0).then_some(pid) }
    }
}

/// The supervisor's handle on init.
pub struct JobInit {
    /// Init's pid (this machine's).
    pub pid: libc::pid_t,
    /// Init is pid 1 of its own pid namespace, with its own `/proc`.
    pub in_pid_ns: bool,
    /// Clones take the pid asked for (the namespace and `ns_last_pid` work).
    matching: AtomicBool,
    control: Mutex<Control>,
}

struct Control {
    fd: Option<OwnedFd>,
    /// The pid the last prepared clone was to take.
    last_target: Option<u32>,
}

impl JobInit {
    pub fn new(pid: libc::pid_t, in_pid_ns: bool, matching: bool, control: OwnedFd) -> JobInit {
        JobInit {
            pid,
            in_pid_ns,
            matching: AtomicBool::new(matching),
            control: Mutex::new(Control { fd: Some(control), last_target: None }),
        }
    }

    /// Whether processes get their deputy's pid.
    pub fn matching(&self) -> bool {
        self.matching.load(Ordering::Relaxed)
    }

    /// Makes the next clone take pid `target` (`None`: a thread, any pid) and calls `proceed` (which lets
    /// the clone go on) while no other clone can be prepared; when `proceed` fails the clone is taken for
    /// cancelled. Returns `proceed`'s result and, if the previous prepared clone took another pid than it
    /// was to, (that pid, the one it took).
    pub fn before_clone(
        &self,
        target: Option<u32>,
        proceed: impl FnOnce() -> io::Result<()>,
    ) -> (io::Result<()>, Option<(u32, u32)>) {
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let reply = control.fd.as_ref().map(|fd| request(fd.as_fd(), PREPARE, target.map_or(0, i64::from)));
        let (took, set) = match reply {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::warn!(cause = %e, "the job's init does not answer; pids are no longer home's");
                self.matching.store(false, Ordering::Relaxed);
                (0, 0)
            }
            None => (0, 0),
        };
        if took < 0 {
            tracing::debug!("a clone did not take its pid in time; pids are no longer home's");
            self.matching.store(false, Ordering::Relaxed);
        }
        let moved = match control.last_target {
            Some(t) if took > 0 && took as u32 != t => Some((t, took as u32)),
            _ => None,
        };
        control.last_target = if set == 1 { target } else { None };
        let proceeded = proceed();
        if proceeded.is_err() {
            control.last_target = None;
            if let Some(fd) = control.fd.as_ref() {
                let _ = request(fd.as_fd(), CANCEL, 0);
            }
        }
        (proceeded, moved)
    }

    /// `/proc/PID` of the job's namespace (only when it has one).
    fn ns_proc(&self, pid: i32) -> String {
        format!("/proc/{}/root/proc/{pid}", self.pid)
    }

    /// Whether `pid`, as the job sees pids, is a process or thread of the job's namespace.
    pub fn ns_has(&self, pid: i32) -> bool {
        pid > 0 && std::fs::metadata(self.ns_proc(pid)).is_ok()
    }

    /// Whether process group `pgid`, as the job sees pids, has a member in the job's namespace.
    pub fn ns_has_group(&self, pgid: i32) -> bool {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/root/proc", self.pid)) else { return false };
        dir.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok())).any(|e| {
            std::fs::read_to_string(e.path().join("stat")).ok().is_some_and(|stat| {
                crate::procs::stat_fields(&stat).nth(2).and_then(|f| f.parse::<i32>().ok()) == Some(pgid)
            })
        })
    }

    /// Sends `sig` to the process that has pid `pid` in the job's namespace.
    pub fn signal(&self, pid: i32, sig: i32) -> io::Result<()> {
        let dir = std::fs::File::open(self.ns_proc(pid))?;
        ns::signal_process(dir.as_fd(), sig)
    }

    /// Ends init (and, in its namespace, whatever is left of the job) and reaps it.
    pub fn finish(&self) {
        self.control.lock().unwrap_or_else(|p| p.into_inner()).fd.take();
        let _ = ns::reap(self.pid, true);
    }
}

fn request(fd: std::os::fd::BorrowedFd<'_>, kind: u8, value: i64) -> io::Result<(i64, i64)> {
    let mut msg = [0u8; 9];
    msg[0] = kind;
    msg[1..].copy_from_slice(&value.to_le_bytes());
    sys::write_all(fd, &msg)?;
    read_pair(fd)
}

fn read_pair(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<(i64, i64)> {
    let mut reply = [0u8; 16];
    if !sys::read_exact(fd, &mut reply) {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    let a = i64::from_le_bytes(reply[..8].try_into().unwrap_or_default());
    let b = i64::from_le_bytes(reply[8..].try_into().unwrap_or_default());
    Ok((a, b))
}

/// Sends the go message; returns (the program's pid in init's namespace, whether it got the asked pid).
pub fn go(control: std::os::fd::BorrowedFd<'_>, go: Go) -> io::Result<(i32, bool)> {
    sys::write_all(control, &go.encode())?;
    let (pid, matched) = read_pair(control)?;
    Ok((pid as i32, matched == 1))
}

/// Reads init's events: (pid in the job's namespace, wait status); `None` once init is gone.
pub fn next_event(events: std::os::fd::BorrowedFd<'_>) -> Option<(i32, i32)> {
    let mut ev = [0u8; 8];
    if !sys::read_exact(events, &mut ev) {
        return None;
    }
    Some((
        i32::from_le_bytes(ev[..4].try_into().unwrap_or_default()),
        i32::from_le_bytes(ev[4..].try_into().unwrap_or_default()),
    ))
}

/// Init's side: what it was given when forked.
pub struct InitSide {
    pub control: OwnedFd,
    pub events: OwnedFd,
    /// The program's end of the socket its listener is sent on: only the program keeps it open, so a program
    /// that fails before sending is seen (end of file) instead of awaited forever.
    pub program_listener: OwnedFd,
    pub in_pid_ns: bool,
    /// remote-shim's pid, to notice that it died before the parent-death signal was armed.
    pub shim: libc::pid_t,
}

/// Init's main: sets up, forks the program with `start_program` (which never returns) once the go message
/// came, then reaps and serves prepares until the control socket closes. Returns init's exit status.
pub fn init_main(side: InitSide, start_program: impl FnOnce(Go, OwnedFd) -> i32) -> i32 {
    // In its own pid namespace init's parent has no pid (0); a remote-shim that died before the signal was
    // armed is noticed anyway: the go message never comes.
    let orphaned = !side.in_pid_ns && ns::parent_pid() != side.shim;
    if sys::set_parent_death_signal(libc::SIGKILL).is_err() || orphaned {
        return crate::launch::EXIT_SHIM_FAILURE;
    }
    if side.in_pid_ns {
        // Without its own /proc the namespace would show the job wrong pids: remote-shim starts another
        // init without namespaces instead (see `launch::spawn`).
        let mounted = ns::mount_own_proc();
        let _ = sys::write_all(side.control.as_fd(), &[u8::from(mounted.is_ok())]);
        if let Err(e) = mounted {
            tracing::debug!(cause = %e, "cannot mount the job's /proc");
            return crate::launch::EXIT_SHIM_FAILURE;
        }
    } else if let Err(e) = sys::set_child_subreaper() {
        eprintln!("remote-shim: cannot become the job's subreaper: {e}");
        return crate::launch::EXIT_SHIM_FAILURE;
    }
    let sigchld = match ns::sigchld_fd() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("remote-shim: cannot watch the job's processes: {e}");
            return crate::launch::EXIT_SHIM_FAILURE;
        }
    };
    let mut go = [0u8; GO_LEN];
    if !sys::read_exact(side.control.as_fd(), &mut go) {
        // The supervisor gave up (home unreachable): it says why.
        return crate::launch::EXIT_SHIM_FAILURE;
    }
    let go = Go::decode(&go);
    let mut last_pid = LastPid::open(side.in_pid_ns);
    let matched = go.pid.is_some_and(|p| last_pid.set_next(p as u32));
    let program = match sys::fork() {
        Ok(0) => {
            drop(side.control);
            drop(side.events);
            drop(sigchld);
            ns::unblock_sigchld();
            sys::exit_now(start_program(go, side.program_listener));
        }
        Ok(pid) => {
            drop(side.program_listener);
            pid
        }
        Err(e) => {
            eprintln!("remote-shim: cannot start the program's process: {e}");
            return crate::launch::EXIT_SHIM_FAILURE;
        }
    };
    // Signals for the job's process group (a terminal's Ctrl-C, Ctrl-Z, hangup) are the program's business:
    // init must outlive them to reap the job. (Pid 1 of a namespace ignores them anyway.)
    for sig in [
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGHUP,
        libc::SIGTERM,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ] {
        sys::ignore_signal(sig);
    }
    let reply = [i64::from(program).to_le_bytes(), i64::from(matched).to_le_bytes()].concat();
    if sys::write_all(side.control.as_fd(), &reply).is_err() {
        return crate::launch::EXIT_SHIM_FAILURE;
    }
    loop {
        let Ok([request, child]) = ns::poll_readable([side.control.as_fd(), sigchld.as_fd()]) else {
            continue;
        };
        if child {
            ns::drain(sigchld.as_fd());
            while let Ok(Some((pid, status))) = ns::reap(-1, false) {
                let ev = [pid.to_le_bytes(), status.to_le_bytes()].concat();
                let _ = sys::write_all(side.events.as_fd(), &ev);
            }
        }
        if request {
            let mut msg = [0u8; 9];
            if !sys::read_exact(side.control.as_fd(), &mut msg) {
                // The job is over, or remote-shim is gone.
                return 0;
            }
            let target = i64::from_le_bytes(msg[1..].try_into().unwrap_or_default());
            if msg[0] == CANCEL {
                last_pid.pending = None;
                if sys::write_all(side.control.as_fd(), &[0u8; 16]).is_err() {
                    return 0;
                }
                continue;
            }
            let took = last_pid.wait_previous();
            let set = msg[0] == PREPARE && target > 0 && last_pid.set_next(target as u32);
            if !set {
                last_pid.expect_change();
            }
            let reply = [took.to_le_bytes(), i64::from(set).to_le_bytes()].concat();
            if sys::write_all(side.control.as_fd(), &reply).is_err() {
                return 0;
            }
        }
    }
}

/// The namespace's `ns_last_pid`, and the value a prepared clone will move it from.
struct LastPid {
    file: Option<std::fs::File>,
    /// Set by a prepare: the clone that follows changes the value from this.
    pending: Option<u32>,
}

impl LastPid {
    fn open(in_pid_ns: bool) -> LastPid {
        let file =
            in_pid_ns.then(|| std::fs::OpenOptions::new().read(true).write(true).open(NS_LAST_PID).ok());
        LastPid { file: file.flatten(), pending: None }
    }

    fn read(&self) -> Option<u32> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 16];
        let n = self.file.as_ref()?.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
    }

    /// Makes the next pid taken in the namespace `pid`.
    fn set_next(&mut self, pid: u32) -> bool {
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.file else { return false };
        let ok = pid > 1 && file.write_at((pid - 1).to_string().as_bytes(), 0).is_ok();
        self.pending = ok.then_some(pid - 1);
        ok
    }

    /// The next clone (a thread's) moves the value from what it is now.
    fn expect_change(&mut self) {
        self.pending = self.read();
    }

    /// Waits until the prepared clone moved the value: the pid it took; 0 when none was prepared, -1 when
    /// none was taken within [`CLONE_WAIT`].
    fn wait_previous(&mut self) -> i64 {
        let Some(from) = self.pending.take() else { return 0 };
        let start = Instant::now();
        let mut spins = 0u32;
        while start.elapsed() < CLONE_WAIT {
            match self.read() {
                Some(now) if now != from => return i64::from(now),
                None => return -1,
                _ => {}
            }
            spins += 1;
            if spins < 50 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        -1
    }
}
