//! Leases on lookups: the shim may cache a path's attributes (or its absence, a link's target, an access
//! check) and a directory's entries for as long as home reports no change to what the answer depends on.
//!
//! Granting a lease watches (inotify, one instance per session) every directory the lookup goes through,
//! following symbolic links and `..` the way the kernel does, and the directory it finds (or the regular
//! file it finds, when that has several links: a change through another name is reported to that name's
//! directory only); the reply lists its dependencies, `(watch, name)`: the entry `name` looked up in each
//! watched directory (an empty name: the directory itself; `.`: the watched file itself). The watches are in place before the lookup reads the file system, so a change
//! after that read is always reported. A reader task turns every batch of inotify events into one
//! `Event { changed, written, closed, seq }` (`written`: non-directories whose content or attributes only
//! changed, which leases on names alone ignore; `closed`: non-directories only closed after writing), and every call's reply is preceded by the report of what is queued then
//! (`report_queued`); the shim drops the answers that depend on a changed entry (or on its
//! directory itself), and refuses answers granted before `seq` that arrive after it. Leases are numbered
//! with the event counter at grant time, after the grant has numbered the events already queued (the job's
//! own writes just before a `stat`, say), which therefore do not void it.
//!
//! If the kernel's event queue overflows, or the session's inotify instance cannot be made, leases stop:
//! a flush (`flush_epoch`) voids every cached answer and no lease is granted again.

use crate::confine::Allow;
use crate::outbox::Stream as Replies;
use crate::sys;
use homeward_proto::pb::{CallReply, Dep, DirNames, Event};
use homeward_proto::Errno;
use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::oneshot;
use tracing::debug;

/// What a watched directory reports: anything that changes its entries, their attributes or content, or
/// the directory itself. (`IN_CLOSE_WRITE` too: content written through a shared mapping makes no
/// `IN_MODIFY`, but its file's closing is reported.)
const WATCH_MASK: u32 = libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MODIFY
    | libc::IN_MOVE_SELF
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO;

/// The name of the dependency on a watched regular file itself (a file with several links): no entry is
/// named `.` in a lookup's dependencies, and the file's own events (empty name) void it.
pub const FILE_ITSELF: &[u8] = b".";

/// Most components (links' targets included) a leased lookup walks, and most links it follows (the
/// kernel's limit).
const MAX_STEPS: usize = 256;
const MAX_LINKS: usize = 40;
/// Most directories (and files with several links) a session watches.
const MAX_WATCHES: usize = 16384;
/// Most names a directory may hold to be listed with a negative answer ([`Grant::walk`]).
const MAX_LISTED: usize = 4096;
/// A directory is listed again after a change voided its listing only this many times in a session,
/// unless it is small ([`SMALL_LISTING`]): one whose names keep changing would cost a listing per lookup.
const RELISTINGS: u32 = 16;
const SMALL_LISTING: usize = 512;
/// Most directory steps a session remembers ([`Inner::steps`]); all go when there would be more.
const MAX_REMEMBERED_STEPS: usize = 4096;

#[derive(Default)]
pub struct Leases {
    inner: Mutex<Inner>,
    /// Held from reading the inotify queue until its report is sent: a reply sent after
    /// [`Leases::report_queued`] follows every report of the events queued before it.
    sending: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Inner {
    /// Batches of events reported so far; a lease is numbered `seq + 1`.
    seq: u64,
    /// The session's inotify instance, and what stops its reader.
    watcher: Option<(Arc<OwnedFd>, oneshot::Sender<()>)>,
    replies: Option<Replies>,
    /// The directories (and files with several links) watched.
    watches: std::collections::HashSet<i32>,
    /// The watch of each file watched, by (device, inode): a lookup through a directory already watched
    /// does not add its watch again (`inotify_add_watch` finds the inode through `/proc/self/fd`, the
    /// largest cost of a leased lookup). A watch leaves when its end (`IN_IGNORED`) is read: the kernel
    /// queues it when the file is removed (its last link, before its inode number can be used again), its
    /// file system unmounted, or the watch taken off. Every grant reads the queue first, under the lock
    /// its walk holds, so a file found by a walk with its number here is the one watched, or was removed
    /// after the grant began, which the directory it was found in reports to the lease.
    by_inode: std::collections::HashMap<(u64, u64), i32>,
    /// Leases were stopped (queue overflow, no inotify, session closed): none is granted again.
    stopped: bool,
    /// Reports numbered by a grant (the changes queued before it) and not sent yet: they go before the
    /// next reply ([`Leases::report_queued`]).
    unsent: Vec<CallReply>,
    /// Directories listed with a negative answer, by watch: how often, and how many names they held then
    /// (`usize::MAX`: too many to list).
    listed: std::collections::HashMap<i32, (u32, usize)>,
    /// Directory steps walks took: in the watched directory (on a local file system, so every change of
    /// its entries is reported), the entry `name` was a directory (device, inode). A walk goes through
    /// remembered steps at the start of a path without looking each one up ([`Grant::walk`]: one open
    /// of the directory they lead to, checked to be that inode). A step goes when its entry or its
    /// directory is reported changed (every grant reads the queue first), its watch ends, or the mounts
    /// change. No descriptor is held (it would keep a file system from being unmounted).
    steps: std::collections::HashMap<i32, std::collections::HashMap<Vec<u8>, (u64, u64)>>,
    /// Steps remembered since `steps` was last emptied (an upper bound of those kept).
    remembered: usize,
}

impl Inner {
    /// Reads the changes queued on the session's instance `fd` and numbers them as the next batch: its
    /// report, or the flush that stops leasing when the queue overflowed; `None` when nothing is queued
    /// (or nobody listens).
    fn number_queued(&mut self, fd: BorrowedFd<'_>) -> Option<CallReply> {
        let sys::Events { changed, overflow, ended } = sys::inotify_events(fd);
        if !ended.is_empty() {
            self.by_inode.retain(|_, wd| !ended.contains(wd));
            for wd in &ended {
                self.watches.remove(wd);
            }
            self.steps.retain(|wd, _| !ended.contains(wd));
        }
        for (wd, name, _) in &changed {
            if name.is_empty() {
                self.steps.remove(wd);
            } else if let Some(names) = self.steps.get_mut(wd) {
                names.remove(name);
            }
        }
        if overflow {
            self.stopped = true;
            self.watcher = None;
            return Some(flush_reply(Event { flush_epoch: 1, ..Default::default() }));
        }
        if changed.is_empty() || self.replies.is_none() {
            return None;
        }
        self.seq += 1;
        let of = |kind: sys::Change| deps_of(changed.iter().filter(|(_, _, k)| *k == kind));
        let (closed, written, changed) =
            (of(sys::Change::Closed), of(sys::Change::Written), of(sys::Change::Names));
        Some(flush_reply(Event { changed, written, closed, seq: self.seq, ..Default::default() }))
    }
}

/// A grant in progress: watches are added under the session's lease lock, so no batch of events is
/// numbered in between.
pub struct Grant<'a> {
    inner: MutexGuard<'a, Inner>,
    fd: Arc<OwnedFd>,
    deps: Vec<Dep>,
    /// See [`Grant::entry_only`].
    entry_only: bool,
    /// See [`Grant::directory_by_entry`].
    directory_by_entry: bool,
    /// The names of the directory in which the walk found one of the path's own components missing, when
    /// it could be listed (see [`Grant::list`]).
    listing: Option<DirNames>,
    /// The last [`Grant::depend`]'s directory is watched by inode (a local file system): its steps may be
    /// remembered ([`Inner::steps`]).
    last_local: bool,
}

impl Leases {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the session's change reports to its call stream from now on.
    pub fn attach(&self, replies: Replies) {
        self.lock().replies = Some(replies);
    }

    /// The session's stream was resumed after a break: reports go to `replies` from now on, and the event
    /// returned (to be sent first) voids every lease granted so far, since reports sent during the break
    /// may be lost.
    pub fn resume(&self, replies: Replies) -> CallReply {
        let mut inner = self.lock();
        inner.replies = Some(replies);
        inner.seq += 1;
        flush_reply(Event { seq: inner.seq, forget: true, ..Default::default() })
    }

    /// Starts a grant, or `None` when leases cannot be given (no call stream, no runtime, no inotify).
    pub fn begin(self: &Arc<Self>) -> Option<Grant<'_>> {
        let mut inner = self.lock();
        if inner.stopped {
            return None;
        }
        inner.replies.as_ref()?;
        let fd = match &inner.watcher {
            Some((fd, _)) => fd.clone(),
            None => {
                let runtime = tokio::runtime::Handle::try_current().ok()?;
                let fd = match sys::inotify_init() {
                    Ok(fd) => Arc::new(fd),
                    Err(e) => {
                        debug!(errno = e.raw(), "no inotify instance: no leases");
                        inner.stopped = true;
                        return None;
                    }
                };
                let (stop, stopped) = oneshot::channel();
                runtime.spawn(watch(Arc::downgrade(self), fd.clone(), stopped));
                inner.watcher = Some((fd.clone(), stop));
                fd
            }
        };
        // The changes already queued (often the job's own, made by the calls just before this one) are
        // numbered before the lease, so they do not void it: only a change after this point can have
        // changed the answer the lookup is about to read.
        if let Some(report) = inner.number_queued(fd.as_fd()) {
            inner.unsent.push(report);
        }
        if inner.stopped {
            return None;
        }
        Some(Grant {
            inner,
            fd,
            deps: Vec::new(),
            entry_only: false,
            directory_by_entry: false,
            listing: None,
            last_local: false,
        })
    }

    /// Every report due now, in order: those numbered by grants and not sent yet, then the changes queued
    /// (numbered here). Taken and read in one step under the lease lock, so no grant can take queued
    /// changes in between (they would then go out after a reply that follows them).
    fn due(&self) -> Vec<CallReply> {
        let mut inner = self.lock();
        let mut due = std::mem::take(&mut inner.unsent);
        let Some(fd) = inner.watcher.as_ref().map(|(fd, _)| fd.clone()) else { return due };
        due.extend(inner.number_queued(fd.as_fd()));
        due
    }

    /// Sends the reports of every change queued so far to `outbox`, ahead of a reply about to be sent: what
    /// the job learns from a reply is never older than a change made at home before it (a change another
    /// channel told it of is seen within the time its report takes).
    pub async fn report_queued(&self, outbox: &crate::outbox::Outbox) {
        if self.lock().watcher.is_none() && self.lock().unsent.is_empty() {
            return;
        }
        let _sending = self.sending.lock().await;
        for report in self.due() {
            outbox.send(report).await;
        }
    }

    /// The mounts at home changed (which no watch reports: a file system mounted over a directory, one made
    /// read-only): every lease granted so far is void. The report goes out at once, in order with the
    /// others.
    pub async fn mounts_changed(&self) {
        let _sending = self.sending.lock().await;
        let (report, replies) = {
            let mut inner = self.lock();
            if inner.stopped || inner.replies.is_none() {
                return;
            }
            inner.seq += 1;
            // A file system mounted over a directory changes what a step leads to, unreported.
            inner.steps.clear();
            (flush_reply(Event { seq: inner.seq, forget: true, ..Default::default() }), inner.replies.clone())
        };
        if let Some(replies) = replies {
            let _ = replies.send(Ok(report)).await;
        }
    }

    /// The session is closing: no more leases or reports.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.stopped = true;
        inner.watcher = None;
        inner.replies = None;
    }
}

impl Grant<'_> {
    /// Watches directory `dir`, noting that the answer depends on its entry `name` (empty: on `dir`
    /// itself; [`FILE_ITSELF`]: `dir` is a regular file); false when the watch could not be added (the lease
    /// is then refused).
    pub fn depend(&mut self, dir: BorrowedFd<'_>, name: &[u8]) -> bool {
        let inode = inode_of(dir);
        self.last_local = false;
        if let Some(&wd) = inode.and_then(|inode| self.inner.by_inode.get(&inode)) {
            self.deps.push(Dep { wd: wd as u32, name: name.to_vec().into() });
            self.last_local = true;
            return true;
        }
        let started = std::time::Instant::now();
        let watched = sys::inotify_watch(self.fd.as_fd(), dir, WATCH_MASK);
        if started.elapsed() > SLOW_WATCH {
            keep_watched(dir);
        }
        match watched {
            // A session watches at most MAX_WATCHES directories (the user's limit is shared with every
            // other program at home); beyond, lookups are simply not leased.
            Ok(wd) if self.inner.watches.insert(wd) && self.inner.watches.len() > MAX_WATCHES => {
                self.inner.watches.remove(&wd);
                let _ = sys::inotify_unwatch(self.fd.as_fd(), wd);
                false
            }
            Ok(wd) => {
                // Remembered only on a local file system (so a device found in the map is one, and a hit
                // needs no check): on NFS (or FUSE) a directory removed by another machine makes no event
                // here, and its inode number may come back for a new one.
                if let Some(inode) = inode.filter(|_| crate::exec::on_local_file_system(dir)) {
                    self.inner.by_inode.insert(inode, wd);
                    self.last_local = true;
                }
                self.deps.push(Dep { wd: wd as u32, name: name.to_vec().into() });
                true
            }
            Err(_) => false,
        }
    }

    /// Remembers that entry `name` of the directory watched as `wd` (on a local file system) is directory
    /// `inode` ([`Inner::steps`]).
    fn remember(&mut self, wd: Option<i32>, name: &[u8], inode: (u64, u64)) {
        let Some(wd) = wd else { return };
        let inner = &mut *self.inner;
        if inner.remembered >= MAX_REMEMBERED_STEPS {
            inner.steps.clear();
            inner.remembered = 0;
        }
        if inner.steps.entry(wd).or_default().insert(name.to_vec(), inode).is_none() {
            inner.remembered += 1;
        }
    }

    /// Goes through the remembered steps at the start of `todo` (all but its last component) from `dir`:
    /// notes their dependencies (as looking each one up would), takes them off `todo`, and opens the
    /// directory they lead to, which must be the inode remembered. `None` when it is not (the steps are all
    /// forgotten and the lease is refused: something changed unreported). `known`: `dir`'s device and inode,
    /// when known.
    fn remembered(
        &mut self,
        dir: BorrowedFd<'_>,
        known: Option<(u64, u64)>,
        todo: &mut VecDeque<Vec<u8>>,
    ) -> Option<Prefix> {
        let mut prefix = Prefix { opened: None, taken: 0, wd: None };
        if self.inner.steps.is_empty() {
            return Some(prefix);
        }
        let inode = known.or_else(|| inode_of(dir));
        let Some(&first) = inode.and_then(|inode| self.inner.by_inode.get(&inode)) else {
            return Some(prefix);
        };
        prefix.wd = Some(first);
        let (mut wd, mut at, mut path, mut deps) = (Some(first), None, Vec::new(), Vec::new());
        for part in todo.iter().take(todo.len().saturating_sub(1)) {
            let Some(w) = wd else { break };
            let Some(&child) = self.inner.steps.get(&w).and_then(|names| names.get(part)) else { break };
            if part.contains(&0) {
                break;
            }
            deps.push(Dep { wd: w as u32, name: part.clone().into() });
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(part);
            (wd, at) = (self.inner.by_inode.get(&child).copied(), Some(child));
        }
        let Some(at) = at else { return Some(prefix) };
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let opened = CString::new(path).ok().and_then(|path| sys::openat(dir, &path, flags, 0).ok());
        let Some(opened) = opened.filter(|fd| inode_of(fd.as_fd()) == Some(at)) else {
            self.inner.steps.clear();
            self.inner.remembered = 0;
            return None;
        };
        prefix.taken = deps.len();
        todo.drain(..deps.len());
        self.deps.extend(deps);
        (prefix.opened, prefix.wd) = (Some(opened), wd);
        Some(prefix)
    }

    /// The lease (its number and dependencies), once every watch is in place, and the listing of the
    /// directory in which the walk found one of the path's own components missing, if it was listed.
    pub fn finish(self) -> (u64, Vec<Dep>, Option<DirNames>) {
        (self.inner.seq + 1, self.deps, self.listing)
    }

    /// The walk found component `at` of the path missing in `dir`, which it watches (the last dependency): lists
    /// `dir`'s names under the same lease, depending on the walk to `dir` and on `dir`'s entries, when it
    /// is on a case-sensitive local file system (a name the listing lacks is then surely missing, and any
    /// change of the names is reported) and small enough. The listing is read after the watch is in place,
    /// so a name made after it is reported to the lease.
    fn list(&mut self, dir: BorrowedFd<'_>, at: u32) {
        let Some(last) = self.deps.last() else { return };
        let wd = last.wd as i32;
        if let Some(&(times, names)) = self.inner.listed.get(&wd) {
            if names > MAX_LISTED || (times >= RELISTINGS && names > SMALL_LISTING) {
                return;
            }
        }
        let Some(opened) = open_quietly(dir) else { return };
        if !case_sensitive_local(opened.as_fd()) {
            return;
        }
        let names = list_names(opened.as_fd(), MAX_LISTED);
        let entry = self.inner.listed.entry(wd).or_insert((0, 0));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = names.as_ref().map_or(usize::MAX, Vec::len);
        let Some(names) = names else { return };
        let mut deps = self.deps[..self.deps.len() - 1].to_vec();
        deps.push(Dep { wd: wd as u32, name: Vec::new().into() });
        self.listing = Some(DirNames { deps, names: names.into_iter().map(Into::into).collect(), at });
    }

    /// Watches every directory that looking up `path` from `start` goes through (following symbolic links
    /// as the kernel does: a link's directory is watched, its target walked), and the directory it names
    /// if it is one (or the regular file, if it has several links; neither under [`Grant::entry_only`]); false when the answer cannot be leased (a component that cannot be examined, too many
    /// links). `follow`: whether a symbolic link as the last component is followed.
    /// Confined (`allow`), the walk never watches a directory outside the allowed ones: an absolute path
    /// starts at its allowed prefix, and a path leaving them is not leased.
    pub fn walk(&mut self, start: BorrowedFd<'_>, path: &[u8], follow: bool, allow: Option<&Allow>) -> bool {
        // A trailing slash (or `/.`) follows a link in the last component whatever the call.
        let follow = follow || path.ends_with(b"/") || path.ends_with(b"/.");
        self.try_walk(start, path, follow, allow).is_some()
    }

    /// The answer depends on which entry the path names, not on what the entry's file holds (readlink's
    /// `EINVAL` for a directory): a directory found by name is not watched itself, so files made in it do
    /// not void the answer.
    pub fn entry_only(&mut self) {
        self.entry_only = true;
    }

    /// The answer depends on a directory found by name only through its own attributes (an access check):
    /// a change of them is reported under its name to the directory it is in, which the walk watches, so
    /// it is not watched itself, and files made in it do not void the answer. (Unless it is the root of a
    /// mounted file system, whose changes reach its own watch only: `/tmp` as a tmpfs.)
    pub fn directory_by_entry(&mut self) {
        self.directory_by_entry = true;
    }

    fn try_walk(
        &mut self,
        start: BorrowedFd<'_>,
        path: &[u8],
        follow: bool,
        allow: Option<&Allow>,
    ) -> Option<()> {
        let dirflags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // Where an absolute path starts, and what of it remains to walk from there.
        let root = |path: &[u8]| -> Option<(OwnedFd, Vec<u8>)> {
            let top = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
            match allow {
                None => Some((sys::open(c"/", top).ok()?, path.to_vec())),
                Some(allow) => {
                    let (fd, rest) = allow.map_absolute(path)?;
                    Some((sys::openat(fd, c".", top, 0).ok()?, rest))
                }
            }
        };
        // An absolute path starts at this process's root, opened once (not in a confined session).
        let root_dir = if allow.is_none() && path.first() == Some(&b'/') { process_root() } else { None };
        let start = root_dir.map_or(start, |(fd, _)| fd.as_fd());
        // The directory the walk is in (`None`: `start`), and the components still to walk.
        let (mut cur, mut todo): (Option<OwnedFd>, VecDeque<Vec<u8>>) = if root_dir.is_some() {
            (None, components(path).collect())
        } else if path.first() == Some(&b'/') {
            let (fd, rest) = root(path)?;
            (Some(fd), components(&rest).collect())
        } else {
            (None, components(path).collect())
        };
        let (mut links, mut steps) = (0, 0);
        // The path's own components still to walk: the last ones of `todo` (links' targets go before them).
        // A directory is listed only where one of those was found missing: the path's components before it
        // name that directory (`DirNames.at`), whatever links the walk followed on the way.
        let given = components(path).count();
        let mut own_left = todo.len();
        if todo.is_empty() {
            // The start itself (`.` or `/`).
            return self.depend(cur.as_ref().map_or(start, |c| c.as_fd()), b"").then_some(());
        }
        // The remembered steps at the start of the path (not in a confined session, whose walks climb
        // only as its allowed directories let them).
        let mut known_wd = None;
        if allow.is_none() {
            let known = if cur.is_none() { root_dir.map(|(_, inode)| *inode) } else { None };
            let prefix = self.remembered(cur.as_ref().map_or(start, |c| c.as_fd()), known, &mut todo)?;
            if let Some(opened) = prefix.opened {
                steps += prefix.taken;
                own_left = todo.len();
                cur = Some(opened);
            }
            known_wd = prefix.wd;
        }
        while let Some(part) = todo.pop_front() {
            let own = todo.len() < own_left;
            own_left = own_left.min(todo.len());
            steps += 1;
            if steps > MAX_STEPS {
                return None;
            }
            let dir = cur.as_ref().map_or(start, |c| c.as_fd());
            let depended = match known_wd.take() {
                Some(wd) => {
                    self.deps.push(Dep { wd: wd as u32, name: part.clone().into() });
                    self.last_local = true;
                    true
                }
                None => self.depend(dir, &part),
            };
            if !depended {
                return None;
            }
            let name = CString::new(part).ok()?;
            if name.as_bytes() == b".." {
                if allow.is_some_and(|a| !a.may_climb(dir)) {
                    return None;
                }
                let up = sys::openat(dir, &name, dirflags, 0).ok()?;
                if todo.is_empty() && !self.entry_only && !self.depend(up.as_fd(), b"") {
                    return None;
                }
                cur = Some(up);
                continue;
            }
            let last = todo.is_empty();
            let nofollow = libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT;
            let mask = libc::STATX_TYPE | libc::STATX_NLINK | libc::STATX_INO;
            let (kind, nlink, mount_root, inode) = match sys::statx(dir, &name, nofollow, mask) {
                Ok(sx) => {
                    // The root of a mounted file system (unknown: taken as one) reports changes of its own
                    // attributes to its own watch only, never to the directory it is mounted on.
                    let root = libc::STATX_ATTR_MOUNT_ROOT as u64;
                    let mount_root = sx.stx_attributes_mask & root == 0 || sx.stx_attributes & root != 0;
                    let inode = (libc::makedev(sx.stx_dev_major, sx.stx_dev_minor), sx.stx_ino);
                    (u32::from(sx.stx_mode) & libc::S_IFMT, sx.stx_nlink, mount_root, inode)
                }
                // Missing: the answer depends on `name` in `dir`, which is watched.
                Err(e) if e == Errno::ENOENT => {
                    // (Not in a confined session: its absolute paths start at the allowed directory
                    // they name, which a listing of a directory above it must not answer for.)
                    if own && allow.is_none() {
                        self.list(dir, (given - own_left - 1) as u32);
                    }
                    return Some(());
                }
                Err(_) => return None,
            };
            if kind == libc::S_IFLNK && (!last || follow) {
                links += 1;
                let target = sys::readlinkat(dir, &name, libc::PATH_MAX as usize).ok()?;
                if links > MAX_LINKS || target.is_empty() {
                    return None;
                }
                let target = if target.first() == Some(&b'/') {
                    let (fd, rest) = root(&target)?;
                    cur = Some(fd);
                    if components(&rest).next().is_none() && todo.is_empty() {
                        let top = cur.as_ref()?.as_fd();
                        return self.depend(top, b"").then_some(());
                    }
                    rest
                } else {
                    // A link to `.` (`/usr/bin/X11 -> .`) ends the walk in `dir` itself: its own attributes
                    // are the answer.
                    if components(&target).next().is_none() && todo.is_empty() {
                        return self.depend(dir, b"").then_some(());
                    }
                    target
                };
                for (k, c) in components(&target).enumerate() {
                    todo.insert(k, c);
                }
                continue;
            }
            // A file (the answer, or ENOTDIR for what follows it) stays so while `dir` keeps the entry. A
            // regular file with other names is changed through them without `dir` hearing of it: the answer
            // then also depends on the file itself, watched ([`FILE_ITSELF`]).
            if kind != libc::S_IFDIR {
                if last && kind == libc::S_IFREG && nlink > 1 && !self.entry_only {
                    let file =
                        sys::openat(dir, &name, libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0).ok()?;
                    return self.depend(file.as_fd(), FILE_ITSELF).then_some(());
                }
                return Some(());
            }
            let next = sys::openat(dir, &name, dirflags, 0).ok()?;
            if self.last_local {
                let wd = self.deps.last().map(|d| d.wd as i32);
                self.remember(wd, name.as_bytes(), inode);
            }
            // The directory found: its own attributes are part of the answer.
            let by_entry = self.directory_by_entry && !mount_root;
            if todo.is_empty() && !self.entry_only && !by_entry && !self.depend(next.as_fd(), b"") {
                return None;
            }
            cur = Some(next);
        }
        Some(())
    }
}

/// What [`Grant::remembered`] went through: the directory the remembered steps led to (`None`: none was
/// remembered), how many, and the watch of the directory the walk goes on from, when known.
struct Prefix {
    opened: Option<OwnedFd>,
    taken: usize,
    wd: Option<i32>,
}

/// This process's root directory (opened once: the agent never changes it) and its device and inode.
fn process_root() -> Option<&'static (OwnedFd, (u64, u64))> {
    static ROOT: std::sync::OnceLock<Option<(OwnedFd, (u64, u64))>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let fd = sys::open(c"/", libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC).ok()?;
        let inode = inode_of(fd.as_fd())?;
        Some((fd, inode))
    })
    .as_ref()
}

/// The device and inode of an open file.
fn inode_of(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    sys::statx(fd, c"", libc::AT_EMPTY_PATH, libc::STATX_INO)
        .ok()
        .map(|sx| (libc::makedev(sx.stx_dev_major, sx.stx_dev_minor), sx.stx_ino))
}

/// The components of a path, without empty ones and `.`.
fn components(path: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    path.split(|&b| b == b'/').filter(|p| !p.is_empty() && *p != b".").map(<[u8]>::to_vec)
}

/// A directory whose watch takes longer than this to add is kept watched by the agent (`keep_watched`).
const SLOW_WATCH: std::time::Duration = std::time::Duration::from_millis(1);
/// Most directories the agent keeps watched.
const MAX_KEPT: usize = 64;

/// The agent's own inotify instance, watching the directories whose watches were slow to add, and how many.
static KEPT: Mutex<Option<(OwnedFd, usize)>> = Mutex::new(None);

/// Keeps `dir` watched (for its children's attribute changes, events nobody reads) for the agent's
/// lifetime. When a directory starts being watched for its children's events, the kernel flags every
/// child entry it has cached (`fsnotify_set_children_dentry_flags`): on a busy machine `/` or `/tmp` hold
/// hundreds of thousands of cached names (most of them negative), and the first lease of each session took
/// 20-30 ms. A directory some watch already covers is not walked again, so only the first session pays.
/// The kernel's queue of this instance fills up and then drops its events. Such a watch holds no mount
/// busy (unmounting ends it).
fn keep_watched(dir: BorrowedFd<'_>) {
    let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    if kept.is_none() {
        *kept = sys::inotify_init().ok().map(|fd| (fd, 0));
    }
    if let Some((fd, count)) = kept.as_mut() {
        if *count < MAX_KEPT
            && sys::inotify_watch(fd.as_fd(), dir, libc::IN_ATTRIB | libc::IN_ONLYDIR).is_ok()
        {
            *count += 1;
            debug!(count = *count, "a directory slow to watch is kept watched");
        }
    }
}

/// Keeps `/` and `/tmp` watched from now on, as if their watches had been slow to add (they usually are:
/// ~55 ms for `/` on the development VM, most of its cached names negative), so that no session pays it.
pub fn warm_up() {
    for dir in ["/", "/tmp"] {
        if let Ok(dir) = std::fs::File::open(dir) {
            keep_watched(dir.as_fd());
        }
    }
}

/// Whether names in `dir` are compared byte for byte, and all its changes are this machine's: a local file
/// system that folds no case (ext4 and f2fs fold a directory's names when it has the casefold flag, tmpfs
/// when mounted so; vfat, exfat, zfs, xfs may fold too and are not listed), and not encrypted.
fn case_sensitive_local(dir: BorrowedFd<'_>) -> bool {
    const FS_CASEFOLD_FL: u32 = 0x4000_0000;
    // An encrypted directory read without its key lists encoded names, which adding the key changes
    // without any event.
    const FS_ENCRYPT_FL: u32 = 0x800;
    // (Not xfs: one made with `-n version=ci` folds case in every directory, which no flag shows.)
    const LISTED: &[libc::c_long] = &[
        0xEF53,      // ext2/3/4
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x8584_58F6, // ramfs
        0x794C_7630, // overlayfs
        0xF2F5_2010, // f2fs
    ];
    let Ok(fs) = sys::fstatfs(dir) else { return false };
    LISTED.contains(&(fs.f_type as libc::c_long))
        && sys::inode_flags(dir).is_ok_and(|flags| flags & (FS_CASEFOLD_FL | FS_ENCRYPT_FL) == 0)
}

/// `dir` opened for reading its names without moving its access time (a lookup does not move it): with
/// `O_NOATIME`, which only its owner (or a holder of `CAP_FOWNER`) may use, else only when reading it would
/// not move that time anyway (a `noatime` or `nodiratime` mount, or `relatime` with the access time
/// already later than the last change and less than a day old); `None` otherwise.
fn open_quietly(dir: BorrowedFd<'_>) -> Option<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    match sys::openat(dir, c".", flags | libc::O_NOATIME, 0) {
        Ok(fd) => return Some(fd),
        Err(e) if e == Errno::EPERM => {}
        Err(_) => return None,
    }
    let mount = sys::mount_flags(dir).ok()?;
    let quiet = if mount & (libc::ST_NOATIME | libc::ST_NODIRATIME) != 0 {
        true
    } else if mount & libc::ST_RELATIME != 0 {
        let mask = libc::STATX_ATIME | libc::STATX_MTIME | libc::STATX_CTIME;
        let sx = sys::statx(dir, c"", libc::AT_EMPTY_PATH, mask).ok()?;
        let ns = |t: libc::statx_timestamp| i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec);
        // The kernel compares whole seconds with a day; a margin covers the time until the read.
        let now = sys::clock_ns(libc::CLOCK_REALTIME).ok()? / 1_000_000_000;
        ns(sx.stx_atime) > ns(sx.stx_mtime)
            && ns(sx.stx_atime) > ns(sx.stx_ctime)
            && now - sx.stx_atime.tv_sec < 24 * 3600 - 60
    } else {
        false
    };
    quiet.then(|| sys::openat(dir, c".", flags, 0).ok()).flatten()
}

/// The names in directory `dir` (open for reading, at its start), `.` and `..` aside; `None` when it holds
/// more than `max` or cannot be read.
fn list_names(dir: BorrowedFd<'_>, max: usize) -> Option<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    loop {
        let buf = sys::getdents64(dir, 32 << 10).ok()?;
        if buf.is_empty() {
            return Some(names);
        }
        for entry in crate::exec::decode_dirents(&buf) {
            if entry.name[..] != *b"." && entry.name[..] != *b".." {
                names.push(entry.name.to_vec());
            }
        }
        if names.len() > max {
            return None;
        }
    }
}

/// Reports every batch of events of the session's instance `fd` until `stopped` fires (session closed).
async fn watch(leases: Weak<Leases>, fd: Arc<OwnedFd>, mut stopped: oneshot::Receiver<()>) {
    let Ok(afd) = sys::async_fd(fd) else { return };
    loop {
        let readable = tokio::select! {
            r = afd.readable() => r,
            _ = &mut stopped => return,
        };
        let Ok(mut ready) = readable else { return };
        let Some(leases) = leases.upgrade() else { return };
        // Read and sent as one step with respect to `report_queued`.
        let _sending = leases.sending.lock().await;
        let due = leases.due();
        if due.is_empty() {
            ready.clear_ready();
            continue;
        }
        let Some(replies) = leases.lock().replies.clone() else { return };
        let ended = leases.lock().stopped;
        for report in due {
            // A stream that broke loses the report; the stream that resumes the session starts with an
            // event voiding every lease granted so far (`Leases::resume`), and reports go on to it.
            let _ = replies.send(Ok(report)).await;
        }
        if ended {
            debug!("leases stopped (inotify queue overflow, or the session closed)");
            return;
        }
    }
}

/// Inotify's (watch, name) pairs as the wire's dependencies.
fn deps_of<'a>(changed: impl Iterator<Item = &'a (i32, Vec<u8>, sys::Change)>) -> Vec<Dep> {
    changed.map(|(wd, name, _)| Dep { wd: *wd as u32, name: name.clone().into() }).collect()
}

fn flush_reply(event: Event) -> CallReply {
    CallReply { seq: 0, event: Some(event), ..Default::default() }
}
