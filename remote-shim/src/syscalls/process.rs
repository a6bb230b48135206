//! Process identity and signals: getpid/getppid/gettid answer home pids (the deputies'); kill and friends
//! aimed at home processes run at home; exit_group tells home how the process ends.
//!
//! Which calls still show local pids (no pid namespace yet): the values fork/clone/wait4 return, `/proc/self`,
//! and `gettid` of threads other than the main one. kill/tgkill on those local pids still work (they are
//! left to the local kernel), and kill on a home pid of the job is delivered to the local process.

use super::{Action, Call, Outcome};
use crate::procs::End;
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::Errno;

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
            call.sup.procs.set_end(call.tgid(), End::Exited(call.arg_i32(0) & 0xff));
            Ok(Action::Continue)
        }
        libc::SYS_kill | libc::SYS_rt_sigqueueinfo => kill(call, call.arg_i32(0), 0, call.arg_i32(1)).await,
        libc::SYS_tkill => kill(call, call.arg_i32(0), call.arg_i32(0), call.arg_i32(1)).await,
        libc::SYS_tgkill | libc::SYS_rt_tgsigqueueinfo => {
            kill(call, call.arg_i32(0), call.arg_i32(1), call.arg_i32(2)).await
        }
        _ => return None,
    })
}

/// (home pid, home ppid) of the calling process, asked of home once per process.
async fn home_ids(call: &Call<'_>) -> Result<(i32, i32), Errno> {
    let tgid = call.tgid();
    if let Some(ids) = call.sup.procs.home_ids(tgid) {
        return Ok(ids);
    }
    let (pid, reply) = call.home_value(Op::Identity(pb::Identity {})).await?;
    let ids = (pid as i32, reply.ppid);
    call.sup.procs.set_home_ids(tgid, ids);
    Ok(ids)
}

/// kill(pid, sig) and the thread forms (`tid` != 0). A home pid of one of the job's processes is that
/// local process; the job's own local pids, its process groups and the broadcast forms stay local;
/// anything else is a home process, signalled at home with home's permissions and errno.
async fn kill(call: &Call<'_>, pid: i32, tid: i32, sig: i32) -> Outcome {
    let procs = &call.sup.procs;
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
