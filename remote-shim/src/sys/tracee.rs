//! The traced program's memory and descriptors, seen from the supervisor.

use super::check;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// Reads `buf.len()` bytes at `addr` in process `pid`. A short count means the range crosses unmapped memory.
pub fn read_mem(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes `buf`, which is writable for its whole length; the remote address is only
    // interpreted in the other process's address space by the kernel, which checks it.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    check(n as libc::c_long).map(|n| n as usize)
}

/// Writes `data` at `addr` in process `pid`, honouring the page protections as the kernel's copy-out would.
pub fn write_mem(pid: u32, addr: u64, data: &[u8]) -> io::Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    let local = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: `local` describes `data`, which the kernel only reads; the remote range is checked by the kernel.
    let n = unsafe { libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    check(n as libc::c_long).map(|n| n as usize)
}

/// Writes `data` at `addr` through `/proc/PID/mem`, which may write read-only pages (as a debugger does).
pub fn poke_mem(pid: u32, addr: u64, data: &[u8]) -> io::Result<()> {
    let mem = std::fs::OpenOptions::new().write(true).open(format!("/proc/{pid}/mem"))?;
    mem.write_all_at(data, addr)
}

/// `pidfd_open(pid)`.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers only.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) })?;
    // SAFETY: the kernel returned a new descriptor that we alone own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_getfd`: a duplicate of descriptor `target_fd` of the process behind `pidfd` (same open file).
pub fn pidfd_getfd(pidfd: std::os::fd::BorrowedFd<'_>, target_fd: i32) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes integers only.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) })?;
    // SAFETY: the kernel returned a new descriptor that we alone own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether our descriptor `ours` and descriptor `theirs` of thread `tid` are the same open file
/// description (`kcmp` with `KCMP_FILE`).
pub fn same_description(ours: std::os::fd::BorrowedFd<'_>, tid: u32, theirs: i32) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    const KCMP_FILE: libc::c_long = 0;
    let me = std::process::id() as libc::c_long;
    let (fd1, fd2) = (ours.as_raw_fd() as libc::c_long, theirs as libc::c_long);
    // SAFETY: kcmp takes integers only.
    let order =
        check(unsafe { libc::syscall(libc::SYS_kcmp, me, tid as libc::c_long, KCMP_FILE, fd1, fd2) })?;
    Ok(order == 0)
}

/// Whether `kcmp` tells descriptions apart here (`CONFIG_KCMP`, and no policy refusing it): asked once.
pub fn kcmp_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let Ok(null) = std::fs::File::open("/dev/null") else { return false };
        let tid = std::process::id();
        same_description(std::os::fd::AsFd::as_fd(&null), tid, std::os::fd::AsRawFd::as_raw_fd(&null))
            .unwrap_or(false)
    })
}

/// Plain-data kernel structs that may be copied to and from the traced program as raw bytes.
///
/// # Safety
/// Implementors must be `repr(C)` structs of integers for which every bit pattern is a valid value.
pub unsafe trait Pod: Copy + 'static {}
// SAFETY: each of these is a C struct of integer fields; any bit pattern is a valid value.
unsafe impl Pod for libc::stat {}
// SAFETY: as above.
unsafe impl Pod for libc::statx {}
// SAFETY: as above.
unsafe impl Pod for libc::statfs {}
// SAFETY: as above.
unsafe impl Pod for libc::flock {}
// SAFETY: as above.
unsafe impl Pod for libc::iovec {}
// SAFETY: as above.
unsafe impl Pod for libc::open_how {}
// SAFETY: as above.
unsafe impl Pod for libc::timespec {}
// SAFETY: as above.
unsafe impl Pod for libc::timeval {}
// SAFETY: as above.
unsafe impl Pod for libc::utimbuf {}
// SAFETY: as above.
unsafe impl Pod for libc::rlimit64 {}
// SAFETY: a C struct of integers (and padding bit-fields); any bit pattern is a valid value.
unsafe impl Pod for libc::timex {}
// SAFETY: plain integers.
unsafe impl Pod for i64 {}
// SAFETY: plain integers.
unsafe impl Pod for i32 {}

/// The bytes of a plain-data value.
pub fn pod_bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: `T: Pod` is plain data, so viewing its memory as bytes is sound for its size.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// A plain-data value from bytes (`None` if too few).
pub fn pod_from_bytes<T: Pod>(b: &[u8]) -> Option<T> {
    if b.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: enough bytes were checked above and every bit pattern is a valid `T` (`Pod`).
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// Whether thread `tid` has exited: no `/proc/TID`, or a zombie or dead task. (A thread waiting for the
/// answer to its notification is neither; any other failure to read says nothing.)
pub fn thread_gone(tid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{tid}/stat")) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH),
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            matches!(state, Some('Z' | 'X' | 'x'))
        }
    }
}

/// A signal thread `tid` would take on its way back to the program (pending for it or its process, not
/// blocked, with a handler installed): `Some(true)` when the kernel is sure to find it there (pending for
/// the thread itself, or the process has one thread), `Some(false)` when another thread may take it
/// first; `None` without one (or when `/proc` does not say).
pub fn caught_signal_pending(tid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
        u64::from_str_radix(line.trim(), 16).ok()
    };
    let threads: u64 = status.lines().find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())?;
    let takes = !field("SigBlk")? & field("SigCgt")?;
    let own = field("SigPnd")? & takes;
    let shared = field("ShdPnd")? & takes;
    if own != 0 || (shared != 0 && threads == 1) {
        Some(true)
    } else if shared != 0 {
        Some(false)
    } else {
        None
    }
}
