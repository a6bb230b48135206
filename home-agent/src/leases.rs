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
//! No lease is given for a path with `..` or a symbolic link on the way (its answer depends on directories
//! the walk does not watch), nor when inotify is unavailable (instances or watches exhausted).

use crate::deputies::Replies;
use crate::sys;
use homeward_proto::pb::{CallReply, Event};
use homeward_proto::Errno;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::oneshot;
use tracing::debug;

/// Most path components a leased lookup walks.
const MAX_DEPTH: usize = 64;

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

    /// Watches every directory that looking up `path` from `start` goes through, and the directory it
    /// names if it is one; the lease's epoch, or `None` when the answer cannot be leased (see the module
    /// text). `follow`: whether a symbolic link as the last component would be followed.
    pub fn walk(&mut self, start: BorrowedFd<'_>, path: &[u8], follow: bool) -> Option<u64> {
        let root = match path.first() {
            Some(b'/') => Some(sys::open(c"/", libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC).ok()?),
            _ => None,
        };
        let first = root.as_ref().map_or(start, |r| r.as_fd());
        let parts: Vec<&[u8]> = path.split(|&b| b == b'/').filter(|p| !p.is_empty() && *p != b".").collect();
        if parts.len() > MAX_DEPTH || parts.contains(&&b".."[..]) || !self.watch(first) {
            return None;
        }
        let mut cur: Option<OwnedFd> = None;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let dir = cur.as_ref().map_or(first, |c| c.as_fd());
            let name = CString::new(*part).ok()?;
            let nofollow = libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT;
            let kind = match sys::statx(dir, &name, nofollow, libc::STATX_TYPE) {
                Ok(sx) => u32::from(sx.stx_mode) & libc::S_IFMT,
                // Missing: the answer depends on `dir` alone, which is watched.
                Err(e) if e == Errno::ENOENT => break,
                Err(_) => return None,
            };
            if kind == libc::S_IFLNK && (!last || follow) {
                return None;
            }
            // A file (the answer, or ENOTDIR for what follows it) stays so while `dir` keeps the entry.
            if kind != libc::S_IFDIR {
                break;
            }
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            let next = sys::openat(dir, &name, flags, 0).ok()?;
            if !self.watch(next.as_fd()) {
                return None;
            }
            cur = Some(next);
        }
        Some(self.epoch())
    }
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
