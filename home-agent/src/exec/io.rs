//! Read, Write, Seek, Fsync, Fallocate, CopyRange, Ioctl.

use super::open::DEFAULT_STATX_MASK;
use super::{done, value, Res, MAX_BUF};
use crate::session::{ProcCtx, Session};
use crate::sys;
use homeward_proto::pb::{self, FileStat, IoctlOp, Whence};
use homeward_proto::Errno;
use std::os::fd::{AsFd, BorrowedFd};

/// read, or pread at the offset; at most [`MAX_BUF`] bytes (a short read, which is legal).
pub fn read(s: &Session, o: &pb::Read) -> Res {
    let fd = s.handle(o.handle)?;
    let len = usize::try_from(o.len).unwrap_or(usize::MAX).min(MAX_BUF);
    let data = sys::read(fd.as_fd(), len, o.offset)?;
    let n = data.len() as i64;
    Ok(pb::CallReply { data: data.into(), ..value(n) })
}

/// write, or pwrite at the offset: the value is the number of bytes written; at most [`MAX_BUF`] (a short
/// write, which is legal).
pub fn write(s: &Session, o: &pb::Write) -> Res {
    let fd = s.handle(o.handle)?;
    let data = &o.data[..o.data.len().min(MAX_BUF)];
    let n = match o.rwf {
        0 => sys::write(fd.as_fd(), data, o.offset)?,
        // (Bits beyond an int are no flag the kernel knows.)
        rwf => {
            sys::write_flags(fd.as_fd(), data, o.offset, i32::try_from(rwf).map_err(|_| Errno::EOPNOTSUPP)?)?
        }
    } as i64;
    Ok(pb::CallReply { room: room(fd.as_fd()), ..value(n) })
}

/// File systems that report a write's failure (no space, quota) when the write runs, not later: local
/// disks and memory. On these a write that fits in the free space cannot fail, so the shim may write
/// behind (see `CallReply.room`).
const WRITES_FAIL_AT_ONCE: &[libc::c_long] = &[
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x8584_58F6, // ramfs
    0x794C_7630, // overlayfs
    0xF2F5_2010, // f2fs
    0x2FC1_2FC1, // zfs
    0xCA45_1A4E, // bcachefs
];

/// The bytes free for an unprivileged user on `fd`'s file system when it is one of
/// [`WRITES_FAIL_AT_ONCE`]; 0 (the shim then waits for every write) otherwise.
pub fn room(fd: BorrowedFd<'_>) -> u64 {
    match sys::fstatfs(fd) {
        Ok(fs) if fails_at_once(&fs) => fs.f_bavail.saturating_mul(u64::try_from(fs.f_bsize).unwrap_or(0)),
        _ => 0,
    }
}

/// Whether `fd`'s file system is a local one (see [`WRITES_FAIL_AT_ONCE`]).
pub fn local(fd: BorrowedFd<'_>) -> bool {
    sys::fstatfs(fd).is_ok_and(|fs| fails_at_once(&fs))
}

fn fails_at_once(fs: &libc::statfs) -> bool {
    WRITES_FAIL_AT_ONCE.contains(&(fs.f_type as libc::c_long))
}

/// The native `SEEK_*` for a wire whence.
pub fn whence(w: i32) -> Result<libc::c_int, Errno> {
    Ok(match Whence::try_from(w).map_err(|_| Errno::EINVAL)? {
        Whence::Set => libc::SEEK_SET,
        Whence::Cur => libc::SEEK_CUR,
        Whence::End => libc::SEEK_END,
        Whence::Data => libc::SEEK_DATA,
        Whence::Hole => libc::SEEK_HOLE,
    })
}

/// lseek: the value is the new offset.
pub fn seek(s: &Session, o: &pb::Seek) -> Res {
    let fd = s.handle(o.handle)?;
    done(sys::lseek(fd.as_fd(), o.offset, whence(o.whence)?)?)
}

/// fsync or fdatasync.
pub fn fsync(s: &Session, ctx: &ProcCtx, o: &pb::Fsync) -> Res {
    if o.handle == 0 {
        return fsync_by_path(s, ctx, o);
    }
    let fd = s.handle(o.handle)?;
    sys::fsync(fd.as_fd(), o.datasync)?;
    if o.lease_path.first() != Some(&b'/') {
        return done(0);
    }
    // The name that opened the file, looked up again under a lease: granted when it finds this file.
    let Ok(synced) = sys::statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH, libc::STATX_INO) else {
        return done(0);
    };
    let same = |found: Option<&libc::statx>| {
        found.is_some_and(|f| {
            (f.stx_ino, f.stx_dev_major, f.stx_dev_minor)
                == (synced.stx_ino, synced.stx_dev_major, synced.stx_dev_minor)
        })
    };
    match super::lease_after(s, &ctx.cwd, &o.lease_path, o.lease_follow, true, same) {
        super::Leased { lease: 0, .. } => done(0),
        // Read once the watches are in place: a change after this is reported.
        super::Leased { lease, deps, .. } => {
            match sys::statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH, DEFAULT_STATX_MASK) {
                Ok(now) => {
                    Ok(pb::CallReply { stat: Some(FileStat::from_statx(&now)), lease, deps, ..value(0) })
                }
                Err(_) => done(0),
            }
        }
    }
}

/// fsync of the directory (`dev`, `ino`) that `lease_path` names, opened read-only for it (one the shim
/// opened without home); `ESTALE` when the path names anything else or cannot be opened so (the shim then
/// opens it as it would for any call).
fn fsync_by_path(s: &Session, ctx: &ProcCtx, o: &pb::Fsync) -> Res {
    if o.lease_path.first() != Some(&b'/')
        || s.allow().is_some()
        || o.lease_path.len() >= libc::PATH_MAX as usize
    {
        return Err(Errno::ESTALE);
    }
    let path = std::ffi::CString::new(o.lease_path.to_vec()).map_err(|_| Errno::ESTALE)?;
    let nofollow = if o.lease_follow { 0 } else { libc::O_NOFOLLOW };
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | nofollow;
    let fd = sys::openat(ctx.cwd.as_fd(), &path, flags, 0).map_err(|_| Errno::ESTALE)?;
    let mask = libc::STATX_INO | libc::STATX_TYPE;
    let sx = sys::statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH, mask).map_err(|_| Errno::ESTALE)?;
    let st = FileStat::from_statx(&sx);
    if (st.dev, st.ino) != (o.dev, o.ino) {
        return Err(Errno::ESTALE);
    }
    sys::fsync(fd.as_fd(), o.datasync)?;
    done(0)
}

/// fallocate; the FALLOC_FL_* bits are the same everywhere.
pub fn fallocate(s: &Session, o: &pb::Fallocate) -> Res {
    sys::fallocate(s.handle(o.handle)?.as_fd(), o.mode as libc::c_int, o.offset, o.len)?;
    done(0)
}

/// copy_file_range (and sendfile) between two handles. Where the kernel cannot copy between these files
/// (EXDEV, EINVAL, EOPNOTSUPP, ENOSYS: another filesystem, a pipe or socket), copies through a buffer,
/// at most [`MAX_BUF`] bytes per call, as sendfile would. The value is the number of bytes copied.
pub fn copy_range(s: &Session, o: &pb::CopyRange) -> Res {
    let fd_in = s.handle(o.in_handle)?;
    let fd_out = s.handle(o.out_handle)?;
    let len = usize::try_from(o.len).unwrap_or(usize::MAX);
    let (mut off_in, mut off_out) = (o.in_offset, o.out_offset);
    match sys::copy_file_range(fd_in.as_fd(), off_in.as_mut(), fd_out.as_fd(), off_out.as_mut(), len) {
        Ok(n) => done(n as i64),
        Err(e) if [Errno::EXDEV, Errno::EINVAL, Errno::EOPNOTSUPP, Errno::ENOSYS].contains(&e) => {
            copy_through_buffer(fd_in.as_fd(), o.in_offset, fd_out.as_fd(), o.out_offset, len.min(MAX_BUF))
        }
        Err(e) => Err(e),
    }
}

fn copy_through_buffer(
    fd_in: BorrowedFd<'_>,
    off_in: Option<i64>,
    fd_out: BorrowedFd<'_>,
    off_out: Option<i64>,
    len: usize,
) -> Res {
    let data = sys::read(fd_in, len, off_in)?;
    let written = sys::write(fd_out, &data, off_out);
    let n = *written.as_ref().unwrap_or(&0);
    if off_in.is_none() && n < data.len() {
        // Give back what was read but not written, so the input offset moved only by what was copied.
        // (Nothing to do for a pipe, which cannot seek: then those bytes are lost, as with splice.)
        let _ = sys::lseek(fd_in, -((data.len() - n) as i64), libc::SEEK_CUR);
    }
    done(written? as i64)
}

/// ioctl; only FIONREAD is forwarded (the value is the byte count), anything else is ENOTTY.
pub fn ioctl(s: &Session, o: &pb::Ioctl) -> Res {
    let fd = s.handle(o.handle)?;
    match IoctlOp::try_from(o.op) {
        Ok(IoctlOp::Fionread) => done(i64::from(sys::fionread(fd.as_fd())?)),
        Err(_) => Err(Errno::ENOTTY),
    }
}
