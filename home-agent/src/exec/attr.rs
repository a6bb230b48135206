//! Chmod, Chown, Truncate, Utimens, Xattr, Umask.

use super::{at, at_flags, cpath, dir_fd, done, fd_path, value, How, Res};
use crate::session::{ProcCtx, Session};
use crate::sys::{self, XattrOn};
use homeward_proto::pb::{self, XattrOp};
use homeward_proto::Errno;
use std::os::fd::AsFd;

/// The kernel caps an xattr value and a name list at 64 KiB (XATTR_SIZE_MAX, XATTR_LIST_MAX) whatever
/// the buffer, so a bigger buffer cannot change the result.
const MAX_XATTR: usize = 64 << 10;

/// Longest extended attribute name (`XATTR_NAME_MAX`).
const MAX_XATTR_NAME: usize = 255;

/// An extended attribute's name as the kernel takes it: empty or longer than `XATTR_NAME_MAX` is `ERANGE`
/// (the kernel copies at most that many bytes), an interior NUL `EINVAL`.
fn xattr_name(name: &[u8]) -> Result<std::ffi::CString, Errno> {
    if name.is_empty() || name.len() > MAX_XATTR_NAME {
        return Err(Errno::ERANGE);
    }
    cpath(name)
}

/// Whether a call means the handle itself (`f*` call): empty path with `AT_EMPTY_PATH`.
fn on_handle(path: &[u8], flags: libc::c_int) -> bool {
    path.is_empty() && flags & libc::AT_EMPTY_PATH != 0
}

/// fchmodat; on the handle (empty path with `AT_EMPTY_PATH`) a chmod through `/proc/self/fd/<fd>`,
/// which is fchmod for an open file and also works for an `O_PATH` handle, as glibc does it: so a shim can
/// send a program's `chmod("/proc/self/fd/N")` on a forwarded descriptor as this call.
pub fn chmod(s: &Session, ctx: &ProcCtx, o: &pb::Chmod) -> Res {
    let flags = at_flags(o.at_flags)?;
    if on_handle(&o.path, flags) {
        let fd = dir_fd(s, ctx, o.dir.as_ref())?;
        sys::fchmodat(fd.as_fd(), &fd_path(&fd)?, o.mode, 0)?;
    } else {
        let follow = flags & libc::AT_SYMLINK_NOFOLLOW == 0;
        let at = at(s, ctx, o.dir.as_ref(), &o.path, How::Lookup { follow })?;
        sys::fchmodat(at.dir.as_fd(), &at.path, o.mode, flags)?;
    }
    done(0)
}

/// fchownat; `AT_EMPTY_PATH` with an empty path acts on the handle (any kind, `O_PATH` too), as the kernel
/// does. `u32::MAX` leaves an id unchanged, as -1 does.
pub fn chown(s: &Session, ctx: &ProcCtx, o: &pb::Chown) -> Res {
    let flags = at_flags(o.at_flags)?;
    let follow = flags & libc::AT_SYMLINK_NOFOLLOW == 0;
    let at = at(s, ctx, o.dir.as_ref(), &o.path, How::Lookup { follow })?;
    sys::fchownat(at.dir.as_fd(), &at.path, o.uid, o.gid, flags)?;
    done(0)
}

/// truncate of a path (through `/proc/self/fd` for a relative one, so the errors are truncate's), or
/// ftruncate of the handle when the path is empty.
pub fn truncate(s: &Session, ctx: &ProcCtx, o: &pb::Truncate) -> Res {
    if o.path.is_empty() {
        sys::ftruncate(dir_fd(s, ctx, o.dir.as_ref())?.as_fd(), o.length)?;
    } else {
        sys::truncate(
            &at(s, ctx, o.dir.as_ref(), &o.path, How::Lookup { follow: true })?.proc_path()?,
            o.length,
        )?;
    }
    done(0)
}

/// One wire time as utimensat takes it: `now` is UTIME_NOW, `omit` is UTIME_OMIT, absent is now. The
/// kernel checks the nanoseconds (`EINVAL`); one that does not even fit a `long` is `EINVAL` here.
fn timespec(t: Option<&pb::Timespec>) -> Result<libc::timespec, Errno> {
    Ok(match t {
        Some(t) if t.omit => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        Some(t) if !t.now => {
            let tv_nsec = libc::c_long::try_from(t.nsec).map_err(|_| Errno::EINVAL)?;
            libc::timespec { tv_sec: t.sec, tv_nsec }
        }
        _ => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
    })
}

/// utimensat; on the handle (empty path with `AT_EMPTY_PATH`) through `/proc/self/fd/<fd>`, which is
/// futimens for an open file and also works for an `O_PATH` handle. Both times absent sets both to now.
pub fn utimens(s: &Session, ctx: &ProcCtx, o: &pb::Utimens) -> Res {
    let times = if o.atime.is_some() || o.mtime.is_some() {
        Some([timespec(o.atime.as_ref())?, timespec(o.mtime.as_ref())?])
    } else {
        None
    };
    let flags = at_flags(o.at_flags)?;
    if on_handle(&o.path, flags) {
        let fd = dir_fd(s, ctx, o.dir.as_ref())?;
        sys::utimensat(fd.as_fd(), &fd_path(&fd)?, times.as_ref(), 0)?;
    } else {
        let follow = flags & libc::AT_SYMLINK_NOFOLLOW == 0;
        let at = at(s, ctx, o.dir.as_ref(), &o.path, How::Lookup { follow })?;
        sys::utimensat(at.dir.as_fd(), &at.path, times.as_ref(), flags)?;
    }
    done(0)
}

/// The xattr calls: on the handle (`f*xattr`) when the path is empty, else on the path, through
/// `/proc/self/fd/<dir>/<path>` for a relative one, not following a final symlink when `nofollow`.
pub fn xattr(s: &Session, ctx: &ProcCtx, o: &pb::Xattr) -> Res {
    let op = XattrOp::try_from(o.op).map_err(|_| Errno::EINVAL)?;
    let (fd, path);
    let on = if o.path.is_empty() {
        fd = dir_fd(s, ctx, o.dir.as_ref())?;
        XattrOn::Fd(fd.as_fd())
    } else {
        path = at(s, ctx, o.dir.as_ref(), &o.path, How::Lookup { follow: !o.nofollow })?.proc_path()?;
        if o.nofollow {
            XattrOn::Link(&path)
        } else {
            XattrOn::Path(&path)
        }
    };
    let size = usize::try_from(o.size).unwrap_or(usize::MAX).min(MAX_XATTR);
    let flags = libc::c_int::try_from(o.flags).map_err(|_| Errno::EINVAL)?;
    match op {
        XattrOp::Get => {
            let (len, data) = sys::getxattr(on, &xattr_name(&o.name)?, size)?;
            Ok(pb::CallReply { data: data.into(), ..value(len as i64) })
        }
        XattrOp::List => {
            let (len, data) = sys::listxattr(on, size)?;
            Ok(pb::CallReply { data: data.into(), ..value(len as i64) })
        }
        XattrOp::Set => {
            sys::setxattr(on, &xattr_name(&o.name)?, &o.value, flags)?;
            done(0)
        }
        XattrOp::Remove => {
            sys::removexattr(on, &xattr_name(&o.name)?)?;
            done(0)
        }
    }
}

/// umask: sets the calling process's mask; the value is the previous one.
pub fn umask(s: &Session, ctx: &ProcCtx, o: &pb::Umask) -> Res {
    done(i64::from(s.set_umask(ctx.id, o.mask)))
}
