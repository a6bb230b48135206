//! A lossless Linux errno and the value-or-errno outcome of a syscall.
//!
//! Linux errno numbers are the same on x86_64 and aarch64 (both use asm-generic), so the number itself
//! travels on the wire. Unknown values are kept as they are, never mapped to a catch-all.

use crate::pb::{outcome, Outcome};
use std::fmt;

/// A Linux errno value (`ENOENT` is `Errno(2)`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub u16);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM as u16);
    pub const EACCES: Errno = Errno(libc::EACCES as u16);
    pub const ENOENT: Errno = Errno(libc::ENOENT as u16);
    pub const EIO: Errno = Errno(libc::EIO as u16);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN as u16);
    pub const EBADF: Errno = Errno(libc::EBADF as u16);
    pub const EFAULT: Errno = Errno(libc::EFAULT as u16);
    pub const EINVAL: Errno = Errno(libc::EINVAL as u16);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS as u16);
    pub const ERANGE: Errno = Errno(libc::ERANGE as u16);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR as u16);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG as u16);
    pub const EOVERFLOW: Errno = Errno(libc::EOVERFLOW as u16);
    pub const ENOMEM: Errno = Errno(libc::ENOMEM as u16);
    pub const EMFILE: Errno = Errno(libc::EMFILE as u16);
    pub const ENFILE: Errno = Errno(libc::ENFILE as u16);
    pub const ENOTTY: Errno = Errno(libc::ENOTTY as u16);
    pub const EXDEV: Errno = Errno(libc::EXDEV as u16);
    pub const ESPIPE: Errno = Errno(libc::ESPIPE as u16);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP as u16);
    pub const ESTALE: Errno = Errno(libc::ESTALE as u16);

    /// The errno of the last failed libc call on this thread.
    pub fn last() -> Errno {
        Errno::from_io(&std::io::Error::last_os_error())
    }

    /// The errno inside an I/O error; `EIO` for errors that carry none.
    pub fn from_io(err: &std::io::Error) -> Errno {
        err.raw_os_error().and_then(|n| u16::try_from(n).ok()).map(Errno).unwrap_or(Errno::EIO)
    }

    pub fn raw(self) -> i32 {
        i32::from(self.0)
    }

    /// The symbolic name (`"ENOENT"`), or the number for values this build does not name.
    pub fn name(self) -> String {
        let known: &[(i32, &str)] = &[
            (libc::EPERM, "EPERM"),
            (libc::ENOENT, "ENOENT"),
            (libc::ESRCH, "ESRCH"),
            (libc::EINTR, "EINTR"),
            (libc::EIO, "EIO"),
            (libc::ENXIO, "ENXIO"),
            (libc::E2BIG, "E2BIG"),
            (libc::ENOEXEC, "ENOEXEC"),
            (libc::EBADF, "EBADF"),
            (libc::ECHILD, "ECHILD"),
            (libc::EAGAIN, "EAGAIN"),
            (libc::ENOMEM, "ENOMEM"),
            (libc::EACCES, "EACCES"),
            (libc::EFAULT, "EFAULT"),
            (libc::EBUSY, "EBUSY"),
            (libc::EEXIST, "EEXIST"),
            (libc::EXDEV, "EXDEV"),
            (libc::ENODEV, "ENODEV"),
            (libc::ENOTDIR, "ENOTDIR"),
            (libc::EISDIR, "EISDIR"),
            (libc::EINVAL, "EINVAL"),
            (libc::ENFILE, "ENFILE"),
            (libc::EMFILE, "EMFILE"),
            (libc::ENOTTY, "ENOTTY"),
            (libc::ETXTBSY, "ETXTBSY"),
            (libc::EFBIG, "EFBIG"),
            (libc::ENOSPC, "ENOSPC"),
            (libc::ESPIPE, "ESPIPE"),
            (libc::EROFS, "EROFS"),
            (libc::EMLINK, "EMLINK"),
            (libc::EPIPE, "EPIPE"),
            (libc::ERANGE, "ERANGE"),
            (libc::EDEADLK, "EDEADLK"),
            (libc::ENAMETOOLONG, "ENAMETOOLONG"),
            (libc::ENOLCK, "ENOLCK"),
            (libc::ENOSYS, "ENOSYS"),
            (libc::ENOTEMPTY, "ENOTEMPTY"),
            (libc::ELOOP, "ELOOP"),
            (libc::ENODATA, "ENODATA"),
            (libc::EOVERFLOW, "EOVERFLOW"),
            (libc::EOPNOTSUPP, "EOPNOTSUPP"),
            (libc::ETIMEDOUT, "ETIMEDOUT"),
            (libc::EDQUOT, "EDQUOT"),
        ];
        known
            .iter()
            .find(|(n, _)| *n == self.raw())
            .map(|(_, s)| (*s).to_string())
            .unwrap_or_else(|| format!("errno {}", self.0))
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), std::io::Error::from_raw_os_error(self.raw()))
    }
}

impl std::error::Error for Errno {}

impl Outcome {
    pub fn value(v: i64) -> Outcome {
        Outcome { result: Some(outcome::Result::Value(v)) }
    }

    pub fn errno(e: Errno) -> Outcome {
        Outcome { result: Some(outcome::Result::Errno(u32::from(e.0))) }
    }

    /// The outcome as a Rust result; a reply without an outcome is a protocol fault, seen as `EIO`.
    pub fn to_result(&self) -> Result<i64, Errno> {
        match self.result {
            Some(outcome::Result::Value(v)) => Ok(v),
            Some(outcome::Result::Errno(e)) => Err(Errno(u16::try_from(e).unwrap_or(u16::MAX))),
            None => Err(Errno::EIO),
        }
    }
}

impl From<Result<i64, Errno>> for Outcome {
    fn from(r: Result<i64, Errno>) -> Outcome {
        match r {
            Ok(v) => Outcome::value(v),
            Err(e) => Outcome::errno(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_round_trips_every_value() {
        for n in 1..=u16::MAX {
            let o = Outcome::errno(Errno(n));
            assert_eq!(o.to_result(), Err(Errno(n)));
        }
    }

    #[test]
    fn names() {
        assert_eq!(Errno::ENOENT.name(), "ENOENT");
        assert_eq!(Errno(4000).name(), "errno 4000");
    }
}
