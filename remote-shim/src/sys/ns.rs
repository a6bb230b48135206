//! Namespaces and the job's init: forking into a new pid namespace, mounting its `/proc`, waiting for
//! children through a signalfd, signalling by a `/proc/PID` directory descriptor.

use super::check;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `clone(flags | SIGCHLD)` with fork semantics (the child runs on a copy of this stack). The caller must
/// be single-threaded, as for `fork`.
pub fn fork_with(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: a clone without CLONE_VM and with a null stack is a fork: the child gets a copy of the address
    // space and continues from here; the caller guarantees one thread, so locks and the allocator are
    // consistent in the child.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    check(ret).map(|p| p as libc::pid_t)
}

/// In a new mount namespace: stops mounts propagating out (new ones from the host still come in), then
/// mounts a `/proc` that shows this pid namespace.
pub fn mount_own_proc() -> io::Result<()> {
    let mount = |src: &CStr, target: &CStr, fstype: Option<&CStr>, flags: libc::c_ulong| {
        // SAFETY: every string is NUL-terminated and outlives the call; a null fstype and data are allowed.
        check(unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.map_or(std::ptr::null(), |f| f.as_ptr()),
                flags,
                std::ptr::null(),
            )
        } as libc::c_long)
        .map(drop)
    };
    mount(c"none", c"/", None, libc::MS_REC | libc::MS_SLAVE)?;
    mount(c"proc", c"/proc", Some(c"proc"), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC)
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initializes the zeroed set; sigaddset only writes into it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks SIGCHLD and returns a signalfd that reads it.
pub fn sigchld_fd() -> io::Result<OwnedFd> {
    let set = sigset(&[libc::SIGCHLD]);
    // SAFETY: `set` is an initialized sigset; a null old-set pointer is allowed.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } as libc::c_long)?;
    // SAFETY: `set` is an initialized sigset; -1 asks for a new descriptor.
    let fd =
        check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) } as libc::c_long)?;
    // SAFETY: the kernel returned a new descriptor that we alone own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Unblocks SIGCHLD (a forked child must not inherit the block through exec).
pub fn unblock_sigchld() {
    let set = sigset(&[libc::SIGCHLD]);
    // SAFETY: `set` is an initialized sigset; a null old-set pointer is allowed.
    unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

/// Empties a nonblocking signalfd.
pub fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 128 * 8];
    // SAFETY: the pointer and length describe `buf`, which is writable.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// `waitpid(pid, WNOHANG)` on any child (`pid` -1) or one: `Some((pid, status))` for one that ended.
pub fn reap(pid: libc::pid_t, block: bool) -> io::Result<Option<(libc::pid_t, i32)>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for the call's duration.
        let got = unsafe { libc::waitpid(pid, &mut status, if block { 0 } else { libc::WNOHANG }) };
        if got < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return Ok(None),
                _ => return Err(err),
            }
        }
        return Ok(if got == 0 { None } else { Some((got, status)) });
    }
}

/// Waits until one of `fds` is readable (or hung up); which ones are.
pub fn poll_readable<const N: usize>(fds: [BorrowedFd<'_>; N]) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
    // SAFETY: `pfds` is an array of N valid pollfds for the call's duration.
    check(unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, -1) } as libc::c_long)?;
    Ok(pfds.map(|p| p.revents != 0))
}

/// `pidfd_send_signal` on a pidfd or a `/proc/PID` directory descriptor (which names the process whatever
/// pid namespace the number was read in).
pub fn signal_process(proc_dir: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo takes integers only.
    check(unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, proc_dir.as_raw_fd(), sig, std::ptr::null::<u8>(), 0)
    })
    .map(drop)
}

/// `getppid()`.
pub fn parent_pid() -> libc::pid_t {
    // SAFETY: getppid takes nothing and cannot fail.
    unsafe { libc::getppid() }
}
