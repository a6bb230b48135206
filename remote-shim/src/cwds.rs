//! Each process's cwd as a path (getcwd's answer), so that a repeated `getcwd` needs no round trip.
//!
//! Home keeps every process's cwd (decision 9); its path can change without the process doing anything
//! (someone at home renames a directory above it, or removes it). So the path home last gave is answered
//! only while home's lease on it holds: the getcwd that fetched it asked for a lease on looking the path up
//! and home granted one only when that lookup finds the cwd's very directory. The lease's answer lives in
//! the attribute cache (`attrcache::CWD`, [`crate::attrcache::Cached::Names`]), which home's reports of
//! changes to the entries on the way, and the job's own renames and removals, drop as any other answer.
//!
//! The process's own changes: `chdir`/`fchdir` forget its path before they are sent and again when they are
//! answered, and every getcwd that was in flight across one of them is not kept (an epoch counts them). A
//! new process starts with its parent's path where its home state is copied from its parent at the fork
//! itself (in the job's pid namespace, where the fork asks home for the child's deputy); elsewhere its
//! first getcwd asks home. exec keeps the process, hence its cwd.

use crate::attrcache::{AttrCache, Cached, Key, CWD};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Processes remembered at most; the table starts over when full.
const MAX_PROCS: usize = 65536;

/// A process's cwd as home named it: the path, and the directory (device, inode) it named then.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    path: Vec<u8>,
    dir: (u64, u64),
}

#[derive(Default)]
pub struct Cwds {
    inner: Mutex<Inner>,
    /// Home refused a lease on a cwd path (a confined session, leases stopped): not asked for again
    /// unless the program itself calls getcwd.
    pub refused: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every chdir sent or answered.
    epoch: u64,
    by_proc: HashMap<u64, Known>,
    /// Processes whose cwd path home could not give since their last change of directory.
    failed: std::collections::HashSet<u64>,
}

/// Taken before a getcwd is sent: its answer is kept only if no chdir was sent or answered meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// The attribute cache's key for the lease on `path` naming a cwd.
pub fn key(path: &[u8]) -> Key {
    Key { proc: 0, path: path.to_vec(), follow: true, mask: CWD }
}

impl Cwds {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cwd path of `proc`, if home gave it and its lease still holds.
    pub fn get(&self, proc: u64, attrs: &AttrCache) -> Option<Vec<u8>> {
        let known = self.lock().by_proc.get(&proc).cloned()?;
        match attrs.get(&key(&known.path)) {
            Some(Cached::Names(dev, ino)) if (dev, ino) == known.dir => Some(known.path),
            _ => None,
        }
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().epoch)
    }

    /// Keeps `path`, which names directory `dir`, as the cwd of `proc`, fetched with `ticket`.
    pub fn put(&self, proc: u64, ticket: Ticket, path: Vec<u8>, dir: (u64, u64)) {
        let mut inner = self.lock();
        if inner.epoch != ticket.0 {
            return;
        }
        if inner.by_proc.len() >= MAX_PROCS {
            inner.by_proc.clear();
        }
        inner.by_proc.insert(proc, Known { path, dir });
    }

    /// `proc` changes its cwd: called before the change is sent and again when it is answered.
    pub fn changing(&self, proc: u64) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.by_proc.remove(&proc);
        inner.failed.remove(&proc);
    }

    /// Asking home for `proc`'s cwd path failed (its cwd was removed, the path is too long): not asked
    /// again for `lazy` opens until it changes directory.
    pub fn failed(&self, proc: u64) {
        let mut inner = self.lock();
        if inner.failed.len() >= MAX_PROCS {
            inner.failed.clear();
        }
        inner.failed.insert(proc);
    }

    /// Whether asking home for `proc`'s cwd path failed since its last change of directory.
    pub fn has_failed(&self, proc: u64) -> bool {
        self.lock().failed.contains(&proc)
    }

    /// `child` starts in `parent`'s cwd (home copied it while `ticket` was current): its path is kept
    /// for the child too, unless a chdir was sent or answered meanwhile (another thread of the parent may
    /// have moved it; the child then asks home).
    pub fn inherit(&self, parent: u64, child: u64, ticket: Ticket) {
        let mut inner = self.lock();
        if inner.epoch != ticket.0 {
            return;
        }
        if let Some(known) = inner.by_proc.get(&parent).cloned() {
            inner.by_proc.insert(child, known);
        }
    }

    /// `proc` has ended.
    pub fn forget(&self, proc: u64) {
        let mut inner = self.lock();
        inner.by_proc.remove(&proc);
        inner.failed.remove(&proc);
    }
}

/// Stores home's lease on `path` naming directory `dir` (from a getcwd's reply) in the attribute cache.
pub fn lease(
    attrs: &AttrCache,
    path: &[u8],
    dir: (u64, u64),
    ticket: crate::attrcache::Ticket,
    reply: &homeward_proto::pb::CallReply,
) {
    attrs.put_leased(key(path), Cached::Names(dir.0, dir.1), ticket, reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leased(attrs: &AttrCache, path: &[u8], dir: (u64, u64)) {
        let ticket = attrs.ticket();
        attrs.put(key(path), Cached::Names(dir.0, dir.1), ticket, 1, vec![(1, b"d".to_vec())]);
    }

    #[test]
    fn a_path_is_answered_only_while_its_lease_names_the_same_directory() {
        let (cwds, attrs) = (Cwds::default(), AttrCache::default());
        let t = cwds.ticket();
        cwds.put(7, t, b"/a/d".to_vec(), (1, 10));
        assert_eq!(cwds.get(7, &attrs), None, "no lease yet");
        leased(&attrs, b"/a/d", (1, 10));
        assert_eq!(cwds.get(7, &attrs), Some(b"/a/d".to_vec()));
        assert_eq!(cwds.get(8, &attrs), None, "another process");
        // Another directory now has that path (leased by another process's getcwd).
        leased(&attrs, b"/a/d", (1, 11));
        assert_eq!(cwds.get(7, &attrs), None);
        leased(&attrs, b"/a/d", (1, 10));
        // Home reports a change to an entry on the way.
        attrs.changed(5, &[homeward_proto::pb::Dep { wd: 1, name: b"d".to_vec().into() }], &[], &[]);
        assert_eq!(cwds.get(7, &attrs), None);
    }

    #[test]
    fn chdir_forgets_and_voids_answers_in_flight_and_children_inherit() {
        let (cwds, attrs) = (Cwds::default(), AttrCache::default());
        leased(&attrs, b"/a/d", (1, 10));
        let t = cwds.ticket();
        cwds.put(7, t, b"/a/d".to_vec(), (1, 10));
        cwds.inherit(7, 9, cwds.ticket());
        assert_eq!(cwds.get(9, &attrs), Some(b"/a/d".to_vec()));
        // A chdir between the fork's start and its end at home: the child's cwd is not known here.
        let forking = cwds.ticket();
        cwds.changing(8);
        cwds.inherit(7, 10, forking);
        assert_eq!(cwds.get(10, &attrs), None, "inherited across a chdir");
        let in_flight = cwds.ticket();
        cwds.changing(7);
        assert_eq!(cwds.get(7, &attrs), None);
        cwds.put(7, in_flight, b"/a/d".to_vec(), (1, 10));
        assert_eq!(cwds.get(7, &attrs), None, "fetched across a chdir");
        assert_eq!(cwds.get(9, &attrs), Some(b"/a/d".to_vec()), "the child's own cwd did not change");
        cwds.forget(9);
        assert_eq!(cwds.get(9, &attrs), None);
    }
}
