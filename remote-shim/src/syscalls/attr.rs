//! Attributes: chmod, chown, truncate, utimes, xattrs, umask.

use super::{simple, Action, Call, Outcome, Route};
use crate::filter::SYS_FCHMODAT2;
use crate::memory;
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::{flags, Errno};

pub async fn serve(call: &Call<'_>, nr: i64) -> Option<Outcome> {
    let fdcwd = libc::AT_FDCWD;
    let nofollow = libc::AT_SYMLINK_NOFOLLOW;
    Some(match nr {
        #[cfg(target_arch = "x86_64")]
        libc::SYS_chmod => chmod(call, fdcwd, 0, call.arg(1) as u32, 0).await,
        libc::SYS_fchmodat => chmod(call, call.arg_i32(0), 1, call.arg(2) as u32, 0).await,
        SYS_FCHMODAT2 => chmod(call, call.arg_i32(0), 1, call.arg(2) as u32, call.arg_i32(3)).await,
        libc::SYS_fchmod => {
            on_handle(call, |h| chmod_op(h, Vec::new(), call.arg(1) as u32, libc::AT_EMPTY_PATH)).await
        }
        #[cfg(target_arch = "x86_64")]
        libc::SYS_chown => chown(call, fdcwd, 0, (1, 2), 0).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_lchown => chown(call, fdcwd, 0, (1, 2), nofollow).await,
        libc::SYS_fchownat => chown(call, call.arg_i32(0), 1, (2, 3), call.arg_i32(4)).await,
        libc::SYS_fchown => fchown(call).await,
        libc::SYS_truncate => {
            // Stores into a mapping of the file go home before it is cut (see `shared_maps`).
            super::process::write_back_mappings(call, crate::shared_maps::Which::All).await;
            truncate(call).await
        }
        libc::SYS_ftruncate => {
            if call.handle(0).is_none() {
                // The program's own descriptor (standard output and error are notified whatever they are).
                return Some(Ok(Action::Continue));
            }
            super::process::write_back_mappings(call, crate::shared_maps::Which::All).await;
            let len = call.arg(1) as i64;
            let cut = on_handle(call, |h| {
                Op::Truncate(pb::Truncate { dir: Some(h), path: Default::default(), length: len })
            })
            .await;
            if let (Ok(_), Some(h)) = (&cut, call.handle(0)) {
                call.sup.shared_maps.resized(h.id, len as u64);
            }
            cut
        }
        libc::SYS_utimensat => utimensat(call).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_utimes => utimes(call, fdcwd, 0, 1).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_futimesat => utimes(call, call.arg_i32(0), 1, 2).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_utime => utime(call).await,
        libc::SYS_umask => simple(call, Op::Umask(pb::Umask { mask: call.arg(0) as u32 & 0o777 })).await,
        _ => return super::attr_xattr::serve(call, nr).await,
    })
}

/// Runs `op` on the handle behind descriptor argument 0, or leaves a local descriptor to the kernel.
async fn on_handle(call: &Call<'_>, op: impl FnOnce(pb::Dir) -> Op) -> Outcome {
    let Some(h) = call.handle(0) else { return Ok(Action::Continue) };
    forget_removable_if_dir(call, &h);
    simple(call, op(pb::Dir { handle: h.id })).await
}

/// A change of a directory's attributes through its descriptor may take away the right to remove names
/// in it (`AttrCache::take_removable`).
pub fn forget_removable_if_dir(call: &Call<'_>, h: &crate::fdtable::Handle) {
    if h.stat.mode & libc::S_IFMT == libc::S_IFDIR {
        call.sup.link.attrs.forget_removable();
    }
}

fn chmod_op(dir: pb::Dir, path: Vec<u8>, mode: u32, at: i32) -> Op {
    Op::Chmod(pb::Chmod {
        dir: Some(dir),
        path: path.into(),
        mode: mode & 0o7777,
        at_flags: flags::at_to_wire(at, false),
    })
}

fn chown_op(dir: pb::Dir, path: Vec<u8>, uid: u32, gid: u32, at: i32) -> Op {
    Op::Chown(pb::Chown {
        dir: Some(dir),
        path: path.into(),
        uid,
        gid,
        at_flags: flags::at_to_wire(at, false),
    })
}

async fn chmod(call: &Call<'_>, dirfd: i32, path_arg: usize, mode: u32, at: i32) -> Outcome {
    if at & !(libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH) != 0 {
        return Err(Errno::EINVAL);
    }
    let t = call.target(dirfd, call.path(path_arg)?, at);
    let Route::Home(dir) = t.route else { return Ok(Action::Continue) };
    simple(call, chmod_op(dir, t.path, mode, t.at)).await
}

async fn chown(call: &Call<'_>, dirfd: i32, path_arg: usize, ids: (usize, usize), at: i32) -> Outcome {
    if at & !(libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH) != 0 {
        return Err(Errno::EINVAL);
    }
    let t = call.target(dirfd, call.path(path_arg)?, at);
    let Route::Home(dir) = t.route else { return Ok(Action::Continue) };
    simple(call, chown_op(dir, t.path, call.arg(ids.0) as u32, call.arg(ids.1) as u32, t.at)).await
}

/// fchown. To the file's own owner and group (each, or -1) as opened, of a regular file opened for
/// writing without `O_APPEND` on a local disk at home (one home reports room for), by an agent that may
/// change any owner: nothing refuses it (the open for writing without `O_APPEND` found the file system
/// writable and the file neither immutable nor append-only, and no quota moves), so the program is
/// answered at once and the call goes home behind ([`crate::behind`]; sqlite gives each new journal its
/// database's owner this way, at every transaction). It still takes the set-user-ID bits away and moves
/// the change time at home, in order.
async fn fchown(call: &Call<'_>) -> Outcome {
    let Some(h) = call.handle(0) else { return Ok(Action::Continue) };
    forget_removable_if_dir(call, &h);
    let (uid, gid) = (call.arg(1) as u32, call.arg(2) as u32);
    let op = chown_op(pb::Dir { handle: h.id }, Vec::new(), uid, gid, libc::AT_EMPTY_PATH);
    let unchanged = |wanted: u32, has: u32| wanted == u32::MAX || wanted == has;
    let certain = call.sup.link.chowns()
        && h.stat.mode & libc::S_IFMT == libc::S_IFREG
        && h.flags & libc::O_ACCMODE != libc::O_RDONLY
        && h.flags & (libc::O_PATH | libc::O_APPEND) == 0
        && crate::behind::has_room(h.stat.dev)
        && unchanged(uid, h.stat.uid)
        && unchanged(gid, h.stat.gid);
    if !certain {
        return simple(call, op).await;
    }
    let ticket = h.behind.ticket();
    call.home_behind(op, move |reply| ticket.answered(reply.as_ref(), 0, "change of owner", false)).await?;
    Ok(Action::Value(0))
}

async fn truncate(call: &Call<'_>) -> Outcome {
    let path = call.path(0)?;
    let Route::Home(dir) = call.route(libc::AT_FDCWD, &path) else { return Ok(Action::Continue) };
    simple(call, Op::Truncate(pb::Truncate { dir: Some(dir), path: path.into(), length: call.arg(1) as i64 }))
        .await
}

fn wire_time(sec: i64, nsec: i64) -> Result<pb::Timespec, Errno> {
    match nsec {
        libc::UTIME_NOW => Ok(pb::Timespec { now: true, ..Default::default() }),
        libc::UTIME_OMIT => Ok(pb::Timespec { omit: true, ..Default::default() }),
        0..=999_999_999 => Ok(pb::Timespec { sec, nsec, ..Default::default() }),
        _ => Err(Errno::EINVAL),
    }
}

async fn utimensat(call: &Call<'_>) -> Outcome {
    let (dirfd, at) = (call.arg_i32(0), call.arg_i32(3));
    if at & !(libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH) != 0 {
        return Err(Errno::EINVAL);
    }
    // A null path means the descriptor itself (futimens).
    let (path, at) =
        if call.arg(1) == 0 { (Vec::new(), at | libc::AT_EMPTY_PATH) } else { (call.path(1)?, at) };
    let t = call.target(dirfd, path, at);
    let (path, at) = (t.path, t.at);
    let Route::Home(dir) = t.route else { return Ok(Action::Continue) };
    let (atime, mtime) = if call.arg(2) == 0 {
        (None, None)
    } else {
        let a: libc::timespec = memory::read_pod(call.tid, call.arg(2))?;
        let m: libc::timespec =
            memory::read_pod(call.tid, call.arg(2) + std::mem::size_of::<libc::timespec>() as u64)?;
        (Some(wire_time(a.tv_sec, a.tv_nsec)?), Some(wire_time(m.tv_sec, m.tv_nsec)?))
    };
    utimens(call, dir, path, atime, mtime, at).await
}

async fn utimens(
    call: &Call<'_>,
    dir: pb::Dir,
    path: Vec<u8>,
    atime: Option<pb::Timespec>,
    mtime: Option<pb::Timespec>,
    at: i32,
) -> Outcome {
    let at_flags = flags::at_to_wire(at, false);
    simple(call, Op::Utimens(pb::Utimens { dir: Some(dir), path: path.into(), atime, mtime, at_flags })).await
}

#[cfg(target_arch = "x86_64")]
async fn utimes(call: &Call<'_>, dirfd: i32, path_arg: usize, times_arg: usize) -> Outcome {
    let path = call.path(path_arg)?;
    let Route::Home(dir) = call.route(dirfd, &path) else { return Ok(Action::Continue) };
    let (atime, mtime) = if call.arg(times_arg) == 0 {
        (None, None)
    } else {
        let a: libc::timeval = memory::read_pod(call.tid, call.arg(times_arg))?;
        let m: libc::timeval =
            memory::read_pod(call.tid, call.arg(times_arg) + std::mem::size_of::<libc::timeval>() as u64)?;
        if !(0..1_000_000).contains(&a.tv_usec) || !(0..1_000_000).contains(&m.tv_usec) {
            return Err(Errno::EINVAL);
        }
        (Some(wire_time(a.tv_sec, a.tv_usec * 1000)?), Some(wire_time(m.tv_sec, m.tv_usec * 1000)?))
    };
    utimens(call, dir, path, atime, mtime, 0).await
}

#[cfg(target_arch = "x86_64")]
async fn utime(call: &Call<'_>) -> Outcome {
    let path = call.path(0)?;
    let Route::Home(dir) = call.route(libc::AT_FDCWD, &path) else { return Ok(Action::Continue) };
    let (atime, mtime) = if call.arg(1) == 0 {
        (None, None)
    } else {
        let t: libc::utimbuf = memory::read_pod(call.tid, call.arg(1))?;
        (Some(wire_time(t.actime, 0)?), Some(wire_time(t.modtime, 0)?))
    };
    utimens(call, dir, path, atime, mtime, 0).await
}
