//! Process identity and signals: getpid/getppid/gettid answer home pids (the deputies'); kill and friends
//! aimed at home processes run at home; exit_group tells home how the process ends; in the job's pid
//! namespace, fork and clone give each new process its deputy's pid (see `jobinit`).
//!
//! Which calls still show this machine's pids: without a pid namespace (remote-shim not root), the values
//! fork/clone/wait4 return and `/proc/self`; in either case `gettid` of threads other than the main one.
//! kill/tgkill on those pids still work (they are left to the local kernel), and kill on a home pid of the
//! job is delivered to the local process.

use super::{Action, Call, Outcome};
use crate::procs::End;
use crate::shared_maps::Which;
use crate::sys::seccomp::{self, Reply};
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::Errno;
use std::os::fd::AsFd;

pub async fn serve(call: &Call<'_>, nr: i64) -> Option<Outcome> {
    Some(match nr {
        libc::SYS_getpid => home_ids(call).await.map(|(pid, _)| Action::Value(i64::from(pid))),
        libc::SYS_getppid => home_ids(call).await.map(|(_, ppid)| Action::Value(i64::from(ppid))),
        libc::SYS_gettid => {
            if call.tid == call.tgid() {
                home_ids(call).await.map(|(pid, _)| Action::Value(i64::from(pid)))
            } else {
                Ok(Action::Continue)
            }
        }
        libc::SYS_exit_group => {
            // What it wrote through pumped aliases (a shell's `>>`) is at home, and copies read without
            // notifications have it (`native`), before its parent can see it end.
            if call.sup.fds.has_natives() {
                call.sup.flush_pumps().await;
            }
            // And what it stored in files it mapped writable and shared.
            write_back_mappings(call, Which::Process(call.tgid())).await;
            call.sup.procs.set_end(call.tgid(), End::Exited(call.arg_i32(0) & 0xff));
            call.sup.limits.ending(call.tid);
            Ok(Action::Continue)
        }
        libc::SYS_kill | libc::SYS_rt_sigqueueinfo => kill(call, call.arg_i32(0), 0, call.arg_i32(1)).await,
        libc::SYS_tkill => kill(call, call.arg_i32(0), call.arg_i32(0), call.arg_i32(1)).await,
        libc::SYS_tgkill | libc::SYS_rt_tgsigqueueinfo => {
            kill(call, call.arg_i32(0), call.arg_i32(1), call.arg_i32(2)).await
        }
        libc::SYS_clone | libc::SYS_clone3 => clone(call, nr).await,
        // The program asks for its mappings' stores to reach the file and waits (`MS_SYNC`): the home files
        // it maps are written (with `MS_ASYNC` alone they go at the moments `shared_maps` lists). Then
        // the kernel checks the call as it would.
        libc::SYS_msync => {
            if call.sup.shared_maps.is_empty() || call.arg_i32(2) & libc::MS_SYNC == 0 {
                return Some(Ok(Action::Continue));
            }
            call.sup
                .shared_maps
                .write_back(call.sup, Which::Process(call.tgid()))
                .await
                .map(|()| Action::Continue)
        }
        #[cfg(target_arch = "x86_64")]
        libc::SYS_fork | libc::SYS_vfork => clone(call, nr).await,
        _ => return None,
    })
}

/// Writes home what the job stored in the home files it mapped writable and shared that `which` names
/// ([`crate::shared_maps`]); a failure is only reported, as the kernel's own write-back would.
pub async fn write_back_mappings(call: &Call<'_>, which: Which) {
    if call.sup.shared_maps.is_empty() {
        return;
    }
    if let Err(e) = call.sup.shared_maps.write_back(call.sup, which).await {
        tracing::warn!(errno = e.raw(), "writing a shared mapping's stores home failed");
    }
}

/// Whether `nr` makes a process or thread (served by [`clone`]).
pub fn is_clone(nr: i64) -> bool {
    #[cfg(target_arch = "x86_64")]
    if nr == libc::SYS_fork || nr == libc::SYS_vfork {
        return true;
    }
    nr == libc::SYS_clone || nr == libc::SYS_clone3
}

/// (home pid, home ppid) of the calling process, asked of home once per process.
async fn home_ids(call: &Call<'_>) -> Result<(i32, i32), Errno> {
    let tgid = call.tgid();
    if let Some(ids) = call.sup.procs.home_ids(tgid) {
        return Ok(ids);
    }
    let (pid, reply) = call.home_value(Op::Identity(pb::Identity::default())).await?;
    let ids = (pid as i32, reply.ppid);
    call.sup.procs.set_home_ids(tgid, ids);
    Ok(ids)
}

/// (home pid, home ppid) from the reply to `Identity` for a proc whose deputy was just asked for: home's
/// errno when it could not start one (EAGAIN, as fork would say, when the reply holds no pid).
pub fn started_deputy(reply: &pb::CallReply) -> Result<(i32, i32), Errno> {
    match super::outcome(reply) {
        Ok(pid) if pid > 0 && pid <= i64::from(i32::MAX) => Ok((pid as i32, reply.ppid)),
        Err(errno) if reply.outcome.is_some() => Err(errno),
        _ => Err(Errno::EAGAIN),
    }
}

/// fork, vfork, clone, clone3 in the job's pid namespace. A new process gets its deputy first (a child of
/// its parent's deputy at home); then, with no other clone in between, init makes the deputy's pid the next
/// one taken and the call goes on. Threads only pass through the same gate, so they cannot take a pid that
/// was promised to a process.
async fn clone(call: &Call<'_>, nr: i64) -> Outcome {
    let sup = call.sup;
    if !sup.init.matching() {
        return Ok(Action::Continue);
    }
    let flags = match nr {
        libc::SYS_clone => call.arg(0),
        libc::SYS_clone3 => {
            let mut word = [0u8; 8];
            match crate::sys::tracee::read_mem(call.tid, call.arg(0), &mut word) {
                Ok(8) => u64::from_le_bytes(word),
                // The kernel reports the bad pointer itself.
                _ => return Ok(Action::Continue),
            }
        }
        _ => 0,
    };
    let new_process = flags & (libc::CLONE_THREAD | libc::CLONE_NEWPID) as u64 == 0;
    let mut signals = Vec::new();
    let child = if new_process {
        let parent = call.proc();
        // The parent's deputy exists before the child's, so home knows whose child it is.
        let (parent_pid, _) = home_ids(call).await?;
        let cwd_ticket = sup.cwds.ticket();
        let (id, home) = match sup.spares.take(&sup.self_arc()) {
            // Home adopts the spare and copies the parent's state to it before it runs anything sent
            // after this (`crate::spares`).
            Some(spare) => {
                let proc = pb::Proc { id: spare.id, parent: parent.id };
                let answer =
                    match sup.link.send_ordered(proc, Op::Identity(pb::Identity { spare: false })).await {
                        Ok(answer) => answer,
                        Err(e) => return Err(call.home_lost(&e).await),
                    };
                let pid = spare.pid;
                tokio::spawn(async move {
                    match answer.await.map(|reply| started_deputy(&reply)) {
                        Ok(Ok((home, _))) if home == pid => {}
                        other => {
                            tracing::warn!(pid, ?other, "home did not adopt a spare deputy as it was told")
                        }
                    }
                });
                signals = spare.signals;
                (spare.id, (spare.pid, parent_pid))
            }
            None => {
                let id = sup.procs.reserve();
                let reply = call
                    .home_as(pb::Proc { id, parent: parent.id }, Op::Identity(pb::Identity::default()))
                    .await?;
                // Home could not start a deputy: the fork fails the same way.
                (id, started_deputy(&reply)?)
            }
        };
        // Home copied (or copies, before anything later) the parent's state (its cwd) to the child, while
        // the parent waits in the fork.
        sup.cwds.inherit(parent.id, id, cwd_ticket);
        Some((id, parent.id, home))
    } else {
        None
    };
    let target = child.map(|(_, _, home)| home.0 as u32);
    let (answered, moved) = tokio::task::block_in_place(|| {
        sup.init.before_clone(target, || {
            if let Some((id, parent, home)) = child {
                sup.procs.announce(home.0 as u32, id, parent, home);
            }
            seccomp::respond(sup.listener.as_fd(), call.id, Reply::Continue)
        })
    });
    if let Some((from, to)) = moved {
        tracing::debug!(wanted = from, got = to, "a process could not take its deputy's pid");
        sup.procs.announced_moved(from, to);
    }
    match answered {
        Err(e) => {
            // Interrupted (the kernel restarts the call, notified anew) or gone: the deputy started for
            // this attempt is not needed.
            tracing::debug!(cause = %e, "the clone was not answered");
            if let Some((id, _, home)) = child {
                sup.procs.unannounce(home.0 as u32);
                sup.forget_proc(id, End::Killed(libc::SIGKILL)).await;
            }
        }
        // What home sent the spare deputy before this fork adopted it, the process now gets.
        // (The clone goes on after this answer: the child may not have its pid yet.)
        Ok(()) => {
            if let Some((id, _, _)) = child.filter(|_| !signals.is_empty()) {
                let sup = sup.self_arc();
                tokio::spawn(async move {
                    for signal in signals {
                        for _ in 0..100 {
                            match sup.deliver_signal(id, signal) {
                                // Not there yet (its `/proc` entry, or the process).
                                Some(Err(e))
                                    if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) =>
                                {
                                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                                }
                                _ => break,
                            }
                        }
                    }
                });
            }
        }
    }
    Ok(Action::Continued)
}

/// kill(pid, sig) and the thread forms (`tid` != 0). A home pid of one of the job's processes is that
/// local process; the job's own local pids, its process groups and the broadcast forms stay local;
/// anything else is a home process, signalled at home with home's permissions and errno.
async fn kill(call: &Call<'_>, pid: i32, tid: i32, sig: i32) -> Outcome {
    let procs = &call.sup.procs;
    let init = &call.sup.init;
    if init.in_pid_ns {
        // Pids are the job namespace's, where each process has its deputy's pid: the job's own processes,
        // threads and groups stay local; a home pid of one that could not take it is delivered to it.
        let local = match pid {
            0 | -1 => true,
            p if p > 0 => init.ns_has(p) && (tid == 0 || init.ns_has(tid)),
            p => init.ns_has_group(p.checked_neg().unwrap_or(0)),
        };
        if local {
            return Ok(Action::Continue);
        }
        if let Some(local) = procs.local_of_home_pid(pid).filter(|_| tid == 0 || tid == pid) {
            return crate::sys::kill(local as i32, sig)
                .map(|_| Action::Value(0))
                .map_err(|e| Errno::from_io(&e));
        }
        let (v, _) = call.home_value(Op::Kill(pb::Kill { pid, signal: sig, tid })).await?;
        return Ok(Action::Value(v));
    }
    if pid > 0 {
        if let Some(local) = procs.local_of_home_pid(pid) {
            let target_tid = if tid == 0 || tid == pid { local as i32 } else { tid };
            if target_tid == local as i32 && tid == 0 {
                return crate::sys::kill(local as i32, sig)
                    .map(|_| Action::Value(0))
                    .map_err(|e| Errno::from_io(&e));
            }
            return crate::sys::tgkill(local as i32, target_tid, sig)
                .map(|_| Action::Value(0))
                .map_err(|e| Errno::from_io(&e));
        }
        if procs.in_job(pid as u32) {
            return Ok(Action::Continue);
        }
    } else if pid == 0 || pid == -1 || (pid < -1 && local_group(-pid)) {
        return Ok(Action::Continue);
    }
    let (v, _) = call.home_value(Op::Kill(pb::Kill { pid, signal: sig, tid })).await?;
    Ok(Action::Value(v))
}

/// Whether some process of this machine leads or belongs to process group `pgid` (a local group).
fn local_group(pgid: i32) -> bool {
    crate::sys::kill(-pgid, 0).is_ok()
}
