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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Free space a write sent behind must leave on home's file system, besides the writes in flight.
pub const MARGIN: u64 = 64 << 20;

/// Most bytes of the job's writes in flight at once; a write beyond waits for its reply.
pub const MAX_IN_FLIGHT: u64 = 16 << 20;

/// Largest write sent behind; larger ones cost few round trips per byte anyway.
pub const MAX_WRITE: u64 = 1 << 20;

/// Bytes of the job's writes in flight.
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// One handle's calls in flight and what they owe the program.
#[derive(Default)]
pub struct Behind {
    inner: Mutex<Inner>,
    settled: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    /// Calls sent behind and not answered yet, and the bytes they write.
    calls: u32,
    bytes: u64,
    /// Free bytes on the file's file system at home as of the last reply, less what was sent since.
    room: u64,
    /// The error of a call the program was told succeeded: returned by the next write or sync.
    owed: Option<Errno>,
}

/// A write sent behind: counted until its reply comes.
pub struct Ticket {
    behind: Arc<Behind>,
    bytes: u64,
}

impl Behind {
    /// Notes the free room home reported (`CallReply.room` of an open or a write).
    pub fn set_room(&self, room: u64) {
        let mut inner = self.lock();
        inner.room = room.saturating_sub(inner.bytes);
    }

    /// Whether a write of `len` bytes may go behind, and if so counts it as sent.
    pub fn try_write(self: &Arc<Self>, len: u64) -> Option<Ticket> {
        let mut inner = self.lock();
        if len > MAX_WRITE || inner.room < len.saturating_add(MARGIN) {
            return None;
        }
        if IN_FLIGHT.fetch_add(len, Ordering::SeqCst) + len > MAX_IN_FLIGHT {
            IN_FLIGHT.fetch_sub(len, Ordering::SeqCst);
            return None;
        }
        inner.room -= len;
        inner.calls += 1;
        inner.bytes += len;
        Some(Ticket { behind: self.clone(), bytes: len })
    }

    /// Counts a call without data (an unlock) as sent behind.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        self.lock().calls += 1;
        Ticket { behind: self.clone(), bytes: 0 }
    }

    /// The error a failed call sent behind left, if any; taken once.
    pub fn take_owed(&self) -> Option<Errno> {
        self.lock().owed.take()
    }

    /// Waits until every call sent behind has its reply.
    pub async fn settle(&self) {
        loop {
            let notified = self.settled.notified();
            if self.lock().calls == 0 {
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
    /// `EIO`) for a call that was to return `expected`: a different outcome is owed to the program.
    pub fn answered(self, reply: Option<&CallReply>, expected: i64, what: &str) {
        let outcome = match reply {
            Some(reply) => match crate::syscalls::outcome(reply) {
                Ok(v) if v == expected => None,
                // A short write: the disk filled up while it ran.
                Ok(_) => Some(Errno(libc::ENOSPC as u16)),
                Err(e) => Some(e),
            },
            None => Some(Errno::EIO),
        };
        let mut inner = self.behind.lock();
        if let Some(reply) = reply.filter(|r| r.room != 0 || self.bytes != 0) {
            inner.room = reply.room.saturating_sub(inner.bytes - self.bytes);
        }
        if let Some(errno) = outcome {
            if reply.is_some() {
                eprintln!(
                    "remote-shim: a {what} the program was told succeeded failed at home ({}); the file's next \
                     write or fsync reports it",
                    errno.name()
                );
            }
            inner.owed.get_or_insert(errno);
        }
        drop(inner);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(self.bytes, Ordering::SeqCst);
        let mut inner = self.behind.lock();
        inner.calls -= 1;
        inner.bytes -= self.bytes;
        if inner.calls == 0 {
            self.behind.settled.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_go_behind_only_with_room_to_spare() {
        let b = Arc::new(Behind::default());
        assert!(b.try_write(10).is_none(), "no room known: wait");
        b.set_room(MARGIN + 100);
        let t = b.try_write(60).expect("fits");
        assert!(b.try_write(60).is_none(), "the first write's bytes are spoken for");
        let ok = CallReply {
            outcome: Some(homeward_proto::pb::Outcome::value(60)),
            room: MARGIN + 40,
            ..Default::default()
        };
        t.answered(Some(&ok), 60, "write");
        assert!(b.take_owed().is_none());
        assert!(b.try_write(40).is_some());
    }

    #[test]
    fn a_failed_write_is_owed_once() {
        let b = Arc::new(Behind::default());
        b.set_room(u64::MAX);
        let t = b.try_write(8).expect("room");
        let failed =
            CallReply { outcome: Some(homeward_proto::pb::Outcome::errno(Errno::EIO)), ..Default::default() };
        t.answered(Some(&failed), 8, "write");
        assert_eq!(b.take_owed(), Some(Errno::EIO));
        assert_eq!(b.take_owed(), None);
        assert!(b.try_write(8).is_none(), "a failed write says nothing of the room: wait");
        b.set_room(u64::MAX);
        let short = CallReply { outcome: Some(homeward_proto::pb::Outcome::value(3)), ..Default::default() };
        b.try_write(8).expect("room").answered(Some(&short), 8, "write");
        assert_eq!(b.take_owed(), Some(Errno(libc::ENOSPC as u16)));
    }

    #[tokio::test]
    async fn settle_waits_for_every_reply() {
        let b = Arc::new(Behind::default());
        let t = b.ticket();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.settle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(t);
        waiter.await.expect("settled");
    }
}
