//! Open.

use super::{at, value, Res};
use crate::session::{ProcCtx, Session};
use crate::sys;
use homeward_proto::flags::open_from_wire;
use homeward_proto::pb::{self, FileStat};
use std::os::fd::AsFd;

/// What `statx` reports for an opened file and for the stat family (mask 0).
pub const DEFAULT_STATX_MASK: u32 = libc::STATX_BASIC_STATS | libc::STATX_BTIME;

/// `openat`/`openat2` at home; the value is the new handle, and the reply carries the opened file's
/// attributes so that the shim learns its type and size without another round trip.
pub fn open(s: &Session, ctx: &ProcCtx, o: &pb::Open) -> Res {
    let mut at = at(s, ctx, o.dir.as_ref(), &o.path)?;
    if o.path.is_empty() && o.dir.as_ref().is_some_and(|d| d.handle != 0) {
        // The program opened a magic link to one of its home descriptors (`/proc/self/fd/N`): reopen that file.
        at.path = super::fd_path(&at.dir)?;
    }
    s.check_room()?;
    // Home's descriptors never leak into children; the program's O_CLOEXEC is the shim's business.
    let flags = open_from_wire(o.flags) | libc::O_CLOEXEC;
    let creates = flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE;
    let umask = creates.then(|| sys::UmaskScope::enter(ctx.umask));
    let mode = umask.as_ref().map_or(o.mode, |u| u.mode(o.mode));
    let fd = if o.resolve != 0 {
        sys::openat2(at.dir.as_fd(), &at.path, flags, mode, o.resolve)
    } else {
        sys::openat(at.dir.as_fd(), &at.path, flags, mode)
    };
    drop(umask);
    let fd = fd?;
    let stat = sys::statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH, DEFAULT_STATX_MASK)
        .ok()
        .map(|sx| FileStat::from_statx(&sx));
    let handle = s.insert(fd)?;
    Ok(pb::CallReply { stat, ..value(handle as i64) })
}
