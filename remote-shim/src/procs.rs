//! Processes of the job as home knows them: each thread group gets a proc id whose cwd and umask live at
//! home; a new process starts as a copy of its parent's (fork semantics).

use homeward_proto::pb;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Procs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Thread id → thread group id.
    tgid_of: HashMap<u32, u32>,
    /// Thread group id → (proc id, parent proc id).
    by_tgid: HashMap<u32, (u64, u64)>,
    next: u64,
}

impl Procs {
    /// The home identity of the process that thread `tid` belongs to.
    pub fn proc_of(&self, tid: u32) -> pb::Proc {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let tgid = match inner.tgid_of.get(&tid) {
            Some(&t) => t,
            None => {
                let (tgid, _) = status_ids(tid).unwrap_or((tid, 0));
                inner.tgid_of.insert(tid, tgid);
                tgid
            }
        };
        if let Some(&(id, parent)) = inner.by_tgid.get(&tgid) {
            return pb::Proc { id, parent };
        }
        let ppid = status_ids(tgid).map(|(_, ppid)| ppid).unwrap_or(0);
        let parent = inner.by_tgid.get(&ppid).map(|&(id, _)| id).unwrap_or(0);
        inner.next += 1;
        let id = inner.next;
        inner.by_tgid.insert(tgid, (id, parent));
        pb::Proc { id, parent }
    }

    /// The thread group of `tid`, as last seen.
    pub fn tgid_of(&self, tid: u32) -> u32 {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.tgid_of.get(&tid).copied().unwrap_or(tid)
    }

    /// Forgets processes that no longer exist and returns their proc ids (home drops their state).
    pub fn reap(&self) -> Vec<u64> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.tgid_of.retain(|tid, _| alive(*tid));
        let dead: Vec<u32> = inner.by_tgid.keys().copied().filter(|t| !alive(*t)).collect();
        dead.iter().filter_map(|t| inner.by_tgid.remove(t).map(|(id, _)| id)).collect()
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// (Tgid, PPid) of a task, from `/proc/TID/status`.
fn status_ids(tid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u32>().ok())
    };
    Some((field("Tgid:")?, field("PPid:")?))
}
