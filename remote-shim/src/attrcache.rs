//! The attribute and negative-lookup cache: answers of path lookups (`stat`'s attributes, or `ENOENT`)
//! that home leased, kept until home flushes its leases or the job itself changes something.
//!
//! Home watches every directory a leased lookup went through and sends `Event { flush_epoch }` at the first
//! change there ([`home_agent`'s `leases`]); the flush is applied by the link's reader before any later
//! reply is delivered. The job's own changes go through [`AttrCache::before_call`]: any call that may change
//! a file's attributes or a directory's entries empties the cache before it is sent, and bumps a
//! generation, so an answer that was in flight across that change is not stored.
//!
//! Keys: an absolute path is looked up the same from every process; a relative one belongs to its process
//! (relative to that process's cwd) and is forgotten when the process changes directory.

use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::Errno;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Entries kept at most; the cache starts over when full.
const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// 0 for an absolute path, else the process whose cwd a relative path starts from.
    pub proc: u64,
    pub path: Vec<u8>,
    /// Whether a symbolic link as the last component is followed.
    pub follow: bool,
    /// statx's mask (0: the stat family's).
    pub mask: u32,
}

impl Key {
    /// The key of a lookup of `path` by `proc`: from its cwd, or (`base`) from a directory that process
    /// opened by a leased lookup; `None` when such a lookup is not cached (an empty path).
    pub fn of(proc: u64, base: Option<&Key>, path: &[u8], follow: bool, mask: u32) -> Option<Key> {
        if path.is_empty() {
            return None;
        }
        if path.first() == Some(&b'/') {
            return Some(Key { proc: 0, path: path.to_vec(), follow, mask });
        }
        match base {
            None => Some(Key { proc, path: path.to_vec(), follow, mask }),
            Some(base) => Some(Key { proc: base.proc, path: join(&base.path, path), follow, mask }),
        }
    }
}

/// `dir/name`, without doubling a slash.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = dir.to_vec();
    while path.len() > 1 && path.ends_with(b"/") {
        path.pop();
    }
    if !path.ends_with(b"/") {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cached {
    Found(pb::FileStat),
    Missing(Errno),
}

/// Where an answer may be stored: taken before the call is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    generation: u64,
}

#[derive(Default)]
pub struct AttrCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Home's lease epoch the entries belong to.
    epoch: u64,
    /// Bumped by every local change (a call that may change something at home).
    generation: u64,
    entries: HashMap<Key, Cached>,
    hits: u64,
}

impl AttrCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &Key) -> Option<Cached> {
        let mut inner = self.lock();
        let hit = inner.entries.get(key).cloned();
        if hit.is_some() {
            inner.hits += 1;
        }
        hit
    }

    /// What a call about to be sent must show to store its answer.
    pub fn ticket(&self) -> Ticket {
        let inner = self.lock();
        Ticket { epoch: inner.epoch, generation: inner.generation }
    }

    /// Whether nothing changed since `ticket` was taken and home leased the answer under the current epoch.
    pub fn still_valid(&self, ticket: Ticket, lease: u64) -> bool {
        let inner = self.lock();
        lease != 0 && lease == inner.epoch && inner.generation == ticket.generation
    }

    /// Stores `value` for `key`, leased by home under epoch `lease` for a call sent with `ticket`.
    pub fn put(&self, key: Key, value: Cached, ticket: Ticket, lease: u64) {
        let mut inner = self.lock();
        if lease == 0 || lease < inner.epoch || inner.generation != ticket.generation {
            return;
        }
        // A lease of a newer epoch than the entries: home flushed and the flush is still on its way.
        if lease > inner.epoch {
            inner.entries.clear();
            inner.epoch = lease;
        }
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.clear();
        }
        inner.entries.insert(key, value);
    }

    /// Home flushed every lease before `epoch`.
    pub fn flush(&self, epoch: u64) {
        let mut inner = self.lock();
        if epoch > inner.epoch {
            inner.epoch = epoch;
            inner.entries.clear();
        }
    }

    /// Called before every call goes home: one that may change attributes or entries empties the cache;
    /// a change of directory forgets the process's relative lookups.
    pub fn before_call(&self, proc: u64, op: &Op) {
        match op {
            Op::Chdir(_) => self.forget_relative(proc),
            Op::ForgetProc(f) => self.forget_relative(f.id),
            op if changes_nothing(op) => {}
            _ => {
                let mut inner = self.lock();
                inner.generation += 1;
                inner.entries.clear();
            }
        }
    }

    fn forget_relative(&self, proc: u64) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.retain(|k, _| k.proc != proc);
    }

    /// Lookups answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.lock().hits
    }
}

/// Whether a call cannot change any file's attributes or any directory's entries at home (reads do change
/// access times; those are not kept exact by the cache).
fn changes_nothing(op: &Op) -> bool {
    match op {
        Op::Open(o) => {
            let flags = homeward_proto::flags::open_from_wire(o.flags);
            flags & libc::O_ACCMODE == libc::O_RDONLY && flags & (libc::O_CREAT | libc::O_TRUNC) == 0
        }
        Op::Xattr(x) => matches!(pb::XattrOp::try_from(x.op), Ok(pb::XattrOp::Get | pb::XattrOp::List)),
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
        | Op::Umask(_) => true,
        _ => false,
    }
}
