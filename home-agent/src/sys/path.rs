//! Calls that name a file by (directory descriptor, path), as the `*at` family does.

use super::{cvt, cvt_long, owned};
use homeward_proto::Errno;
use libc::{c_int, c_uint};
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// `fchmodat2(2)`: the same number on x86_64 and aarch64 (the unified syscall table, Linux 6.6).
const SYS_FCHMODAT2: libc::c_long = 452;

/// `open(2)` of a path relative to this process's cwd (only for the start directory of a session).
pub fn open(path: &CStr, flags: c_int) -> Result<OwnedFd, Errno> {
    // SAFETY: `path` is NUL-terminated and lives across the call; the kernel copies it.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), flags, 0 as c_uint) })?;
    owned(fd.into())
}

pub fn openat(dir: BorrowedFd<'_>, path: &CStr, flags: c_int, mode: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: `path` is NUL-terminated and lives across the call; the kernel copies it.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), path.as_ptr(), flags, mode as c_uint) })?;
    owned(fd.into())
}

pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: c_int,
    mode: u32,
    resolve: u64,
) -> Result<OwnedFd, Errno> {
    // SAFETY: `open_how` is three integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::from(flags as u32);
    how.mode = u64::from(mode);
    how.resolve = resolve;
    // SAFETY: `path` is NUL-terminated and `how` is a live `open_how` whose size we pass; the kernel copies
    // both and keeps no pointer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(cvt_long(ret)?)
}

pub fn statx(dir: BorrowedFd<'_>, path: &CStr, flags: c_int, mask: u32) -> Result<libc::statx, Errno> {
    // SAFETY: `statx` is a struct of integers; all-zero is a valid value.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated; `buf` is a live, writable `struct statx` the kernel fills.
    cvt(unsafe { libc::statx(dir.as_raw_fd(), path.as_ptr(), flags, mask, &mut buf) })?;
    Ok(buf)
}

pub fn statfs(path: &CStr) -> Result<libc::statfs, Errno> {
    // SAFETY: `statfs` is a struct of integers; all-zero is a valid value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated; `buf` is a live, writable `struct statfs` the kernel fills.
    cvt(unsafe { libc::statfs(path.as_ptr(), &mut buf) })?;
    Ok(buf)
}

/// `faccessat2(2)`, or glibc's `faccessat` (which emulates the flags) on kernels without it.
pub fn faccessat(dir: BorrowedFd<'_>, path: &CStr, mode: c_int, flags: c_int) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated and lives across the call; the other arguments are integers.
    let ret = unsafe { libc::syscall(libc::SYS_faccessat2, dir.as_raw_fd(), path.as_ptr(), mode, flags) };
    match cvt_long(ret) {
        Err(Errno::ENOSYS) => {
            // SAFETY: as above.
            cvt(unsafe { libc::faccessat(dir.as_raw_fd(), path.as_ptr(), mode, flags) })?;
            Ok(())
        }
        r => r.map(drop),
    }
}

/// `readlinkat(2)` into a buffer of `size` bytes; the result is the (possibly truncated) target.
pub fn readlinkat(dir: BorrowedFd<'_>, path: &CStr, size: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` has `size` writable bytes, the length we pass; `path` is NUL-terminated.
    let n = cvt_long(unsafe {
        libc::readlinkat(dir.as_raw_fd(), path.as_ptr(), buf.as_mut_ptr().cast(), size) as i64
    })?;
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn mkdirat(dir: BorrowedFd<'_>, path: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated and lives across the call.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), path.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, path: &CStr, mode: u32, dev: u64) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated and lives across the call.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), path.as_ptr(), mode, dev) }).map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, path: &CStr, flags: c_int) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated and lives across the call.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), path.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
    flags: c_uint,
) -> Result<(), Errno> {
    // SAFETY: both paths are NUL-terminated and live across the call; the rest are integers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    };
    cvt_long(ret).map(drop)
}

pub fn linkat(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
    flags: c_int,
) -> Result<(), Errno> {
    // SAFETY: both paths are NUL-terminated and live across the call.
    cvt(unsafe { libc::linkat(old_dir.as_raw_fd(), old.as_ptr(), new_dir.as_raw_fd(), new.as_ptr(), flags) })
        .map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, path: &CStr) -> Result<(), Errno> {
    // SAFETY: both strings are NUL-terminated and live across the call.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), path.as_ptr()) }).map(drop)
}

/// `fchmodat(2)`; with flags, the `fchmodat2(2)` syscall, and without it what glibc answers: `EOPNOTSUPP`
/// for `AT_SYMLINK_NOFOLLOW`, `EINVAL` for anything else.
pub fn fchmodat(dir: BorrowedFd<'_>, path: &CStr, mode: u32, flags: c_int) -> Result<(), Errno> {
    if flags == 0 {
        // SAFETY: `path` is NUL-terminated and lives across the call.
        return cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), path.as_ptr(), mode, 0) }).map(drop);
    }
    // SAFETY: `path` is NUL-terminated and lives across the call; the rest are integers.
    let ret = unsafe { libc::syscall(SYS_FCHMODAT2, dir.as_raw_fd(), path.as_ptr(), mode, flags) };
    match cvt_long(ret) {
        Err(Errno::ENOSYS) if flags & libc::AT_SYMLINK_NOFOLLOW != 0 => Err(Errno::EOPNOTSUPP),
        Err(Errno::ENOSYS) => Err(Errno::EINVAL),
        r => r.map(drop),
    }
}

pub fn fchownat(dir: BorrowedFd<'_>, path: &CStr, uid: u32, gid: u32, flags: c_int) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated and lives across the call.
    cvt(unsafe { libc::fchownat(dir.as_raw_fd(), path.as_ptr(), uid, gid, flags) }).map(drop)
}

pub fn truncate(path: &CStr, length: i64) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated and lives across the call.
    cvt(unsafe { libc::truncate(path.as_ptr(), length) }).map(drop)
}

/// `utimensat(2)`; `times` of `None` sets both to the current time.
pub fn utimensat(
    dir: BorrowedFd<'_>,
    path: &CStr,
    times: Option<&[libc::timespec; 2]>,
    flags: c_int,
) -> Result<(), Errno> {
    let times = times.map_or(std::ptr::null(), |t| t.as_ptr());
    // SAFETY: `path` is NUL-terminated; `times` is null or points at two live timespecs; the kernel copies.
    cvt(unsafe { libc::utimensat(dir.as_raw_fd(), path.as_ptr(), times, flags) }).map(drop)
}

/// What an extended-attribute call acts on.
#[derive(Clone, Copy)]
pub enum XattrOn<'a> {
    /// `f*xattr` on a descriptor.
    Fd(BorrowedFd<'a>),
    /// `*xattr` on a path, following a final symlink.
    Path(&'a CStr),
    /// `l*xattr` on a path, not following a final symlink.
    Link(&'a CStr),
}

/// `getxattr(2)` family with a buffer of `size` bytes: returns (the value's length, the bytes read), where
/// a `size` of 0 asks only for the length.
pub fn getxattr(on: XattrOn<'_>, name: &CStr, size: usize) -> Result<(usize, Vec<u8>), Errno> {
    let mut buf = vec![0u8; size];
    let (p, n) = if size == 0 { (std::ptr::null_mut(), 0) } else { (buf.as_mut_ptr().cast(), size) };
    // SAFETY: `name` and the path are NUL-terminated; `p` is null with length 0 or has `n` writable bytes.
    let ret = unsafe {
        match on {
            XattrOn::Fd(fd) => libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), p, n),
            XattrOn::Path(path) => libc::getxattr(path.as_ptr(), name.as_ptr(), p, n),
            XattrOn::Link(path) => libc::lgetxattr(path.as_ptr(), name.as_ptr(), p, n),
        }
    };
    let len = cvt_long(ret as i64)? as usize;
    buf.truncate(if size == 0 { 0 } else { len });
    Ok((len, buf))
}

/// `listxattr(2)` family, with the same buffer convention as [`getxattr`].
pub fn listxattr(on: XattrOn<'_>, size: usize) -> Result<(usize, Vec<u8>), Errno> {
    let mut buf = vec![0u8; size];
    let (p, n) = if size == 0 { (std::ptr::null_mut(), 0) } else { (buf.as_mut_ptr().cast(), size) };
    // SAFETY: the path is NUL-terminated; `p` is null with length 0 or has `n` writable bytes.
    let ret = unsafe {
        match on {
            XattrOn::Fd(fd) => libc::flistxattr(fd.as_raw_fd(), p, n),
            XattrOn::Path(path) => libc::listxattr(path.as_ptr(), p, n),
            XattrOn::Link(path) => libc::llistxattr(path.as_ptr(), p, n),
        }
    };
    let len = cvt_long(ret as i64)? as usize;
    buf.truncate(if size == 0 { 0 } else { len });
    Ok((len, buf))
}

pub fn setxattr(on: XattrOn<'_>, name: &CStr, value: &[u8], flags: c_int) -> Result<(), Errno> {
    let (v, n) = (value.as_ptr().cast(), value.len());
    // SAFETY: `name` and the path are NUL-terminated; `v` points at `n` readable bytes; the kernel copies.
    cvt(unsafe {
        match on {
            XattrOn::Fd(fd) => libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), v, n, flags),
            XattrOn::Path(path) => libc::setxattr(path.as_ptr(), name.as_ptr(), v, n, flags),
            XattrOn::Link(path) => libc::lsetxattr(path.as_ptr(), name.as_ptr(), v, n, flags),
        }
    })
    .map(drop)
}

pub fn removexattr(on: XattrOn<'_>, name: &CStr) -> Result<(), Errno> {
    // SAFETY: `name` and the path are NUL-terminated and live across the call.
    cvt(unsafe {
        match on {
            XattrOn::Fd(fd) => libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()),
            XattrOn::Path(path) => libc::removexattr(path.as_ptr(), name.as_ptr()),
            XattrOn::Link(path) => libc::lremovexattr(path.as_ptr(), name.as_ptr()),
        }
    })
    .map(drop)
}
