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

/// Registers a descriptor we own with the tokio reactor, for priority data (`/proc/self/mountinfo`
/// reports a change of the mount table so).
pub fn async_fd_priority<T: AsRawFd>(fd: T) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: as in `async_fd`: `fd` owns its descriptor and moves into the `AsyncFd`, which deregisters
    // it before it closes.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::PRIORITY) }
        .map_err(|e| e.into_parts().1)
}

/// Registers a non-blocking descriptor we own with the tokio reactor, for reading.
pub fn async_fd<T: AsRawFd>(fd: T) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `fd` owns (or shares ownership of) its descriptor and moves into the `AsyncFd`, so the
    // descriptor stays open for as long as the registration exists and is deregistered before it closes.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Stops watching `wd`.
pub fn inotify_unwatch(instance: BorrowedFd<'_>, wd: i32) -> Result<(), Errno> {
    // SAFETY: plain integers; the instance is ours.
    cvt(unsafe { libc::inotify_rm_watch(instance.as_raw_fd(), wd) }).map(drop)
}

/// What the events of one `(watch, name)` pair did, least first (the pair takes the most of its events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Only closes of a descriptor open for writing (`IN_CLOSE_WRITE`) of something not a directory.
    Closed,
    /// Only writes to the content or changes of the attributes of something not a directory
    /// (`IN_MODIFY`, `IN_ATTRIB`, and those closes).
    Written,
    /// Anything else: names made, removed or moved, or a directory's own changes.
    Names,
}

/// What [`inotify_events`] read.
#[derive(Default)]
pub struct Events {
    /// The distinct `(watch, name)` the events name (an empty name: the watched directory itself), and what
    /// they did.
    pub changed: Vec<(i32, Vec<u8>, Change)>,
    /// The kernel's queue overflowed: events were lost.
    pub overflow: bool,
    /// Watches that ended (`IN_IGNORED`: the file was removed, its file system unmounted, or the watch
    /// taken off).
    pub ended: Vec<i32>,
}

/// Reads every queued event.
pub fn inotify_events(instance: BorrowedFd<'_>) -> Events {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    const WRITES: u32 = libc::IN_MODIFY | libc::IN_CLOSE_WRITE | libc::IN_ATTRIB;
    let mut out = Events::default();
    // Read per call of the session (to report a call's own changes before its reply): no allocation when
    // nothing is queued.
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reads into a live buffer of its own length.
        let n = unsafe { libc::read(instance.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else { break };
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at + HEADER <= n {
            // SAFETY: a whole header lies at `at` (checked above); read unaligned from the byte buffer.
            let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            let len = ev.len as usize;
            let name = buf.get(at + HEADER..at + HEADER + len).unwrap_or_default();
            let name = name.split(|&b| b == 0).next().unwrap_or_default().to_vec();
            let change = match ev.mask & libc::IN_ISDIR == 0 && ev.mask & !WRITES == 0 {
                true if ev.mask & !libc::IN_CLOSE_WRITE == 0 => Change::Closed,
                true => Change::Written,
                false => Change::Names,
            };
            if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                out.overflow = true;
            } else if ev.mask & libc::IN_IGNORED != 0 {
                out.ended.push(ev.wd);
            } else {
                match out.changed.iter_mut().find(|(w, n, _)| *w == ev.wd && *n == name) {
                    Some((_, _, was)) => *was = (*was).max(change),
                    None => out.changed.push((ev.wd, name, change)),
                }
            }
            at += HEADER + len;
        }
    }
    out
}
