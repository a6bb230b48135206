//! Identity, Kill, ForgetProc: the job's processes as home sees them, through their deputies.

use super::{done, value, Res};
use crate::deputies::End;
use crate::session::{ProcCtx, Session};
use crate::sys;
use homeward_proto::pb::{self, forget_proc};
use homeward_proto::Errno;

/// The calling process's home pid (its deputy's) and its parent's.
pub fn identity(s: &Session, ctx: &ProcCtx) -> Res {
    let deputies = s.deputies().ok_or(Errno::ENOSYS)?;
    let (pid, ppid) = deputies.identity(ctx.id).ok_or(Errno(libc::ESRCH as u16))?;
    Ok(pb::CallReply { ppid, ..value(i64::from(pid)) })
}

/// Starts a spare deputy for proc `id`, which has no state yet (see `Identity.spare`): its pid.
pub fn start_spare(s: &Session, id: u64) -> Res {
    let deputies = s.deputies().ok_or(Errno::ENOSYS)?;
    if id == 0 || s.knows(id) {
        return Err(Errno::EINVAL);
    }
    done(i64::from(deputies.start_spare(id)?))
}

/// kill (`tid` 0) or tgkill at home, with home's permissions and errno.
///
/// A signal for one of this session's deputies is not sent to it: it becomes an event for its process,
/// which the shim delivers. Another session's deputy is an ordinary home process (the signal lands on it
/// and its own job gets it), except in a confined agent (`--allow`), where it does not exist (`ESRCH`).
/// Anything else is signalled with the agent's rights: a job reaches only processes the agent's user
/// could signal (every process, for an agent run as root). Refused with `EPERM`, because they would hit
/// the agent itself rather than anything the program can mean: pid -1 (every process the agent may
/// signal), pid 0 and `-pgrp` (the agent's own process group), and the agent's pid (the job's first
/// process sees it as its parent).
pub fn kill(s: &Session, o: &pb::Kill) -> Res {
    if !(0..=64).contains(&o.signal) {
        return Err(Errno::EINVAL);
    }
    let me = std::process::id() as i32;
    let ours = |pid: i32| s.deputies().and_then(|d| d.proc_of(pid).map(|proc| (d, proc)));
    let deputy = if o.tid == 0 {
        if o.pid == 0 || o.pid == -1 || o.pid == me || o.pid == -sys::process_group() {
            return Err(Errno::EPERM);
        }
        if o.pid > 0 {
            ours(o.pid)
        } else {
            None
        }
    } else {
        if o.pid == me {
            return Err(Errno::EPERM);
        }
        // A deputy has one thread, whose id is its pid.
        if o.pid == o.tid {
            ours(o.pid)
        } else {
            None
        }
    };
    // Confined (`--allow`), sessions are kept apart: another session's deputy, or its process group (a
    // deputy leads its own), does not exist for this one.
    let target = if o.tid == 0 { o.pid.saturating_abs() } else { o.pid };
    if deputy.is_none() && s.allow().is_some() && crate::deputies::is_deputy(target) {
        return Err(Errno(libc::ESRCH as u16));
    }
    match deputy {
        // Signal 0 only asks whether the process exists: it does.
        Some((deputies, proc)) => {
            if o.signal != 0 {
                deputies.deliver(proc, o.signal);
            }
        }
        None if o.tid == 0 => sys::kill(o.pid, o.signal)?,
        None => sys::tgkill(o.pid, o.tid, o.signal)?,
    }
    done(0)
}

/// The process has ended: drop its cwd and umask, and end its deputy the same way (SIGKILL when the shim
/// does not know how it ended).
/// An exit status outside 0-255 or a signal outside 1-64 is `EINVAL` (and the process is not forgotten).
pub fn forget_proc(s: &Session, o: &pb::ForgetProc) -> Res {
    let how = match o.end {
        Some(forget_proc::End::ExitCode(code)) if (0..=255).contains(&code) => End::Exit(code),
        Some(forget_proc::End::KilledBy(signal)) if (1..=64).contains(&signal) => End::Signal(signal),
        Some(_) => return Err(Errno::EINVAL),
        None => End::Signal(libc::SIGKILL),
    };
    s.forget_proc(o.id, how);
    done(0)
}
