//! Thin safe wrappers over the libc calls the agent makes: the only module with `unsafe` code.
//!
//! Functions take `BorrowedFd<'_>` and `&CStr`, return `OwnedFd` or `Result<_, Errno>`, and never retry on
//! `EINTR`: an interrupted call is reported as the kernel reported it (home interrupts a call when its
//! session is gone, or when the program's thread has a signal to take while the call waits, `Interrupt`;
//! see [`thread::Inflight`]; a caller that must not fail so retries, as the deputy starter's exchange does).
//!
//! - [`path`]: calls that name a file by (directory fd, path).
//! - [`fd`]: calls on an open descriptor.
//! - [`thread`]: per-thread umask, interrupting blocked calls, randomness.
//! - [`poll`]: readiness without waiting, and giving way to other threads (the idle poll's).
//! - [`process`]: signals, pidfds and waiting: the deputy's own calls and the agent's calls on processes.
#![allow(unsafe_code)]

mod clock;
mod fd;
mod inotify;
mod path;
mod poll;
mod process;
mod thread;

pub use clock::*;
pub use fd::*;
pub use inotify::*;
pub use path::*;
pub use poll::*;
pub use process::*;
pub use thread::*;

use homeward_proto::Errno;
use std::os::fd::{FromRawFd, OwnedFd};

/// A `-1`-on-error return value as a result.
fn cvt(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// The same for `ssize_t`/`off_t`/`long` returns.
fn cvt_long(ret: i64) -> Result<i64, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// Raises this process's soft limit on open files to its hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64, Errno> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a live, writable `struct rlimit` the kernel fills.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a live `struct rlimit` the kernel reads.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) })?;
    }
    Ok(limit.rlim_cur)
}

/// Takes ownership of a descriptor that a successful call just returned.
fn owned(fd: i64) -> Result<OwnedFd, Errno> {
    let fd = libc::c_int::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: `fd` was just returned by a successful open-like call on this thread, so it is a valid
    // descriptor that nothing else in this process owns; the `OwnedFd` becomes its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
