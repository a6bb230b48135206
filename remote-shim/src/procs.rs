//! Processes of the job as home knows them. Each thread group gets a proc id; home keeps its cwd and umask
//! and runs its deputy, whose pid is the process's home identity. A new process starts as a copy of its
//! parent's state (fork semantics). When a process ends, home learns how (exit status or signal) so its
//! deputy can end the same way.

use homeward_proto::pb;
use std::collections::HashMap;
use std::sync::Mutex;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Exited(i32),
    Killed(i32),
}

impl End {
    /// From a `waitpid` status.
    pub fn from_wait_status(status: i32) -> Option<End> {
        if libc::WIFEXITED(status) {
            Some(End::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(End::Killed(libc::WTERMSIG(status)))
        } else {
            None
        }
    }

    pub fn to_wire(self) -> pb::forget_proc::End {
        match self {
            End::Exited(c) => pb::forget_proc::End::ExitCode(c),
            End::Killed(s) => pb::forget_proc::End::KilledBy(s),
        }
    }
}

/// A process of the job.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    parent: u64,
    /// Its pid as the job sees it (in the job's pid namespace; this machine's pid without one).
    nspid: u32,
    /// (home pid, home ppid), once asked for.
    home: Option<(i32, i32)>,
    end: Option<End>,
}

/// A process announced at its fork (its deputy started, its pid chosen) that has not made a call yet.
#[derive(Debug, Clone, Copy)]
struct Announced {
    id: u64,
    parent: u64,
    home: (i32, i32),
    end: Option<End>,
    at: std::time::Instant,
}

#[derive(Default)]
pub struct Procs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Thread id → thread group id.
    tgid_of: HashMap<u32, u32>,
    by_tgid: HashMap<u32, Entry>,
    /// Announced processes by the pid they were to take in the job's namespace.
    announced: HashMap<u32, Announced>,
    next: u64,
}

impl Procs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The home identity of the process that thread `tid` belongs to.
    pub fn proc_of(&self, tid: u32) -> pb::Proc {
        let mut inner = self.lock();
        // A thread group's first call is mostly its main thread's: then one read of its status serves both.
        let (tgid, read) = match inner.tgid_of.get(&tid) {
            Some(&t) => (t, None),
            None => {
                let ids = status_ids(tid);
                let tgid = ids.as_ref().map_or(tid, |ids| ids.tgid);
                inner.tgid_of.insert(tid, tgid);
                (tgid, ids)
            }
        };
        if let Some(e) = inner.by_tgid.get(&tgid) {
            return pb::Proc { id: e.id, parent: e.parent };
        }
        let ids = read.filter(|_| tid == tgid).or_else(|| status_ids(tgid)).unwrap_or(Ids {
            tgid,
            ppid: 0,
            nspid: tgid,
        });
        let parent = inner.by_tgid.get(&ids.ppid).map(|e| e.id);
        // The announced process is the one with this pid whose parent made the clone: a clone that took
        // another pid than it was promised must not take another process's identity.
        let is_it = |a: &Announced| a.parent == 0 || Some(a.parent) == parent;
        if let Some(a) = inner.announced.get(&ids.nspid).copied().filter(is_it) {
            inner.announced.remove(&ids.nspid);
            let entry =
                Entry { id: a.id, parent: a.parent, nspid: ids.nspid, home: Some(a.home), end: a.end };
            inner.by_tgid.insert(tgid, entry);
            return pb::Proc { id: a.id, parent: a.parent };
        }
        let parent = parent.unwrap_or(0);
        inner.next += 1;
        let id = inner.next;
        inner.by_tgid.insert(tgid, Entry { id, parent, nspid: ids.nspid, home: None, end: None });
        pb::Proc { id, parent }
    }

    /// A new proc id, for a process about to be forked.
    pub fn reserve(&self) -> u64 {
        let mut inner = self.lock();
        inner.next += 1;
        inner.next
    }

    /// Announces the process that will take pid `nspid` in the job's namespace: proc `id`, child of proc
    /// `parent`, with these home ids. Its first call finds it by that pid.
    pub fn announce(&self, nspid: u32, id: u64, parent: u64, home: (i32, i32)) {
        let mut inner = self.lock();
        inner.next = inner.next.max(id);
        inner
            .announced
            .insert(nspid, Announced { id, parent, home, end: None, at: std::time::Instant::now() });
    }

    /// Forgets the process announced under `nspid` (its clone did not happen).
    pub fn unannounce(&self, nspid: u32) {
        self.lock().announced.remove(&nspid);
    }

    /// The announced process that was to take pid `from` took `to`.
    pub fn announced_moved(&self, from: u32, to: u32) {
        let mut inner = self.lock();
        if let Some(a) = inner.announced.remove(&from) {
            inner.announced.insert(to, a);
        }
    }

    /// The pid, in the job's namespace, of proc `id` if it was announced and has made no call yet.
    pub fn announced_nspid(&self, id: u64) -> Option<u32> {
        self.lock().announced.iter().find(|(_, a)| a.id == id).map(|(n, _)| *n)
    }

    /// Forgets announced processes older than `ttl` that never appeared (their fork failed) or vanished
    /// without a call; returns their proc ids and how they ended. `exists` tells whether a pid of the job's
    /// namespace lives.
    pub fn reap_announced(&self, ttl: std::time::Duration, exists: impl Fn(u32) -> bool) -> Vec<(u64, End)> {
        let mut inner = self.lock();
        let gone: Vec<u32> = inner
            .announced
            .iter()
            .filter(|(n, a)| a.at.elapsed() >= ttl && !exists(**n))
            .map(|(n, _)| *n)
            .collect();
        gone.iter()
            .filter_map(|n| inner.announced.remove(n))
            .map(|a| (a.id, a.end.unwrap_or(End::Killed(libc::SIGKILL))))
            .collect()
    }

    /// Records how the process with pid `nspid` in the job's namespace ended (its wait status, as init
    /// reaped it).
    pub fn set_end_nspid(&self, nspid: u32, end: End) {
        let mut inner = self.lock();
        if let Some(tgid) = inner.by_tgid.iter().find(|(_, e)| e.nspid == nspid).map(|(t, _)| *t) {
            drop(inner);
            self.set_end(tgid, end);
        } else if let Some(a) = inner.announced.get_mut(&nspid) {
            a.end = Some(end);
        }
    }

    /// This machine's pid of the process with pid `nspid` in the job's namespace, if it made a call.
    pub fn local_of_nspid(&self, nspid: u32) -> Option<u32> {
        self.lock().by_tgid.iter().find(|(_, e)| e.nspid == nspid).map(|(t, _)| *t)
    }

    /// The thread group of `tid`, as last seen.
    pub fn tgid_of(&self, tid: u32) -> u32 {
        if let Some(&tgid) = self.lock().tgid_of.get(&tid) {
            return tgid;
        }
        // A thread not seen yet (its first notified call may be anything: `gettid` is the kernel's in the
        // job's pid namespace).
        let tgid = status_ids(tid).map_or(tid, |ids| ids.tgid);
        self.lock().tgid_of.insert(tid, tgid);
        tgid
    }

    /// The cached (home pid, home ppid) of thread group `tgid`.
    pub fn home_ids(&self, tgid: u32) -> Option<(i32, i32)> {
        self.lock().by_tgid.get(&tgid).and_then(|e| e.home)
    }

    pub fn set_home_ids(&self, tgid: u32, ids: (i32, i32)) {
        if let Some(e) = self.lock().by_tgid.get_mut(&tgid) {
            e.home = Some(ids);
        }
    }

    /// The local thread group whose home pid is `home_pid`.
    pub fn local_of_home_pid(&self, home_pid: i32) -> Option<u32> {
        self.lock().by_tgid.iter().find(|(_, e)| e.home.is_some_and(|(p, _)| p == home_pid)).map(|(t, _)| *t)
    }

    /// The local thread group of proc `id`.
    pub fn local_of_proc(&self, id: u64) -> Option<u32> {
        self.lock().by_tgid.iter().find(|(_, e)| e.id == id).map(|(t, _)| *t)
    }

    /// Records how thread group `tgid` ended (its `exit_group`, or its wait status).
    pub fn set_end(&self, tgid: u32, end: End) {
        if let Some(e) = self.lock().by_tgid.get_mut(&tgid) {
            if e.end.is_none() || matches!(end, End::Killed(_)) {
                e.end = Some(end);
            }
        }
    }

    /// Forgets processes that no longer exist; returns their proc ids and how they ended (a process that
    /// vanished without a recorded end was killed; SIGKILL is assumed when the signal is unknown).
    pub fn reap(&self) -> Vec<(u64, End)> {
        let mut inner = self.lock();
        inner.tgid_of.retain(|tid, _| alive(*tid));
        let dead: Vec<u32> = inner.by_tgid.keys().copied().filter(|t| !alive(*t)).collect();
        dead.iter()
            .filter_map(|t| inner.by_tgid.remove(t))
            .map(|e| (e.id, e.end.unwrap_or(End::Killed(libc::SIGKILL))))
            .collect()
    }

    /// Whether local process `pid` is part of the job (a descendant of this supervisor).
    pub fn in_job(&self, pid: u32) -> bool {
        if self.lock().by_tgid.contains_key(&pid) {
            return true;
        }
        let me = std::process::id();
        let mut p = pid;
        for _ in 0..64 {
            match status_ids(p).map(|ids| ids.ppid) {
                Some(ppid) if ppid == me => return true,
                Some(ppid) if ppid > 1 => p = ppid,
                _ => return false,
            }
        }
        false
    }
}

/// Whether a process exists and has not been reaped (a zombie still counts: its end is not yet known to
/// its parent, and its number is not yet free).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| stat_fields(&s).next() != Some("Z"))
}

/// The fields of a `/proc/PID/stat` line after the command name, which may hold spaces and parentheses:
/// state, ppid, pgrp, session, ...
pub fn stat_fields(stat: &str) -> std::str::SplitWhitespace<'_> {
    stat.rfind(')').map_or("", |i| &stat[i + 1..]).split_whitespace()
}

/// A task's ids, from `/proc/TID/status`.
struct Ids {
    tgid: u32,
    /// This machine's parent pid.
    ppid: u32,
    /// The task's id in its own (innermost) pid namespace.
    nspid: u32,
}

fn status_ids(tid: u32) -> Option<Ids> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let line = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
    let field = |name: &str| line(name).and_then(|v| v.trim().parse::<u32>().ok());
    let tgid = field("Tgid:")?;
    let nspid = line("NSpid:").and_then(|v| v.split_whitespace().last()?.parse().ok()).unwrap_or(tid);
    Some(Ids { tgid, ppid: field("PPid:")?, nspid })
}
