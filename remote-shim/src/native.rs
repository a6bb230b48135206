//! Copies whose reads are the kernel's: the upper half of the reserved range.
//!
//! Every call on a placeholder in the range is notified, reads of a fresh copy included, though the
//! receiving thread then only answers `CONTINUE`: ~10 µs each on the development VM, where python reads a
//! small file in four calls (`ioctl(TCGETS)`, `lseek`, two `read`s). So a placeholder whose copy is
//! complete, fresh and small ([`MAX_SIZE`]), of a read-only regular file, is installed in the upper half
//! of the range, where the filter leaves `read`, `pread64`, `readv`, `preadv`, `preadv2`, `lseek` (but to
//! data or a hole), `readahead`, `fadvise64` and isatty's `ioctl(TCGETS)` to the kernel (`filter`). Every
//! other call on it is notified as before (`fstat`, `mmap`, writes, locks, ...).
//!
//! Its reads then cannot be turned home when the file changes, so the copy follows the file instead:
//! - the job's own changes (a write, an allocation, a copy into it, a truncate, an open that empties it,
//!   through any descriptor or a pumped alias) refresh every such copy of that file before the call that
//!   made the change returns (for a write sent behind, right after it is sent: home runs it first), read
//!   again from home through the copy's own home handle, or, for one opened without home, by reopening the
//!   file through the handle that changed it; a truncate by path, which names no file, refreshes them all;
//! - a change made at home is seen as any copy sees one (close-to-open, decision 4): by the next open, or
//!   when `fstat` or a later open at home shows a new version, which refreshes the copy too (so a program
//!   that polls `fstat` to follow a growing file, as `tail -f` does, reads what it grew by).
//!
//! A copy that cannot be read again (its file gone from home) keeps its last content. A dup of another
//! handle to a number in the upper half is refused (`EBADF`, as for a number beyond the limit): its reads
//! would not go home.

use crate::fdtable::Handle;
use crate::supervisor::Supervisor;
use homeward_proto::pb::{self, call_request::Op, CallReply};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;

/// Largest copy served from the upper half (each change of its file reads it again whole).
pub const MAX_SIZE: i64 = 1 << 20;

/// Largest file a copy is read again from (one that grew beyond stays as it was, stale).
const MAX_REFRESH: u64 = 64 << 20;

/// Largest copy moved below the range by `dup2` ([`alias`]): the `dup2` waits for the rest of its fill,
/// and the file may grow well past it before it can no longer be read again.
const MAX_ALIAS: u64 = 16 << 20;

/// Bytes per read when a copy is refreshed.
const CHUNK: u64 = 4 << 20;

/// Whether `h`'s placeholder, installed now, goes to the upper half.
pub fn place(sup: &Supervisor, h: &Arc<Handle>) -> bool {
    if h.is_native() {
        return h.copy() == crate::fdtable::CopyState::Fresh;
    }
    if !h.native_candidate() {
        return false;
    }
    follow(sup, h)
}

/// Kept in step with its file from now on, as a copy in the upper half is: whether it still holds the
/// file as the job left it (else it is stale, and must not be read by the kernel).
fn follow(sup: &Supervisor, h: &Arc<Handle>) -> bool {
    // Registered and marked first, then checked: a change of the job numbered after this check refreshes
    // this copy (`refresh_touched` finds it), one numbered before it makes the copy stale (and this install
    // goes to the lower half). A mark is never taken back: another install may have gone up meanwhile.
    sup.fds.register(h);
    sup.fds.go_native(h);
    let changed = h.copied_at().is_none_or(|mark| sup.link.attrs.changed_since(h.inode(), mark));
    if changed {
        h.mark_stale();
    }
    !changed
}

/// A read-only copy `dup2` moves below the range (a shell's `< file`, `dd if=`): instead of a pumped pipe,
/// the program gets a read-only description of the copy itself, at the offset the description had, whose
/// reads, `lseek` and `fstat` are the kernel's, kept in step with the file as a copy in the upper half
/// is. Only a regular file opened read-only whose whole copy (up to [`MAX_ALIAS`]; a fill under way is
/// waited for) is fresh; `None` otherwise (the caller pumps). The new description is the program's
/// descriptor at `target` alone: the descriptor it was moved from keeps its own offset from then on
/// (Known limits).
pub async fn alias(
    call: &crate::syscalls::Call<'_>,
    h: &Arc<Handle>,
    target: u32,
    cloexec: bool,
) -> Option<crate::syscalls::Outcome> {
    use crate::fdtable::CopyState;
    use std::os::fd::AsFd;
    let sup = call.sup;
    let regular = h.stat.mode & libc::S_IFMT == libc::S_IFREG;
    let read_only = h.flags & libc::O_ACCMODE == libc::O_RDONLY && h.flags & libc::O_PATH == 0;
    let small = u64::try_from(h.stat.size).is_ok_and(|size| size <= MAX_ALIAS);
    if !(regular && read_only && small) {
        return None;
    }
    if h.lazy().is_some_and(|l| l.gone()) {
        return None;
    }
    if h.copy() == CopyState::Filling {
        h.fill_arc()?.wait_over().await;
    }
    if sup.fds.copy_of(h, &sup.link.attrs) != CopyState::Fresh || !(h.is_native() || follow(sup, h)) {
        return None;
    }
    if h.copy() != CopyState::Fresh {
        return None;
    }
    // The descriptor's offset and status flags (a shared placeholder's descriptions each have their own).
    let fd = call.arg(0);
    let (pos, flags) = crate::fdtable::fd_info(call.tid, fd)?;
    let keep = libc::O_NONBLOCK | libc::O_APPEND | libc::O_NOATIME;
    let description = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags & keep | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&h.memfd)));
    // (One that cannot be made is pumped, as before: `dup2` itself would not fail there.)
    let description = description.ok()?;
    crate::sys::lseek(description.as_fd(), i64::try_from(pos).ok()?, libc::SEEK_SET).ok()?;
    crate::sys::mirror_attributes(h.memfd.as_fd(), &h.stat);
    Some(
        sup.fds
            .install_below(sup.listener.as_fd(), call.id, target, h, description.as_fd(), cloexec)
            .map(|fd| crate::syscalls::Action::Answered(i64::from(fd)))
            .map_err(|e| homeward_proto::Errno::from_io(&e)),
    )
}

/// What a call about to go home changes in files that have copies in the upper half.
pub enum Touched {
    Nothing,
    /// The content of this file (device, inode), through this home handle.
    File((u64, u64), u64),
    /// The content of the file an open empties (known from its reply).
    Emptied,
    /// The content of a file it does not name (a truncate by path): every such copy.
    Unknown,
}

/// What `op` (with home handles) changes, as far as copies in the upper half are concerned.
/// (Worked out for every call, not only once copies are in the upper half: one may go there while the
/// call is under way, and `refresh_touched` looks for them once it is done.)
pub fn touched(sup: &Supervisor, op: &Op) -> Touched {
    let through = |handle: u64| match sup.link.attrs.inode_of(handle) {
        Some(inode) => Touched::File(inode, handle),
        None => Touched::Unknown,
    };
    match op {
        Op::Write(w) => through(w.handle),
        Op::Fallocate(f) => through(f.handle),
        Op::CopyRange(c) => through(c.out_handle),
        Op::Truncate(t) => match t.dir.as_ref().map(|d| d.handle).filter(|_| t.path.is_empty()) {
            Some(handle) => through(handle),
            None => Touched::Unknown,
        },
        Op::Open(o) if homeward_proto::flags::open_from_wire(o.flags) & libc::O_TRUNC != 0 => {
            Touched::Emptied
        }
        _ => Touched::Nothing,
    }
}

/// Refreshes the copies in the upper half that `touched` (made by a call whose reply is `reply`, if it
/// was waited for; `call`, when made by one) concerns. The job's descriptors of the file that it closed
/// are collected first: a copy nobody holds is not read again (a loop that rewrites and rereads a file
/// leaves one behind per turn until the collector's next scan).
pub async fn refresh_touched(
    sup: &Supervisor,
    call: Option<&crate::syscalls::Call<'_>>,
    proc: pb::Proc,
    touched: Touched,
    reply: Option<&CallReply>,
) {
    let (inode, via) = match touched {
        Touched::Nothing => return,
        Touched::File(inode, via) => (Some(inode), Some(via)),
        Touched::Emptied => {
            let Some(reply) = reply else { return };
            // An open that failed emptied nothing.
            let Ok(opened) = crate::syscalls::outcome(reply) else { return };
            match reply.stat {
                Some(st) => (Some((st.dev, st.ino)), u64::try_from(opened).ok()),
                None => (None, None),
            }
        }
        Touched::Unknown => (None, None),
    };
    let copies = match inode {
        Some(inode) => {
            if sup.fds.natives_of(inode).is_empty() {
                return;
            }
            sup.collect_file(inode).await;
            sup.fds.natives_of(inode)
        }
        None => sup.fds.natives(),
    };
    for h in copies {
        if h.home_handle().is_none() && via.is_none() {
            // Opened without home, and no handle of the file to reopen it through: opened there now.
            if let Some(call) = call {
                let _ = Box::pin(crate::lazy::home_handle(call, proc, &h)).await;
            }
        }
        refresh(sup, proc, &h, via).await;
    }
}

/// Reads `h`'s file again from home into its copy: through its own home handle, else by reopening the
/// file through home handle `via` (one of the same file). The copy is fresh again as of the job's changes
/// so far; one that cannot be read keeps its last content (and is stale for the calls still notified).
pub async fn refresh(sup: &Supervisor, proc: pb::Proc, h: &Handle, via: Option<u64>) -> bool {
    let _one = h.refreshing.lock().await;
    let mark = sup.link.attrs.change_mark();
    let content = match h.home_handle() {
        Some(id) => read_all(sup, proc, id).await,
        None => match via {
            Some(via) => read_through(sup, proc, via).await,
            None => None,
        },
    };
    // (Held while the placeholder is written: a map of it never copies the version opened over it.)
    let mut filled = h.filled.lock().await;
    let written = content.and_then(|bytes| {
        let file = std::fs::File::from(h.memfd.try_clone().ok()?);
        file.write_all_at(&bytes, 0).ok()?;
        file.set_len(bytes.len() as u64).ok()
    });
    *filled |= written.is_some();
    drop(filled);
    // Its memfd no longer holds the version later opens of it would share.
    sup.fds.unshare_key(h);
    match written {
        Some(()) => h.recopied(mark, None),
        None => {
            tracing::warn!(
                handle = h.id,
                "a copy read without notifications could not be read again from home"
            );
            h.mark_stale();
        }
    }
    written.is_some()
}

/// Home shows `st`, another version of `h`'s file than its copy holds (by `fstat`, or an open at home): a
/// copy in the upper half is read again (once per version seen), any other one is stale from now on.
pub async fn changed_at_home(call: &crate::syscalls::Call<'_>, h: &Handle, st: &pb::FileStat) {
    if !h.is_native() {
        h.mark_stale();
        return;
    }
    if seen(h, st) {
        return;
    }
    // One opened without home is opened there first (which may refresh it already).
    if crate::lazy::home_handle(call, call.proc(), h).await.is_err() {
        return;
    }
    opened_changed(call, h, st).await;
}

/// [`changed_at_home`] for a handle that has its home handle (one just opened at home).
pub async fn opened_changed(call: &crate::syscalls::Call<'_>, h: &Handle, st: &pb::FileStat) {
    if !h.is_native() {
        h.mark_stale();
        return;
    }
    if seen(h, st) {
        return;
    }
    if refresh(call.sup, call.proc(), h, None).await {
        h.recopied(h.copied_at().unwrap_or(0), Some(*st));
    }
}

/// Reads `h`'s copy again from home (a stale copy about to be mapped), opening it there first if it was
/// opened without home.
pub async fn reread(call: &crate::syscalls::Call<'_>, h: &Handle) {
    // Not too large, and no fill under way that could land old chunks after it.
    let size = u64::try_from(h.stat.size).is_ok_and(|size| size <= MAX_REFRESH);
    let quiet = h.fill().is_none_or(|fill| fill.is_over());
    if size && quiet && crate::lazy::home_handle(call, call.proc(), h).await.is_ok() {
        refresh(call.sup, call.proc(), h, None).await;
    }
}

/// Whether `h`'s copy was read again at version `st` already.
fn seen(h: &Handle, st: &pb::FileStat) -> bool {
    h.copy_version().is_some_and(|v| v.same_version(st))
}

/// The whole content of home handle `id`, read from its start (its offset stays).
async fn read_all(sup: &Supervisor, proc: pb::Proc, id: u64) -> Option<Vec<u8>> {
    let mut content = Vec::new();
    loop {
        let offset = Some(content.len() as i64);
        let reply = sup.link.call(proc, Op::Read(pb::Read { handle: id, len: CHUNK, offset })).await.ok()?;
        let n = crate::syscalls::outcome(&reply).ok()?;
        content.extend_from_slice(reply.data.get(..usize::try_from(n).ok()?)?);
        if (n as u64) < CHUNK {
            return Some(content);
        }
        if content.len() as u64 >= MAX_REFRESH {
            // Grown far beyond what the upper half takes: not read again (the copy goes stale).
            return None;
        }
    }
}

/// The whole content of the file home handle `via` is open on, read through a new read-only open of it.
async fn read_through(sup: &Supervisor, proc: pb::Proc, via: u64) -> Option<Vec<u8>> {
    let op = Op::Open(pb::Open {
        dir: Some(pb::Dir { handle: via }),
        path: Vec::new().into(),
        flags: homeward_proto::flags::open_to_wire(libc::O_RDONLY | libc::O_CLOEXEC),
        mode: 0,
        resolve: 0,
        content_max: 0,
        lease: false,
    });
    let reply = sup.link.call(proc, op).await.ok()?;
    let id = u64::try_from(crate::syscalls::outcome(&reply).ok()?).ok()?;
    let content = read_all(sup, proc, id).await;
    let _ = sup.link.call(proc, Op::Close(pb::Close { handle: id, more: vec![] })).await;
    content
}
