//! Processes and signals: what a deputy does to itself, and what the agent does to deputies and to home
//! processes (kill, pidfds, waiting).

use super::{cvt, cvt_long, owned};
use homeward_proto::Errno;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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
            // To the process (its only thread), not through a thread id a library may have cached: a
            // deputy may be a raw clone of the starter (`fork_sibling`).
            libc::kill(libc::getpid(), sig);
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

/// A new process whose parent is this process's parent (`clone(CLONE_PARENT)`), sharing nothing: 0 in
/// the new process, its pid in this one. Only for a single-threaded caller (the deputy starter): the new
/// process is a copy of the whole address space, and a lock another thread held would stay held in it.
pub fn fork_sibling() -> Result<libc::pid_t, Errno> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a raw clone without CLONE_VM and with a null stack pointer is fork(2) with another parent:
    // the child continues on its own copy of this stack. The caller is single-threaded, so no lock is held
    // by a thread the child lacks; the child never relies on a thread id the C library cached (see
    // `die_by_signal`).
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    cvt_long(pid).map(|pid| pid as libc::pid_t)
}

/// Puts this process in a process group of its own.
pub fn own_process_group() -> Result<(), Errno> {
    // SAFETY: integers only.
    cvt(unsafe { libc::setpgid(0, 0) }).map(drop)
}

/// Makes `fd` this process's descriptor `to` (closing what `to` was).
pub fn dup_onto(fd: BorrowedFd<'_>, to: i32) -> Result<(), Errno> {
    // SAFETY: integers only; the kernel closes `to` first if it is open.
    cvt(unsafe { libc::dup2(fd.as_raw_fd(), to) }).map(drop)
}

/// Sends `data` and the descriptor `fd` as one message on a unix socket (`SCM_RIGHTS`).
pub fn send_with_fd(sock: BorrowedFd<'_>, data: &[u8], fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
    let mut cbuf = [0u64; 4];
    // SAFETY: `msghdr` is a plain C struct; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    // SAFETY: msg_control points to `cbuf`, aligned for cmsghdr and larger than CMSG_SPACE(sizeof(int)), so
    // CMSG_FIRSTHDR returns a header inside it and CMSG_DATA has room for one int.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd.as_raw_fd());
    }
    // SAFETY: `msg` and the buffers it points to (the kernel only reads `data`) live until the call returns.
    let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    cvt_long(sent as i64).map(drop)
}

/// Receives one message of at most `max` bytes and the descriptor it carries, if any (close-on-exec). An
/// empty message without a descriptor is the peer's end of file.
pub fn recv_with_fd(sock: BorrowedFd<'_>, max: usize) -> Result<(Vec<u8>, Option<OwnedFd>), Errno> {
    let mut data = vec![0u8; max];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    let mut cbuf = [0u64; 4];
    // SAFETY: `msghdr` is a plain C struct; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: `msg` points to buffers that live until the call returns and that the kernel fills.
    let n = cvt_long(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) } as i64)?;
    data.truncate(n as usize);
    // SAFETY: the kernel filled `msg`; CMSG_FIRSTHDR returns null or a header inside `cbuf`.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: a non-null header lies within `cbuf` as the kernel wrote it.
    let fd = if cmsg.is_null()
        || unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) } != (libc::SOL_SOCKET, libc::SCM_RIGHTS)
    {
        None
    } else {
        // SAFETY: an SCM_RIGHTS message carries at least one int in its data area; the kernel installed
        // that descriptor in our table for us alone.
        Some(unsafe {
            OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()))
        })
    };
    Ok((data, fd))
}

/// Replaces what `/proc/self/cmdline` (and `ps`) shows with `title`, within the bytes the arguments took
/// at exec (`title` is cut to fit): written through `/proc/self/mem`, ending in a NUL followed by spaces, so
/// that the kernel shows the title alone (a last byte that is not NUL means "the process set its title").
pub fn set_cmdline(title: &[u8]) -> Result<(), Errno> {
    use std::os::unix::fs::FileExt;
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(|e| Errno::from_io(&e))?;
    // Fields after the command's closing parenthesis start at field 3; arg_start and arg_end are 48 and 49.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or(Errno::EIO)?;
    let mut fields = rest.split_whitespace().skip(48 - 3);
    let mut next = || fields.next().and_then(|f| f.parse::<u64>().ok()).ok_or(Errno::EIO);
    let (start, end) = (next()?, next()?);
    let room = usize::try_from(end.saturating_sub(start)).map_err(|_| Errno::EIO)?;
    if room < 2 {
        return Err(Errno(libc::ENOSPC as u16));
    }
    let shown = title.len().min(room - 2);
    let mut area = vec![b' '; room];
    area[..shown].copy_from_slice(&title[..shown]);
    area[shown] = 0;
    let mem =
        std::fs::OpenOptions::new().write(true).open("/proc/self/mem").map_err(|e| Errno::from_io(&e))?;
    mem.write_all_at(&area, start).map_err(|e| Errno::from_io(&e))
}

/// A connected pair of `AF_UNIX` `SOCK_SEQPACKET` sockets (close-on-exec).
pub fn socketpair_seqpacket() -> Result<(OwnedFd, OwnedFd), Errno> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a live array of two ints the kernel fills.
    cvt(unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    })?;
    // SAFETY: the kernel just made both descriptors, which nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// This process's effective user id (the one its file system calls run with).
pub fn euid() -> libc::uid_t {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Whether this process has capability number `cap` in its effective set (`/proc/self/status`, `CapEff`,
/// read once: the agent never changes its capabilities).
pub fn has_capability(cap: u32) -> bool {
    static EFFECTIVE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let caps = *EFFECTIVE.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
            .unwrap_or(0)
    });
    cap < 64 && caps & (1 << cap) != 0
}
