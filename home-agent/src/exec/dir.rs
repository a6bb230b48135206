//! Mkdir, Mknod, Unlink, Rename, Link, Symlink, Getdents, Chdir, Getcwd.

use super::{at, at_flags, cpath, dir_fd, done, value, wire_path, How, Res, MAX_BUF};
use crate::session::{ProcCtx, Session};
use crate::sys;
use homeward_proto::pb;
use homeward_proto::Errno;
use std::os::fd::{AsFd, AsRawFd};

pub fn mkdir(s: &Session, ctx: &ProcCtx, o: &pb::Mkdir) -> Res {
    let at = at(s, ctx, o.dir.as_ref(), &o.path, How::Entry)?;
    let umask = sys::UmaskScope::enter(ctx.umask);
    sys::mkdirat(at.dir.as_fd(), &at.path, umask.mode(o.mode))?;
    done(0)
}

/// mknodat: `mode` carries the file type; the umask applies to the permission bits.
pub fn mknod(s: &Session, ctx: &ProcCtx, o: &pb::Mknod) -> Res {
    let at = at(s, ctx, o.dir.as_ref(), &o.path, How::Entry)?;
    let umask = sys::UmaskScope::enter(ctx.umask);
    sys::mknodat(at.dir.as_fd(), &at.path, umask.mode(o.mode), o.dev)?;
    done(0)
}

/// unlinkat; `AT_FLAG_REMOVEDIR` makes it rmdir.
pub fn unlink(s: &Session, ctx: &ProcCtx, o: &pb::Unlink) -> Res {
    let flags = at_flags(o.at_flags)?;
    let at = at(s, ctx, o.dir.as_ref(), &o.path, How::Entry)?;
    sys::unlinkat(at.dir.as_fd(), &at.path, flags)?;
    let super::Leased { lease, deps, listing } =
        super::lease_after(s, &at.start, &o.path, false, o.lease, |found| found.is_none());
    Ok(pb::CallReply { lease, deps, listing, ..value(0) })
}

/// renameat2; the RENAME_* flags are the same everywhere and pass as they are.
pub fn rename(s: &Session, ctx: &ProcCtx, o: &pb::Rename) -> Res {
    let old = at(s, ctx, o.old_dir.as_ref(), &o.old_path, How::Entry)?;
    let new = at(s, ctx, o.new_dir.as_ref(), &o.new_path, How::Entry)?;
    sys::renameat2(old.dir.as_fd(), &old.path, new.dir.as_fd(), &new.path, o.flags)?;
    done(0)
}

pub fn link(s: &Session, ctx: &ProcCtx, o: &pb::Link) -> Res {
    let flags = at_flags(o.at_flags)?;
    let follow = flags & libc::AT_SYMLINK_FOLLOW != 0;
    let old = at(s, ctx, o.old_dir.as_ref(), &o.old_path, How::Lookup { follow })?;
    let new = at(s, ctx, o.new_dir.as_ref(), &o.new_path, How::Entry)?;
    sys::linkat(old.dir.as_fd(), &old.path, new.dir.as_fd(), &new.path, flags)?;
    done(0)
}

pub fn symlink(s: &Session, ctx: &ProcCtx, o: &pb::Symlink) -> Res {
    let target = wire_path(&o.target)?;
    let at = at(s, ctx, o.dir.as_ref(), &o.path, How::Entry)?;
    sys::symlinkat(&target, at.dir.as_fd(), &at.path)?;
    done(0)
}

/// getdents64 on a directory handle with a buffer of `size` bytes (capped), so that what home returns
/// fits the program's buffer; the value is the kernel's byte count.
pub fn getdents(s: &Session, o: &pb::Getdents) -> Res {
    let fd = s.handle(o.handle)?;
    let size = usize::try_from(o.size).unwrap_or(usize::MAX).min(MAX_BUF);
    // Watched before the entries are read, so a change after the read is reported (see `leases`).
    let (lease, deps) = match o.lease.then(|| s.leases.begin()).flatten() {
        Some(mut g) => {
            if g.depend(fd.as_fd(), b"") {
                let (lease, deps, _) = g.finish();
                (lease, deps)
            } else {
                (0, Vec::new())
            }
        }
        None => (0, Vec::new()),
    };
    let raw = sys::getdents64(fd.as_fd(), size)?;
    let mut dirents = decode_dirents(&raw);
    if lease != 0 {
        // Content only from local disks: elsewhere (NFS, FUSE) a read may move access times whatever the
        // flags, or be slow.
        let mut budget = if o.content_max > 0 && super::io::local(fd.as_fd()) { CONTENT_BUDGET } else { 0 };
        for d in &mut dirents {
            let Ok(name) = std::ffi::CString::new(d.name.to_vec()) else { continue };
            let flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT;
            d.stat = sys::statx(fd.as_fd(), &name, flags, super::open::DEFAULT_STATX_MASK)
                .ok()
                .map(|sx| pb::FileStat::from_statx(&sx));
            if let Some(st) = d.stat.as_ref().filter(|st| listed_content_wanted(st, o.content_max, budget)) {
                if let Some(content) = listed_content(fd.as_fd(), &name, st) {
                    budget -= content.len();
                    d.content = content.into();
                    d.whole = true;
                }
            }
        }
    }
    Ok(pb::CallReply { dirents, lease, deps, ..value(raw.len() as i64) })
}

/// Most bytes of content one listing returns (see `Getdents.content_max`).
const CONTENT_BUDGET: usize = 1 << 20;
/// Largest file whose content a listing returns.
const LISTED_FILE_MAX: u64 = 64 << 10;

/// Whether a listed entry's content goes with the listing: a regular file with one link, small enough
/// for the request and what is left of the reply's budget.
fn listed_content_wanted(st: &pb::FileStat, max: u64, budget: usize) -> bool {
    max > 0
        && budget > 0
        && st.mode & libc::S_IFMT == libc::S_IFREG
        && st.nlink == 1
        && u64::try_from(st.size)
            .is_ok_and(|size| size <= max.min(LISTED_FILE_MAX) && size as usize <= budget)
}

/// The whole content of the file `name` in `dir` at version `st` (size, times), or `None`: opened without
/// following a link, without waiting (a fifo put there meanwhile) and without changing its access time
/// (`O_NOATIME`, refused unless the agent may: then nothing is read; so the open checks permission even for
/// an empty file), and checked against `st` before and after the read, with nothing past its size.
fn listed_content(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
    st: &pb::FileStat,
) -> Option<Vec<u8>> {
    // Changed within the last clock tick: a same-size rewrite in the same tick would keep this version's
    // key (coarse timestamps) with other bytes.
    if changed_lately(st) {
        return None;
    }
    let flags = libc::O_RDONLY | libc::O_NOATIME | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let file = sys::openat(dir, name, flags, 0).ok()?;
    let opened = sys::statx(file.as_fd(), c"", libc::AT_EMPTY_PATH, super::open::DEFAULT_STATX_MASK).ok()?;
    let opened = pb::FileStat::from_statx(&opened);
    if (opened.dev, opened.ino) != (st.dev, st.ino) || !opened.same_version(st) {
        return None;
    }
    let (content, _) = super::open::whole_content(file.as_fd(), st)?;
    // Nothing past the listed size (a file whose size says nothing of its content: procfs, some FUSE).
    sys::read(file.as_fd(), 1, Some(st.size)).ok().filter(|more| more.is_empty())?;
    Some(content)
}

/// Whether `st`'s last change is within 50 ms of now (the coarse clock lags up to a tick).
fn changed_lately(st: &pb::FileStat) -> bool {
    let Ok(now) = sys::clock_ns(libc::CLOCK_REALTIME_COARSE) else { return true };
    let changed = i128::from(st.ctime_sec) * 1_000_000_000 + i128::from(st.ctime_nsec);
    i128::from(now) - changed < 50_000_000
}

/// Decodes `struct linux_dirent64` records: `d_ino: u64, d_off: i64, d_reclen: u16, d_type: u8,
/// d_name: NUL-terminated`, each record 8-byte aligned. Stops at the first malformed record.
pub fn decode_dirents(buf: &[u8]) -> Vec<pb::Dirent> {
    const NAME: usize = 19;
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(rec) = buf.get(at..) {
        let (Some(ino), Some(off), Some(reclen), Some(&kind)) =
            (rec.get(0..8), rec.get(8..16), rec.get(16..18), rec.get(18))
        else {
            break;
        };
        let reclen = usize::from(u16::from_ne_bytes([reclen[0], reclen[1]]));
        let Some(name) = rec.get(NAME..reclen) else { break };
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        out.push(pb::Dirent {
            ino: u64::from_ne_bytes(ino.try_into().unwrap_or_default()),
            off: i64::from_ne_bytes(off.try_into().unwrap_or_default()),
            kind: u32::from(kind),
            name: name.to_vec().into(),
            stat: None,
            content: Default::default(),
            whole: false,
        });
        at += reclen;
    }
    out
}

/// chdir (a path) or fchdir (empty path: the handle). The new cwd is a fresh `O_PATH` descriptor, so the
/// handle's open file (and its locks) is not kept alive by being a cwd.
pub fn chdir(s: &Session, ctx: &ProcCtx, o: &pb::Chdir) -> Res {
    const DIR: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    let target = if o.path.is_empty() {
        dir_fd(s, ctx, o.dir.as_ref())?
    } else {
        let at = at(s, ctx, o.dir.as_ref(), &o.path, How::Lookup { follow: true })?;
        sys::openat(at.dir.as_fd(), &at.path, DIR, 0)?.into()
    };
    // Looking up "." in the target needs search permission on it: the check chdir and fchdir make
    // (EACCES), and ENOTDIR for a handle that is not a directory.
    let cwd = sys::openat(target.as_fd(), c".", DIR, 0)?;
    s.set_cwd(ctx.id, cwd);
    done(0)
}

/// getcwd with a buffer of `size` bytes: the value counts the terminating NUL, the data does not.
pub fn getcwd(s: &Session, ctx: &ProcCtx, o: &pb::Getcwd) -> Res {
    // A removed cwd: the kernel's getcwd says ENOENT (readlink would say "/path (deleted)").
    let sx = sys::statx(ctx.cwd.as_fd(), c"", libc::AT_EMPTY_PATH, libc::STATX_NLINK | libc::STATX_INO)?;
    if sx.stx_nlink == 0 {
        return Err(Errno::ENOENT);
    }
    let link = cpath(format!("/proc/self/fd/{}", ctx.cwd.as_raw_fd()).as_bytes())?;
    let path = sys::readlinkat(ctx.cwd.as_fd(), &link, 2 * libc::PATH_MAX as usize)?;
    if path.first() != Some(&b'/') {
        // Not reachable from home's root: getcwd answers ENOENT too.
        return Err(Errno::ENOENT);
    }
    let needed = path.len() + 1;
    if u64::try_from(needed).map_or(true, |n| o.size < n) {
        return Err(Errno::ERANGE);
    }
    let leased = if o.lease { lease_cwd(s, ctx, &path, &pb::FileStat::from_statx(&sx)) } else { None };
    let reply = pb::CallReply { data: path.into(), ..value(needed as i64) };
    Ok(match leased {
        Some((stat, lease, deps)) => pb::CallReply { stat: Some(stat), lease, deps, ..reply },
        None => reply,
    })
}

/// A lease on `path` naming the cwd `cwd` (getcwd's answer, cached by the shim): a leased lookup of the
/// path, as `Stat` makes it (watches first, then the lookup), that finds the cwd's very directory. Its
/// dependencies are the entries on the way only: what the directory holds, or its attributes, does not
/// change which path names it. Not given to a confined session, whose lookups do not watch the directories
/// above its allowed ones (a move there changes the cwd's path unseen).
fn lease_cwd(
    s: &Session,
    ctx: &ProcCtx,
    path: &[u8],
    cwd: &pb::FileStat,
) -> Option<(pb::FileStat, u64, Vec<pb::Dep>)> {
    if s.allow().is_some() {
        return None;
    }
    let lookup = pb::Stat {
        dir: Some(pb::Dir { handle: 0 }),
        path: path.to_vec().into(),
        at_flags: 0,
        mask: 0,
        lease: true,
    };
    let reply = super::stat::stat(s, ctx, &lookup).ok()?;
    let found = reply.stat.filter(|_| reply.lease != 0)?;
    if (found.dev, found.ino) != (cwd.dev, cwd.ino) {
        return None;
    }
    let deps = reply.deps.into_iter().filter(|d| !d.name.is_empty()).collect();
    Some((found, reply.lease, deps))
}
