//! The attribute and negative-lookup cache: answers of path lookups (`stat`'s attributes or errno, a link's
//! target, an access check) and listed entries that home leased, kept until home reports a change they
//! depend on or the job itself changes something.
//!
//! Home watches every directory a leased lookup went through and lists the answer's dependencies: an
//! entry name in a watched directory, or the directory itself (home-agent's `leases`). Its reports of
//! changes (`Event { changed, written, seq }`) are applied by the link's reader before any later reply is delivered;
//! an answer leased before a change that arrives after its report is refused (a log of recent reports).
//! The job's own changes go through [`AttrCache::before_call`] before they are sent, and bump a generation,
//! so an answer that was in flight across that change is not stored. What they drop:
//! - data or attribute changes through a descriptor (write, ftruncate, fchmod, ...): the entries of that
//!   file (by device and inode, known from the open);
//! - a change of a name (create, unlink, mkdir, symlink, chmod by path, ...): every entry with a path
//!   component equal to that name (so every spelling of the path, and everything below it), and the
//!   attributes of the directories it is in (their times and link counts change);
//! - a rename, or anything else: the whole cache.
//!
//! Keys: an absolute path is looked up the same from every process; a relative one is keyed under the
//! cwd's path while home leases that path (`Call::lookup_key`), else it belongs to its process (relative to
//! that process's cwd) and is forgotten when the process changes directory.

use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::Errno;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Entries kept at most; the cache starts over when full.
const MAX_ENTRIES: usize = 50_000;
/// Reports of changes remembered, to refuse answers leased before them that arrive after them.
const RECENT: usize = 4096;

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
    /// The key of a lookup of `path` by `proc`: from its cwd, or (`base`) from a directory named by a
    /// leased lookup (one the process opened, or its cwd's path); `None` when such a lookup is not cached
    /// (an empty path). Below `base`, leading `./` go, and `.` alone is `base`'s directory itself (found
    /// through any link its path ends in).
    pub fn of(proc: u64, base: Option<&Key>, path: &[u8], follow: bool, mask: u32) -> Option<Key> {
        if path.is_empty() {
            return None;
        }
        if path.first() == Some(&b'/') {
            return Some(Key { proc: 0, path: path.to_vec(), follow, mask });
        }
        let Some(base) = base else { return Some(Key { proc, path: path.to_vec(), follow, mask }) };
        let mut rest = path;
        while let Some(r) = rest.strip_prefix(b"./") {
            rest = r;
            while let Some(r) = rest.strip_prefix(b"/") {
                rest = r;
            }
        }
        if rest.is_empty() || rest == b"." {
            return Some(Key { proc: base.proc, path: base.path.clone(), follow: true, mask });
        }
        Some(Key { proc: base.proc, path: join(&base.path, rest), follow, mask })
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
/// `Key::mask` of an `access(mode)` answer: this plus the mode.
pub const ACCESS: u32 = u32::MAX - 16;
/// `Key::mask` of a process's cwd path (getcwd's answer): which directory the path names.
pub const CWD: u32 = u32::MAX - 1;
/// `Key::mask` of a name the job may remove (`Cached::Removable`, without following a last link).
pub const REMOVABLE: u32 = u32::MAX - 2;
/// `Key::mask` of a directory home opened read-only for the job (`Cached::Opens`), leased on its entry's
/// attributes, not on what it holds (`CallReply.reopen_lease`): it may be opened again without home.
pub const DIR_OPEN: u32 = u32::MAX - 3;
/// `Key::mask` of the names in the directory a path names (`Cached::Listing`), under the key of the path
/// (`.` for the cwd of a process's own relative keys).
pub const LISTING: u32 = u32::MAX - 4;
/// Listings kept at most (each up to a few thousand names); they all go when there are more.
const MAX_LISTINGS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub enum Cached {
    /// A stat's attributes.
    Found(pb::FileStat),
    /// The lookup failed with this errno.
    Missing(Errno),
    /// readlink's answer: the link's target.
    Link(Vec<u8>),
    /// The access check succeeded.
    Exists,
    /// The path names this directory (device, inode): a cwd's path, depending only on the entries on the
    /// way (`CWD`).
    Names(u64, u64),
    /// The path names a regular file the job created and whose name home said it may remove
    /// (`CallReply.removable`, `REMOVABLE`): true while nothing on the way changes but the file's content.
    Removable,
    /// The path names this directory, which home opened read-only for the job (`DIR_OPEN`): its attributes
    /// then, of which only its identity, type and permissions still hold (its times and size do not).
    Opens(pb::FileStat),
    /// Every name in the directory the path names (`LISTING`): a lookup of any other name in it finds
    /// nothing (`ENOENT`) while no entry of it changes.
    Listing(std::sync::Arc<HashSet<Vec<u8>>>),
}

/// Whether `mask` keys a lookup whose answer for a missing last component is `ENOENT` (the stat family,
/// `readlink`, an access check), which a listing of its directory may answer.
fn answers_missing(mask: u32) -> bool {
    mask < ACCESS + 8 || mask == READLINK
}

/// The components of a path as the kernel walks them (empty ones and `.` dropped).
fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").collect()
}

/// The key of the listing of the directory that the first `n` components of `key`'s path name.
fn listing_key(key: &Key, parts: &[&[u8]]) -> Key {
    let mut path = if key.path.first() == Some(&b'/') { b"/".to_vec() } else { Vec::new() };
    path.extend_from_slice(&parts.join(&b'/'));
    if path.is_empty() {
        path.push(b'.');
    }
    Key { proc: key.proc, path, follow: true, mask: LISTING }
}

/// Where to keep the listing a reply to a lookup of `path` (keyed `key`) brought, home having found the
/// path's component `at` missing in the directory listed (`DirNames.at`): the key of that directory (the
/// path's components before it, below the base `key` was made with, if any).
pub fn listing_key_of(key: &Key, path: &[u8], at: usize) -> Option<Key> {
    let parts = components(&key.path);
    // The key's path is the base's path (if any) followed by the lookup's path.
    let first = parts.len().checked_sub(components(path).len())?;
    let end = first + at;
    (end < parts.len()).then(|| listing_key(key, &parts[..end]))
}

/// A name the job removes without waiting ([`AttrCache::take_removable`]): what its absence depends on,
/// and home's last report then.
pub struct Removed {
    deps: Vec<Dep>,
    reported: u64,
}

/// What the job has changed so far, taken before a call is sent: its answer is stored only if nothing
/// changed meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
}

/// A dependency of a leased answer: entry `name` of home's watched directory `wd` (empty: `wd` itself;
/// [`FILE_ITSELF`]: `wd` watches the regular file found, which has several links).
pub type Dep = (u32, Vec<u8>);

/// The name of a dependency on a file home watches itself (no entry of a lookup is named `.`).
pub const FILE_ITSELF: &[u8] = b".";

/// The dependencies a reply's lease lists.
pub fn deps(reply: &pb::CallReply) -> Vec<Dep> {
    reply.deps.iter().map(|d| (d.wd, d.name.to_vec())).collect()
}

struct Entry {
    value: Cached,
    deps: Vec<Dep>,
    /// Depends on names alone: writes to the content of what it names (`Event.written`) do not void it.
    names_only: bool,
    /// For a file's attributes: the job's reads of that file at home when they were stored (`Inner::reads`).
    reads: u64,
    /// A name's absence assumed from an unlink sent behind whose reply has not come (the last report seen
    /// when it was sent): reports that come before that reply do not void it ([`AttrCache::removed`]).
    awaiting: Option<u64>,
}

#[derive(Default)]
pub struct AttrCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every local change (a call that may change something at home).
    generation: u64,
    entries: HashMap<Key, Entry>,
    /// Keys by the watched directories their answers depend on (may name keys since dropped; the whole
    /// cache starts over when these grow past their bound).
    by_wd: HashMap<u32, HashSet<Key>>,
    /// Keys in `by_wd`, all sets together.
    indexed: usize,
    /// Home's recent reports: (seq, wd, name, a change of a non-directory's content or attributes only).
    recent: VecDeque<(u64, u32, Vec<u8>, bool)>,
    /// Reads of each file the job sent home (by inode).
    reads: HashMap<(u64, u64), u64>,
    /// Reports up to this seq were forgotten: answers leased before it are refused.
    forgotten: u64,
    /// Home stopped leasing (its event queue overflowed): nothing is stored any more.
    stopped: bool,
    /// Listings stored since they last all went (an upper bound of those kept).
    listings: usize,
    /// Files (by inode) whose handles open for writing the job is closing at home (`Op::Close` sent, its
    /// reply not yet read), and the file of each such handle: home's report of that close (`Event.closed`)
    /// leaves their attributes. (Closing a handle open for reading only is reported to no watch.)
    closing: HashMap<(u64, u64), u32>,
    closing_handles: HashMap<u64, (u64, u64)>,
    /// Handles open for writing (see `closing`).
    writable: HashSet<u64>,
    /// Home files (device, inode) behind the handles the job opened.
    inodes: HashMap<u64, (u64, u64)>,
    /// The job's changes to file contents, numbered: the last one per file (through a descriptor, or by
    /// opening it for writing), and the last to a file it cannot name (a descriptor of unknown file,
    /// `truncate` by path). Each is numbered when sent and again when answered, so a change in flight across
    /// an open makes that open's copy stale.
    change_seq: u64,
    writes: HashMap<(u64, u64), u64>,
    unnamed_writes: u64,
    /// Changes to each file's content through any descriptor or by opening it for writing, and the writes
    /// (and syncs) through each descriptor: the difference is what others did ([`AttrCache::foreign_mark`]).
    changes: HashMap<(u64, u64), u64>,
    own: HashMap<u64, u64>,
}

impl Inner {
    /// Whether a report numbered `from` or later voids an answer depending on `deps` (on names alone:
    /// `names_only`, which writes to content do not void).
    fn voided_since(&self, from: u64, deps: &[Dep], names_only: bool) -> bool {
        self.recent.iter().any(|(seq, wd, name, written)| {
            *seq >= from && !(*written && names_only) && voids(deps, *wd, name)
        })
    }

    /// Stores `value` for `key`, indexed by the watches of `deps` (the whole cache starts over when it has
    /// grown past its bounds).
    fn insert(&mut self, key: Key, value: Cached, deps: Vec<Dep>, names_only: bool) {
        if self.entries.len() >= MAX_ENTRIES || self.indexed >= 4 * MAX_ENTRIES {
            self.clear();
        }
        for (wd, _) in &deps {
            if self.by_wd.entry(*wd).or_default().insert(key.clone()) {
                self.indexed += 1;
            }
        }
        let reads = match &value {
            Cached::Found(st) => self.reads.get(&(st.dev, st.ino)).copied().unwrap_or(0),
            _ => 0,
        };
        if matches!(value, Cached::Listing(_)) {
            self.listings += 1;
            if self.listings > MAX_LISTINGS {
                self.entries.retain(|_, e| !matches!(e.value, Cached::Listing(_)));
                self.listings = 1;
            }
        }
        self.entries.insert(key, Entry { value, deps, names_only, reads, awaiting: None });
    }

    /// Whether `e` still answers: a file's attributes stored before a read of it the job sent home do not.
    fn current(&self, e: &Entry) -> bool {
        match &e.value {
            Cached::Found(st) => self.reads.get(&(st.dev, st.ino)).copied().unwrap_or(0) == e.reads,
            _ => true,
        }
    }

    fn remove_where(&mut self, wd: u32, hit: impl Fn(&Entry) -> bool) {
        let Some(keys) = self.by_wd.get_mut(&wd) else { return };
        let before = keys.len();
        // In place: the keys kept are not hashed again (a report for a directory with many answers, as a
        // build's output directory, comes with nearly every reply).
        let entries = &mut self.entries;
        keys.retain(|key| match entries.get(key) {
            Some(e) if hit(e) => {
                entries.remove(key);
                false
            }
            Some(e) => e.deps.iter().any(|d| d.0 == wd),
            None => false,
        });
        let after = keys.len();
        if after == 0 {
            self.by_wd.remove(&wd);
        }
        self.indexed -= before - after;
    }

    /// Counts a change to file `inode`, made by writing (or syncing) through descriptor `by`, or otherwise.
    fn count_change(&mut self, inode: (u64, u64), by: Option<u64>) {
        if self.changes.len() >= MAX_ENTRIES {
            // Forgetting the counts is a change to no file in particular: every mark taken before differs.
            self.changes.clear();
            self.own.clear();
            self.change_seq += 1;
            self.unnamed_writes = self.change_seq;
        }
        *self.changes.entry(inode).or_default() += 1;
        if let Some(handle) = by {
            *self.own.entry(handle).or_default() += 1;
        }
    }

    fn clear(&mut self) {
        self.listings = 0;
        self.entries.clear();
        self.by_wd.clear();
        self.indexed = 0;
        self.reads.clear();
    }
}

/// Whether a change to entry `name` of `wd` (empty: `wd` itself) voids an answer depending on `deps`.
fn voids(deps: &[Dep], wd: u32, name: &[u8]) -> bool {
    deps.iter().any(|(w, n)| *w == wd && (name.is_empty() || n.is_empty() || n[..] == *name))
}

impl AttrCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &Key) -> Option<Cached> {
        let inner = self.lock();
        if let Some(e) = inner.entries.get(key) {
            return inner.current(e).then(|| e.value.clone());
        }
        // A component of the path that its directory's listing lacks: the kernel's walk stops there.
        if inner.listings == 0 || !answers_missing(key.mask) || key.path.len() >= libc::PATH_MAX as usize {
            return None;
        }
        let parts = components(&key.path);
        for (i, name) in parts.iter().enumerate() {
            // (A longer name is refused first, with ENAMETOOLONG.)
            if name.len() > 255 {
                return None;
            }
            if *name == b".." {
                continue;
            }
            if let Some(Entry { value: Cached::Listing(names), .. }) =
                inner.entries.get(&listing_key(key, &parts[..i]))
            {
                if !names.contains(*name) {
                    return Some(Cached::Missing(Errno::ENOENT));
                }
            }
        }
        None
    }

    /// The dependencies of the answer cached for `key`.
    pub fn deps_of(&self, key: &Key) -> Option<Vec<Dep>> {
        self.lock().entries.get(key).map(|e| e.deps.clone())
    }

    /// Whether `key` still has a cached answer finding this very version of a file (device, inode, size,
    /// change and modification times).
    pub fn holds(&self, key: &Key, version: &pb::FileStat) -> bool {
        let inner = self.lock();
        matches!(inner.entries.get(key), Some(e @ Entry { value: Cached::Found(st), .. })
            if (st.dev, st.ino) == (version.dev, version.ino) && st.same_version(version) && inner.current(e))
    }

    /// [`AttrCache::holds`], whatever the job's reads did to the access time since the answer was stored:
    /// the lookup still finds that file at that version.
    pub fn finds(&self, key: &Key, version: &pb::FileStat) -> bool {
        let inner = self.lock();
        matches!(inner.entries.get(key), Some(Entry { value: Cached::Found(st), .. })
            if (st.dev, st.ino) == (version.dev, version.ino) && st.same_version(version))
    }

    /// To be taken before a call is sent, for storing its answer.
    pub fn ticket(&self) -> Ticket {
        Ticket { generation: self.lock().generation }
    }

    /// To be taken before a call that changes names is sent, for storing the answer home leases after
    /// that change (an unlink's missing name, a created file): valid only if the call's own change is the
    /// job's only one meanwhile.
    pub fn ticket_past_own_change(&self) -> Ticket {
        self.ticket_past_own_changes(1)
    }

    /// [`AttrCache::ticket_past_own_change`] for a call that counts as `n` changes of the job (an open that
    /// creates and empties a file: sent, then its inode forgotten, [`AttrCache::forget_inode`]).
    pub fn ticket_past_own_changes(&self, n: u64) -> Ticket {
        Ticket { generation: self.lock().generation + n }
    }

    /// Stores `value` for `key`, leased by home as `lease` with dependencies `deps`, for a call sent with
    /// `ticket`; refused when the job changed something since, or home reported a change it depends on.
    pub fn put(&self, key: Key, value: Cached, ticket: Ticket, lease: u64, deps: Vec<Dep>) {
        self.put_with(key, value, ticket, lease, deps, false);
    }

    /// [`AttrCache::put`], for an answer that depends on names alone when `names_only` (writes to the
    /// content of what it names do not void it).
    pub fn put_with(
        &self,
        key: Key,
        value: Cached,
        ticket: Ticket,
        lease: u64,
        deps: Vec<Dep>,
        names_only: bool,
    ) {
        // A name found missing stays so until a name is made, which no write to a file's content or
        // attributes does: a report of one under that name (a removed file's last descriptor closing at home,
        // `IN_CLOSE_WRITE`) does not void it.
        let names_only = names_only || matches!(value, Cached::Missing(Errno::ENOENT));
        let mut inner = self.lock();
        if lease == 0 || inner.stopped || inner.generation != ticket.generation || lease <= inner.forgotten {
            return;
        }
        if inner.voided_since(lease, &deps, names_only) {
            return;
        }
        // A file with other names: a change through one of them is not seen under this one, unless home
        // watches the file itself (a regular file's dependency named `.`).
        if matches!(&value, Cached::Found(st) if st.nlink > 1 && st.mode & libc::S_IFMT != libc::S_IFDIR)
            && !deps.iter().any(|(_, name)| name[..] == *FILE_ITSELF)
        {
            return;
        }
        inner.insert(key, value, deps, names_only);
    }

    /// Stores `value` for `key` under the lease `reply` carries (see [`AttrCache::put`]).
    pub fn put_leased(&self, key: Key, value: Cached, ticket: Ticket, reply: &pb::CallReply) {
        self.put(key, value, ticket, reply.lease, deps(reply));
    }

    /// Home reports changes (batch `seq`; `written`: non-directories whose content or attributes only
    /// changed; `closed`: non-directories only closed after writing): the answers depending on them go (but
    /// those on names alone, for `written` and `closed`; and, for `closed`, a file's attributes while the job
    /// is closing a handle of that file at home: the report is of that close).
    pub fn changed(&self, seq: u64, changed: &[pb::Dep], written: &[pb::Dep], closed: &[pb::Dep]) {
        let mut inner = self.lock();
        let all = changed
            .iter()
            .map(|c| (c, false, false))
            .chain(written.iter().map(|c| (c, true, false)))
            .chain(closed.iter().map(|c| (c, true, true)));
        // (Taken out while entries are removed, which borrows the rest.)
        let closing = std::mem::take(&mut inner.closing);
        for (c, only_written, only_closed) in all {
            tracing::trace!(seq, wd = c.wd, name = %String::from_utf8_lossy(&c.name), "home reports a change");
            let name = c.name.to_vec();
            let own_close = |e: &Entry| {
                only_closed
                    && matches!(&e.value, Cached::Found(st) if closing.contains_key(&(st.dev, st.ino)))
            };
            inner.remove_where(c.wd, |e| {
                let kept = (only_written && e.names_only) || own_close(e);
                !kept && e.awaiting.is_none() && voids(&e.deps, c.wd, &name)
            });
            inner.recent.push_back((seq, c.wd, name, only_written));
        }
        inner.closing = closing;
        while inner.recent.len() > RECENT {
            if let Some((seq, _, _, _)) = inner.recent.pop_front() {
                inner.forgotten = inner.forgotten.max(seq);
            }
        }
    }

    /// Home stopped leasing: every answer goes, and none is stored again.
    pub fn flush(&self) {
        let mut inner = self.lock();
        inner.stopped = true;
        inner.clear();
    }

    /// The link to home broke (or was resumed, `seq` being home's last batch then): every answer goes, and
    /// none leased up to `seq`, or asked for before now, is stored again.
    pub fn forget(&self, seq: u64) {
        let mut inner = self.lock();
        inner.clear();
        inner.forgotten = inner.forgotten.max(seq);
        inner.generation += 1;
    }

    /// The home file (device, inode) behind home handle `handle`, when known.
    pub fn inode_of(&self, handle: u64) -> Option<(u64, u64)> {
        self.lock().inodes.get(&handle).copied()
    }

    /// Remembers which home file handle `handle` is (for the changes made through it).
    pub fn opened(&self, handle: u64, inode: (u64, u64)) {
        self.lock().inodes.insert(handle, inode);
    }

    /// Called before every call goes home, with what it may change (see the module text).
    pub fn before_call(&self, proc: u64, op: &Op) {
        // A read at home (a listing too) may move the file's access time (relatime), which no report
        // tells of: the file's cached attributes stored before it are no longer answered. (A listing
        // counts as one change of the job whatever its handle, see `syscalls::dir::getdents`.)
        let read = match op {
            Op::Read(r) => Some(r.handle),
            Op::Getdents(g) => Some(g.handle),
            _ => None,
        };
        if let Some(handle) = read {
            let mut inner = self.lock();
            let inode = inner.inodes.get(&handle).copied();
            if inode.is_some() || matches!(op, Op::Getdents(_)) {
                inner.generation += 1;
            }
            if let Some(inode) = inode {
                if inner.reads.len() >= MAX_ENTRIES {
                    inner.clear();
                }
                *inner.reads.entry(inode).or_default() += 1;
            }
            return;
        }
        // A change of permissions or flags by path (which may name a directory), or of a file's flags: which
        // names the job may remove. (Through a descriptor of a directory: `forget_removable`.)
        let by_path = match op {
            Op::Chmod(pb::Chmod { path, .. }) | Op::Chown(pb::Chown { path, .. }) => !path.is_empty(),
            Op::Xattr(x) => !x.path.is_empty(),
            Op::Ioctl(_) => true,
            _ => false,
        };
        if by_path {
            self.forget_removable();
        }
        if homeward_proto::effects::changes_nothing(op) {
            if let Op::Close(c) = op {
                let mut inner = self.lock();
                for handle in std::iter::once(&c.handle).chain(&c.more) {
                    let inode = inner.inodes.remove(handle);
                    if let (Some(inode), true) = (inode, inner.writable.remove(handle)) {
                        *inner.closing.entry(inode).or_default() += 1;
                        inner.closing_handles.insert(*handle, inode);
                    }
                    inner.own.remove(handle);
                }
            }
            return;
        }
        let mut inner = self.lock();
        inner.generation += 1;
        match change_of(op) {
            Change::Cwd(p) => inner.entries.retain(|k, _| k.proc != p.unwrap_or(proc)),
            Change::Handle(h) => match inner.inodes.get(&h).copied() {
                Some(inode) => {
                    // Attributes alone (sqlite's `fchown` of its new journal) leave the content as it was.
                    let attributes_only =
                        matches!(op, Op::Chmod(_) | Op::Chown(_) | Op::Utimens(_) | Op::Xattr(_));
                    if !attributes_only {
                        inner.count_change(inode, matches!(op, Op::Write(_) | Op::Fsync(_)).then_some(h));
                    }
                    inner.change_seq += 1;
                    let seq = inner.change_seq;
                    inner.writes.insert(inode, seq);
                    inner.entries.retain(|_, e| match &e.value {
                        Cached::Found(s) => (s.dev, s.ino) != inode,
                        // Who may open a directory changes with its attributes only (`DIR_OPEN`).
                        Cached::Opens(s) => (s.dev, s.ino) != inode || !attributes_only,
                        _ => true,
                    });
                }
                None => {
                    inner.change_seq += 1;
                    inner.unnamed_writes = inner.change_seq;
                    inner.clear();
                }
            },
            Change::Names(names, parents) => inner.entries.retain(|k, e| {
                let dir = matches!(&e.value, Cached::Found(s) if s.mode & libc::S_IFMT == libc::S_IFDIR)
                    || matches!(&e.value, Cached::Listing(_));
                // The directories the names are in: their times, link counts and names change. A directory the path
                // does not name (a name in the cwd), or a key that does not name its directory (`..`, `/`),
                // is left to home's report of the change, which comes before the call's reply (the
                // directory is watched, since its attributes were leased), so no later call of the job
                // meets the old answer.
                let parent = dir
                    && match last_component(&k.path) {
                        Some(c) if c != b".." => parents.as_ref().is_some_and(|p| p.contains(&c)),
                        _ => false,
                    };
                !parent && !k.path.split(|&b| b == b'/').any(|c| names.contains(&c))
            }),
            // Through a symbolic link the file changed may have any name: every answer that depends on
            // attributes goes; that a name is missing, or where a link points, stays true.
            Change::Attributes(name) => {
                // `truncate` by path changes content somewhere this cache cannot name.
                if matches!(op, Op::Truncate(_)) {
                    inner.change_seq += 1;
                    inner.unnamed_writes = inner.change_seq;
                }
                inner.entries.retain(|k, e| {
                let lasting = matches!(&e.value, Cached::Link(_) | Cached::Names(..))
                    || matches!(&e.value, Cached::Missing(x) if *x == Errno::ENOENT || *x == Errno(libc::ENOTDIR as u16));
                    lasting && !k.path.split(|&b| b == b'/').any(|c| c == name)
                })
            }
            Change::Anything => inner.clear(),
        }
        // A new link raises the link count of a file that other keys may find (through symbolic links),
        // which home reports to no directory's watch: every cached file's attributes go.
        if let Op::Link(_) = op {
            inner.entries.retain(
                |_, e| !matches!(&e.value, Cached::Found(s) if s.mode & libc::S_IFMT != libc::S_IFDIR),
            );
        }
    }

    /// The job opened file `inode` for writing.
    pub fn wrote(&self, inode: (u64, u64)) {
        let mut inner = self.lock();
        inner.count_change(inode, None);
        inner.change_seq += 1;
        let seq = inner.change_seq;
        inner.writes.insert(inode, seq);
    }

    /// A call sent after `before_call(op)` was answered: a content change is numbered again (see
    /// `change_seq`).
    pub fn after_call(&self, op_handle: Option<u64>) {
        let Some(handle) = op_handle else { return };
        let mut inner = self.lock();
        inner.change_seq += 1;
        let seq = inner.change_seq;
        match inner.inodes.get(&handle).copied() {
            Some(inode) => {
                inner.writes.insert(inode, seq);
            }
            None => inner.unnamed_writes = seq,
        }
    }

    /// Remembers that home handle `handle` is open for writing (see `Inner::closing`).
    pub fn opened_for_writing(&self, handle: u64) {
        self.lock().writable.insert(handle);
    }

    /// The link to home was lost: no close is awaited any more.
    pub fn forget_closing(&self) {
        let mut inner = self.lock();
        inner.closing.clear();
        inner.closing_handles.clear();
    }

    /// The reply to a close of `handles` at home was read (before any later report is applied): see
    /// `Inner::closing`.
    pub fn closed(&self, handles: &[u64]) {
        let mut inner = self.lock();
        for handle in handles {
            let Some(inode) = inner.closing_handles.remove(handle) else { continue };
            if let Some(n) = inner.closing.get_mut(&inode) {
                *n -= 1;
                if *n == 0 {
                    inner.closing.remove(&inode);
                }
            }
        }
    }

    /// What the job changed in file `inode` other than by writing through `handle`, and in files it cannot
    /// name: equal marks mean that the file holds what it held, plus the writes made through `handle`.
    pub fn foreign_mark(&self, inode: (u64, u64), handle: u64) -> (u64, u64) {
        let inner = self.lock();
        let all = inner.changes.get(&inode).copied().unwrap_or(0);
        let own = inner.own.get(&handle).copied().unwrap_or(0);
        (all.wrapping_sub(own), inner.unnamed_writes)
    }

    /// The number of the job's last content change: taken before an open is sent, its copy is fresh only
    /// while no change to its file (or to a file the job could not name) is numbered above it.
    pub fn change_mark(&self) -> u64 {
        self.lock().change_seq
    }

    /// Whether the job changed file `inode` (or a file it could not name) after `mark`.
    pub fn changed_since(&self, inode: (u64, u64), mark: u64) -> bool {
        let inner = self.lock();
        inner.writes.get(&inode).is_some_and(|&s| s > mark) || inner.unnamed_writes > mark
    }

    /// The job changed something it cannot name: everything goes.
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.clear();
    }

    /// The job changes a directory's permissions: no name is known to be removable any more.
    pub fn forget_removable(&self) {
        self.lock().entries.retain(|_, e| !matches!(e.value, Cached::Removable));
    }

    /// Whether the cached answer `key` (a `REMOVABLE` key) says the job may remove that name, `name` being
    /// its last component: its `unlink` cannot be refused for want of permission. Taken (one unlink per
    /// creation), and everything that depends on the name goes at once, as home's report of the removal
    /// would make it go: the unlink is not waited for, so that report may come after the program's next
    /// call. Returns what to pass to [`AttrCache::removed`] once the unlink is sent.
    pub fn take_removable(&self, key: &Key, name: &[u8]) -> Option<Removed> {
        let mut inner = self.lock();
        let found = match inner.entries.get(key) {
            Some(Entry { value: Cached::Removable, deps, .. }) => {
                deps.iter().rev().find(|(_, n)| n[..] == *name).map(|(wd, _)| (*wd, deps.clone()))
            }
            _ => None,
        };
        let (wd, deps) = found?;
        inner.entries.remove(key);
        inner.remove_where(wd, |e| voids(&e.deps, wd, name));
        let reported = inner.recent.back().map_or(0, |r| r.0);
        Some(Removed { deps, reported })
    }

    /// The unlink of a name [`AttrCache::take_removable`] let go behind was sent: the name is missing under
    /// `keys` (the lookups of it) until its reply comes, whatever home reports meanwhile (the removal's own
    /// report among them). The reply leases the name's absence after the removal, which home checked once
    /// the lease was in place, so it holds whatever came before; see [`AttrCache::removal_answered`].
    /// Unless a report came in before this call. `ticket`: taken before the unlink was sent
    /// (`ticket_past_own_change`), so that nothing else the job did meanwhile (a `chdir`, for a relative
    /// name) and no flush or break of the link is ignored. `answered`: set by the reply's handler before it
    /// calls [`AttrCache::removal_answered`] (the reply may come before this call).
    pub fn removed(&self, removed: Removed, keys: &[Key], ticket: Ticket, answered: &AtomicBool) {
        let mut inner = self.lock();
        let Removed { deps, reported } = removed;
        if inner.stopped || inner.generation != ticket.generation || reported < inner.forgotten {
            return;
        }
        if inner.voided_since(reported + 1, &deps, true) {
            return;
        }
        for key in keys {
            inner.insert(key.clone(), Cached::Missing(Errno::ENOENT), deps.clone(), true);
            // Read under the lock: a reply handled after this finds the entry awaiting it.
            if !answered.load(Ordering::SeqCst) {
                if let Some(e) = inner.entries.get_mut(key) {
                    e.awaiting = Some(reported);
                }
            }
        }
    }

    /// The reply to an unlink sent behind came (and its lease, if any, was offered with [`AttrCache::put`]):
    /// an absence still assumed under `keys` is void if home reported a change to the name since the
    /// unlink was sent (when the lease was refused, or the link broke).
    pub fn removal_answered(&self, keys: &[Key]) {
        let mut inner = self.lock();
        for key in keys {
            let Some(e) = inner.entries.get_mut(key) else { continue };
            let Some(reported) = e.awaiting.take() else { continue };
            let deps = e.deps.clone();
            // (Reports older than the ones kept are forgotten: nothing says none of them voided it.)
            if reported < inner.forgotten || inner.voided_since(reported + 1, &deps, true) {
                inner.entries.remove(key);
            }
        }
    }

    /// The job changed file `inode` (an open that truncated it): its cached attributes go.
    pub fn forget_inode(&self, inode: (u64, u64)) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.retain(|_, e| !matches!(&e.value, Cached::Found(s) if (s.dev, s.ino) == inode));
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
    /// The attributes of the file a path names (perhaps through a symbolic link): its last component.
    Attributes(&'a [u8]),
    Anything,
}

fn last_component(path: &[u8]) -> Option<&[u8]> {
    path.split(|&b| b == b'/').rfind(|c| !c.is_empty() && *c != b".")
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

fn attributes(path: &[u8]) -> Change<'_> {
    match last_component(path) {
        Some(name) if name != b".." => Change::Attributes(name),
        _ => Change::Anything,
    }
}

/// The handle a call changes the content or attributes of, if any (for `AttrCache::after_call`).
pub fn changed_handle(op: &Op) -> Option<u64> {
    if homeward_proto::effects::changes_nothing(op) {
        return None;
    }
    match change_of(op) {
        Change::Handle(h) => Some(h),
        _ => None,
    }
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
        Op::Truncate(t) => on(&t.dir, &t.path).map_or_else(|| attributes(&t.path), Change::Handle),
        Op::Chmod(c) => on(&c.dir, &c.path).map_or_else(|| attributes(&c.path), Change::Handle),
        Op::Chown(c) => on(&c.dir, &c.path).map_or_else(|| attributes(&c.path), Change::Handle),
        Op::Utimens(u) => on(&u.dir, &u.path).map_or_else(|| attributes(&u.path), Change::Handle),
        Op::Xattr(x) => on(&x.dir, &x.path).map_or_else(|| attributes(&x.path), Change::Handle),
        Op::Open(o) => names(&[&o.path]),
        Op::Mkdir(m) => names(&[&m.path]),
        Op::Mknod(m) => names(&[&m.path]),
        Op::Unlink(u) => names(&[&u.path]),
        Op::Symlink(s) => names(&[&s.path]),
        Op::Link(l) => names(&[&l.old_path, &l.new_path]),
        _ => Change::Anything,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_below_a_base_drop_leading_dots() {
        let base = Key { proc: 0, path: b"/w/d".to_vec(), follow: false, mask: 0 };
        let of = |path: &[u8], follow| Key::of(7, Some(&base), path, follow, 0).expect("a key");
        assert_eq!(of(b"a", false).path, b"/w/d/a");
        assert_eq!(of(b"./a", false).path, b"/w/d/a");
        assert_eq!(of(b".//./a/./b", false).path, b"/w/d/a/./b");
        assert_eq!(of(b"../a", false).path, b"/w/d/../a");
        // `.` is the directory itself, found through any link the base's path ends in.
        for dot in [&b"."[..], b"./", b"././"] {
            assert_eq!(of(dot, false), Key { follow: true, ..base.clone() });
        }
        assert_eq!(Key::of(7, None, b"a", false, 0).map(|k| k.proc), Some(7));
        assert_eq!(
            Key::of(7, Some(&base), b"/x", false, 0).map(|k| (k.proc, k.path)),
            Some((0, b"/x".to_vec()))
        );
        assert_eq!(Key::of(7, Some(&base), b"", false, 0), None);
    }

    /// Where a listing is kept (the path's components before the missing one, below the key's base) and
    /// which lookups it answers.
    #[test]
    fn listings_answer_missing_components_of_their_directory() {
        let key = |proc, path: &[u8], mask| Key { proc, path: path.to_vec(), follow: false, mask };
        let path_of = |k: Option<Key>| k.map(|k| (k.proc, k.path, k.mask));
        // A relative lookup keyed under its base `/w`: the base's components come first.
        assert_eq!(
            path_of(listing_key_of(&key(0, b"/w/d/x", 0), b"d/x", 1)),
            Some((0, b"/w/d".to_vec(), LISTING))
        );
        assert_eq!(
            path_of(listing_key_of(&key(0, b"/w/d/x", 0), b"./d//x", 0)),
            Some((0, b"/w".to_vec(), LISTING))
        );
        assert_eq!(
            path_of(listing_key_of(&key(0, b"/a//b/./c", 0), b"/a//b/./c", 2)),
            Some((0, b"/a/b".to_vec(), LISTING))
        );
        assert_eq!(path_of(listing_key_of(&key(7, b"x", 0), b"x", 0)), Some((7, b".".to_vec(), LISTING)));
        assert_eq!(listing_key_of(&key(0, b"/w/x", 0), b"x", 1), None, "past the last component");
        let cache = AttrCache::default();
        let names: HashSet<Vec<u8>> = [b"y".to_vec(), b"sub".to_vec()].into_iter().collect();
        let ticket = cache.ticket();
        cache.put_with(
            Key { follow: true, ..key(0, b"/w/d", LISTING) },
            Cached::Listing(names.into()),
            ticket,
            1,
            vec![(1, Vec::new())],
            true,
        );
        let missing = Some(Cached::Missing(Errno::ENOENT));
        assert_eq!(cache.get(&key(0, b"/w/d/x", 0)), missing);
        assert_eq!(cache.get(&key(0, b"/w//d/./x/", READLINK)), missing);
        assert_eq!(cache.get(&key(0, b"/w/d/x/z", ACCESS)), missing, "below a missing component");
        assert_eq!(cache.get(&key(0, b"/w/d/x/../y", 0)), missing, "the walk stops at x");
        assert_eq!(cache.get(&key(0, b"/w/d/y", 0)), None);
        assert_eq!(cache.get(&key(0, b"/w/d/sub/x", 0)), None);
        assert_eq!(cache.get(&key(0, b"/w/d/..", 0)), None);
        assert_eq!(cache.get(&key(0, b"/w/d/x", CWD)), None, "not a lookup answered ENOENT");
        assert_eq!(cache.get(&key(3, b"/w/d/x", 0)), None, "another process's relative key");
        // Any change of the directory's entries voids it; a write to one of its files does not.
        cache.changed(1, &[], &[pb::Dep { wd: 1, name: b"y".to_vec().into() }], &[]);
        assert_eq!(cache.get(&key(0, b"/w/d/x", 0)), missing);
        cache.changed(2, &[pb::Dep { wd: 1, name: b"x".to_vec().into() }], &[], &[]);
        assert_eq!(cache.get(&key(0, b"/w/d/x", 0)), None);
    }

    /// Home's report of a close after writing (`Event.closed`) leaves a file's attributes only while the
    /// job is closing a handle open for writing of that file, until that close's reply is read.
    #[test]
    fn a_reported_close_is_the_jobs_own_only_while_it_closes_a_writable_handle() {
        let key = Key { proc: 0, path: b"/w/f".to_vec(), follow: true, mask: 0 };
        let dep = || pb::Dep { wd: 1, name: b"f".to_vec().into() };
        let found = Cached::Found(pb::FileStat {
            dev: 1,
            ino: 2,
            mode: libc::S_IFREG | 0o644,
            nlink: 1,
            ..Default::default()
        });
        let store = |cache: &AttrCache, lease| {
            let ticket = cache.ticket();
            cache.put(key.clone(), found.clone(), ticket, lease, vec![(1, b"f".to_vec())]);
            assert_eq!(cache.get(&key), Some(found.clone()));
        };
        let close = |handle| Op::Close(pb::Close { handle, more: vec![] });
        let cache = AttrCache::default();
        // A handle open for reading only: its close is reported to no watch, so a report is another's.
        store(&cache, 1);
        cache.opened(10, (1, 2));
        cache.before_call(0, &close(10));
        cache.changed(1, &[], &[], &[dep()]);
        assert_eq!(cache.get(&key), None);
        cache.closed(&[10]);
        // A handle open for writing: the report while its close is in flight is of that close.
        store(&cache, 2);
        cache.opened(11, (1, 2));
        cache.opened_for_writing(11);
        cache.before_call(0, &close(11));
        cache.changed(2, &[], &[], &[dep()]);
        assert_eq!(cache.get(&key), Some(found.clone()));
        cache.closed(&[11]);
        cache.changed(3, &[], &[], &[dep()]);
        assert_eq!(cache.get(&key), None, "once its reply was read, a report is another's");
        // A write reported with the close voids it whatever the job closes.
        store(&cache, 4);
        cache.opened(12, (1, 2));
        cache.opened_for_writing(12);
        cache.before_call(0, &close(12));
        cache.changed(4, &[], &[dep()], &[]);
        assert_eq!(cache.get(&key), None);
    }

    /// An unlink sent behind: the name's absence is answered here until the reply comes, whatever home
    /// reports meanwhile; once it came, only its lease (if any) does.
    #[test]
    fn an_absence_assumed_behind_an_unlink_waits_for_its_reply() {
        let key = |mask| Key { proc: 0, path: b"/w/j".to_vec(), follow: false, mask };
        let dep = |name: &[u8]| pb::Dep { wd: 1, name: name.to_vec().into() };
        let missing = || Some(Cached::Missing(Errno::ENOENT));
        // The job may remove `j` (its open said so), then unlinks it behind.
        let start = || {
            let cache = AttrCache::default();
            let ticket = cache.ticket();
            cache.put(key(REMOVABLE), Cached::Removable, ticket, 1, vec![(1, b"j".to_vec())]);
            let removed = cache.take_removable(&key(REMOVABLE), b"j").expect("removable");
            let ticket = cache.ticket_past_own_change();
            cache.before_call(0, &Op::Unlink(pb::Unlink::default()));
            (cache, removed, ticket)
        };
        // Sent, its removal reported before the reply; the reply leases the absence.
        let (cache, removed, ticket) = start();
        let answered = AtomicBool::new(false);
        cache.removed(removed, &[key(0)], ticket, &answered);
        cache.changed(1, &[dep(b"j")], &[], &[]);
        assert_eq!(cache.get(&key(0)), missing(), "voided by the removal's own report");
        answered.store(true, Ordering::SeqCst);
        cache.put(key(0), Cached::Missing(Errno::ENOENT), ticket, 2, vec![(1, b"j".to_vec())]);
        cache.removal_answered(&[key(0)]);
        assert_eq!(cache.get(&key(0)), missing());
        cache.changed(2, &[dep(b"j")], &[], &[]);
        assert_eq!(cache.get(&key(0)), None, "a change after the lease voids it");
        // The reply refused a lease: a report since the unlink was sent voids the assumed absence then.
        let (cache, removed, ticket) = start();
        let answered = AtomicBool::new(false);
        cache.removed(removed, &[key(0)], ticket, &answered);
        cache.changed(1, &[dep(b"j")], &[], &[]);
        answered.store(true, Ordering::SeqCst);
        cache.removal_answered(&[key(0)]);
        assert_eq!(cache.get(&key(0)), None);
        // The reply came first (its lease stored): the absence is no longer waiting for anything.
        let (cache, removed, ticket) = start();
        let answered = AtomicBool::new(true);
        cache.removal_answered(&[key(0)]);
        cache.removed(removed, &[key(0)], ticket, &answered);
        assert_eq!(cache.get(&key(0)), missing());
        cache.changed(1, &[dep(b"j")], &[], &[]);
        assert_eq!(cache.get(&key(0)), None);
    }
}
