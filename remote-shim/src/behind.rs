//! Write-behind: calls whose result is known before home answers are sent without waiting.
//!
//! A write to a regular file on a local disk at home cannot fail while it fits in the file system's free
//! space, so the program is told at once that it wrote every byte, and the write goes home marked
//! `ordered`: home runs it before it reads the next request of the stream, so every later call of the job
//! (a read, a stat, a lock, another process's open) sees it, as a later call sees a write in the kernel's
//! page cache. The same holds for unlocking a record lock or a `flock`, which always succeeds.
//!
//! When the write cannot be guaranteed the shim waits as before: home says how much room the file system
//! has (`CallReply.room`, 0 for a network or FUSE file system, where a write fails only later), and a
//! write goes behind only while the handle's writes in flight plus [`MARGIN`] fit in it, and the job's
//! writes in flight stay under [`MAX_IN_FLIGHT`] bytes (each at most [`MAX_WRITE`]). So a disk that fills up gives the exact partial
//! count and `ENOSPC` it gives natively.
//!
//! Should a write sent behind fail after all (a disk error, a quota, another process filling the disk in
//! the same instant), the handle owes the error: the next write, `fsync` or `fdatasync` of the file returns
//! it, as the kernel reports a failed write-back, and remote-shim says so on stderr.

use homeward_proto::pb::CallReply;
use homeward_proto::Errno;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Free space a write sent behind must leave on home's file system, besides the writes in flight.
pub const MARGIN: u64 = 64 << 20;

/// Most bytes of the job's writes in flight at once; a write beyond waits for its reply.
pub const MAX_IN_FLIGHT: u64 = 16 << 20;

/// Largest write sent behind; larger ones cost few round trips per byte anyway.
pub const MAX_WRITE: u64 = 1 << 20;

/// How long home's report of a file system's room is trusted: others at home write too.
pub const ROOM_FRESH: Duration = Duration::from_secs(1);

/// Bytes of the job's writes in flight.
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// Free bytes per home device as home last reported them, less what was sent behind since.
static ROOMS: Mutex<Option<HashMap<u64, (u64, Instant)>>> = Mutex::new(None);

/// Notes the room home reported (`CallReply.room` of an open for writing or a write) on device `dev`; the
/// writes still in flight will take their share of it.
pub fn set_room(dev: u64, room: u64) {
    set_room_besides(dev, room, 0);
}

/// [`set_room`] from the reply of a write of `own` bytes still counted in flight.
fn set_room_besides(dev: u64, room: u64, own: u64) {
    let room = room.saturating_sub(IN_FLIGHT.load(Ordering::SeqCst).saturating_sub(own));
    rooms().get_or_insert_with(HashMap::new).insert(dev, (room, Instant::now()));
}

/// Takes `len` bytes of device `dev`'s room when it is fresh and leaves [`MARGIN`] free.
fn take_room(dev: u64, len: u64) -> bool {
    let mut rooms = rooms();
    match rooms.get_or_insert_with(HashMap::new).get_mut(&dev) {
        Some((room, at)) if at.elapsed() < ROOM_FRESH && *room >= len.saturating_add(MARGIN) => {
            *room -= len;
            true
        }
        _ => false,
    }
}

/// Whether home reported room on device `dev` lately (a local file system, see `CallReply.room`).
pub fn has_room(dev: u64) -> bool {
    rooms()
        .get_or_insert_with(HashMap::new)
        .get(&dev)
        .is_some_and(|(room, at)| at.elapsed() < ROOM_FRESH && *room >= MARGIN)
}

/// Forgets device `dev`'s room (a call that wrote there without reporting it: a copy, `fallocate`): the
/// next write waits and learns it again.
pub fn forget_room(dev: u64) {
    if let Some(rooms) = rooms().as_mut() {
        rooms.remove(&dev);
    }
}

fn rooms() -> std::sync::MutexGuard<'static, Option<HashMap<u64, (u64, Instant)>>> {
    ROOMS.lock().unwrap_or_else(|p| p.into_inner())
}

/// One handle's calls in flight and what they owe the program.
#[derive(Default)]
pub struct Behind {
    inner: Mutex<Inner>,
    settled: tokio::sync::Notify,
    /// Held across every call that moves the description's offset while it is known here (reads, writes
    /// and seeks at the offset), as the kernel's `f_pos_lock` serializes them: the offset known here is
    /// then home's at every step.
    pub order: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Inner {
    /// Numbers of the calls sent behind and not answered yet, and the bytes they write.
    open: BTreeSet<u64>,
    next: u64,
    bytes: u64,
    /// No more write-behind for this handle (its flags changed: `O_DIRECT` or `O_SYNC` may be on).
    off: bool,
    /// The error of a call the program was told succeeded: returned by the next write or sync.
    owed: Option<Errno>,
    /// The description's offset at home, when known here (see [`Behind::pos`]).
    pos: Option<i64>,
    /// The offset is followed ([`Behind::follow_pos`]), or no longer (something moved it that does not
    /// report where to).
    follows: bool,
    untracked: bool,
    /// The file's content as this description wrote it since it emptied the file at open (see
    /// [`Behind::start_shadow`]), and the job's other changes to the file then (`foreign_mark`).
    shadow: Option<(Vec<u8>, (u64, u64))>,
    /// Ranges (start, length; 0: to the end) this description holds write locks on at home, as granted.
    write_locks: Vec<(i64, i64)>,
    /// Lock changes sent so far (read locks and unlocks): a write lock granted is recorded only if none was
    /// sent while it was asked for (an unlock sent behind meanwhile may have released it).
    lock_changes: u64,
}

/// Largest content kept in a shadow; a file that grows beyond is read at home.
pub const MAX_SHADOW: usize = 16 << 20;

/// A call sent behind: counted until its reply comes.
pub struct Ticket {
    behind: Arc<Behind>,
    number: u64,
    bytes: u64,
    dev: u64,
}

impl Behind {
    /// Whether a write of `len` bytes to a file on home device `dev` may go behind, and if so counts it as
    /// sent.
    pub fn try_write(self: &Arc<Self>, dev: u64, len: u64) -> Option<Ticket> {
        let mut inner = self.lock();
        if inner.off || len > MAX_WRITE {
            return None;
        }
        if IN_FLIGHT.fetch_add(len, Ordering::SeqCst) + len > MAX_IN_FLIGHT || !take_room(dev, len) {
            IN_FLIGHT.fetch_sub(len, Ordering::SeqCst);
            return None;
        }
        Some(Self::issue(self, &mut inner, dev, len))
    }

    /// Counts a call without data (an unlock, a seek) as sent behind.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        let mut inner = self.lock();
        Self::issue(self, &mut inner, 0, 0)
    }

    fn issue(self: &Arc<Self>, inner: &mut Inner, dev: u64, bytes: u64) -> Ticket {
        inner.next += 1;
        inner.open.insert(inner.next);
        inner.bytes += bytes;
        Ticket { behind: self.clone(), number: inner.next, bytes, dev }
    }

    /// No more write-behind for this handle (its open flags changed).
    pub fn stop(&self) {
        self.lock().off = true;
    }

    /// Starts following the description's offset (a regular file just opened for writing, not appending:
    /// at 0). Reads, writes and seeks at the offset then keep it, under [`Behind::order`], so that a seek
    /// relative to it needs no round trip.
    pub fn follow_pos(&self) {
        let mut inner = self.lock();
        if !inner.untracked {
            inner.follows = true;
            inner.pos = Some(0);
        }
    }

    /// Whether the offset is followed: calls that move it must hold [`Behind::order`]. (Once false it
    /// stays false, and the offset stays unknown.)
    pub fn follows(&self) -> bool {
        let inner = self.lock();
        inner.follows && !inner.untracked
    }

    /// The offset at home, when known here (take [`Behind::order`] first).
    pub fn pos(&self) -> Option<i64> {
        let inner = self.lock();
        inner.pos.filter(|_| inner.follows && !inner.untracked)
    }

    /// Notes where the offset is now (`None`: unknown); ignored unless it is followed.
    pub fn set_pos(&self, pos: Option<i64>) {
        let mut inner = self.lock();
        if inner.follows && !inner.untracked {
            inner.pos = pos;
        }
    }

    /// Stops following the offset for good: something moves it that does not report where to (a pump, a
    /// copy between descriptors, a change of the open flags).
    pub fn untrack(&self) {
        let mut inner = self.lock();
        inner.untracked = true;
        inner.pos = None;
        inner.shadow = None;
    }

    /// Starts a shadow of the file's content: this description (open for reading and writing) just emptied
    /// it (`O_TRUNC`), and `mark` is the job's `foreign_mark` for it now. Reads of what the description
    /// wrote are then answered here while the mark holds (nobody else in the job changed the file), as a
    /// copy is (decision 4: a home process's change is not seen by a descriptor held open).
    pub fn start_shadow(&self, mark: (u64, u64)) {
        let mut inner = self.lock();
        if !inner.untracked {
            inner.shadow = Some((Vec::new(), mark));
        }
    }

    /// The shadow's bytes at `offset` (at most `len`; fewer at its end), while `mark` (the job's
    /// `foreign_mark` now) is the one it started with; else the shadow is dropped and `None` returned.
    pub fn shadow_read(&self, offset: u64, len: usize, mark: (u64, u64)) -> Option<Vec<u8>> {
        let mut inner = self.lock();
        match &inner.shadow {
            Some((data, at)) if *at == mark => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
                Some(data[start..start.saturating_add(len).min(data.len())].to_vec())
            }
            Some(_) => {
                inner.shadow = None;
                None
            }
            None => None,
        }
    }

    /// Whether a shadow is kept.
    pub fn has_shadow(&self) -> bool {
        self.lock().shadow.is_some()
    }

    /// Writes `bytes` at `offset` into the shadow (`None`: where is not known: the shadow goes).
    pub fn shadow_write(&self, offset: Option<u64>, bytes: &[u8]) {
        let mut inner = self.lock();
        let Some((data, _)) = inner.shadow.as_mut() else { return };
        let end =
            offset.and_then(|o| usize::try_from(o).ok()).and_then(|o| Some((o, o.checked_add(bytes.len())?)));
        match end {
            Some((start, end)) if end <= MAX_SHADOW => {
                if data.len() < end {
                    // A hole reads as zeros, as the kernel's.
                    data.resize(end, 0);
                }
                data[start..end].copy_from_slice(bytes);
            }
            _ => inner.shadow = None,
        }
    }

    /// Drops the shadow (the file changed in a way it does not follow: a truncate, an allocation).
    pub fn drop_shadow(&self) {
        self.lock().shadow = None;
    }

    /// The count of lock changes sent so far, taken before a write lock is asked for.
    pub fn lock_epoch(&self) -> u64 {
        self.lock().lock_changes
    }

    /// Home granted this description a write lock on `len` bytes from `start` (0: to the end), asked for
    /// at lock epoch `epoch`: recorded unless a lock change was sent since.
    pub fn write_locked(&self, start: i64, len: i64, epoch: u64) {
        let mut inner = self.lock();
        if inner.lock_changes == epoch {
            inner.write_locks.push((start, len));
        }
    }

    /// Whether this description holds a write lock on all of `len` bytes from `start` (0: to the end): a
    /// read lock there (a downgrade) then conflicts with nobody's lock and cannot be refused.
    pub fn holds_write_lock(&self, start: i64, len: i64) -> bool {
        let end = |start: i64, len: i64| if len == 0 { i64::MAX } else { start.saturating_add(len) };
        self.lock().write_locks.iter().any(|&(s, l)| s <= start && end(start, len) <= end(s, l))
    }

    /// A lock change (a read lock or an unlock) on `len` bytes from `start` (`None`: a range not known
    /// here): the write locks it touches are no longer known to be held.
    pub fn lock_changed(&self, range: Option<(i64, i64)>) {
        let end = |start: i64, len: i64| if len == 0 { i64::MAX } else { start.saturating_add(len) };
        let mut inner = self.lock();
        inner.lock_changes += 1;
        match range {
            Some((start, len)) => {
                inner.write_locks.retain(|&(s, l)| end(s, l) <= start || end(start, len) <= s)
            }
            None => inner.write_locks.clear(),
        }
    }

    /// The error a failed call sent behind left, if any; taken once.
    pub fn take_owed(&self) -> Option<Errno> {
        self.lock().owed.take()
    }

    /// The number of the last call sent behind so far (for [`Behind::settle`]).
    pub fn mark(&self) -> u64 {
        self.lock().next
    }

    /// Waits until every call sent behind up to `mark` has its reply (later ones are not waited for, so a
    /// steady writer on the same description cannot hold a sync up).
    pub async fn settle(&self, mark: u64) {
        loop {
            let notified = self.settled.notified();
            if self.lock().open.first().is_none_or(|&first| first > mark) {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ticket {
    /// Takes home's reply (`None`: home was lost, and under `--on-home-loss eio` the write fails with
    /// `EIO`) for a call that was to return `expected`: a different outcome is owed to the program. `moved`:
    /// the call moved the description's offset by what it returned, so the offset followed here (which
    /// counted `expected`) is no longer home's.
    pub fn answered(self, reply: Option<&CallReply>, expected: i64, what: &str, moved: bool) {
        let outcome = match reply {
            Some(reply) => match crate::syscalls::outcome(reply) {
                Ok(v) if v == expected => None,
                // A short write: the disk filled up while it ran.
                Ok(_) => Some(Errno(libc::ENOSPC as u16)),
                Err(e) => Some(e),
            },
            None => Some(Errno::EIO),
        };
        if let Some(reply) = reply.filter(|_| self.bytes != 0) {
            set_room_besides(self.dev, reply.room, self.bytes);
        }
        if let Some(errno) = outcome {
            if moved {
                self.behind.untrack();
            }
            let mut inner = self.behind.lock();
            inner.owed.get_or_insert(errno);
            // The file does not hold what the shadow says any more.
            inner.shadow = None;
            drop(inner);
            if reply.is_some() {
                let _ = writeln!(
                    std::io::stderr(),
                    "remote-shim: a {what} the program was told succeeded failed at home ({}); the file's next \
                     write or fsync reports it",
                    errno.name()
                );
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(self.bytes, Ordering::SeqCst);
        let mut inner = self.behind.lock();
        inner.open.remove(&self.number);
        inner.bytes -= self.bytes;
        drop(inner);
        self.behind.settled.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homeward_proto::pb::Outcome;

    fn reply(outcome: Outcome, room: u64) -> CallReply {
        CallReply { outcome: Some(outcome), room, ..Default::default() }
    }

    #[test]
    fn writes_go_behind_only_with_fresh_room_to_spare() {
        let (b, dev) = (Arc::new(Behind::default()), 101);
        assert!(b.try_write(dev, 10).is_none(), "no room known: wait");
        set_room(dev, MARGIN + 100);
        let t = b.try_write(dev, 60).expect("fits");
        let other = Arc::new(Behind::default());
        assert!(other.try_write(dev, 60).is_none(), "the room is the device's: another handle sees it taken");
        t.answered(Some(&reply(Outcome::value(60), MARGIN + 1000)), 60, "write", false);
        assert!(b.take_owed().is_none());
        assert!(other.try_write(dev, 40).is_some());
        set_room(dev, 0);
        assert!(b.try_write(dev, 1).is_none(), "no room reported (a network file system): wait");
        set_room(dev, u64::MAX);
        b.stop();
        assert!(b.try_write(dev, 1).is_none(), "stopped: wait");
    }

    #[test]
    fn a_failed_write_is_owed_once() {
        let (b, dev) = (Arc::new(Behind::default()), 102);
        set_room(dev, u64::MAX);
        let t = b.try_write(dev, 8).expect("room");
        t.answered(Some(&reply(Outcome::errno(Errno::EIO), 0)), 8, "write", false);
        assert_eq!(b.take_owed(), Some(Errno::EIO));
        assert_eq!(b.take_owed(), None);
        assert!(b.try_write(dev, 8).is_none(), "a failed write says nothing of the room: wait");
        set_room(dev, u64::MAX);
        b.try_write(dev, 8).expect("room").answered(
            Some(&reply(Outcome::value(3), u64::MAX)),
            8,
            "write",
            false,
        );
        assert_eq!(b.take_owed(), Some(Errno(libc::ENOSPC as u16)));
    }

    #[test]
    fn the_offset_is_known_only_while_followed() {
        let b = Behind::default();
        b.set_pos(Some(5));
        assert_eq!(b.pos(), None, "not followed: never known");
        b.follow_pos();
        assert_eq!(b.pos(), Some(0));
        b.set_pos(Some(7));
        assert_eq!(b.pos(), Some(7));
        b.untrack();
        b.set_pos(Some(9));
        assert_eq!(b.pos(), None, "untracked for good");
        assert!(!b.follows());
        let (b, dev) = (Arc::new(Behind::default()), 103);
        b.follow_pos();
        set_room(dev, u64::MAX);
        let short = reply(Outcome::value(3), u64::MAX);
        b.try_write(dev, 8).expect("room").answered(Some(&short), 8, "write", true);
        assert_eq!(b.pos(), None, "a write at the offset that came back short: home's offset is not known");
        let b = Arc::new(Behind::default());
        b.start_shadow((0, 0));
        b.shadow_write(Some(0), b"12345678");
        b.try_write(dev, 8).expect("room").answered(Some(&short), 8, "pwrite", false);
        assert!(
            !b.has_shadow(),
            "a write that failed at home: the shadow no longer says what the file holds"
        );
    }

    #[test]
    fn a_shadow_holds_what_was_written_while_the_mark_holds() {
        let b = Behind::default();
        b.start_shadow((1, 0));
        b.shadow_write(Some(0), b"hello");
        b.shadow_write(Some(8), b"world");
        assert_eq!(b.shadow_read(0, 100, (1, 0)).as_deref(), Some(&b"hello\0\0\0world"[..]));
        assert_eq!(b.shadow_read(11, 100, (1, 0)).as_deref(), Some(&b"ld"[..]));
        assert_eq!(b.shadow_read(50, 10, (1, 0)).as_deref(), Some(&b""[..]), "beyond the end: end of file");
        assert_eq!(b.shadow_read(0, 1, (2, 0)), None, "someone else changed the file");
        assert!(!b.has_shadow());
        b.start_shadow((2, 0));
        b.shadow_write(None, b"x");
        assert!(!b.has_shadow(), "a write at an unknown place");
        b.start_shadow((2, 0));
        b.shadow_write(Some(MAX_SHADOW as u64), b"x");
        assert!(!b.has_shadow(), "too large");
    }

    #[tokio::test]
    async fn settle_waits_for_the_calls_sent_before_it_only() {
        let b = Arc::new(Behind::default());
        let first = b.ticket();
        let mark = b.mark();
        let later = b.ticket();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.settle(mark).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        waiter.await.expect("settled while a later call is still in flight");
        drop(later);
    }
}
