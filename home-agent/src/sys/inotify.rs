//! inotify, for the leases on lookups (`crate::leases`).

use super::cvt;
use homeward_proto::Errno;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A new non-blocking, close-on-exec inotify instance.
pub fn inotify_init() -> Result<OwnedFd, Errno> {
    // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
    let fd = cvt(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Watches the file `target` refers to (through its `/proc/self/fd` link) for `mask`.
pub fn inotify_watch(instance: BorrowedFd<'_>, target: BorrowedFd<'_>, mask: u32) -> Result<i32, Errno> {
    let path = CString::new(format!("/proc/self/fd/{}", target.as_raw_fd())).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `path` is NUL-terminated and outlives the call.
    cvt(unsafe { libc::inotify_add_watch(instance.as_raw_fd(), path.as_ptr(), mask) })
}

/// Reads (and discards) what events are queued; how many bytes they took (0: none).
pub fn inotify_drain(instance: BorrowedFd<'_>) -> usize {
    let mut buf = [0u8; 4096];
    // SAFETY: reads into a live stack buffer of its own length.
    let n = unsafe { libc::read(instance.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).unwrap_or(0)
}

/// Registers a non-blocking descriptor we own with the tokio reactor, for reading.
pub fn async_fd<T: AsRawFd>(fd: T) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `fd` owns (or shares ownership of) its descriptor and moves into the `AsyncFd`, so the
    // descriptor stays open for as long as the registration exists and is deregistered before it closes.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
