//! Data calls on forwarded descriptors: read/write and their vector and positional forms, lseek, fsync,
//! fallocate, copy_file_range, sendfile, splice, ioctl, and mmap of home files.

use super::{count, read_data, simple, Action, Call, Outcome};
use crate::fdtable::{CopyState, Handle};
use crate::memory::{self, Iov, MAX_IO};
use crate::supervisor::Supervisor;
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::Errno;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

pub async fn serve(call: &Call<'_>, nr: i64) -> Option<Outcome> {
    // sendfile and splice may involve the program's own descriptors on either side.
    match nr {
        libc::SYS_sendfile => return Some(sendfile(call).await),
        libc::SYS_splice => return Some(splice(call).await),
        libc::SYS_copy_file_range => return Some(copy_file_range(call).await),
        _ => {}
    }
    let fd_arg = if nr == libc::SYS_mmap { 4 } else { 0 };
    let known = matches!(
        nr,
        libc::SYS_read
            | libc::SYS_write
            | libc::SYS_pread64
            | libc::SYS_pwrite64
            | libc::SYS_readv
            | libc::SYS_writev
            | libc::SYS_preadv
            | libc::SYS_pwritev
            | libc::SYS_preadv2
            | libc::SYS_pwritev2
            | libc::SYS_lseek
            | libc::SYS_fsync
            | libc::SYS_fdatasync
            | libc::SYS_syncfs
            | libc::SYS_sync_file_range
            | libc::SYS_fallocate
            | libc::SYS_readahead
            | libc::SYS_ioctl
            | libc::SYS_mmap
    ) || is_fadvise(nr);
    if !known {
        return None;
    }
    let Some(h) = call.handle(fd_arg) else { return Some(Ok(Action::Continue)) };
    let a = |i| call.arg(i);
    if nr == libc::SYS_mmap && shared_writable(a(2), a(3)) {
        return Some(shared_mmap(call, &h).await);
    }
    // A placeholder in the range, or one below it (a read-only copy moved to 1 or 2, whose `lseek` is
    // notified there): the description's offset is the placeholder's. (Not a pumped pipe.)
    let fd = a(fd_arg);
    let placeholder = call.sup.fds.range.contains(fd) || call.sup.fds.lookup(call.tid, fd).is_some();
    if placeholder {
        let mut copy = call.sup.fds.copy_of(&h, &call.sup.link.attrs);
        if let (CopyState::Filling, Some(fill)) = (copy, h.fill()) {
            let (start, end) = bytes_needed(call, &h, nr);
            fill.wait(start, end).await;
            copy = call.sup.fds.copy_of(&h, &call.sup.link.attrs);
        }
        match copy {
            // The placeholder holds the content (or, filling, the bytes asked for) and the description's
            // offset: the kernel serves it.
            CopyState::Fresh | CopyState::Filling if served_by_copy(nr, a(2) as i32) => {
                return Some(Ok(Action::Continue))
            }
            CopyState::Fresh | CopyState::Stale | CopyState::Filling => {
                if let Some(outcome) = from_stale_copy(call, &h, nr).await {
                    return Some(outcome);
                }
            }
            CopyState::None => {}
        }
    }
    Some(match nr {
        libc::SYS_read => read(call, &h, &[iov(a(1), a(2))], None).await,
        libc::SYS_pread64 => read(call, &h, &[iov(a(1), a(2))], Some(a(3) as i64)).await,
        libc::SYS_readv => readv(call, &h, None).await,
        // Only the `2` forms take -1 for "at the offset"; for preadv/pwritev it is a negative offset (EINVAL).
        libc::SYS_preadv => readv(call, &h, Some(a(3) as i64)).await,
        libc::SYS_preadv2 => readv(call, &h, position(a(3))).await,
        libc::SYS_write => write(call, &h, &[iov(a(1), a(2))], None).await,
        libc::SYS_pwrite64 => write(call, &h, &[iov(a(1), a(2))], Some(a(3) as i64)).await,
        libc::SYS_writev => writev(call, &h, None).await,
        libc::SYS_pwritev => writev(call, &h, Some(a(3) as i64)).await,
        libc::SYS_pwritev2 => writev(call, &h, position(a(3))).await,
        libc::SYS_lseek => lseek(call, &h).await,
        libc::SYS_fsync | libc::SYS_syncfs => fsync(call, &h, false).await,
        libc::SYS_fdatasync | libc::SYS_sync_file_range => fsync(call, &h, true).await,
        libc::SYS_fallocate => {
            let op = pb::Fallocate { handle: h.id, mode: a(1) as u32, offset: a(2) as i64, len: a(3) as i64 };
            // It takes room home does not report.
            crate::behind::forget_room(h.stat.dev);
            simple(call, Op::Fallocate(op)).await
        }
        libc::SYS_ioctl => ioctl(call, &h).await,
        libc::SYS_mmap => mmap(call, &h).await,
        // readahead and fadvise are hints: accepted, as the kernel accepts them on a regular file.
        _ => Ok(Action::Value(0)),
    })
}

/// The calls a fresh copy serves alone (`arg2` is lseek's whence).
fn served_by_copy(nr: i64, arg2: i32) -> bool {
    match nr {
        libc::SYS_read
        | libc::SYS_pread64
        | libc::SYS_readv
        | libc::SYS_preadv
        | libc::SYS_preadv2
        | libc::SYS_mmap
        | libc::SYS_readahead => true,
        libc::SYS_lseek => matches!(arg2, libc::SEEK_SET | libc::SEEK_CUR | libc::SEEK_END),
        _ => is_fadvise(nr),
    }
}

/// Copies larger than this are read in many calls: their descriptors are remembered ([`crate::readers`]).
const READ_IN_MANY_CALLS: i64 = 256 << 10;

/// The handle of a read-family call that its placeholder's copy serves right now without waiting (see
/// `Supervisor::serve_from_copy`); `None` sends the call down the full path.
pub fn copy_serves(sup: &Supervisor, tid: u32, nr: i64, args: &[u64; 6]) -> Option<Arc<Handle>> {
    let fd_arg = if nr == libc::SYS_mmap { 4 } else { 0 };
    let fd = args[fd_arg];
    if !served_by_copy(nr, args[2] as i32) || !sup.fds.range.contains(fd) {
        return None;
    }
    if nr == libc::SYS_mmap && shared_writable(args[2], args[3]) {
        return None;
    }
    let (h, at) = match sup.fds.readers.get(tid, fd) {
        Some(known) => known,
        None => {
            let h = sup.fds.lookup(tid, fd)?;
            // A file read in many calls, or one still being filled (whose reads need the offset).
            if h.stat.size > READ_IN_MANY_CALLS || h.copy() == CopyState::Filling {
                sup.fds.readers.remember(tid, sup.procs.tgid_of(tid), fd, h)
            } else {
                (h, None)
            }
        }
    };
    match sup.fds.copy_of(&h, &sup.link.attrs) {
        CopyState::Fresh => Some(h),
        CopyState::Filling => {
            let (start, end) = match nr {
                libc::SYS_pread64 => (args[3], args[3].saturating_add(args[2])),
                libc::SYS_read => {
                    let pos = at.or_else(|| fd_offset(tid, fd))?;
                    (pos, pos.saturating_add(args[2]))
                }
                libc::SYS_lseek => (0, 0),
                _ => return None,
            };
            h.fill()?.has(start, end).then_some(h)
        }
        _ => None,
    }
}

/// The file offset of descriptor `fd` of thread `tid` (from `/proc/TID/fdinfo`).
fn fd_offset(tid: u32, fd: u64) -> Option<u64> {
    crate::fdtable::fd_info(tid, fd).map(|(pos, _)| pos)
}

/// The bytes `[start, end)` of the file a call on a copy being filled needs; the whole file when that
/// cannot be told.
fn bytes_needed(call: &Call<'_>, h: &Handle, nr: i64) -> (u64, u64) {
    let size = u64::try_from(h.stat.size).unwrap_or(0);
    let iov_total = || {
        memory::read_iovecs(call.tid, call.arg(1), call.arg(2))
            .and_then(|iovs| memory::iov_total(&iovs))
            .map_or(size, |n| n as u64)
    };
    let at_offset = |len: u64| match fd_offset(call.tid, call.arg(0)) {
        Some(pos) => (pos, pos.saturating_add(len)),
        None => (0, size),
    };
    let at = |pos: u64, len: u64| (pos, pos.saturating_add(len));
    match nr {
        libc::SYS_read => at_offset(call.arg(2)),
        libc::SYS_readv => at_offset(iov_total()),
        libc::SYS_preadv2 if call.arg(3) as i64 == -1 => at_offset(iov_total()),
        libc::SYS_pread64 => at(call.arg(3), call.arg(2)),
        libc::SYS_preadv | libc::SYS_preadv2 => at(call.arg(3), iov_total()),
        libc::SYS_lseek if matches!(call.arg_i32(2), libc::SEEK_SET | libc::SEEK_CUR | libc::SEEK_END) => {
            (0, 0)
        }
        libc::SYS_ioctl | libc::SYS_readahead => (0, 0),
        _ if is_fadvise(nr) => (0, 0),
        _ => (0, size),
    }
}

/// Calls on a handle whose offset lives in its placeholder (a copy, fresh or stale) that cannot use home's
/// offset: data is read at home at the placeholder's offset, which then moves as the kernel would move it.
async fn from_stale_copy(call: &Call<'_>, h: &Arc<Handle>, nr: i64) -> Option<Outcome> {
    let fd = call.arg_i32(0);
    Some(match nr {
        libc::SYS_read => {
            let iovs = [iov(call.arg(1), call.arg(2))];
            at_copy_offset(call, fd, |pos| read(call, h, &iovs, Some(pos))).await
        }
        libc::SYS_readv => match memory::read_iovecs(call.tid, call.arg(1), call.arg(2)) {
            Ok(iovs) => at_copy_offset(call, fd, |pos| read(call, h, &iovs, Some(pos))).await,
            Err(e) => Err(e),
        },
        libc::SYS_preadv2 if call.arg(3) as i64 == -1 => {
            match memory::read_iovecs(call.tid, call.arg(1), call.arg(2)) {
                Ok(iovs) => at_copy_offset(call, fd, |pos| read(call, h, &iovs, Some(pos))).await,
                Err(e) => Err(e),
            }
        }
        libc::SYS_lseek => match call.arg_i32(2) {
            libc::SEEK_SET | libc::SEEK_CUR => Ok(Action::Continue),
            _ => {
                // SEEK_END, SEEK_DATA, SEEK_HOLE: an absolute answer from home, then set here.
                let out = lseek(call, h).await;
                if let Ok(Action::Value(pos)) = out {
                    if let Err(e) = call.local_fd(fd).and_then(|dup| seek_to(&dup, pos)) {
                        return Some(Err(e));
                    }
                }
                out
            }
        },
        libc::SYS_ioctl if call.arg(1) as libc::c_ulong == libc::FIONREAD => {
            let left = call.local_fd(fd).and_then(|dup| {
                let pos = current_offset(&dup)?;
                let size = std::fs::File::from(dup).metadata().map_err(|e| Errno::from_io(&e))?.len() as i64;
                Ok((size - pos).max(0) as i32)
            });
            left.and_then(|n| memory::write_pod(call.tid, call.arg(2), &n)).map(|()| Action::Value(0))
        }
        _ => return None,
    })
}

/// Runs `op` at the offset kept in the placeholder of the program's descriptor `fd`, then advances it by
/// the value `op` returns.
async fn at_copy_offset<F, Fut>(call: &Call<'_>, fd: i32, op: F) -> Outcome
where
    F: FnOnce(i64) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let dup = call.local_fd(fd)?;
    let pos = current_offset(&dup)?;
    let out = op(pos).await;
    if let Ok(Action::Value(n)) = out {
        seek_to(&dup, pos + n)?;
    }
    out
}

fn current_offset(fd: &OwnedFd) -> Result<i64, Errno> {
    crate::sys::lseek(fd.as_fd(), 0, libc::SEEK_CUR).map_err(|e| Errno::from_io(&e))
}

fn seek_to(fd: &OwnedFd, pos: i64) -> Result<(), Errno> {
    crate::sys::lseek(fd.as_fd(), pos, libc::SEEK_SET).map(drop).map_err(|e| Errno::from_io(&e))
}

fn is_fadvise(nr: i64) -> bool {
    #[cfg(target_arch = "x86_64")]
    return nr == libc::SYS_fadvise64;
    #[cfg(not(target_arch = "x86_64"))]
    return nr == libc::SYS_fadvise64_64;
}

fn iov(base: u64, len: u64) -> Iov {
    Iov { base, len: len as usize }
}

/// The offset of preadv2/pwritev2: -1 means the current file offset.
fn position(raw: u64) -> Option<i64> {
    let off = raw as i64;
    (off != -1).then_some(off)
}

async fn read(call: &Call<'_>, h: &Handle, iovs: &[Iov], offset: Option<i64>) -> Outcome {
    let len = memory::iov_total(iovs)?;
    if offset.is_some_and(|o| o < 0) {
        return Err(Errno::EINVAL);
    }
    for v in iovs {
        memory::probe(call.tid, v.base, v.len.min(len))?;
    }
    // At the description's offset: kept, when it is followed here.
    let _order =
        if offset.is_none() && h.behind.follows() { Some(h.behind.order.lock().await) } else { None };
    let before = if offset.is_none() { h.behind.pos() } else { None };
    if let Some(outcome) = read_shadow(call, h, iovs, len, offset.or(before), offset.is_none()).await {
        return outcome;
    }
    let read = call.home_value(Op::Read(pb::Read { handle: h.id, len: len as u64, offset })).await;
    if offset.is_none() {
        h.behind.set_pos(before.zip(read.as_ref().ok()).map(|(pos, (n, _))| pos + n));
    }
    let (n, reply) = read?;
    memory::scatter(call.tid, iovs, read_data(n, &reply, len)?)?;
    Ok(Action::Value(n))
}

/// A read of what the description itself wrote into the file it emptied (`Behind::start_shadow`), at
/// `at`: answered here. At the offset (`moves`), the offset moves on, at home too by a seek sent behind;
/// `None` when the shadow cannot answer.
async fn read_shadow(
    call: &Call<'_>,
    h: &Handle,
    iovs: &[Iov],
    len: usize,
    at: Option<i64>,
    moves: bool,
) -> Option<Outcome> {
    if !h.behind.has_shadow() {
        return None;
    }
    let at = u64::try_from(at?).ok()?;
    let mark = call.sup.link.attrs.foreign_mark((h.stat.dev, h.stat.ino), h.id);
    let data = h.behind.shadow_read(at, len, mark)?;
    let n = data.len() as i64;
    if moves && n > 0 {
        let target = at as i64 + n;
        if !(target <= MAX_BEHIND_END && crate::behind::has_room(h.stat.dev)) {
            return None;
        }
        if let Err(e) = seek_behind(call, h, target).await {
            return Some(Err(e));
        }
    }
    Some(memory::scatter(call.tid, iovs, &data).map(|()| Action::Value(n)))
}

async fn readv(call: &Call<'_>, h: &Handle, offset: Option<i64>) -> Outcome {
    let iovs = memory::read_iovecs(call.tid, call.arg(1), call.arg(2))?;
    read(call, h, &iovs, offset).await
}

async fn write(call: &Call<'_>, h: &Handle, iovs: &[Iov], offset: Option<i64>) -> Outcome {
    if offset.is_some_and(|o| o < 0) {
        return Err(Errno::EINVAL);
    }
    let len = memory::iov_total(iovs)?;
    let data = memory::gather(call.tid, iovs, len)?;
    // A write sent behind that failed at home is reported here, as the kernel reports a failed write-back.
    if let Some(errno) = h.behind.take_owed() {
        return Err(errno);
    }
    let sent = data.len();
    // At the description's offset: kept, when it is followed here.
    let _order =
        if offset.is_none() && h.behind.follows() { Some(h.behind.order.lock().await) } else { None };
    let before = if offset.is_none() { h.behind.pos() } else { None };
    // The shadow's copy of the bytes, when there is a shadow.
    let shadowed = h.behind.has_shadow().then(|| data.clone());
    // pwritev2's flags (RWF_DSYNC, RWF_APPEND, ...) go home with it; such a write waits.
    // (Argument 5: the offset takes two, low and high.)
    let rwf = if call.nr == libc::SYS_pwritev2 { call.arg(5) as u32 } else { 0 };
    if rwf & libc::RWF_APPEND as u32 != 0 {
        // At the end, wherever that is: the offset followed here and the shadow no longer know.
        h.behind.untrack();
    }
    let op = Op::Write(pb::Write { handle: h.id, data: data.into(), offset, rwf });
    // Where the bytes go, for the shadow (`Behind::start_shadow`).
    let at =
        offset.or(before).and_then(|o| u64::try_from(o).ok()).filter(|_| rwf & libc::RWF_APPEND as u32 == 0);
    let ends_near =
        offset.is_none_or(|o| o.checked_add(sent as i64).is_some_and(|end| end <= MAX_BEHIND_END));
    if writes_behind(h) && sent > 0 && ends_near && call.nr != libc::SYS_pwritev2 {
        if let Some(ticket) = h.behind.try_write(h.stat.dev, sent as u64) {
            let at_offset = offset.is_none();
            let done = move |reply: Option<pb::CallReply>| {
                ticket.answered(reply.as_ref(), sent as i64, "write", at_offset);
            };
            call.home_behind(op, done).await?;
            if let Some(bytes) = &shadowed {
                h.behind.shadow_write(at, bytes);
            }
            if offset.is_none() {
                h.behind.set_pos(before.map(|pos| pos + sent as i64));
            }
            return Ok(Action::Value(sent as i64));
        }
    }
    let written = call.home_value(op).await;
    match &written {
        Ok((n, _)) => {
            if let Some(bytes) = &shadowed {
                h.behind.shadow_write(at, &bytes[..usize::try_from(*n).unwrap_or(0).min(bytes.len())]);
            }
        }
        Err(_) => h.behind.drop_shadow(),
    }
    if offset.is_none() {
        h.behind.set_pos(before.zip(written.as_ref().ok()).map(|(pos, (n, _))| pos + n));
    }
    let (n, reply) = written?;
    if writes_behind(h) {
        crate::behind::set_room(h.stat.dev, reply.room);
    }
    count(n, sent).map(|n| Action::Value(n as i64))
}

/// Farthest end of a write, or place of a seek, sent behind: below every local file system's largest file.
const MAX_BEHIND_END: i64 = 1 << 32;

/// Whether writes to `h` may go behind (see [`crate::behind`]): a regular file opened for writing, whose
/// writes neither wait for the disk (`O_SYNC`, `O_DSYNC`) nor have alignment rules (`O_DIRECT`).
fn writes_behind(h: &Handle) -> bool {
    h.stat.mode & libc::S_IFMT == libc::S_IFREG
        && h.flags & libc::O_ACCMODE != libc::O_RDONLY
        && h.flags & (libc::O_PATH | libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC) == 0
}

/// fsync, fdatasync: after home's answer, the error of a write sent behind that failed, if any.
async fn fsync(call: &Call<'_>, h: &Handle, datasync: bool) -> Outcome {
    if let Some(synced) = crate::lazy::sync_unopened(call, h, datasync).await {
        return synced;
    }
    // As natively, a sync of the file writes what its shared mappings hold.
    call.sup.shared_maps.write_back(call.sup, crate::shared_maps::Which::Inode(h.inode())).await?;
    let mark = h.behind.mark();
    // A regular file opened by an absolute name: home looks that name up again once synced, so the next
    // `fstat` (sqlite's, at every transaction) finds the attributes the job's writes left.
    let origin = h
        .origin()
        .filter(|o| o.key.proc == 0 && h.stat.mode & libc::S_IFMT == libc::S_IFREG)
        .filter(|_| !h.name_moved.load(std::sync::atomic::Ordering::Relaxed));
    let ticket = call.sup.link.attrs.ticket_past_own_change();
    let op = pb::Fsync {
        handle: h.id,
        datasync,
        lease_path: origin.map(|o| o.key.path.clone()).unwrap_or_default().into(),
        lease_follow: origin.is_some_and(|o| o.key.follow),
        ..Default::default()
    };
    let synced = call.home_value(Op::Fsync(op)).await;
    // Home ran every write sent behind before the sync; their replies may still be on the way.
    h.behind.settle(mark).await;
    if let Some(errno) = h.behind.take_owed() {
        return Err(errno);
    }
    let (_, reply) = synced?;
    if let (Some(origin), Some(st)) = (origin, reply.stat.filter(|st| (st.dev, st.ino) == h.inode())) {
        super::stat::put_found_by_name(call, &origin.key, st, ticket, &reply);
    }
    Ok(Action::Value(0))
}

async fn writev(call: &Call<'_>, h: &Handle, offset: Option<i64>) -> Outcome {
    let iovs = memory::read_iovecs(call.tid, call.arg(1), call.arg(2))?;
    write(call, h, &iovs, offset).await
}

async fn lseek(call: &Call<'_>, h: &Handle) -> Outcome {
    let whence = match call.arg_i32(2) {
        libc::SEEK_SET => pb::Whence::Set,
        libc::SEEK_CUR => pb::Whence::Cur,
        libc::SEEK_END => pb::Whence::End,
        libc::SEEK_DATA => pb::Whence::Data,
        libc::SEEK_HOLE => pb::Whence::Hole,
        _ => return Err(Errno::EINVAL),
    };
    let offset = call.arg(1) as i64;
    let _order = if h.behind.follows() { Some(h.behind.order.lock().await) } else { None };
    // Where the seek goes, when that is known here: a place from the start, or from the offset followed.
    let target = match (whence, h.behind.pos()) {
        (pb::Whence::Set, _) => Some(offset),
        (pb::Whence::Cur, Some(pos)) => match pos.checked_add(offset) {
            Some(target) if target >= 0 => Some(target),
            // The kernel's answer to a seek before the start; the offset stays.
            _ => return Err(Errno::EINVAL),
        },
        _ => None,
    };
    if whence == pb::Whence::Cur && offset == 0 && target.is_some() {
        // Where the offset is (`ftell`): nothing moves.
        return Ok(Action::Value(target.unwrap_or_default()));
    }
    // Seeking a regular file on a local disk to a known place cannot fail (within any such file system's
    // size limit), and its result is that place: sent behind, as a seek from the start.
    if let Some(target) = target.filter(|t| (0..=MAX_BEHIND_END).contains(t)) {
        if writes_behind(h) && crate::behind::has_room(h.stat.dev) {
            seek_behind(call, h, target).await?;
            return Ok(Action::Value(target));
        }
    }
    let op = Op::Seek(pb::Seek { handle: h.id, offset, whence: whence as i32 });
    let moved = simple(call, op).await;
    h.behind.set_pos(match &moved {
        Ok(Action::Value(pos)) => Some(*pos),
        _ => None,
    });
    moved
}

/// Moves the description's offset at home to `target` (from the start) without waiting, and notes it as
/// the offset followed here (see `crate::behind`).
async fn seek_behind(call: &Call<'_>, h: &Handle, target: i64) -> Result<(), Errno> {
    let op = Op::Seek(pb::Seek { handle: h.id, offset: target, whence: pb::Whence::Set as i32 });
    let ticket = h.behind.ticket();
    call.home_behind(op, move |reply| ticket.answered(reply.as_ref(), target, "seek", true)).await?;
    h.behind.set_pos(Some(target));
    Ok(())
}

async fn ioctl(call: &Call<'_>, h: &Arc<Handle>) -> Outcome {
    match call.arg(1) as libc::c_ulong {
        libc::FIONREAD => {
            let (n, _) = call
                .home_value(Op::Ioctl(pb::Ioctl { handle: h.id, op: pb::IoctlOp::Fionread as i32 }))
                .await?;
            memory::write_pod(call.tid, call.arg(2), &(n as i32))?;
            Ok(Action::Value(0))
        }
        // Close-on-exec lives in the program's own table, on the placeholder.
        libc::FIOCLEX | libc::FIONCLEX => Ok(Action::Continue),
        libc::FIONBIO => {
            let on: i32 = memory::read_pod(call.tid, call.arg(2))?;
            let handle = crate::lazy::description_handle(call, h, 0, true).await?;
            super::fd::set_nonblock(call, handle, on != 0).await
        }
        // Home files are regular files, directories and fifos: terminal and device requests fail as there.
        _ => Err(Errno::ENOTTY),
    }
}

/// Whether `mmap`'s protection and flags ask for a mapping whose stores reach the file.
fn shared_writable(prot: u64, flags: u64) -> bool {
    let kind = flags as i32 & 0x0f; // MAP_TYPE
    prot as i32 & libc::PROT_WRITE != 0 && (kind == libc::MAP_SHARED || kind == libc::MAP_SHARED_VALIDATE)
}

/// A writable shared mapping of a home file: only of a descriptor open for reading and writing (else
/// `EACCES`, as the kernel answers); what the program stores in it is written home by the supervisor
/// ([`crate::shared_maps`]).
async fn shared_mmap(call: &Call<'_>, h: &Arc<Handle>) -> Outcome {
    // The kernel's own checks first: a length of zero or an offset off a page is EINVAL.
    if call.arg(1) == 0 || !call.arg(5).is_multiple_of(4096) {
        return Ok(Action::Continue);
    }
    if h.flags & libc::O_PATH != 0 {
        return Err(Errno::EBADF);
    }
    if h.flags & libc::O_ACCMODE != libc::O_RDWR || h.is_shared() {
        return Err(Errno::EACCES);
    }
    // What a mapping of it holds goes home first; then the placeholder shows the file as home has it
    // now (grown, or changed by the job's writes since it was filled).
    let maps = &call.sup.shared_maps;
    maps.write_back(call.sup, crate::shared_maps::Which::Handle(h.id)).await?;
    crate::shared_maps::refill(call, h).await?;
    maps.add(h, call.tgid())?;
    Ok(Action::Continue)
}

/// Maps a home file: its content is put into the placeholder (once), then the kernel maps the placeholder.
/// A writable shared mapping's stores are written home ([`crate::shared_maps`]).
async fn mmap(call: &Call<'_>, h: &Arc<Handle>) -> Outcome {
    // A copy gone stale holds the version opened (its reads go home): read again, the map shows what the
    // file holds now.
    if call.sup.fds.copy_of(h, &call.sup.link.attrs) == CopyState::Stale {
        crate::native::reread(call, h).await;
    }
    fill_placeholder(call, h).await?;
    Ok(Action::Continue)
}

/// Copies the home file's content into the handle's memfd, once.
pub async fn fill_placeholder(call: &Call<'_>, h: &Handle) -> Result<(), Errno> {
    let mut filled = h.filled.lock().await;
    if *filled {
        return Ok(());
    }
    let key = crate::content::Key::of(&h.stat);
    if let Some(key) = &key {
        // (Not from the cache on disk: the handle may be open for writing, or the file changed since it was
        // opened; only an open's own version is taken from there, `syscalls::open`.)
        if call.sup.content.copy_into(key, &h.memfd) {
            *filled = true;
            return Ok(());
        }
    }
    let size = copy_from_home(call, h).await?;
    if let Some(key) = key.filter(|k| k.size() == size) {
        call.sup.content.insert(key, &h.memfd);
    }
    *filled = true;
    Ok(())
}

/// Copies home's file as it is now into the handle's memfd, all of it, at its size; returns the size.
/// (The caller holds `h.filled`.)
pub async fn copy_from_home(call: &Call<'_>, h: &Handle) -> Result<i64, Errno> {
    let mut offset: i64 = 0;
    let file = std::fs::File::from(h.memfd.try_clone().map_err(|e| Errno::from_io(&e))?);
    loop {
        let op = Op::Read(pb::Read { handle: h.id, len: MAX_IO as u64, offset: Some(offset) });
        let (n, reply) = call.home_value(op).await?;
        let data = read_data(n, &reply, MAX_IO)?;
        if data.is_empty() {
            break;
        }
        std::os::unix::fs::FileExt::write_all_at(&file, data, offset as u64)
            .map_err(|e| Errno::from_io(&e))?;
        offset = offset.checked_add(n).ok_or(Errno::EOVERFLOW)?;
    }
    file.set_len(offset as u64).map_err(|e| Errno::from_io(&e))?;
    Ok(offset)
}

/// One side of a transfer: a home handle or one of the program's own descriptors.
enum Side {
    Home(Arc<Handle>),
    Local(OwnedFd),
}

fn side(call: &Call<'_>, arg: usize) -> Result<Side, Errno> {
    match call.handle(arg) {
        Some(h) => Ok(Side::Home(h)),
        None => call.local_fd(call.arg_i32(arg)).map(Side::Local),
    }
}

/// Moves up to `len` bytes from `src` (at `src_off` if given) to `dst` (at `dst_off`), through the supervisor.
async fn transfer(
    call: &Call<'_>,
    src: Side,
    src_off: Option<i64>,
    dst: Side,
    dst_off: Option<i64>,
    len: usize,
) -> Result<usize, Errno> {
    let len = len.min(MAX_IO);
    if let Side::Home(dst) = &dst {
        // It takes room home does not report (see `crate::behind`).
        crate::behind::forget_room(dst.stat.dev);
    }
    // Either side's offset may move without saying where to.
    for side in [&src, &dst] {
        if let Side::Home(h) = side {
            h.behind.untrack();
        }
    }
    if let (Side::Home(a), Side::Home(b)) = (&src, &dst) {
        let op = pb::CopyRange {
            in_handle: a.id,
            in_offset: src_off,
            out_handle: b.id,
            out_offset: dst_off,
            len: len as u64,
        };
        return count(call.home_value(Op::CopyRange(op)).await?.0, len);
    }
    let data = match src {
        Side::Home(h) => {
            let op = Op::Read(pb::Read { handle: h.id, len: len as u64, offset: src_off });
            let (n, reply) = call.home_value(op).await?;
            read_data(n, &reply, len)?.to_vec()
        }
        Side::Local(fd) => blocking(move || local_read(&fd, len, src_off)).await?,
    };
    if data.is_empty() {
        return Ok(0);
    }
    match dst {
        Side::Home(h) => {
            let sent = data.len();
            let op = Op::Write(pb::Write { handle: h.id, data: data.into(), offset: dst_off, rwf: 0 });
            count(call.home_value(op).await?.0, sent)
        }
        Side::Local(fd) => blocking(move || local_write(&fd, &data, dst_off)).await,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Errno> + Send + 'static,
) -> Result<T, Errno> {
    tokio::task::spawn_blocking(f).await.unwrap_or(Err(Errno::EIO))
}

fn local_read(fd: &OwnedFd, len: usize, off: Option<i64>) -> Result<Vec<u8>, Errno> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let mut file = std::fs::File::from(fd.try_clone().map_err(|e| Errno::from_io(&e))?);
    let mut buf = vec![0u8; len];
    let n = match off {
        Some(o) => file.read_at(&mut buf, o as u64),
        None => file.read(&mut buf),
    }
    .map_err(|e| Errno::from_io(&e))?;
    buf.truncate(n);
    Ok(buf)
}

fn local_write(fd: &OwnedFd, data: &[u8], off: Option<i64>) -> Result<usize, Errno> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let mut file = std::fs::File::from(fd.try_clone().map_err(|e| Errno::from_io(&e))?);
    match off {
        Some(o) => file.write_at(data, o as u64),
        None => file.write(data),
    }
    .map_err(|e| Errno::from_io(&e))
}

/// Reads the optional `loff_t *` argument.
fn read_offset(call: &Call<'_>, arg: usize) -> Result<Option<i64>, Errno> {
    match call.arg(arg) {
        0 => Ok(None),
        addr => memory::read_pod::<i64>(call.tid, addr).map(Some),
    }
}

fn advance_offset(call: &Call<'_>, arg: usize, old: Option<i64>, n: usize) -> Result<(), Errno> {
    match old {
        Some(o) => memory::write_pod(call.tid, call.arg(arg), &(o + n as i64)),
        None => Ok(()),
    }
}

/// The source offset of a transfer: the given one, or for a handle whose offset lives in its placeholder (a
/// copy) that offset, read from the program's descriptor `arg` and returned to be advanced afterwards.
fn source_offset(call: &Call<'_>, src: &Side, arg: usize, off: Option<i64>) -> Result<SourceOffset, Errno> {
    match src {
        Side::Home(h) if off.is_none() && h.copy() != CopyState::None => {
            let dup = call.local_fd(call.arg_i32(arg))?;
            let pos = current_offset(&dup)?;
            Ok(SourceOffset { off: Some(pos), kept: Some((dup, pos)) })
        }
        _ => Ok(SourceOffset { off, kept: None }),
    }
}

struct SourceOffset {
    off: Option<i64>,
    kept: Option<(OwnedFd, i64)>,
}

impl SourceOffset {
    fn advance(&self, n: usize) -> Result<(), Errno> {
        match &self.kept {
            Some((dup, pos)) => seek_to(dup, pos + n as i64),
            None => Ok(()),
        }
    }
}

async fn sendfile(call: &Call<'_>) -> Outcome {
    let (out, input) = (call.handle(0), call.handle(1));
    if out.is_none() && input.is_none() {
        return Ok(Action::Continue);
    }
    let off = read_offset(call, 2)?;
    let src = side(call, 1)?;
    let at = source_offset(call, &src, 1, off)?;
    let n = transfer(call, src, at.off, side(call, 0)?, None, call.arg(3) as usize).await?;
    at.advance(n)?;
    advance_offset(call, 2, off, n)?;
    Ok(Action::Value(n as i64))
}

async fn splice(call: &Call<'_>) -> Outcome {
    if call.handle(0).is_none() && call.handle(2).is_none() {
        return Ok(Action::Continue);
    }
    let (in_off, out_off) = (read_offset(call, 1)?, read_offset(call, 3)?);
    let src = side(call, 0)?;
    let at = source_offset(call, &src, 0, in_off)?;
    let n = transfer(call, src, at.off, side(call, 2)?, out_off, call.arg(4) as usize).await?;
    at.advance(n)?;
    advance_offset(call, 1, in_off, n)?;
    advance_offset(call, 3, out_off, n)?;
    Ok(Action::Value(n as i64))
}

async fn copy_file_range(call: &Call<'_>) -> Outcome {
    let (input, out) = (call.handle(0), call.handle(2));
    match (input, out) {
        (None, None) => Ok(Action::Continue),
        (Some(a), Some(b)) => {
            if call.arg(5) != 0 {
                return Err(Errno::EINVAL);
            }
            let (in_off, out_off) = (read_offset(call, 1)?, read_offset(call, 3)?);
            let src = Side::Home(a);
            let at = source_offset(call, &src, 0, in_off)?;
            let n = transfer(call, src, at.off, Side::Home(b), out_off, call.arg(4) as usize).await?;
            at.advance(n)?;
            advance_offset(call, 1, in_off, n)?;
            advance_offset(call, 3, out_off, n)?;
            Ok(Action::Value(n as i64))
        }
        // Between a home file and a local one: different file systems, as the kernel would say; callers
        // (cp, python's shutil) fall back to read and write.
        _ => Err(Errno::EXDEV),
    }
}
