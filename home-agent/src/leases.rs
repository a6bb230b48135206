//! Leases on lookups: the shim may cache a path's attributes (or its absence) and a directory's entries
//! for as long as home says nothing changed.
//!
//! Granting a lease watches (inotify) every directory the lookup goes through, the directory it finds
//! included; the session's first event after that flushes *all* its leases at once: the epoch goes up, the
//! inotify instance is closed (every watch with it) and an `Event { flush_epoch }` goes to the shim, which
//! drops every answer leased under an older epoch. The watches are in place before the lookup reads the
//! file system, so a change that lands after that read is always reported. Coarse on purpose: one epoch per
//! session, no per-path bookkeeping; a job that changes files while it reads them gets fewer cached answers.
//!
//! Symbolic links are followed the way the kernel follows them (the directory holding each link is watched,
//! so a changed link is reported too). No lease is given when inotify is unavailable (instances or watches
//! exhausted) or a component cannot be examined (permissions).

use crate::deputies::Replies;
use crate::sys;
use homeward_proto::pb::{CallReply, Event};
use homeward_proto::Errno;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::oneshot;
use tracing::debug;

/// Most components (links' targets included) a leased lookup walks, and most links it follows (the
/// kernel's limit).
const MAX_STEPS: usize = 256;
const MAX_LINKS: usize = 40;

/// What a watched directory reports: anything that changes its entries, their attributes or content.
const WATCH_MASK: u32 = libc::IN_ATTRIB
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MODIFY
    | libc::IN_MOVE_SELF
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO;

#[derive(Default)]
pub struct Leases {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Leases of this epoch are valid; starts at 1 (0 on the wire means "no lease").
    epoch: u64,
    /// The inotify instance of this epoch, made at its first grant, and what stops its reader.
    watcher: Option<(Arc<OwnedFd>, oneshot::Sender<()>)>,
    replies: Option<Replies>,
}

impl Default for Inner {
    fn default() -> Inner {
        Inner { epoch: 1, watcher: None, replies: None }
    }
}

/// A grant in progress: watches are added under the session's lease lock, so no flush interleaves.
pub struct Grant<'a> {
    inner: MutexGuard<'a, Inner>,
    fd: Arc<OwnedFd>,
}

impl Leases {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends flushes to the session's call stream from now on.
    pub fn attach(&self, replies: Replies) {
        self.lock().replies = Some(replies);
    }

    /// Starts a grant, or `None` when leases cannot be given (no call stream, no runtime, no inotify).
    pub fn begin(self: &Arc<Self>) -> Option<Grant<'_>> {
        let mut inner = self.lock();
        inner.replies.as_ref()?;
        let fd = match &inner.watcher {
            Some((fd, _)) => fd.clone(),
            None => {
                let runtime = tokio::runtime::Handle::try_current().ok()?;
                let fd = match sys::inotify_init() {
                    Ok(fd) => Arc::new(fd),
                    Err(e) => {
                        debug!(errno = e.raw(), "no inotify instance: no leases");
                        return None;
                    }
                };
                let (stop, stopped) = oneshot::channel();
                runtime.spawn(watch(Arc::downgrade(self), fd.clone(), inner.epoch, stopped));
                inner.watcher = Some((fd.clone(), stop));
                fd
            }
        };
        Some(Grant { inner, fd })
    }

    /// Ends every lease of epoch `seen` (a watched directory changed): the next epoch starts.
    fn flush(&self, seen: u64) -> Option<(u64, Replies)> {
        let mut inner = self.lock();
        if inner.epoch != seen {
            return None;
        }
        inner.epoch += 1;
        inner.watcher = None;
        Some((inner.epoch, inner.replies.clone()?))
    }

    /// The session is closing: no more leases or flushes.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.watcher = None;
        inner.replies = None;
    }
}

impl Grant<'_> {
    /// Watches directory `dir`; false when the watch could not be added (the lease is then refused).
    pub fn watch(&self, dir: BorrowedFd<'_>) -> bool {
        sys::inotify_watch(self.fd.as_fd(), dir, WATCH_MASK).is_ok()
    }

    /// The epoch of the lease, once every watch is in place.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// Watches every directory that looking up `path` from `start` goes through (following symbolic links
    /// as the kernel does: a link's directory is watched, its target walked), and the directory it names
    /// if it is one; the lease's epoch, or `None` when the answer cannot be leased (see the module text).
    /// `follow`: whether a symbolic link as the last component is followed.
    pub fn walk(&mut self, start: BorrowedFd<'_>, path: &[u8], follow: bool) -> Option<u64> {
        let dirflags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let root = || sys::open(c"/", libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC).ok();
        // The directory the walk is in (`None`: `start`), and the components still to walk.
        let mut cur: Option<OwnedFd> = if path.first() == Some(&b'/') { Some(root()?) } else { None };
        let mut todo: std::collections::VecDeque<Vec<u8>> = components(path).collect();
        let (mut links, mut steps) = (0, 0);
        if !self.watch(cur.as_ref().map_or(start, |c| c.as_fd())) {
            return None;
        }
        while let Some(part) = todo.pop_front() {
            steps += 1;
            if steps > MAX_STEPS {
                return None;
            }
            let dir = cur.as_ref().map_or(start, |c| c.as_fd());
            let name = CString::new(part).ok()?;
            if name.as_bytes() == b".." {
                let up = sys::openat(dir, &name, dirflags, 0).ok()?;
                if !self.watch(up.as_fd()) {
                    return None;
                }
                cur = Some(up);
                continue;
            }
            let last = todo.is_empty();
            let nofollow = libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT;
            let kind = match sys::statx(dir, &name, nofollow, libc::STATX_TYPE) {
                Ok(sx) => u32::from(sx.stx_mode) & libc::S_IFMT,
                // Missing: the answer depends on `dir` alone, which is watched.
                Err(e) if e == Errno::ENOENT => break,
                Err(_) => return None,
            };
            if kind == libc::S_IFLNK && (!last || follow) {
                links += 1;
                let target = sys::readlinkat(dir, &name, libc::PATH_MAX as usize).ok()?;
                if links > MAX_LINKS || target.is_empty() {
                    return None;
                }
                if target.first() == Some(&b'/') {
                    let top = root()?;
                    if !self.watch(top.as_fd()) {
                        return None;
                    }
                    cur = Some(top);
                }
                for (k, c) in components(&target).enumerate() {
                    todo.insert(k, c);
                }
                continue;
            }
            // A file (the answer, or ENOTDIR for what follows it) stays so while `dir` keeps the entry.
            if kind != libc::S_IFDIR {
                break;
            }
            let next = sys::openat(dir, &name, dirflags, 0).ok()?;
            if !self.watch(next.as_fd()) {
                return None;
            }
            cur = Some(next);
        }
        Some(self.epoch())
    }
}

/// The components of a path, without empty ones and `.`.
fn components(path: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    path.split(|&b| b == b'/').filter(|p| !p.is_empty() && *p != b".").map(<[u8]>::to_vec)
}

/// Waits for the first event of the instance `fd` of epoch `epoch`, then flushes the session's leases. Ends
/// without a flush when `stopped` fires first (the session closed).
async fn watch(leases: Weak<Leases>, fd: Arc<OwnedFd>, epoch: u64, mut stopped: oneshot::Receiver<()>) {
    let Ok(afd) = sys::async_fd(fd) else { return };
    loop {
        let readable = tokio::select! {
            r = afd.readable() => r,
            _ = &mut stopped => return,
        };
        let Ok(mut ready) = readable else { return };
        if sys::inotify_drain(afd.get_ref().as_fd()) > 0 {
            break;
        }
        ready.clear_ready();
    }
    let Some(flushed) = leases.upgrade().and_then(|l| l.flush(epoch)) else { return };
    let (next, replies) = flushed;
    debug!(epoch = next, "a watched directory changed: leases flushed");
    let event = Event { flush_epoch: next, ..Default::default() };
    let _ = replies.send(Ok(CallReply { seq: 0, event: Some(event), ..Default::default() })).await;
}
