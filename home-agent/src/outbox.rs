//! A session's outgoing messages, kept until the shim acknowledges them, and the calls it is running: what
//! lets a session's stream break and resume (a new `Calls` stream for the same session) losing nothing and
//! running nothing twice.
//!
//! Every call's reply and every signal event is *numbered* (`CallReply.index`, from 1) and kept until a
//! request's `ack` covers it. A resumed stream first gets everything kept that the shim has not
//! acknowledged, in order, then the new messages. A request the shim sends again after a break (same `seq`)
//! is not run again: it is either still running (its reply goes to whichever stream is current when it
//! finishes) or done (its kept reply is sent again). Lease reports are not numbered: a resumed stream
//! starts with a `forget` event instead (see `leases`).

use homeward_proto::pb::CallReply;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};
use tonic::Status;

/// The sending side of one `Calls` stream.
pub type Stream = mpsc::Sender<Result<CallReply, Status>>;

/// Most calls one session runs at once; one more is answered `EAGAIN` (a job with that many threads all
/// waiting at home is either hostile or broken).
pub const MAX_RUNNING: usize = 4096;
/// Most bytes of data the calls a session runs hold or ask for at once (writes' data, reads' lengths); a call
/// beyond is answered `EAGAIN`.
pub const MAX_RUNNING_BYTES: usize = 512 << 20;
/// Most bytes of replies a session keeps unacknowledged (a link gone silent) before new calls get `EAGAIN`.
pub const MAX_KEPT_BYTES: usize = 512 << 20;

#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Signalled when the last running call is done.
    idle: Notify,
}

#[derive(Default)]
struct Inner {
    /// The current stream; `None` before the first, while the link is broken, and once closed.
    stream: Option<Stream>,
    /// Which stream is current: 1 for the first, one more for each resumption.
    generation: u64,
    /// A resumed stream is being sent the kept messages: new numbered ones wait in `kept` meanwhile, so
    /// the shim receives every numbered message in order.
    resuming: bool,
    closed: bool,
    next_index: u64,
    /// Numbered messages not acknowledged yet, in index order.
    kept: VecDeque<CallReply>,
    /// The calls whose replies are in `kept`.
    kept_seqs: HashSet<u64>,
    kept_bytes: usize,
    /// The calls running, with the bytes of data each holds.
    running: HashMap<u64, usize>,
    running_bytes: usize,
}

/// What to do with an incoming request.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Run,
    /// Sent again after a break; it runs or ran already.
    Duplicate,
    /// From a stream another one replaced: ignored.
    Stale,
    /// The session runs [`MAX_RUNNING`] calls, or calls holding [`MAX_RUNNING_BYTES`], already.
    Busy,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an incoming call holding `bytes` of data (or asking for as many), that came on the stream of
    /// `generation`, acknowledging what its `ack` covers.
    /// `ordered`: a call the shim sent behind (the program was told it succeeded), run however busy the
    /// session is (the shim bounds those in flight).
    pub fn admit(&self, generation: u64, seq: u64, ack: u64, bytes: usize, ordered: bool) -> Admit {
        let mut inner = self.lock();
        if inner.generation != generation || inner.closed {
            // Read late from a stream a newer one replaced (a retransmission after the break): the shim sent
            // every call it still waits for on the new stream, and one it no longer waits for ran already.
            return Admit::Stale;
        }
        inner.acknowledge(ack);
        if inner.running.contains_key(&seq) || inner.kept_seqs.contains(&seq) {
            return Admit::Duplicate;
        }
        let over = inner.running.len() >= MAX_RUNNING
            || inner.running_bytes + bytes > MAX_RUNNING_BYTES
            || inner.kept_bytes > MAX_KEPT_BYTES;
        if over && !ordered {
            return Admit::Busy;
        }
        inner.running.insert(seq, bytes);
        inner.running_bytes += bytes;
        Admit::Run
    }

    /// A call was admitted but will not answer (the session closed before it ran).
    pub fn abandon(&self, seq: u64) {
        let mut inner = self.lock();
        inner.finish(seq);
        if inner.running.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Numbers `reply` when it must survive a break, keeps it, and says where to send it now (`None`: not
    /// now; a resumed stream will get it).
    fn post(&self, reply: &mut CallReply) -> Option<Stream> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        let numbered = reply.seq != 0 || reply.event.as_ref().is_some_and(|e| e.signal != 0);
        if numbered {
            inner.next_index += 1;
            reply.index = inner.next_index;
            if reply.seq != 0 {
                inner.finish(reply.seq);
                inner.kept_seqs.insert(reply.seq);
                if inner.running.is_empty() {
                    self.idle.notify_waiters();
                }
            }
            inner.kept_bytes += reply_bytes(reply);
            inner.kept.push_back(reply.clone());
            if inner.resuming {
                return None;
            }
        }
        inner.stream.clone()
    }

    /// Sends a call's reply or an event to the current stream (waiting for room in it).
    pub async fn send(&self, mut reply: CallReply) {
        if let Some(stream) = self.post(&mut reply) {
            let _ = stream.send(Ok(reply)).await;
        }
    }

    /// [`Outbox::send`] from a thread that is not an async worker.
    pub fn blocking_send(&self, mut reply: CallReply) {
        if let Some(stream) = self.post(&mut reply) {
            let _ = stream.blocking_send(Ok(reply));
        }
    }

    /// Makes `stream` the current one; the shim has received every message up to `ack`. `with` runs in the
    /// same step (two streams attaching at once cannot interleave it). Returns the stream's generation, or
    /// `None` when the session is closed; [`Outbox::resend`] must follow.
    pub fn attach(&self, stream: Stream, ack: u64, with: impl FnOnce()) -> Option<u64> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        with();
        inner.acknowledge(ack);
        inner.generation += 1;
        inner.stream = Some(stream);
        inner.resuming = true;
        Some(inner.generation)
    }

    /// Sends a freshly attached stream `first`, then every kept message, then lets new messages flow.
    pub async fn resend(&self, generation: u64, first: Option<CallReply>) {
        let Some(stream) = self.lock().stream.clone() else { return };
        if let Some(first) = first {
            let _ = stream.send(Ok(first)).await;
        }
        let mut sent = 0;
        loop {
            let batch: Vec<CallReply> = {
                let mut inner = self.lock();
                if inner.generation != generation {
                    return;
                }
                let batch: Vec<CallReply> = inner.kept.iter().filter(|r| r.index > sent).cloned().collect();
                if batch.is_empty() {
                    inner.resuming = false;
                    return;
                }
                batch
            };
            for reply in batch {
                sent = reply.index;
                if stream.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The stream of `generation` broke: messages are kept for the next one. False when another stream
    /// took over already.
    pub fn detach(&self, generation: u64) -> bool {
        let mut inner = self.lock();
        if inner.generation != generation {
            return false;
        }
        inner.stream = None;
        true
    }

    /// The current stream's generation (0: none was ever attached).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Waits until no call is running.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.lock().running.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Closes the outbox if the stream of `generation` is still the current one (0: none ever attached);
    /// false when another took over. The caller then closes the session.
    pub fn close_if(&self, generation: u64) -> bool {
        let mut inner = self.lock();
        if inner.generation != generation || inner.closed {
            return false;
        }
        inner.close();
        true
    }

    /// The session is closing: nothing is kept or sent any more.
    pub fn close(&self) {
        self.lock().close();
    }

    /// Messages kept and their payload bytes.
    #[cfg(test)]
    pub fn kept(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.kept.len(), inner.kept_bytes)
    }
}

impl Inner {
    fn close(&mut self) {
        self.closed = true;
        self.stream = None;
        self.kept.clear();
        self.kept_seqs.clear();
        self.kept_bytes = 0;
    }

    fn finish(&mut self, seq: u64) {
        if let Some(bytes) = self.running.remove(&seq) {
            self.running_bytes -= bytes;
        }
    }

    fn acknowledge(&mut self, ack: u64) {
        while self.kept.front().is_some_and(|r| r.index <= ack) {
            if let Some(reply) = self.kept.pop_front() {
                self.kept_seqs.remove(&reply.seq);
                self.kept_bytes -= reply_bytes(&reply);
            }
        }
    }
}

/// The payload a kept reply holds on to.
fn reply_bytes(reply: &CallReply) -> usize {
    reply.data.len() + reply.dirents.iter().map(|d| d.name.len() + 32).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(seq: u64) -> CallReply {
        CallReply { seq, ..Default::default() }
    }

    async fn drain(rx: &mut mpsc::Receiver<Result<CallReply, Status>>) -> Vec<(u64, u64)> {
        let mut got = Vec::new();
        while let Ok(Some(Ok(r))) =
            tokio::time::timeout(std::time::Duration::from_millis(50), rx.recv()).await
        {
            got.push((r.seq, r.index));
        }
        got
    }

    #[tokio::test]
    async fn a_resumed_stream_gets_what_was_not_acknowledged_in_order() {
        let outbox = Outbox::default();
        let (tx, mut rx) = mpsc::channel(16);
        let generation = outbox.attach(tx, 0, || {}).unwrap();
        outbox.resend(generation, None).await;
        for seq in 1..=3 {
            assert_eq!(outbox.admit(generation, seq, 0, 0, false), Admit::Run);
            outbox.send(reply(seq)).await;
        }
        assert_eq!(drain(&mut rx).await, [(1, 1), (2, 2), (3, 3)]);
        // The link breaks; seq 4 finishes meanwhile.
        assert!(outbox.detach(generation));
        assert_eq!(outbox.admit(generation, 4, 1, 0, false), Admit::Run);
        outbox.send(reply(4)).await;
        // Sent again after the break: not run twice.
        assert_eq!(outbox.admit(generation, 2, 1, 0, false), Admit::Duplicate);
        assert_eq!(outbox.admit(generation, 4, 1, 0, false), Admit::Duplicate);
        let (tx, mut rx) = mpsc::channel(16);
        let generation = outbox.attach(tx, 2, || {}).unwrap();
        outbox.resend(generation, None).await;
        assert_eq!(drain(&mut rx).await, [(3, 3), (4, 4)]);
        assert_eq!(outbox.admit(generation, 5, 4, 0, false), Admit::Run);
        // A request read late from the replaced stream is not run.
        assert_eq!(outbox.admit(generation - 1, 6, 4, 0, false), Admit::Stale);
        // Closed only by the stream that is current; then no stream attaches any more.
        assert!(!outbox.close_if(generation - 1));
        assert!(outbox.close_if(generation));
        let (tx, _rx) = mpsc::channel(16);
        assert_eq!(outbox.attach(tx, 0, || {}), None);
        assert_eq!(outbox.kept().0, 0);
    }

    #[tokio::test]
    async fn lease_reports_are_not_kept_and_running_calls_are_bounded() {
        let outbox = Outbox::default();
        let (tx, mut rx) = mpsc::channel(16);
        let generation = outbox.attach(tx, 0, || {}).unwrap();
        outbox.resend(generation, None).await;
        outbox.send(reply(0)).await;
        assert_eq!(drain(&mut rx).await, [(0, 0)]);
        assert_eq!(outbox.kept().0, 0);
        for seq in 1..=MAX_RUNNING as u64 {
            assert_eq!(outbox.admit(generation, seq, 0, 0, false), Admit::Run);
        }
        assert_eq!(outbox.admit(generation, u64::MAX, 0, 0, false), Admit::Busy);
        assert_eq!(outbox.admit(generation, u64::MAX - 1, 0, 0, true), Admit::Run, "a call sent behind runs");
        outbox.abandon(u64::MAX - 1);
        outbox.abandon(1);
        assert_eq!(outbox.admit(generation, u64::MAX, 0, 0, false), Admit::Run);
        let outbox = Outbox::default();
        let (tx, _rx) = mpsc::channel(16);
        let generation = outbox.attach(tx, 0, || {}).unwrap();
        assert_eq!(outbox.admit(generation, 1, 0, MAX_RUNNING_BYTES, false), Admit::Run);
        assert_eq!(outbox.admit(generation, 2, 0, 1, false), Admit::Busy);
        assert_eq!(outbox.admit(generation, 3, 0, 0, false), Admit::Run);
        outbox.abandon(1);
        assert_eq!(outbox.admit(generation, 2, 0, 1, false), Admit::Run);
    }
}
