//! prlimit64, getrlimit, setrlimit of `RLIMIT_NOFILE` (the filter notifies no other resource): answered from
//! and applied to the process's virtual limit (see `limits`), checked as the kernel checks them; the
//! kernel's own limit follows, never below the end of the reserved range. Also the `EMFILE`, `EINVAL` and
//! `EBADF` that a virtual soft limit below the range's end implies for calls that make descriptors.

use super::{Action, Call, Outcome};
use crate::limits::Nofile;
use crate::memory;
use homeward_proto::Errno;

/// `CAP_SYS_RESOURCE`'s bit in `/proc/PID/status`'s capability sets.
const CAP_SYS_RESOURCE: u32 = 24;

pub async fn serve(call: &Call<'_>, nr: i64) -> Option<Outcome> {
    let nofile = |arg: usize| call.arg(arg) as u32 == libc::RLIMIT_NOFILE;
    Some(match nr {
        libc::SYS_prlimit64 if nofile(1) => prlimit(call),
        libc::SYS_getrlimit if nofile(0) => {
            let own = call.sup.limits.of(own_tgid(call));
            write(call, call.arg(1), own).map(|_| Action::Value(0))
        }
        libc::SYS_setrlimit if nofile(0) => match read(call, call.arg(1)) {
            Ok(new) => set(call, own_tgid(call), new).map(|_| Action::Value(0)),
            Err(e) => Err(e),
        },
        // Another resource (the filter does not send these).
        libc::SYS_prlimit64 | libc::SYS_getrlimit | libc::SYS_setrlimit => Ok(Action::Continue),
        _ => return None,
    })
}

/// The caller's thread group (this machine's pid).
fn own_tgid(call: &Call<'_>) -> u32 {
    // Makes sure the thread's group is known (its first call may be this one).
    call.proc();
    call.tgid()
}

/// A task of the job that `prlimit64` names (this machine's ids).
struct Task {
    tid: u32,
    tgid: u32,
}

fn prlimit(call: &Call<'_>) -> Outcome {
    let new = match call.arg(2) {
        0 => None,
        addr => Some(read(call, addr)?),
    };
    let Some(target) = target(call, call.arg_i32(0)) else {
        // Not a process of the job: its limit is the kernel's (and so is the errno for a missing one).
        return Ok(Action::Continue);
    };
    if target.tid != call.tid && !may_prlimit(call.tid, target.tid) {
        return Err(Errno::EPERM);
    }
    let old = call.sup.limits.of(target.tgid);
    if let Some(new) = new {
        set(call, target.tgid, new)?;
    }
    if call.arg(3) != 0 {
        write(call, call.arg(3), old)?;
    }
    Ok(Action::Value(0))
}

/// The task `pid` names, as the caller sees pids (0: itself; a home pid of one of the job's processes, or
/// a pid of the job's namespace or this machine); `None` when it is not one of the job's.
fn target(call: &Call<'_>, pid: i32) -> Option<Task> {
    let sup = call.sup;
    if pid == 0 {
        return Some(Task { tid: call.tid, tgid: own_tgid(call) });
    }
    let pid = u32::try_from(pid).ok()?;
    let home_pid = || sup.procs.local_of_home_pid(pid as i32).map(|local| Task { tid: local, tgid: local });
    // The same order as `kill`: in the job's namespace its own pids first, then home pids of processes
    // that could not take theirs; without one, home pids first, then this machine's.
    let tid = if sup.init.in_pid_ns {
        match local_task_of_nspid(call, pid) {
            Some(tid) => tid,
            None => return home_pid(),
        }
    } else if let Some(task) = home_pid() {
        return Some(task);
    } else if sup.procs.in_job(pid) {
        pid
    } else {
        return None;
    };
    Some(Task { tid, tgid: crate::limits::tgid_of_task(tid)? })
}

/// This machine's id of the task whose id is `nspid` in the job's pid namespace.
fn local_task_of_nspid(call: &Call<'_>, nspid: u32) -> Option<u32> {
    if let Some(tgid) = call.sup.procs.local_of_nspid(nspid) {
        return Some(tgid);
    }
    // A process that made no call yet, or a thread: rare enough for a scan of the job.
    crate::launch::job_pids(call.sup.init.pid).into_iter().find_map(|pid| {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        tasks.flatten().find_map(|t| {
            let tid: u32 = t.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let inner: u32 = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))?
                .split_whitespace()
                .last()?
                .parse()
                .ok()?;
            (inner == nspid).then_some(tid)
        })
    })
}

/// Sets the virtual limit of thread group `tgid` as the kernel's `do_prlimit` would, and the kernel's limit
/// accordingly.
fn set(call: &Call<'_>, tgid: u32, new: Nofile) -> Result<(), Errno> {
    if new.soft > new.hard {
        return Err(Errno::EINVAL);
    }
    if new.hard > nr_open() {
        return Err(Errno::EPERM);
    }
    let limits = &call.sup.limits;
    let current = limits.of(tgid);
    if new.hard > current.hard && !has_cap(call.tid, CAP_SYS_RESOURCE) {
        return Err(Errno::EPERM);
    }
    let kernel = limits.kernel(new);
    crate::sys::set_nofile(tgid as libc::pid_t, (kernel.soft, kernel.hard))
        .map_err(|e| Errno::from_io(&e))?;
    limits.set(tgid, new);
    tracing::debug!(tgid, soft = new.soft, hard = new.hard, "descriptor limit set");
    Ok(())
}

fn read(call: &Call<'_>, addr: u64) -> Result<Nofile, Errno> {
    let lim: libc::rlimit64 = memory::read_pod(call.tid, addr)?;
    Ok(Nofile { soft: lim.rlim_cur, hard: lim.rlim_max })
}

fn write(call: &Call<'_>, addr: u64, v: Nofile) -> Result<(), Errno> {
    memory::write_pod(call.tid, addr, &libc::rlimit64 { rlim_cur: v.soft, rlim_max: v.hard })
}

/// `fs.nr_open`: the highest hard limit on open files.
fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// Whether thread `tid` has capability `cap` in its effective set.
fn has_cap(tid: u32, cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|eff| eff & (1 << cap) != 0)
}

/// Whether `caller` may read and set `target`'s limits (the kernel's `check_prlimit_permission`): its real
/// user and group are all of the target's, or it has `CAP_SYS_RESOURCE`.
fn may_prlimit(caller: u32, target: u32) -> bool {
    let ids = |tid: u32, name: &str| -> Option<Vec<u32>> {
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix(name))?;
        Some(line.split_whitespace().filter_map(|v| v.parse().ok()).collect())
    };
    let same = |name: &str| match (ids(caller, name), ids(target, name)) {
        (Some(c), Some(t)) if !c.is_empty() && t.len() >= 3 => t[..3].iter().all(|&id| id == c[0]),
        _ => false,
    };
    (same("Uid:") && same("Gid:")) || has_cap(caller, CAP_SYS_RESOURCE)
}

/// The caller's virtual soft limit when it is below the reserved range's end (then calls that make
/// descriptors are checked against it).
pub fn refusing_soft(call: &Call<'_>) -> Option<u64> {
    if !call.sup.limits.may_refuse() {
        return None;
    }
    call.sup.limits.refusing_soft(own_tgid(call))
}

/// `EMFILE` when the caller could not natively get a new descriptor numbered `min` or more under its
/// virtual soft limit. Checked before a call that makes a descriptor is forwarded, as the kernel takes the
/// number before it opens anything (an `O_CREAT` open that fails so creates nothing).
pub fn room(call: &Call<'_>, min: u64) -> Result<(), Errno> {
    let limits = &call.sup.limits;
    if !limits.may_refuse() || limits.has_room(call.tid, own_tgid(call), min) {
        Ok(())
    } else {
        Err(Errno::EMFILE)
    }
}
