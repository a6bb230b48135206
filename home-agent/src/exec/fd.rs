//! GetFlags, SetFlags, Lock, Flock, Close.

use super::io::whence;
use super::{done, value, Res};
use crate::session::Session;
use crate::sys;
use homeward_proto::flags::open_to_wire;
use homeward_proto::pb::{self, LockCmd, LockRange, LockType, Whence};
use homeward_proto::Errno;
use std::os::fd::AsFd;

/// F_GETFL: the value carries the wire's OpenFlag bits.
pub fn get_flags(s: &Session, o: &pb::GetFlags) -> Res {
    let flags = sys::get_flags(s.handle(o.handle)?.as_fd())?;
    done(i64::from(open_to_wire(flags)))
}

/// F_SETFL (the kernel changes only the flags it allows to change).
pub fn set_flags(s: &Session, o: &pb::SetFlags) -> Res {
    let flags = super::open_flags(o.flags)?;
    sys::set_flags(s.handle(o.handle)?.as_fd(), flags)?;
    done(0)
}

/// fcntl record locks, always as open-file-description locks on the handle: every session lives in this
/// one process, where classic POSIX locks of different remote processes would never conflict. For a query
/// the reply carries the conflicting lock (kind UNLOCK when none; pid -1 for an OFD lock, as the kernel
/// reports it). F_OFD_SETLKW blocks only the thread running this call.
pub fn lock(s: &Session, o: &pb::Lock) -> Res {
    let fd = s.handle(o.handle)?;
    let cmd = match LockCmd::try_from(o.cmd).map_err(|_| Errno::EINVAL)? {
        LockCmd::Get => libc::F_OFD_GETLK,
        LockCmd::Set => libc::F_OFD_SETLK,
        LockCmd::SetWait => libc::F_OFD_SETLKW,
    };
    let mut fl = flock_from_wire(&o.range.ok_or(Errno::EINVAL)?)?;
    sys::ofd_lock(fd.as_fd(), cmd, &mut fl)?;
    if cmd == libc::F_OFD_GETLK {
        return Ok(pb::CallReply { lock: Some(flock_to_wire(&fl)), ..value(0) });
    }
    done(0)
}

fn flock_from_wire(r: &LockRange) -> Result<libc::flock, Errno> {
    let l_type = match LockType::try_from(r.kind).map_err(|_| Errno::EINVAL)? {
        LockType::Read => libc::F_RDLCK,
        LockType::Write => libc::F_WRLCK,
        LockType::Unlock => libc::F_UNLCK,
    };
    let l_whence = match whence(r.whence)? {
        w @ (libc::SEEK_SET | libc::SEEK_CUR | libc::SEEK_END) => w,
        _ => return Err(Errno::EINVAL),
    };
    // OFD commands require l_pid == 0.
    Ok(libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: l_whence as libc::c_short,
        l_start: r.start,
        l_len: r.len,
        l_pid: 0,
    })
}

fn flock_to_wire(fl: &libc::flock) -> LockRange {
    let kind = match libc::c_int::from(fl.l_type) {
        libc::F_RDLCK => LockType::Read,
        libc::F_WRLCK => LockType::Write,
        _ => LockType::Unlock,
    };
    let whence = match libc::c_int::from(fl.l_whence) {
        libc::SEEK_CUR => Whence::Cur,
        libc::SEEK_END => Whence::End,
        _ => Whence::Set,
    };
    LockRange { kind: kind as i32, whence: whence as i32, start: fl.l_start, len: fl.l_len, pid: fl.l_pid }
}

/// flock; the LOCK_* bits are the same everywhere. A blocking flock blocks only this call's thread.
pub fn flock(s: &Session, o: &pb::Flock) -> Res {
    let op = libc::c_int::try_from(o.operation).map_err(|_| Errno::EINVAL)?;
    sys::flock(s.handle(o.handle)?.as_fd(), op)?;
    done(0)
}

/// Forgets the handles; each file closes once no running call uses it.
pub fn close(s: &Session, o: &pb::Close) -> Res {
    if o.more.len() >= crate::session::MAX_HANDLES {
        return Err(Errno::EINVAL);
    }
    let mut outcome = s.close_handle(o.handle);
    for &handle in &o.more {
        outcome = outcome.and(s.close_handle(handle));
    }
    outcome?;
    done(0)
}
