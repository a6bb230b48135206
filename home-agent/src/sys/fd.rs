//! Calls on an open descriptor.

use super::{cvt, cvt_long};
use homeward_proto::Errno;
use libc::c_int;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `read(2)`, or `pread(2)` at `offset`, of at most `len` bytes.
pub fn read(fd: BorrowedFd<'_>, len: usize, offset: Option<i64>) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; len];
    let p = buf.as_mut_ptr().cast();
    // SAFETY: `p` has `len` writable bytes, the count we pass.
    let n = cvt_long(unsafe {
        match offset {
            Some(off) => libc::pread(fd.as_raw_fd(), p, len, off),
            None => libc::read(fd.as_raw_fd(), p, len),
        }
    } as i64)?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// `write(2)`, or `pwrite(2)` at `offset`: the number of bytes written.
pub fn write(fd: BorrowedFd<'_>, data: &[u8], offset: Option<i64>) -> Result<usize, Errno> {
    let (p, len) = (data.as_ptr().cast(), data.len());
    // SAFETY: `p` points at `len` readable bytes; the kernel copies them.
    let n = cvt_long(unsafe {
        match offset {
            Some(off) => libc::pwrite(fd.as_raw_fd(), p, len, off),
            None => libc::write(fd.as_raw_fd(), p, len),
        }
    } as i64)?;
    Ok(n as usize)
}

/// pwritev2 with RWF_* `flags`, at `offset` (`None`: at the description's offset, which moves).
pub fn write_flags(
    fd: BorrowedFd<'_>,
    data: &[u8],
    offset: Option<i64>,
    flags: c_int,
) -> Result<usize, Errno> {
    let iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: `iov` describes `data.len()` readable bytes that outlive the call; the kernel copies them.
    let n = cvt_long(unsafe { libc::pwritev2(fd.as_raw_fd(), &iov, 1, offset.unwrap_or(-1), flags) } as i64)?;
    Ok(n as usize)
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: c_int) -> Result<i64, Errno> {
    // SAFETY: integers only.
    cvt_long(unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) })
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> Result<(), Errno> {
    // SAFETY: integers only.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: c_int, offset: i64, len: i64) -> Result<(), Errno> {
    // SAFETY: integers only.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

/// `copy_file_range(2)`; an offset given is used and advanced instead of the file's offset.
pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: Option<&mut i64>,
    fd_out: BorrowedFd<'_>,
    off_out: Option<&mut i64>,
    len: usize,
) -> Result<usize, Errno> {
    let off_in = off_in.map_or(std::ptr::null_mut(), |o| o as *mut i64);
    let off_out = off_out.map_or(std::ptr::null_mut(), |o| o as *mut i64);
    // SAFETY: each offset pointer is null or points at a live, exclusively borrowed i64 the kernel updates.
    let n = cvt_long(unsafe {
        libc::copy_file_range(fd_in.as_raw_fd(), off_in, fd_out.as_raw_fd(), off_out, len, 0)
    } as i64)?;
    Ok(n as usize)
}

pub fn get_flags(fd: BorrowedFd<'_>) -> Result<c_int, Errno> {
    // SAFETY: F_GETFL takes no argument.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

pub fn set_flags(fd: BorrowedFd<'_>, flags: c_int) -> Result<(), Errno> {
    // SAFETY: F_SETFL takes an int.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// `fcntl(2)` with an open-file-description lock command (`F_OFD_GETLK`, `F_OFD_SETLK`, `F_OFD_SETLKW`).
pub fn ofd_lock(fd: BorrowedFd<'_>, cmd: c_int, lock: &mut libc::flock) -> Result<(), Errno> {
    debug_assert!(matches!(cmd, libc::F_OFD_GETLK | libc::F_OFD_SETLK | libc::F_OFD_SETLKW));
    // SAFETY: the lock commands take a pointer to a `struct flock`; `lock` is live and writable (GETLK
    // writes the conflicting lock into it).
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, lock as *mut libc::flock) }).map(drop)
}

pub fn flock(fd: BorrowedFd<'_>, operation: c_int) -> Result<(), Errno> {
    // SAFETY: integers only.
    cvt(unsafe { libc::flock(fd.as_raw_fd(), operation) }).map(drop)
}

/// `ioctl(FIONREAD)`: the number of bytes ready to read.
pub fn fionread(fd: BorrowedFd<'_>) -> Result<c_int, Errno> {
    let mut n: c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `n`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut c_int) })?;
    Ok(n)
}

/// `getdents64(2)` into a buffer of `size` bytes: the raw `linux_dirent64` records.
pub fn getdents64(fd: BorrowedFd<'_>, size: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` has `size` writable bytes, the count we pass.
    let n = cvt_long(unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), buf.as_mut_ptr(), size) })?;
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn fstatfs(fd: BorrowedFd<'_>) -> Result<libc::statfs, Errno> {
    // SAFETY: `statfs` is a struct of integers; all-zero is a valid value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `buf` is a live, writable `struct statfs` the kernel fills.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut buf) })?;
    Ok(buf)
}

/// The mount flags of `fd`'s file system (`ST_*`, from `fstatvfs`).
pub fn mount_flags(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    // SAFETY: `statvfs` is a struct of integers; all-zero is a valid value.
    let mut buf: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `buf` is a live, writable `struct statvfs` that fstatvfs fills.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut buf) })?;
    Ok(buf.f_flag as u64)
}

pub fn ftruncate(fd: BorrowedFd<'_>, length: i64) -> Result<(), Errno> {
    // SAFETY: integers only.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), length) }).map(drop)
}

/// The inode's flags (`FS_IOC_GETFLAGS`: immutable, append-only, ...); 0 on a file system that has none.
pub fn inode_flags(fd: BorrowedFd<'_>) -> Result<u32, Errno> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, which points at a live c_int.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    match cvt(ret) {
        Ok(_) => Ok(flags as u32),
        Err(e) if matches!(e.raw(), libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL) => Ok(0),
        Err(e) => Err(e),
    }
}
