//! What a call does to home's files, as both sides need to know it: the shim to keep its caches true, the
//! agent to report a call's own changes before its reply.

use crate::pb::{self, call_request::Op};

/// Whether a call cannot change any file's attributes or any directory's entries at home (reads do change
/// access times; those are not kept exact by the cache).
pub fn changes_nothing(op: &Op) -> bool {
    match op {
        Op::Open(o) => {
            let flags = crate::flags::open_from_wire(o.flags);
            flags & libc::O_ACCMODE == libc::O_RDONLY && flags & (libc::O_CREAT | libc::O_TRUNC) == 0
        }
        Op::Xattr(x) => matches!(pb::XattrOp::try_from(x.op), Ok(pb::XattrOp::Get | pb::XattrOp::List)),
        // A directory synced by its path (the only sync without a handle) keeps its attributes.
        Op::Fsync(f) => f.handle == 0,
        Op::Stat(_)
        | Op::Statfs(_)
        | Op::Access(_)
        | Op::Readlink(_)
        | Op::Getdents(_)
        | Op::Getcwd(_)
        | Op::Read(_)
        | Op::Seek(_)
        | Op::GetFlags(_)
        | Op::Lock(_)
        | Op::Flock(_)
        | Op::Close(_)
        | Op::Identity(_)
        | Op::Kill(_)
        | Op::Ioctl(_)
        | Op::ClockRead(_)
        | Op::Interrupt(_)
        | Op::Umask(_) => true,
        _ => false,
    }
}

/// Whether a call may wait at home the way the kernel's waits end when a signal is caught (`Interrupt`):
/// a lock that waits, `flock` without `LOCK_NB`, an open (a fifo's waits for its other end), a read (a
/// fifo, a pipe, a terminal). Nothing else is interrupted: a call that cannot fail with `EINTR` natively
/// never does, and a write is never cut short after the shim consumed its source (`sendfile`).
pub fn may_wait(op: &Op) -> bool {
    match op {
        Op::Lock(o) => {
            o.cmd == pb::LockCmd::SetWait as i32
                && o.range.as_ref().is_some_and(|r| r.kind != pb::LockType::Unlock as i32)
        }
        Op::Flock(o) => o.operation & (libc::LOCK_NB | libc::LOCK_UN) as u32 == 0,
        Op::Open(_) | Op::Read(_) => true,
        _ => false,
    }
}
