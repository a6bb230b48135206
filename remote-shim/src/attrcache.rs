//! The attribute and negative-lookup cache: answers of path lookups (`stat`'s attributes, or `ENOENT`)
//! that home leased, kept until home flushes its leases or the job itself changes something.
//!
//! Home watches every directory a leased lookup went through and sends `Event { flush_epoch }` at the first
//! change there ([`home_agent`'s `leases`]); the flush is applied by the link's reader before any later
//! reply is delivered. The job's own changes go through [`AttrCache::before_call`] before they are sent, and
//! bump a generation, so an answer that was in flight across that change is not stored. What they drop:
//! - data or attribute changes through a descriptor (write, ftruncate, fchmod, ...): the entries of that
//!   file (by device and inode, known from the open);
//! - a change of a name (create, unlink, mkdir, symlink, chmod by path, ...): every entry with a path
//!   component equal to that name (so every spelling of the path, and everything below it), and every
//!   directory's attributes (their times and link counts change);
//! - a rename, or anything else: the whole cache.
//!
//! Keys: an absolute path is looked up the same from every process; a relative one belongs to its process
//! (relative to that process's cwd) and is forgotten when the process changes directory.

use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::Errno;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Entries kept at most; the cache starts over when full (a change of a name scans them all).
const MAX_ENTRIES: usize = 50_000;

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

/// `Key::mask` of a `readlink` answer (a link's target, or its errno).
pub const READLINK: u32 = u32::MAX;
/// `Key::mask` of an `access(F_OK)` answer.
pub const EXISTS: u32 = u32::MAX - 1;

#[derive(Debug, Clone, PartialEq)]
pub enum Cached {
    /// A stat's attributes.
    Found(pb::FileStat),
    /// The lookup failed with this errno.
    Missing(Errno),
    /// readlink's answer: the link's target.
    Link(Vec<u8>),
    /// access(F_OK) succeeded.
    Exists,
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
    /// Home files (device, inode) behind the handles the job opened.
    inodes: HashMap<u64, (u64, u64)>,
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

    /// Remembers which home file handle `handle` is (for the changes made through it).
    pub fn opened(&self, handle: u64, inode: (u64, u64)) {
        self.lock().inodes.insert(handle, inode);
    }

    /// Called before every call goes home, with what it may change (see the module text).
    pub fn before_call(&self, proc: u64, op: &Op) {
        if changes_nothing(op) {
            if let Op::Close(c) = op {
                self.lock().inodes.remove(&c.handle);
            }
            return;
        }
        let mut inner = self.lock();
        inner.generation += 1;
        let change = change_of(op);
        if matches!(change, Change::Anything) {
            tracing::debug!(op = ?std::mem::discriminant(op), "a call that may change anything: attribute cache emptied");
        }
        match change {
            Change::Cwd(p) => inner.entries.retain(|k, _| k.proc != p.unwrap_or(proc)),
            Change::Handle(h) => match inner.inodes.get(&h).copied() {
                Some(inode) => {
                    inner.entries.retain(|_, v| !matches!(v, Cached::Found(s) if (s.dev, s.ino) == inode))
                }
                None => inner.entries.clear(),
            },
            Change::Names(names, parents) => inner.entries.retain(|k, v| {
                let dir = matches!(v, Cached::Found(s) if s.mode & libc::S_IFMT == libc::S_IFDIR);
                // The directories the names are in: their times and link counts change.
                let parent = dir
                    && match last_component(&k.path) {
                        Some(c) if c != b".." => parents.as_ref().is_none_or(|p| p.contains(&c)),
                        _ => true,
                    };
                !parent && !k.path.split(|&b| b == b'/').any(|c| names.contains(&c))
            }),
            Change::Anything => inner.entries.clear(),
        }
    }

    /// Lookups answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.lock().hits
    }
}

/// What a call that may change something at home changes.
enum Change<'a> {
    /// A process's cwd (its relative lookups): the caller's, or the given process (which ended).
    Cwd(Option<u64>),
    /// The file behind a handle: its data or attributes.
    Handle(u64),
    /// The entries named by these last path components, and the directories they are in: named by their
    /// own last components, or `None` when a path does not say (a name in the cwd).
    Names(Vec<&'a [u8]>, Option<Vec<&'a [u8]>>),
    Anything,
}

fn last_component(path: &[u8]) -> Option<&[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").next_back()
}

fn names<'a>(paths: &[&'a [u8]]) -> Change<'a> {
    let mut names = Vec::new();
    let mut parents = Some(Vec::new());
    for path in paths {
        let parts: Vec<&[u8]> = path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").collect();
        match parts.as_slice() {
            [] => return Change::Anything,
            [.., b".."] => return Change::Anything,
            [.., parent, name] if *parent != b".." => {
                names.push(*name);
                if let Some(p) = parents.as_mut() {
                    p.push(*parent);
                }
            }
            // In the cwd, or below a `..`: which directory that is, the path does not say.
            [.., name] => {
                names.push(*name);
                // An absolute one-component path is in `/`, which every spelling names by no component.
                parents = None;
            }
        }
    }
    Change::Names(names, parents)
}

fn change_of(op: &Op) -> Change<'_> {
    // A path call with an empty path acts on its handle (the f* variants).
    let on = |dir: &Option<pb::Dir>, path: &'_ [u8]| -> Option<u64> {
        path.is_empty().then(|| dir.as_ref().map_or(0, |d| d.handle)).filter(|&h| h != 0)
    };
    match op {
        Op::Chdir(_) => Change::Cwd(None),
        Op::ForgetProc(f) => Change::Cwd(Some(f.id)),
        Op::Write(w) => Change::Handle(w.handle),
        Op::Fallocate(f) => Change::Handle(f.handle),
        Op::CopyRange(c) => Change::Handle(c.out_handle),
        Op::Fsync(f) => Change::Handle(f.handle),
        Op::SetFlags(f) => Change::Handle(f.handle),
        Op::Truncate(t) => on(&t.dir, &t.path).map_or_else(|| names(&[&t.path]), Change::Handle),
        Op::Chmod(c) => on(&c.dir, &c.path).map_or_else(|| names(&[&c.path]), Change::Handle),
        Op::Chown(c) => on(&c.dir, &c.path).map_or_else(|| names(&[&c.path]), Change::Handle),
        Op::Utimens(u) => on(&u.dir, &u.path).map_or_else(|| names(&[&u.path]), Change::Handle),
        Op::Xattr(x) => on(&x.dir, &x.path).map_or_else(|| names(&[&x.path]), Change::Handle),
        Op::Open(o) => names(&[&o.path]),
        Op::Mkdir(m) => names(&[&m.path]),
        Op::Mknod(m) => names(&[&m.path]),
        Op::Unlink(u) => names(&[&u.path]),
        Op::Symlink(s) => names(&[&s.path]),
        Op::Link(l) => names(&[&l.old_path, &l.new_path]),
        _ => Change::Anything,
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
