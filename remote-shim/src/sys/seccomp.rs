//! seccomp: installing the filter with a listener, and the user-notification ioctls.

use super::check;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (Linux 6.6): wake the supervisor on the same CPU, about halving the
/// round trip. Not in libc yet.
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// One notification as the kernel hands it over.
pub type Notif = libc::seccomp_notif;

/// Checks that the kernel's notification structs have the sizes this build was compiled with.
pub fn check_notif_sizes() -> io::Result<()> {
    let mut sizes = libc::seccomp_notif_sizes { seccomp_notif: 0, seccomp_notif_resp: 0, seccomp_data: 0 };
    // SAFETY: SECCOMP_GET_NOTIF_SIZES writes one `seccomp_notif_sizes` to the pointer we pass.
    let ret =
        unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_GET_NOTIF_SIZES, 0, &mut sizes as *mut _) };
    check(ret)?;
    let ok = usize::from(sizes.seccomp_notif) == std::mem::size_of::<libc::seccomp_notif>()
        && usize::from(sizes.seccomp_notif_resp) == std::mem::size_of::<libc::seccomp_notif_resp>();
    if ok {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "kernel seccomp notification sizes ({} / {}) differ from this build's ({} / {})",
            sizes.seccomp_notif,
            sizes.seccomp_notif_resp,
            std::mem::size_of::<libc::seccomp_notif>(),
            std::mem::size_of::<libc::seccomp_notif_resp>()
        )))
    }
}

/// `prctl(PR_SET_NO_NEW_PRIVS)`, required to install a filter without CAP_SYS_ADMIN.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: the prctl takes integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long).map(drop)
}

/// Installs `program` as this thread's seccomp filter with a notification listener and returns the listener.
/// `WAIT_KILLABLE_RECV` is asked for when the kernel has it (6.0+): once the supervisor has received a
/// notification, only a fatal signal interrupts the call, so a forwarded write is never executed twice.
pub fn install_filter(program: &[libc::sock_filter]) -> io::Result<OwnedFd> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| io::Error::other("seccomp filter too long"))?,
        filter: program.as_ptr().cast_mut(),
    };
    let base = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
    for flags in [base | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, base] {
        // SAFETY: `prog` points to `program`, which outlives the call; the kernel copies the instructions and
        // keeps no pointer to them after seccomp(2) returns.
        let ret = unsafe {
            libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &prog as *const _)
        };
        match check(ret) {
            // SAFETY: with NEW_LISTENER the return value is a fresh descriptor that we alone own.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && flags != base => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// Asks the kernel to wake the supervisor synchronously; harmless failure on older kernels.
pub fn set_sync_wakeup(listener: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the ioctl takes its flags by value.
    let ret = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
            SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// Blocks until a notification arrives. `ENOENT` means the target died before we received it: try again.
pub fn recv(listener: BorrowedFd<'_>) -> io::Result<Notif> {
    // SAFETY: `seccomp_notif` is plain data; the kernel requires it zeroed on input.
    let mut notif: Notif = unsafe { std::mem::zeroed() };
    // SAFETY: `notif` is a valid, writable `seccomp_notif` whose size we checked against the kernel's.
    let ret = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut notif) };
    check(ret as libc::c_long)?;
    Ok(notif)
}

/// How a notification is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The call returns this value.
    Value(i64),
    /// The call fails with this errno.
    Errno(i32),
    /// The kernel executes the call itself, as if it had not been intercepted.
    Continue,
}

/// Answers notification `id`. `ENOENT` means the target is gone (killed, or interrupted by a fatal signal).
pub fn respond(listener: BorrowedFd<'_>, id: u64, reply: Reply) -> io::Result<()> {
    let (val, error, flags) = match reply {
        Reply::Value(v) => (v, 0, 0),
        Reply::Errno(e) => (0, -e, 0),
        Reply::Continue => (0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
    };
    let mut resp = libc::seccomp_notif_resp { id, val, error, flags };
    // SAFETY: `resp` is a valid `seccomp_notif_resp` for the call's duration.
    let ret = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    check(ret as libc::c_long).map(drop)
}

/// Whether notification `id` is still pending (its thread has not died or been interrupted).
pub fn id_valid(listener: BorrowedFd<'_>, id: u64) -> bool {
    let mut id = id;
    // SAFETY: the ioctl reads one u64 from the pointer.
    unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id) == 0 }
}

/// Installs `src` (our descriptor) into the target of notification `id` as descriptor number `target`
/// (replacing whatever was there) and, with `answer`, answers the notification with that number in one step.
pub fn add_fd(
    listener: BorrowedFd<'_>,
    id: u64,
    src: BorrowedFd<'_>,
    target: u32,
    cloexec: bool,
    answer: bool,
) -> io::Result<i32> {
    let mut flags = libc::SECCOMP_ADDFD_FLAG_SETFD as u32;
    if answer {
        flags |= libc::SECCOMP_ADDFD_FLAG_SEND as u32;
    }
    let mut addfd = libc::seccomp_notif_addfd {
        id,
        flags,
        srcfd: src.as_raw_fd() as u32,
        newfd: target,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: `addfd` is a valid `seccomp_notif_addfd`; `src` stays open for the call's duration.
    let ret = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd) };
    check(ret as libc::c_long).map(|fd| fd as i32)
}
