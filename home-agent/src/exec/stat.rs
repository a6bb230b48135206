//! Stat, Statfs, Access, Readlink.

use super::open::DEFAULT_STATX_MASK;
use super::{at, at_flags, dir_fd, start, value, How, Leased, Res};
use crate::session::{ProcCtx, Session};
use crate::sys;
use homeward_proto::pb::{self, FileStat, FsStat};
use homeward_proto::Errno;
use std::os::fd::{AsFd, AsRawFd};

/// Largest readlink buffer home allocates: a symlink target never exceeds a page, so a bigger buffer
/// cannot change the result.
const MAX_LINK: usize = 64 << 10;

/// statx (and stat, lstat, fstatat, fstat: empty path with `AT_EMPTY_PATH`).
pub fn stat(s: &Session, ctx: &ProcCtx, o: &pb::Stat) -> Res {
    let flags = at_flags(o.at_flags)?;
    let mask = if o.mask == 0 { DEFAULT_STATX_MASK } else { o.mask };
    // Watched before the file system is read (see `leases`); the errno of a failed lookup is leased too.
    let follow = flags & libc::AT_SYMLINK_NOFOLLOW == 0;
    let start = start(s, ctx, o.dir.as_ref(), &o.path)?;
    let Leased { lease, deps, listing } = super::lease_lookup(s, &start, &o.path, follow, o.lease);
    let at = at(s, ctx, o.dir.as_ref(), &o.path, How::Lookup { follow });
    match at.and_then(|at| sys::statx(at.dir.as_fd(), &at.path, flags, mask)) {
        Ok(sx) => Ok(pb::CallReply { stat: Some(FileStat::from_statx(&sx)), lease, deps, ..value(0) }),
        Err(e) => Ok(pb::CallReply { lease, deps, listing, ..super::failed(e) }),
    }
}

/// statfs, or fstatfs of the handle when the path is empty. A failed lookup is leased when asked (as
/// stat's).
pub fn statfs(s: &Session, ctx: &ProcCtx, o: &pb::Statfs) -> Res {
    if o.path.is_empty() {
        let st = sys::fstatfs(dir_fd(s, ctx, o.dir.as_ref())?.as_fd())?;
        return Ok(pb::CallReply { fsstat: Some(FsStat::from_statfs(&st)), ..value(0) });
    }
    let start = start(s, ctx, o.dir.as_ref(), &o.path)?;
    let Leased { lease, deps, listing } = super::lease_lookup(s, &start, &o.path, true, o.lease);
    let at = at(s, ctx, o.dir.as_ref(), &o.path, How::Lookup { follow: true });
    match at.and_then(|at| sys::statfs(&at.proc_path()?)) {
        Ok(st) => Ok(pb::CallReply { fsstat: Some(FsStat::from_statfs(&st)), ..value(0) }),
        Err(e) => Ok(pb::CallReply { lease, deps, listing, ..super::failed(e) }),
    }
}

/// faccessat2 (access, faccessat).
pub fn access(s: &Session, ctx: &ProcCtx, o: &pb::Access) -> Res {
    let flags = at_flags(o.at_flags)?;
    let mode = libc::c_int::try_from(o.mode).map_err(|_| homeward_proto::Errno::EINVAL)?;
    let follow = flags & libc::AT_SYMLINK_NOFOLLOW == 0;
    let start = start(s, ctx, o.dir.as_ref(), &o.path)?;
    // Writing also depends on how the file system is mounted: leased only while home's mounts are watched.
    let watched = crate::service::mounts_watched();
    let wanted = o.lease && (mode & libc::W_OK == 0 || watched);
    let Leased { lease, deps, listing } = super::lease_access_lookup(s, &start, &o.path, follow, wanted);
    let at = at(s, ctx, o.dir.as_ref(), &o.path, How::Lookup { follow });
    match at.and_then(|at| sys::faccessat(at.dir.as_fd(), &at.path, mode, flags)) {
        Ok(()) => Ok(pb::CallReply { lease, deps, ..value(0) }),
        Err(e) => Ok(pb::CallReply { lease, deps, listing, ..super::failed(e) }),
    }
}

/// What `/proc/PID/fd/N` of a descriptor of handle `o.dir` reads: the path of its file here (with
/// ` (deleted)` once its last name is gone), cut to `size` bytes as readlink cuts.
fn descriptor_path(s: &Session, ctx: &ProcCtx, o: &pb::Readlink, size: usize) -> Res {
    let handle = o.dir.as_ref().map_or(0, |d| d.handle);
    if handle == 0 || !o.path.is_empty() || size == 0 {
        return Err(Errno::EINVAL);
    }
    let fd = dir_fd(s, ctx, o.dir.as_ref())?;
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mut target =
        std::fs::read_link(link).map_err(|e| Errno::from_io(&e))?.into_os_string().into_encoded_bytes();
    target.truncate(size);
    let n = target.len() as i64;
    Ok(pb::CallReply { data: target.into(), ..value(n) })
}

/// readlinkat into a buffer of `size` bytes: value and data are the (possibly truncated) target.
pub fn readlink(s: &Session, ctx: &ProcCtx, o: &pb::Readlink) -> Res {
    // The kernel takes the size as an int (the low 32 bits of the register): 0 or negative is EINVAL.
    let size = match o.size as i32 {
        n if n > 0 => (n as usize).min(MAX_LINK),
        _ => 0,
    };
    if o.descriptor {
        return descriptor_path(s, ctx, o, size);
    }
    let start = start(s, ctx, o.dir.as_ref(), &o.path)?;
    // A link's target, or EINVAL for anything else: which entry the path names, never what it holds.
    let Leased { lease, deps, listing } = super::lease_entry_lookup(s, &start, &o.path, o.lease);
    let at = at(s, ctx, o.dir.as_ref(), &o.path, How::Lookup { follow: false });
    match at.and_then(|at| sys::readlinkat(at.dir.as_fd(), &at.path, size)) {
        Ok(target) => {
            let n = target.len() as i64;
            Ok(pb::CallReply { data: target.into(), lease, deps, ..value(n) })
        }
        Err(e) => Ok(pb::CallReply { lease, deps, listing, ..super::failed(e) }),
    }
}
