//! Open.

use super::{at, value, How, Res};
use crate::session::{ProcCtx, Session};
use crate::sys;
use homeward_proto::pb::{self, FileStat};
use homeward_proto::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// What `statx` reports for an opened file and for the stat family (mask 0).
pub const DEFAULT_STATX_MASK: u32 = libc::STATX_BASIC_STATS | libc::STATX_BTIME;

/// `openat`/`openat2` at home; the value is the new handle, and the reply carries the opened file's
/// attributes so that the shim learns its type and size without another round trip.
pub fn open(s: &Session, ctx: &ProcCtx, o: &pb::Open) -> Res {
    // Home's descriptors never leak into children; the program's O_CLOEXEC is the shim's business.
    let flags = super::open_flags(o.flags)? | libc::O_CLOEXEC;
    // Confined, `Allow::open` resolves the path, after the lease's watches are in place.
    let confined = s.allow().filter(|_| !o.path.is_empty());
    let mut at = match confined {
        Some(_) => {
            let start = super::start(s, ctx, o.dir.as_ref(), &o.path)?;
            super::At { dir: start.clone(), path: super::wire_path(&o.path)?, start }
        }
        None => at(s, ctx, o.dir.as_ref(), &o.path, How::Lookup { follow: true })?,
    };
    let reopen = o.path.is_empty() && o.dir.as_ref().is_some_and(|d| d.handle != 0);
    if reopen {
        // The program opened a magic link to one of its home descriptors (`/proc/self/fd/N`): reopen that file.
        at.path = super::fd_path(&at.dir)?;
    }
    s.check_room()?;
    let creates = flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE;
    let umask = creates.then(|| sys::UmaskScope::enter(ctx.umask));
    let mode = umask.as_ref().map_or(o.mode, |u| u.mode(o.mode));
    // Inline on an async worker, the open must not wait for a fifo's peer: it is made non-blocking, and a
    // file that turns out to be anything but a regular file or directory is opened again on a blocking thread.
    // (An `O_PATH` open never waits.)
    let probing = super::running_inline() && flags & (libc::O_NONBLOCK | libc::O_PATH) == 0;
    let follow = flags & libc::O_NOFOLLOW == 0;
    // A creating open is leased once it made its file (see below): a lease taken before would be voided by
    // the creation itself.
    let super::Leased { lease, deps, listing } =
        super::lease_lookup(s, &at.start, &o.path, follow, o.lease && !creates);
    let tried = if probing { flags | libc::O_NONBLOCK } else { flags };
    let fd = if let Some(allow) = confined {
        allow.open(&at.start, &o.path, tried, mode, o.resolve)
    } else if o.resolve != 0 {
        sys::openat2(at.dir.as_fd(), &at.path, tried, mode, o.resolve)
    } else {
        sys::openat(at.dir.as_fd(), &at.path, tried, mode)
    };
    drop(umask);
    let fd = match fd {
        // A fifo's write side without a reader: blocking, it would wait for one.
        Err(e) if probing && e == Errno(libc::ENXIO as u16) => return Err(super::RETRY_BLOCKING),
        Err(e) => return Ok(pb::CallReply { lease, deps, listing, ..super::failed(e) }),
        Ok(fd) => fd,
    };
    let sx = sys::statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH, DEFAULT_STATX_MASK).ok();
    let kind = sx.as_ref().map_or(0, |sx| u32::from(sx.stx_mode) & libc::S_IFMT);
    if probing {
        if !matches!(kind, libc::S_IFREG | libc::S_IFDIR) {
            // Dropping `fd` closes it; a created file stays created, and the retry opens it again.
            return Err(super::RETRY_BLOCKING);
        }
        sys::set_flags(fd.as_fd(), flags & !libc::O_CLOEXEC)?;
    }
    // A creating open that followed a symbolic link made a file under another name: the shim must know.
    let via_link = creates && follow && {
        let entry = match confined {
            Some(allow) => allow.at(&at.start, &o.path, How::Entry).ok().map(|t| (t.dir, t.path)),
            None => Some((at.dir.clone(), at.path.clone())),
        };
        entry.is_some_and(|(dir, path)| {
            sys::statx(dir.as_fd(), &path, libc::AT_SYMLINK_NOFOLLOW, libc::STATX_TYPE)
                .is_ok_and(|l| u32::from(l.stx_mode) & libc::S_IFMT == libc::S_IFLNK)
        })
    };
    // A regular file opened by a creating open: leased when the path, looked up again with the watches in
    // place, still finds it; its attributes are then read again, so a change between the two is not missed.
    let (lease, deps, sx) = match sx {
        Some(opened) if creates && !via_link && kind == libc::S_IFREG && o.lease => {
            let same = |found: Option<&libc::statx>| {
                found.is_some_and(|f| {
                    (f.stx_ino, f.stx_dev_major, f.stx_dev_minor)
                        == (opened.stx_ino, opened.stx_dev_major, opened.stx_dev_minor)
                })
            };
            match super::lease_after(s, &at.start, &o.path, follow, true, same) {
                super::Leased { lease: 0, .. } => (0, Vec::new(), Some(opened)),
                super::Leased { lease, deps, .. } => {
                    match sys::statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH, DEFAULT_STATX_MASK) {
                        Ok(now) => (lease, deps, Some(now)),
                        Err(_) => (0, Vec::new(), Some(opened)),
                    }
                }
            }
        }
        sx => (lease, deps, sx),
    };
    // A directory opened to read, leased: also a lease on opening it again, on its entry's attributes
    // only, granted when the path, looked up again with the watches in place, finds it unchanged (its
    // ctime moves with any change of its permissions, owner, ACL or label since the open).
    let (reopen_lease, reopen_deps) = match &sx {
        Some(opened) if lease != 0 && kind == libc::S_IFDIR && flags & libc::O_ACCMODE == libc::O_RDONLY => {
            let unchanged = |found: Option<&libc::statx>| {
                found.is_some_and(|f| {
                    (f.stx_ino, f.stx_dev_major, f.stx_dev_minor, f.stx_ctime.tv_sec, f.stx_ctime.tv_nsec)
                        == (
                            opened.stx_ino,
                            opened.stx_dev_major,
                            opened.stx_dev_minor,
                            opened.stx_ctime.tv_sec,
                            opened.stx_ctime.tv_nsec,
                        )
                })
            };
            let leased = super::lease_after_of(
                s,
                &at.start,
                &o.path,
                follow,
                true,
                super::Scope::Attributes,
                unchanged,
            );
            (leased.lease, leased.deps)
        }
        _ => (0, Vec::new()),
    };
    // Checked once the lease's watches are in place: a change after this is reported.
    let removable = lease != 0
        && creates
        && kind == libc::S_IFREG
        && confined.is_none()
        && removable(&at.start, &o.path, fd.as_fd());
    let mut stat = sx.map(|sx| FileStat::from_statx(&sx));
    // The attributes after the read (its access time may have moved), of the same version.
    let content = match &stat {
        Some(st) if wants_content(o, flags, kind, st) => whole_content(fd.as_fd(), st),
        _ => None,
    }
    .map(|(content, after)| {
        stat = Some(after);
        content
    });
    let room = if kind == libc::S_IFREG && flags & libc::O_ACCMODE != libc::O_RDONLY {
        super::io::room(fd.as_fd())
    } else {
        0
    };
    let handle = s.insert(fd)?;
    let whole = content.is_some();
    Ok(pb::CallReply {
        stat,
        whole,
        room,
        via_link,
        lease,
        deps,
        removable,
        reopen_lease,
        reopen_deps,
        data: content.unwrap_or_default().into(),
        ..value(handle as i64)
    })
}

/// Whether this session may remove the name `path` (from `start`) of `file`, which a creating open just
/// made or opened (`CallReply.removable`): search and write permission on its directory for the agent,
/// neither the directory nor the file immutable or append-only, and the sticky bit's rule met whoever
/// owns the file (the directory is the agent's, or the agent has `CAP_FOWNER`): a change of the file's
/// owner is not one the lease reports (`Event.written`).
fn removable(start: &OwnedFd, path: &[u8], file: BorrowedFd<'_>) -> bool {
    const CAP_FOWNER: u32 = 3;
    // `linux/fs.h`: FS_IMMUTABLE_FL, FS_APPEND_FL.
    const FIXED: u32 = 0x10 | 0x20;
    let parent: &[u8] = match path.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(i) => &path[..i],
        None => b".",
    };
    let Ok(parent) = std::ffi::CString::new(parent) else { return false };
    let dirflags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NONBLOCK;
    let Ok(dir) = sys::openat(start.as_fd(), &parent, dirflags, 0) else { return false };
    let unfixed = |fd: BorrowedFd<'_>| sys::inode_flags(fd).is_ok_and(|f| f & FIXED == 0);
    if !unfixed(dir.as_fd()) || !unfixed(file) {
        return false;
    }
    if sys::faccessat(dir.as_fd(), c".", libc::W_OK | libc::X_OK, libc::AT_EACCESS).is_err() {
        return false;
    }
    let Ok(d) = sys::statx(dir.as_fd(), c"", libc::AT_EMPTY_PATH, libc::STATX_MODE | libc::STATX_UID) else {
        return false;
    };
    u32::from(d.stx_mode) & libc::S_ISVTX == 0 || d.stx_uid == sys::euid() || sys::has_capability(CAP_FOWNER)
}

fn wants_content(o: &pb::Open, flags: i32, kind: u32, st: &FileStat) -> bool {
    o.content_max > 0
        && kind == libc::S_IFREG
        && flags & libc::O_ACCMODE == libc::O_RDONLY
        && flags & (libc::O_PATH | libc::O_TRUNC) == 0
        && u64::try_from(st.size).is_ok_and(|size| size <= o.content_max.min(super::MAX_BUF as u64))
}

/// The file's whole content, if it is unchanged (size, mtime, ctime) from `st` after reading it, and its
/// attributes then.
pub fn whole_content(fd: std::os::fd::BorrowedFd<'_>, st: &FileStat) -> Option<(Vec<u8>, FileStat)> {
    let size = usize::try_from(st.size).ok()?;
    let mut buf = Vec::with_capacity(size);
    while buf.len() < size {
        match sys::read(fd, size - buf.len(), Some(buf.len() as i64)) {
            Ok(chunk) if !chunk.is_empty() => buf.extend_from_slice(&chunk),
            _ => return None,
        }
    }
    let after = sys::statx(fd, c"", libc::AT_EMPTY_PATH, DEFAULT_STATX_MASK).ok()?;
    let after = FileStat::from_statx(&after);
    after.same_version(st).then_some((buf, after))
}
