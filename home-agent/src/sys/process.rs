//! Processes and signals: what a deputy does to itself, and what the agent does to deputies and to home
//! processes (kill, pidfds, waiting).

use super::{cvt, cvt_long, owned};
use homeward_proto::Errno;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// Sets the calling thread's name (the process's `comm` when called by its only thread), at most 15 bytes.
pub fn set_name(name: &CStr) {
    // SAFETY: PR_SET_NAME copies at most 16 bytes from the NUL-terminated string, which outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Blocks every signal that can be blocked (all but SIGKILL and SIGSTOP) in the calling thread; returns
/// the full set, for [`signalfd`].
pub fn block_all_signals() -> Result<libc::sigset_t, Errno> {
    // SAFETY: `sigset_t` is a plain bit array; all-zero is a valid (empty) value that sigfillset overwrites.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is a live, writable sigset_t.
    cvt(unsafe { libc::sigfillset(&mut all) })?;
    // SAFETY: `all` is a live sigset_t the kernel only reads; a null old-set pointer is allowed.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(Errno(ret as u16));
    }
    Ok(all)
}

/// A `signalfd(2)` that reads the (blocked) signals of `mask`.
pub fn signalfd(mask: &libc::sigset_t) -> Result<OwnedFd, Errno> {
    // SAFETY: `mask` points at a live sigset_t the kernel copies; -1 asks for a new descriptor.
    let fd = cvt(unsafe { libc::signalfd(-1, mask, libc::SFD_CLOEXEC) })?;
    owned(fd.into())
}

/// The signal numbers of the records one read of a signalfd returns (blocks until there is one).
pub fn read_signals(fd: BorrowedFd<'_>) -> Result<Vec<i32>, Errno> {
    const RECORD: usize = std::mem::size_of::<libc::signalfd_siginfo>();
    let raw = super::read(fd, 8 * RECORD, None)?;
    Ok(raw
        .chunks_exact(RECORD)
        // ssi_signo is the record's first field, a u32 in native byte order.
        .map(|rec| u32::from_ne_bytes([rec[0], rec[1], rec[2], rec[3]]) as i32)
        .collect())
}

/// Waits until one of `fds` is readable or hung up; returns which ones are.
pub fn poll_readable<const N: usize>(fds: [BorrowedFd<'_>; N]) -> Result<[bool; N], Errno> {
    let mut polled = fds.map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
    // SAFETY: `polled` is a live array of N pollfd structs the kernel fills in; N is the count we pass.
    cvt(unsafe { libc::poll(polled.as_mut_ptr(), N as libc::nfds_t, -1) })?;
    Ok(polled.map(|p| p.revents != 0))
}

/// Sends all of `data` on a socket; never raises SIGPIPE (a gone peer is `EPIPE`).
pub fn send_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        // SAFETY: `data` has `data.len()` readable bytes, the count we pass; the kernel copies them.
        let sent =
            unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
        match cvt_long(sent as i64) {
            Ok(n) => data = &data[n as usize..],
            Err(e) if e.raw() == libc::EINTR => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Ends the process at once with `code` (no destructors, no atexit handlers, no buffered output).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process; it touches no memory of ours and never returns.
    unsafe { libc::_exit(code & 0xff) }
}

/// Ends the process as if killed by `sig` (its parent sees `WIFSIGNALED`), without a core dump. A signal
/// whose default action does not kill (stop, continue, ignore) or is out of range ends it with
/// `128 + sig` instead.
pub fn die_by_signal(sig: i32) -> ! {
    // SAFETY: PR_SET_DUMPABLE takes an integer: no core dump is written when the signal kills us.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) };
    let kills = (1..=libc::SIGRTMAX()).contains(&sig)
        && !matches!(
            sig,
            libc::SIGSTOP
                | libc::SIGTSTP
                | libc::SIGTTIN
                | libc::SIGTTOU
                | libc::SIGCONT
                | libc::SIGCHLD
                | libc::SIGURG
                | libc::SIGWINCH
        );
    if kills {
        // SAFETY: the process is single-threaded here and about to die: resetting the disposition to
        // the default and unblocking only `sig` cannot break an invariant of other code. `one` is a live
        // sigset_t; null old-value pointers are allowed.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut one: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut one);
            libc::sigaddset(&mut one, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
            libc::raise(sig);
        }
    }
    // Wrapping: any `sig` ends the process, none overflows (`exit_now` keeps the low 8 bits anyway).
    exit_now(sig.wrapping_add(128))
}

/// A `pidfd_open(2)` descriptor for child `pid`: signals and waits through it can never reach a process
/// that reused the number.
pub fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, Errno> {
    // SAFETY: integers only; the kernel returns a new descriptor or -1.
    owned(cvt_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?)
}

/// Sends `sig` to the process of `pidfd` (`ESRCH` once it has been reaped).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> Result<(), Errno> {
    // SAFETY: a null siginfo pointer makes the kernel fill it in as kill(2) would; the rest are integers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    cvt_long(ret).map(drop)
}

/// A state change of a child process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildEvent {
    /// Exited with this status (reaped).
    Exited(i32),
    /// Killed by this signal (reaped).
    Killed(i32),
    /// Stopped by this signal.
    Stopped(i32),
    Continued,
}

/// Waits (blocking) for the next state change of the child behind `pidfd`; an exit or death reaps it.
/// `ECHILD` when someone else reaped it first.
pub fn wait_pidfd(pidfd: BorrowedFd<'_>) -> Result<ChildEvent, Errno> {
    // SAFETY: `siginfo_t` is a plain C struct; all-zero is a valid value that the kernel overwrites.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let options = libc::WEXITED | libc::WSTOPPED | libc::WCONTINUED;
    // SAFETY: `info` is a live, writable siginfo_t; P_PIDFD takes the descriptor number as the id.
    cvt(unsafe { libc::waitid(libc::P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, options) })?;
    // SAFETY: after a successful waitid for a child state change, si_status is the member in use.
    let status = unsafe { info.si_status() };
    Ok(match info.si_code {
        libc::CLD_EXITED => ChildEvent::Exited(status),
        libc::CLD_KILLED | libc::CLD_DUMPED => ChildEvent::Killed(status),
        libc::CLD_STOPPED | libc::CLD_TRAPPED => ChildEvent::Stopped(status),
        _ => ChildEvent::Continued,
    })
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, sig: i32) -> Result<(), Errno> {
    // SAFETY: integers only.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// `tgkill(2)`: thread `tid` of thread group `tgid`.
pub fn tgkill(tgid: libc::pid_t, tid: libc::pid_t, sig: i32) -> Result<(), Errno> {
    // SAFETY: integers only.
    cvt_long(unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) }).map(drop)
}

/// This process's process group.
pub fn process_group() -> libc::pid_t {
    // SAFETY: getpgrp cannot fail and touches no memory.
    unsafe { libc::getpgrp() }
}
