//! Descriptor calls: fcntl (flags, dup, record locks), flock, dup, dup2, dup3.

use super::{simple, Action, Call, Outcome};
use crate::fdtable::Handle;
use crate::memory;
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::{flags, Errno};
use std::os::fd::AsFd;
use std::sync::Arc;

pub async fn serve(call: &Call<'_>, nr: i64) -> Option<Outcome> {
    Some(match nr {
        libc::SYS_fcntl => fcntl(call).await,
        libc::SYS_flock => match call.handle(0) {
            Some(h) => {
                // The lock is the description's: its own home handle when opens share the placeholder.
                let unlock = call.arg_i32(1) & !libc::LOCK_NB == libc::LOCK_UN;
                if unlock && !has_record(call, &h) {
                    // A description of a shared copy with no record of its own holds no lock.
                    return Some(Ok(Action::Value(0)));
                }
                if !unlock {
                    release_closed(call, &h).await;
                }
                let handle = match crate::lazy::description_handle(call, &h, 0, !unlock).await {
                    Ok(handle) => handle,
                    Err(e) => return Some(Err(e)),
                };
                let op = Op::Flock(pb::Flock { handle, operation: call.arg(1) as u32 });
                match call.arg_i32(1) & !libc::LOCK_NB {
                    libc::LOCK_UN if h.flags & libc::O_PATH == 0 => {
                        lock_behind(call, &h, op, "lock release").await
                    }
                    _ => simple(call, op).await,
                }
            }
            None => Ok(Action::Continue),
        },
        libc::SYS_dup => match call.handle(0) {
            Some(h) => dup_lowest(call, &h, false, 0).await,
            None => Ok(Action::Continue),
        },
        #[cfg(target_arch = "x86_64")]
        libc::SYS_dup2 => dup2(call, 0).await,
        libc::SYS_dup3 => {
            let flags = call.arg_i32(2);
            if flags & !libc::O_CLOEXEC != 0 || call.arg_i32(0) == call.arg_i32(1) {
                return Some(Err(Errno::EINVAL));
            }
            dup2(call, flags).await
        }
        _ => return None,
    })
}

/// dup and F_DUPFD: a second number for the same home handle. When the kernel would pick a standard stream
/// (`close(1); dup(fd)` must give 1) that number is used (see [`below_range`]); otherwise the number is in
/// the reserved range.
async fn dup_lowest(call: &Call<'_>, h: &Arc<Handle>, cloexec: bool, min: u32) -> Outcome {
    super::rlimit::room(call, u64::from(min))?;
    let lowest = lowest_free(call.tid, min);
    if lowest <= 2 {
        return below_range(call, h, lowest, cloexec).await;
    }
    if h.is_shared() {
        // The program's own description, not a new one.
        let description = call.local_fd(call.arg_i32(0))?;
        return call
            .install_description(h, description.as_fd(), cloexec, min)
            .map(|fd| Action::Answered(i64::from(fd)));
    }
    call.install(h, cloexec, min).map(|fd| Action::Answered(i64::from(fd)))
}

/// A home file at a number below the range: a pumped pipe for data, or for a directory the placeholder
/// itself (its `*at` calls are notified whatever the number).
async fn below_range(call: &Call<'_>, h: &Arc<Handle>, target: u32, cloexec: bool) -> Outcome {
    if h.stat.mode & libc::S_IFMT == libc::S_IFDIR {
        let sup = call.sup;
        return sup
            .fds
            .install_at(sup.listener.as_fd(), call.id, target, h, cloexec)
            .map(|fd| Action::Answered(i64::from(fd)))
            .map_err(|e| Errno::from_io(&e));
    }
    if let Some(done) = crate::native::alias(call, h, target, cloexec).await {
        return done;
    }
    // The pump reads at home's offset: a handle of its own.
    let h = &crate::lazy::unshare(call, h, 0).await?;
    if h.copy() != crate::fdtable::CopyState::None {
        // The description's offset lives in the placeholder (a content copy): the pump reads at home, from
        // there. (Reads through the pump do not move the placeholder's offset afterwards.)
        let dup = call.local_fd(call.arg_i32(0))?;
        let pos = crate::sys::lseek(std::os::fd::AsFd::as_fd(&dup), 0, libc::SEEK_CUR)
            .map_err(|e| Errno::from_io(&e))?;
        let seek = pb::Seek { handle: h.id, offset: pos, whence: pb::Whence::Set as i32 };
        call.home_value(Op::Seek(seek)).await?;
    }
    crate::pump::alias(call, h, target, cloexec).await
}

/// The lowest descriptor number ≥ `min` that thread `tid`'s table does not use.
fn lowest_free(tid: u32, min: u32) -> u32 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{tid}/fd")) else { return min };
    let mut used: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|&n| n >= min)
        .collect();
    used.sort_unstable();
    let mut want = min;
    for n in used {
        if n > want {
            break;
        }
        if n == want {
            want += 1;
        }
    }
    want
}

async fn dup2(call: &Call<'_>, flags: i32) -> Outcome {
    let (old, new) = (call.arg_i32(0), call.arg(1));
    let Some(h) = call.handle(0) else {
        // A local descriptor moved into the range stays local: later calls on it are left to the kernel.
        return Ok(Action::Continue);
    };
    if old as u32 as u64 == new {
        return Ok(Action::Continue);
    }
    if super::rlimit::refusing_soft(call).is_some_and(|soft| new as u32 as u64 >= soft) {
        // The number is beyond the program's (virtual) limit, as the kernel says.
        return Err(Errno::EBADF);
    }
    if call.sup.fds.range.is_native(new) && !crate::native::place(call.sup, &h) {
        // Reads there are the kernel's: a copy that is not kept in step with its file may not go there
        // (`native`); refused as a number beyond the limit is.
        return Err(Errno::EBADF);
    }
    if call.sup.fds.range.contains(new) {
        return Ok(Action::Continue);
    }
    if (new as i64) < 0 || new > i32::MAX as u64 {
        return Err(Errno::EBADF);
    }
    below_range(call, &h, new as u32, flags & libc::O_CLOEXEC != 0).await
}

async fn fcntl(call: &Call<'_>) -> Outcome {
    let Some(h) = call.handle(0) else { return Ok(Action::Continue) };
    let cmd = call.arg_i32(1);
    // The description's flags and locks at home: its own home handle when opens share the placeholder.
    let description = |changes| crate::lazy::description_handle(call, &h, 0, changes);
    match cmd {
        libc::F_GETFL => {
            let handle = description(false).await?;
            let (wire, _) = call.home_value(Op::GetFlags(pb::GetFlags { handle })).await?;
            // A 64-bit process's opens are all O_LARGEFILE, which the kernel reports (libc calls it 0).
            Ok(Action::Value(i64::from(
                flags::open_from_wire(wire as u32) & !libc::O_CLOEXEC | KERNEL_O_LARGEFILE,
            )))
        }
        libc::F_SETFL => {
            if call.arg_i32(2) & libc::O_DIRECT != 0 {
                // Its writes now have alignment rules home checks: none is sent behind any more.
                h.behind.stop();
            }
            if call.arg_i32(2) & libc::O_APPEND != 0 {
                // Writes now move the offset to wherever the end is.
                h.behind.untrack();
            }
            let handle = description(true).await?;
            simple(call, Op::SetFlags(pb::SetFlags { handle, flags: flags::open_to_wire(call.arg_i32(2)) }))
                .await
        }
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let min = call.arg_i32(2);
            if min < 0 || super::rlimit::refusing_soft(call).is_some_and(|soft| min as u64 >= soft) {
                return Err(Errno::EINVAL);
            }
            dup_lowest(call, &h, cmd == libc::F_DUPFD_CLOEXEC, min as u32).await
        }
        libc::F_GETLK
        | libc::F_SETLK
        | libc::F_SETLKW
        | libc::F_OFD_GETLK
        | libc::F_OFD_SETLK
        | libc::F_OFD_SETLKW => {
            let ofd = matches!(cmd, libc::F_OFD_GETLK | libc::F_OFD_SETLK | libc::F_OFD_SETLKW);
            // Only a lock taken makes the description's own record (asking or releasing changes nothing).
            let fl: libc::flock = memory::read_pod(call.tid, call.arg(2))?;
            let asks = matches!(cmd, libc::F_GETLK | libc::F_OFD_GETLK);
            let kind = fl.l_type as i32;
            let valid = unlock_succeeds(&fl) && !(ofd && fl.l_pid != 0);
            if !asks && kind == libc::F_UNLCK && valid && !has_record(call, &h) {
                // A description of a shared copy with no record of its own holds no lock.
                return Ok(Action::Value(0));
            }
            let takes = !asks && matches!(kind, libc::F_RDLCK | libc::F_WRLCK);
            if takes || asks {
                release_closed(call, &h).await;
            }
            lock(call, &h, description(takes).await?, cmd, ofd).await
        }
        // F_GETFD/F_SETFD (close-on-exec lives in the program's table) and the rest act on the placeholder.
        _ => Ok(Action::Continue),
    }
}

/// Before a lock is taken or asked about: descriptors of the same file the job closed since the collector
/// last looked still hold their locks at home (a close is not notified), and would refuse the job its
/// own lock; they are collected first.
async fn release_closed(call: &Call<'_>, h: &Handle) {
    if call.sup.fds.others_of(h.inode(), h.id) {
        call.sup.collect_file(h.inode()).await;
    }
}

/// The kernel's `O_LARGEFILE` bit, set on every open of a 64-bit process.
#[cfg(target_arch = "x86_64")]
const KERNEL_O_LARGEFILE: i32 = 0o100000;
#[cfg(target_arch = "aarch64")]
const KERNEL_O_LARGEFILE: i32 = 0o400000;

/// Whether the caller's descriptor argument 0 is a description with a home handle of its own: any but one
/// of a shared copy without a record ([`crate::lazy::description_handle`]).
fn has_record(call: &Call<'_>, h: &Handle) -> bool {
    !h.is_shared() || h.may_have_description(call.tid, call.arg_i32(0))
}

/// A record lock by the description whose home handle is `handle` (`h`'s, or its own, `lazy::description_handle`).
async fn lock(call: &Call<'_>, h: &Handle, handle: u64, cmd: i32, ofd: bool) -> Outcome {
    let fl: libc::flock = memory::read_pod(call.tid, call.arg(2))?;
    let kind = match fl.l_type as i32 {
        libc::F_RDLCK => pb::LockType::Read,
        libc::F_WRLCK => pb::LockType::Write,
        libc::F_UNLCK => pb::LockType::Unlock,
        _ => return Err(Errno::EINVAL),
    };
    let whence = match fl.l_whence as i32 {
        libc::SEEK_SET => pb::Whence::Set,
        libc::SEEK_CUR => pb::Whence::Cur,
        libc::SEEK_END => pb::Whence::End,
        _ => return Err(Errno::EINVAL),
    };
    if ofd && fl.l_pid != 0 {
        return Err(Errno::EINVAL);
    }
    let lcmd = match cmd {
        libc::F_GETLK | libc::F_OFD_GETLK => pb::LockCmd::Get,
        libc::F_SETLK | libc::F_OFD_SETLK => pb::LockCmd::Set,
        _ => pb::LockCmd::SetWait,
    };
    let range =
        pb::LockRange { kind: kind as i32, whence: whence as i32, start: fl.l_start, len: fl.l_len, pid: 0 };
    let op = Op::Lock(pb::Lock { handle, cmd: lcmd as i32, ofd, range: Some(range) });
    // A range from the start of the file, as the write locks granted are kept (`Behind::write_locked`).
    let known =
        (whence == pb::Whence::Set && fl.l_start >= 0 && fl.l_len >= 0).then_some((fl.l_start, fl.l_len));
    // A read lock where this description holds a write lock (sqlite's return to SHARED after a commit)
    // conflicts with nobody and cannot be refused: on a valid range, by a description that may read.
    let downgrade = kind == pb::LockType::Read
        && h.flags & libc::O_ACCMODE != libc::O_WRONLY
        && unlock_succeeds(&fl)
        && known.is_some_and(|(start, len)| h.behind.holds_write_lock(start, len));
    if lcmd != pb::LockCmd::Get && kind != pb::LockType::Write {
        h.behind.lock_changed(known);
    }
    if lcmd != pb::LockCmd::Get && h.flags & libc::O_PATH == 0 {
        if kind == pb::LockType::Unlock && unlock_succeeds(&fl) {
            return lock_behind(call, h, op, "lock release").await;
        }
        if downgrade {
            // Never waiting at home (it runs on the stream's reader): were the premise wrong, it would
            // fail rather than block.
            let range = Some(range);
            let op = Op::Lock(pb::Lock { handle, cmd: pb::LockCmd::Set as i32, ofd, range });
            return lock_behind(call, h, op, "lock downgrade").await;
        }
    }
    let epoch = h.behind.lock_epoch();
    let (v, reply) = call.home_value(op).await?;
    if let (pb::LockCmd::Set | pb::LockCmd::SetWait, pb::LockType::Write, Some((start, len))) =
        (lcmd, kind, known)
    {
        h.behind.write_locked(start, len, epoch);
    }
    if lcmd == pb::LockCmd::Get {
        let got = reply.lock.unwrap_or_default();
        let mut out = fl;
        out.l_type = match pb::LockType::try_from(got.kind).unwrap_or(pb::LockType::Unlock) {
            pb::LockType::Read => libc::F_RDLCK,
            pb::LockType::Write => libc::F_WRLCK,
            pb::LockType::Unlock => libc::F_UNLCK,
        } as i16;
        if out.l_type != libc::F_UNLCK as i16 {
            out.l_whence = libc::SEEK_SET as i16;
            out.l_start = got.start;
            out.l_len = got.len;
            out.l_pid = got.pid;
        }
        memory::write_pod(call.tid, call.arg(2), &out)?;
    }
    Ok(Action::Value(v))
}

/// Whether unlocking `fl` cannot fail (the kernel's checks of a `SEEK_SET` range: no negative start, no
/// overflowing end; the descriptor must not be `O_PATH`, checked by the caller), so that it may be sent
/// behind.
fn unlock_succeeds(fl: &libc::flock) -> bool {
    let (start, len) = (fl.l_start, fl.l_len);
    fl.l_whence as i32 == libc::SEEK_SET
        && start >= 0
        && match len {
            0 => true,
            len if len > 0 => start.checked_add(len - 1).is_some(),
            len => start + len >= 0,
        }
}

/// Releases (or downgrades) a lock without waiting for home (see [`crate::behind`]): home runs it before
/// any later call, so whoever waits for the lock at home gets it as soon as it arrives.
async fn lock_behind(call: &Call<'_>, h: &Handle, op: Op, what: &'static str) -> Outcome {
    let ticket = h.behind.ticket();
    call.home_behind(op, move |reply| ticket.answered(reply.as_ref(), 0, what, false)).await?;
    Ok(Action::Value(0))
}

/// FIONBIO: sets or clears O_NONBLOCK on the home file (`handle`: the description's, see [`lock`]).
pub async fn set_nonblock(call: &Call<'_>, handle: u64, on: bool) -> Outcome {
    let (wire, _) = call.home_value(Op::GetFlags(pb::GetFlags { handle })).await?;
    let mut native = flags::open_from_wire(wire as u32);
    if on {
        native |= libc::O_NONBLOCK;
    } else {
        native &= !libc::O_NONBLOCK;
    }
    simple(call, Op::SetFlags(pb::SetFlags { handle, flags: flags::open_to_wire(native) }))
        .await
        .map(|_| Action::Value(0))
}
