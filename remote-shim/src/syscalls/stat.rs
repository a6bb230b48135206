//! stat family, statfs, access, readlink.

use super::{Action, Call, Outcome, Route};
use crate::attrcache::{Cached, Key};
use crate::memory;
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::{flags, Errno};

pub async fn serve(call: &Call<'_>, nr: i64) -> Option<Outcome> {
    Some(match nr {
        #[cfg(target_arch = "x86_64")]
        libc::SYS_stat => stat(call, libc::AT_FDCWD, 0, 1, 0).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_lstat => stat(call, libc::AT_FDCWD, 0, 1, libc::AT_SYMLINK_NOFOLLOW).await,
        libc::SYS_newfstatat => stat(call, call.arg_i32(0), 1, 2, call.arg_i32(3)).await,
        libc::SYS_fstat => fstat(call).await,
        libc::SYS_statx => statx(call).await,
        libc::SYS_statfs => statfs(call).await,
        libc::SYS_fstatfs => fstatfs(call).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_access => access(call, libc::AT_FDCWD, 0, call.arg(1) as u32, 0).await,
        libc::SYS_faccessat => access(call, call.arg_i32(0), 1, call.arg(2) as u32, 0).await,
        libc::SYS_faccessat2 => access(call, call.arg_i32(0), 1, call.arg(2) as u32, call.arg_i32(3)).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_readlink => readlink(call, libc::AT_FDCWD, 0, 1, 2).await,
        libc::SYS_readlinkat => readlink(call, call.arg_i32(0), 1, 2, 3).await,
        _ => return None,
    })
}

/// The flags a stat-family call accepts; others are `EINVAL`, as the kernel.
const STAT_FLAGS: i32 = libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH | libc::AT_NO_AUTOMOUNT;

/// Whether a stat-family call with `AT_EMPTY_PATH` names a descriptor below the range (standard output or
/// error: the filter notifies those whatever they are) that is the program's own: the kernel's, before any
/// check of ours (a NULL path is the descriptor too, since Linux 6.11).
fn own_descriptor(call: &Call<'_>, dirfd: i32, path_arg: usize, at: i32) -> bool {
    let below = dirfd >= 0 && !call.sup.fds.range.contains(dirfd as u64);
    let empty = || call.arg(path_arg) == 0 || call.path(path_arg).is_ok_and(|p| p.is_empty());
    at & libc::AT_EMPTY_PATH != 0 && below && empty() && call.fd_handle(call.tid, dirfd as u64).is_none()
}

async fn stat(call: &Call<'_>, dirfd: i32, path_arg: usize, buf_arg: usize, at: i32) -> Outcome {
    if own_descriptor(call, dirfd, path_arg, at) {
        return Ok(Action::Continue);
    }
    if at & !STAT_FLAGS != 0 {
        return Err(Errno::EINVAL);
    }
    let t = call.target(dirfd, call.path(path_arg)?, at);
    let Route::Home(dir) = t.route else { return Ok(Action::Continue) };
    let reply = stat_home(call, dir, t.path, t.at, 0).await?;
    let st = reply.to_stat();
    memory::write_pod(call.tid, call.arg(buf_arg), &st)?;
    Ok(Action::Value(0))
}

async fn fstat(call: &Call<'_>) -> Outcome {
    let Some(h) = call.handle(0) else { return Ok(Action::Continue) };
    let reply = stat_home(call, pb::Dir { handle: h.id }, Vec::new(), libc::AT_EMPTY_PATH, 0).await?;
    memory::write_pod(call.tid, call.arg(1), &reply.to_stat())?;
    Ok(Action::Value(0))
}

async fn statx(call: &Call<'_>) -> Outcome {
    let (dirfd, at, mask) = (call.arg_i32(0), call.arg_i32(2), call.arg(3) as u32);
    if own_descriptor(call, dirfd, 1, at) {
        return Ok(Action::Continue);
    }
    let t = call.target(dirfd, call.path(1)?, at);
    let Route::Home(dir) = t.route else { return Ok(Action::Continue) };
    // The kernel's checks, made before any lookup (an answer from the cache would skip them).
    const SYNC_TYPE: i32 = 0x6000;
    const VALID: i32 = libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT | libc::AT_EMPTY_PATH | SYNC_TYPE;
    if at & !VALID != 0 || at & SYNC_TYPE == SYNC_TYPE || mask & libc::STATX__RESERVED as u32 != 0 {
        return Err(Errno::EINVAL);
    }
    let reply = stat_home(call, dir, t.path, t.at, mask).await?;
    memory::write_pod(call.tid, call.arg(4), &reply.to_statx())?;
    Ok(Action::Value(0))
}

async fn stat_home(
    call: &Call<'_>,
    dir: pb::Dir,
    path: Vec<u8>,
    at: i32,
    mask: u32,
) -> Result<pb::FileStat, Errno> {
    let handle = (path.is_empty() && dir.handle != 0).then(|| call.sup.fds.get(dir.handle)).flatten();
    // A cached answer must not overtake what the program wrote through a pumped descriptor.
    call.sup.flush_pumps().await;
    if let Some(h) = &handle {
        // A fresh copy whose file home has reported no change since it was opened: its attributes then.
        if at & libc::AT_EMPTY_PATH != 0
            && mask == 0
            && h.copy() == crate::fdtable::CopyState::Fresh
            && h.attributes_leased(&call.sup.link.attrs)
        {
            return Ok(h.stat);
        }
        // The name that opened it still finds it (so it is reachable at home, even if opened without home).
        let fstat = at & libc::AT_EMPTY_PATH != 0 && mask == 0;
        if let Some(st) = fstat_cached(call, h).filter(|_| fstat) {
            // A new version: the copy taken at open is no longer what the file holds.
            if !h.stat.same_version(&st) {
                crate::native::changed_at_home(call, h, &st).await;
            }
            return Ok(st);
        }
        // Opened without home and replaced at home since: the attributes of what the copy holds.
        if crate::lazy::unreachable(call, h).await {
            return Ok(h.stat);
        }
        if fstat {
            if let Some(st) = fstat_by_name(call, h).await {
                // A new version: the copy taken at open is no longer what the file holds.
                if !h.stat.same_version(&st) {
                    crate::native::changed_at_home(call, h, &st).await;
                }
                return Ok(st);
            }
        }
    }
    let attrs = &call.sup.link.attrs;
    let key = call
        .lookup_key(&dir, &path, at & libc::AT_SYMLINK_NOFOLLOW == 0, mask)
        .filter(|_| mask < crate::attrcache::ACCESS);
    match key.as_ref().and_then(|k| attrs.get(k)) {
        Some(Cached::Found(st)) => return Ok(st),
        Some(Cached::Missing(e)) => return Err(e),
        _ => {}
    }
    let ticket = attrs.ticket();
    let op = Op::Stat(pb::Stat {
        dir: Some(dir),
        path: path.clone().into(),
        at_flags: flags::at_to_wire(at, false),
        mask,
        lease: key.is_some(),
    });
    let reply = call.home(op).await?;
    let outcome = super::outcome(&reply);
    if let Some(key) = key {
        match &outcome {
            Ok(_) => {
                if let Some(st) = reply.stat {
                    call.put_leased(&dir, &path, key, Cached::Found(st), ticket, &reply);
                }
            }
            Err(e) if *e == Errno::ENOENT => {
                call.put_leased(&dir, &path, key, Cached::Missing(*e), ticket, &reply)
            }
            Err(_) => {}
        }
    }
    outcome?;
    let st = reply.stat.ok_or(Errno::EIO)?;
    if let Some(h) = handle {
        // A new version at home: the copy taken at open is no longer what the file holds.
        if !h.stat.same_version(&st) {
            crate::native::changed_at_home(call, &h, &st).await;
        }
    }
    Ok(st)
}

/// `fstat` of a regular file or directory answered by a leased lookup of the name that opened it, while
/// that lookup finds this very inode: the lease says home has changed neither the entry nor the file's
/// attributes since it read them, and the job's own changes to the file dropped the answer before they
/// were sent. (A file with other names is cached only while home watches the file itself, so a change
/// through a name nobody watches is seen too, unless that name was made after the lookup: Known limits.)
fn fstat_cached(call: &Call<'_>, h: &crate::fdtable::Handle) -> Option<pb::FileStat> {
    if !matches!(h.stat.mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR) {
        return None;
    }
    // The lookup as the open made it, or as a `stat` of the name makes it: any that finds this inode.
    let opened = &h.origin()?.key;
    let other = crate::attrcache::Key { follow: !opened.follow, ..opened.clone() };
    let finds = |key: &crate::attrcache::Key| match call.sup.link.attrs.get(key)? {
        Cached::Found(st) if (st.dev, st.ino) == (h.stat.dev, h.stat.ino) => Some(st),
        _ => None,
    };
    finds(opened).or_else(|| finds(&other))
}

/// `fstat` of a regular file opened by an absolute name, asked of home as a leased lookup of that name:
/// when it finds this very inode, its answer is `fstat`'s, and the next lookups of the name and `fstat`s
/// of the file are answered here while the lease holds (sqlite's `fstat` then `stat` of its database at
/// every transaction). `None` when it finds another file or none (renamed, replaced, removed at home): the
/// handle's `fstat` then goes home as such, now and from then on.
async fn fstat_by_name(call: &Call<'_>, h: &crate::fdtable::Handle) -> Option<pb::FileStat> {
    use std::sync::atomic::Ordering::Relaxed;
    let origin = h.origin()?;
    if origin.key.proc != 0 || h.stat.mode & libc::S_IFMT != libc::S_IFREG || h.name_moved.load(Relaxed) {
        return None;
    }
    let attrs = &call.sup.link.attrs;
    let ticket = attrs.ticket();
    let at = if origin.key.follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    let op = Op::Stat(pb::Stat {
        dir: Some(pb::Dir { handle: 0 }),
        path: origin.key.path.clone().into(),
        at_flags: flags::at_to_wire(at, false),
        mask: 0,
        lease: true,
    });
    let reply = call.home(op).await.ok()?;
    let found = super::outcome(&reply).ok().and(reply.stat);
    match found {
        Some(st) if (st.dev, st.ino) == (h.stat.dev, h.stat.ino) => {
            put_found_by_name(call, &origin.key, st, ticket, &reply);
            Some(st)
        }
        _ => {
            h.name_moved.store(true, Relaxed);
            None
        }
    }
}

/// Stores `st`, a regular file that the leased lookup `key` (the name that opened it) found, under
/// `reply`'s lease.
pub fn put_found_by_name(
    call: &Call<'_>,
    key: &crate::attrcache::Key,
    st: pb::FileStat,
    ticket: crate::attrcache::Ticket,
    reply: &pb::CallReply,
) {
    // Found without following a last link, the name is the regular file itself: the lookup that follows
    // links finds the same. (One that followed says nothing of the name itself.)
    let follows: &[bool] = if key.follow { &[true] } else { &[false, true] };
    for &follow in follows {
        let key = crate::attrcache::Key { follow, ..key.clone() };
        call.sup.link.attrs.put_leased(key, Cached::Found(st), ticket, reply);
    }
}

async fn statfs(call: &Call<'_>) -> Outcome {
    let path = call.path(0)?;
    // An empty path names nothing (home would take it for fstatfs of the cwd).
    if path.is_empty() {
        return Err(Errno::ENOENT);
    }
    let Route::Home(dir) = call.route(libc::AT_FDCWD, &path) else { return Ok(Action::Continue) };
    statfs_home(call, dir, path, 1).await
}

async fn fstatfs(call: &Call<'_>) -> Outcome {
    let Some(h) = call.handle(0) else { return Ok(Action::Continue) };
    statfs_home(call, pb::Dir { handle: h.id }, Vec::new(), 1).await
}

/// statfs looks its path up as `stat` does: a path the attribute cache knows missing fails so without
/// home (libselinux's `statfs("/selinux")` in every coreutils process), and a missing path is leased under
/// `stat`'s key.
async fn statfs_home(call: &Call<'_>, dir: pb::Dir, path: Vec<u8>, buf_arg: usize) -> Outcome {
    let attrs = &call.sup.link.attrs;
    let key = call.lookup_key(&dir, &path, true, 0);
    if let Some(Cached::Missing(e)) = key.as_ref().and_then(|k| attrs.get(k)) {
        return Err(e);
    }
    let ticket = attrs.ticket();
    let statfs = pb::Statfs { dir: Some(dir), path: path.clone().into(), lease: key.is_some() };
    let reply = call.home(Op::Statfs(statfs)).await?;
    match (super::outcome(&reply), key) {
        (Err(e), Some(key)) if e == Errno::ENOENT => {
            call.put_leased(&dir, &path, key, Cached::Missing(e), ticket, &reply);
            return Err(e);
        }
        (outcome, _) => outcome?,
    };
    let fs = reply.fsstat.ok_or(Errno::EIO)?;
    memory::write_pod(call.tid, call.arg(buf_arg), &fs.to_statfs())?;
    Ok(Action::Value(0))
}

async fn access(call: &Call<'_>, dirfd: i32, path_arg: usize, mode: u32, at: i32) -> Outcome {
    if mode & !(libc::F_OK | libc::R_OK | libc::W_OK | libc::X_OK) as u32 != 0 {
        return Err(Errno::EINVAL);
    }
    if at & !(libc::AT_EACCESS | libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH) != 0 {
        return Err(Errno::EINVAL);
    }
    let t = call.target(dirfd, call.path(path_arg)?, at);
    let Route::Home(dir) = t.route else { return Ok(Action::Continue) };
    call.sup.flush_pumps().await;
    // A missing file is missing whatever the mode; otherwise an access check answered before (it depends
    // on the file's attributes, leased, and the agent's credentials, fixed; for W_OK also on how the file
    // system is mounted: home leases that only while it watches its mounts, whose changes void every lease).
    let attrs = &call.sup.link.attrs;
    let follow = t.at & libc::AT_SYMLINK_NOFOLLOW == 0;
    let keys = call.lookup_key(&dir, &t.path, follow, 0).map(|stat| {
        let check = Key { mask: crate::attrcache::ACCESS + mode, ..stat.clone() };
        (stat, check)
    });
    if let Some((stat, check)) = &keys {
        match attrs.get(stat) {
            Some(Cached::Found(_)) if mode == libc::F_OK as u32 => return Ok(Action::Value(0)),
            Some(Cached::Missing(e)) => return Err(e),
            _ => {}
        }
        match attrs.get(check) {
            Some(Cached::Exists) => return Ok(Action::Value(0)),
            Some(Cached::Missing(e)) => return Err(e),
            _ => {}
        }
    }
    let ticket = attrs.ticket();
    let path = t.path.clone();
    let op = Op::Access(pb::Access {
        dir: Some(dir),
        path: t.path.into(),
        mode,
        at_flags: flags::at_to_wire(t.at, false),
        lease: keys.is_some(),
    });
    let reply = call.home(op).await?;
    let outcome = super::outcome(&reply);
    if let Some((_, check)) = keys {
        let kept = [
            Errno::ENOENT,
            Errno(libc::EACCES as u16),
            Errno(libc::ENOTDIR as u16),
            Errno(libc::ELOOP as u16),
        ];
        let value = match outcome {
            Ok(_) => Some(Cached::Exists),
            Err(e) if kept.contains(&e) => Some(Cached::Missing(e)),
            Err(_) => None,
        };
        if let Some(value) = value {
            call.put_leased(&dir, &path, check, value, ticket, &reply);
        }
    }
    outcome.map(Action::Value)
}

async fn readlink(call: &Call<'_>, dirfd: i32, path_arg: usize, buf_arg: usize, size_arg: usize) -> Outcome {
    let size = call.arg(size_arg) as i32;
    if size <= 0 {
        return Err(Errno::EINVAL);
    }
    let path = call.path(path_arg)?;
    if super::std_link(&path) {
        // The link itself (`/proc/self/fd/0`), not the descriptor it leads to.
        return Ok(Action::Continue);
    }
    let named = !path.is_empty();
    let t = call.target(dirfd, path, libc::AT_EMPTY_PATH);
    let Route::Home(dir) = t.route else { return Ok(Action::Continue) };
    call.sup.flush_pumps().await;
    if named && t.path.is_empty() {
        // `/proc/self/fd/N` (or `/dev/fd/N`) of a home file's descriptor: its path at home.
        let op = Op::Readlink(pb::Readlink {
            dir: Some(dir),
            path: Vec::new().into(),
            size: size as u64,
            lease: false,
            descriptor: true,
        });
        let reply = call.home(op).await?;
        super::outcome(&reply)?;
        let n = reply.data.len().min(size as usize);
        memory::write_bytes(call.tid, call.arg(buf_arg), &reply.data[..n])?;
        return Ok(Action::Value(n as i64));
    }
    // A readlink answered before, or a lookup that did not follow links, knows the answer.
    let attrs = &call.sup.link.attrs;
    let stat_key = call.lookup_key(&dir, &t.path, false, 0);
    let key = stat_key.as_ref().map(|k| Key { mask: crate::attrcache::READLINK, ..k.clone() });
    let write_target = |target: &[u8]| -> Outcome {
        let n = target.len().min(size as usize);
        memory::write_bytes(call.tid, call.arg(buf_arg), &target[..n])?;
        Ok(Action::Value(n as i64))
    };
    match key.as_ref().and_then(|k| attrs.get(k)) {
        Some(Cached::Link(target)) => return write_target(&target),
        Some(Cached::Missing(e)) => return Err(e),
        _ => {}
    }
    match stat_key.as_ref().and_then(|k| attrs.get(k)) {
        Some(Cached::Found(st)) if st.mode & libc::S_IFMT != libc::S_IFLNK => return Err(Errno::EINVAL),
        Some(Cached::Missing(e)) => return Err(e),
        _ => {}
    }
    let ticket = attrs.ticket();
    let op = Op::Readlink(pb::Readlink {
        dir: Some(dir),
        path: t.path.clone().into(),
        size: size as u64,
        lease: key.is_some(),
        descriptor: false,
    });
    let reply = call.home(op).await?;
    let outcome = super::outcome(&reply);
    if let Some(key) = key {
        let value = match outcome {
            // A target that filled the buffer may have been cut: not kept.
            Ok(n) if (n as usize) < size as usize => Some(Cached::Link(reply.data.to_vec())),
            Ok(_) => None,
            Err(e) if [Errno::EINVAL, Errno::ENOENT, Errno(libc::ENOTDIR as u16)].contains(&e) => {
                Some(Cached::Missing(e))
            }
            Err(_) => None,
        };
        if let Some(value) = value {
            call.put_leased(&dir, &t.path, key, value, ticket, &reply);
        }
    }
    outcome?;
    write_target(&reply.data)
}
