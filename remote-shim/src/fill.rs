//! Readahead into placeholders: a read-only regular file too large to come with its open is copied into
//! its placeholder chunk by chunk, as the program's reads ask for it and a window ahead of them, with
//! several reads in flight; once every chunk is there the copy is complete and reads are the kernel's.
//!
//! Nothing is fetched at open: a file opened and closed unread (or read only at its start, or only at
//! its end, as `tail` does) costs only the chunks its reads touched and the window after them. A read
//! waits only for the chunks it covers ([`Fill::wait`]); the fetcher keeps a window ahead of the furthest
//! read (four times the sequential run so far: a file read through is soon fetched to its end) and then
//! idles until a read wants more.
//!
//! When the last chunk lands, home's attributes of the handle are read again: the copy is fresh only if
//! the file is still the version that was opened, else it is stale and reads go home. A failed chunk (the
//! file shrank, the handle was closed) makes the copy stale too: nothing is served that home did not say.

use crate::fdtable::Handle;
use crate::supervisor::Supervisor;
use homeward_proto::pb::{self, call_request::Op};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{watch, Notify};

/// Bytes per read at home.
pub const CHUNK: u64 = 2 << 20;
/// Reads in flight at once.
const DEPTH: usize = 4;
/// How far ahead of the furthest read the fetcher goes at most (the whole file).
const WINDOW: u64 = MAX_FILL as u64;
/// Files larger than this are not copied (their reads go home).
pub const MAX_FILL: i64 = 1 << 30;
/// Complete copies up to this size also go to the content cache (reopened without a transfer).
pub const CACHE_UPTO: i64 = 64 << 20;

/// The readahead state of one handle's placeholder.
pub struct Fill {
    size: u64,
    state: Mutex<State>,
    /// Bumped whenever a chunk lands or the fill ends: waiters look again.
    landed: watch::Sender<u64>,
    /// Wakes the fetcher when a read wants more.
    wanted: Notify,
}

struct State {
    /// Per chunk: fetched into the placeholder.
    have: Vec<bool>,
    /// Per chunk: being fetched.
    busy: Vec<bool>,
    /// The fetcher goes up to here (exclusive), from `from`.
    upto: u64,
    from: u64,
    /// The fill is over (complete or failed); no one waits any more.
    over: bool,
}

impl Fill {
    pub fn new(size: u64) -> Fill {
        let chunks = size.div_ceil(CHUNK) as usize;
        Fill {
            size,
            state: Mutex::new(State {
                have: vec![false; chunks],
                busy: vec![false; chunks],
                upto: 0,
                from: 0,
                over: false,
            }),
            landed: watch::Sender::new(0),
            wanted: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn chunks(&self, start: u64, end: u64) -> std::ops::Range<usize> {
        let end = end.min(self.size);
        if start >= end {
            return 0..0;
        }
        (start / CHUNK) as usize..end.div_ceil(CHUNK) as usize
    }

    /// Whether bytes `[start, end)` are in the placeholder. Asks the fetcher for them and for the window
    /// after them: a read outside what it is fetching moves it there.
    pub fn has(&self, start: u64, end: u64) -> bool {
        let range = self.chunks(start, end);
        let end = end.min(self.size);
        let mut s = self.lock();
        let all = s.over || s.have[range.clone()].iter().all(|&h| h);
        let inside = s.from <= start && start < s.upto;
        // The window grows with the sequential run (the reads since `from`), as the kernel's readahead does:
        // a file read only at its start or end costs about what was read.
        let ahead = |from: u64| end.saturating_sub(from).saturating_mul(4).clamp(CHUNK, WINDOW);
        let round = |n: u64| n.div_ceil(CHUNK).saturating_mul(CHUNK).min(self.size);
        let asked = if !all && !inside {
            s.from = range.start as u64 * CHUNK;
            s.upto = round(end.saturating_add(CHUNK));
            true
        } else if inside && round(end.saturating_add(ahead(s.from))) > s.upto {
            s.upto = round(end.saturating_add(ahead(s.from)));
            true
        } else {
            false
        };
        drop(s);
        if asked {
            self.wanted.notify_one();
        }
        all
    }

    /// Waits until bytes `[start, end)` are in the placeholder or the fill is over.
    pub async fn wait(&self, start: u64, end: u64) {
        let mut seen = self.landed.subscribe();
        while !self.has(start, end) {
            if seen.changed().await.is_err() {
                return;
            }
        }
    }

    /// Asks for the whole file and waits until the fill is over (complete and checked, or failed).
    pub async fn wait_over(&self) {
        let mut seen = self.landed.subscribe();
        while !self.is_over() {
            self.has(0, self.size);
            if seen.changed().await.is_err() {
                return;
            }
        }
    }

    /// Whether the fill is over (complete or failed): no chunk lands any more.
    pub fn is_over(&self) -> bool {
        self.lock().over
    }

    /// The fill is over (complete, failed, or its handle gone): waiters and the fetcher stop.
    pub fn end(&self) {
        self.lock().over = true;
        self.landed.send_modify(|n| *n += 1);
        self.wanted.notify_one();
    }
}

/// Starts the fetcher of `h`'s fill; it ends when the copy is complete or has failed, or when the handle is
/// dropped.
pub fn start(sup: &Arc<Supervisor>, h: &Arc<Handle>) {
    tokio::spawn(fetch(Arc::downgrade(sup), Arc::downgrade(h)));
}

async fn fetch(sup: Weak<Supervisor>, h: Weak<Handle>) {
    let Some(fill) = h.upgrade().and_then(|h| h.fill_arc()) else { return };
    let mut reads = tokio::task::JoinSet::new();
    let complete = loop {
        let mut idle = false;
        {
            let (Some(sup), Some(handle)) = (sup.upgrade(), h.upgrade()) else { return };
            while reads.len() < DEPTH {
                let Some(i) = next_chunk(&fill) else {
                    idle = true;
                    break;
                };
                reads.spawn(fetch_chunk(sup.clone(), handle.clone(), fill.clone(), i));
            }
        }
        if reads.is_empty() && fill.lock().have.iter().all(|&h| h) {
            break true;
        }
        if reads.is_empty() && idle {
            // Holds neither the handle nor the supervisor: a handle the program closed is dropped, and its
            // drop wakes this fetcher to end.
            fill.wanted.notified().await;
            if fill.lock().over {
                return;
            }
            continue;
        }
        match reads.join_next().await {
            Some(Ok(true)) => {}
            _ => break false,
        }
    };
    let (Some(sup), Some(h)) = (sup.upgrade(), h.upgrade()) else { return };
    let fresh = complete && unchanged(&sup, &h).await;
    if fresh {
        if h.stat.size <= CACHE_UPTO {
            if let Some(key) = crate::content::Key::of(&h.stat) {
                sup.content.insert(key, &h.memfd);
            }
        }
        h.fill_done();
    } else {
        h.mark_stale();
    }
    if let Some(fill) = h.fill() {
        fill.end();
    }
    tracing::debug!(handle = h.id, size = h.stat.size, fresh, "fill ended");
}

/// The next chunk the fetcher should read, marked busy: the first missing one in `[from, upto)`.
fn next_chunk(fill: &Fill) -> Option<usize> {
    let mut s = fill.lock();
    let range = fill.chunks(s.from, s.upto);
    let i = range.clone().find(|&i| !s.have[i] && !s.busy[i])?;
    s.busy[i] = true;
    Some(i)
}

/// Reads chunk `i` at home into the placeholder; false when that failed.
async fn fetch_chunk(sup: Arc<Supervisor>, h: Arc<Handle>, fill: Arc<Fill>, i: usize) -> bool {
    let offset = i as u64 * CHUNK;
    let len = CHUNK.min(fill.size - offset);
    let op = Op::Read(pb::Read { handle: h.id, len, offset: Some(offset as i64) });
    let Ok(reply) = sup.link.call(pb::Proc { id: 0, parent: 0 }, op).await else { return false };
    if let Some(t) = &sup.tracer {
        t.background(1, reply.data.len() as u64);
    }
    // Short only when the file shrank: then the copy cannot be the version opened.
    let n = reply.outcome.and_then(|o| o.to_result().ok());
    if n != Some(len as i64) || reply.data.len() as u64 != len {
        return false;
    }
    let Ok(file) = h.memfd.try_clone().map(std::fs::File::from) else { return false };
    let wrote = tokio::task::spawn_blocking(move || file.write_all_at(&reply.data, offset).is_ok()).await;
    if wrote.unwrap_or(false) {
        let mut s = fill.lock();
        s.have[i] = true;
        s.busy[i] = false;
        drop(s);
        fill.landed.send_modify(|n| *n += 1);
        true
    } else {
        false
    }
}

/// Whether home's handle still shows the version that was opened (size, mtime, ctime).
async fn unchanged(sup: &Supervisor, h: &Handle) -> bool {
    let op = Op::Stat(pb::Stat {
        dir: Some(pb::Dir { handle: h.id }),
        path: Vec::new().into(),
        at_flags: homeward_proto::flags::at_to_wire(libc::AT_EMPTY_PATH, false),
        mask: 0,
        lease: false,
    });
    let Ok(reply) = sup.link.call(pb::Proc { id: 0, parent: 0 }, op).await else { return false };
    if let Some(t) = &sup.tracer {
        t.background(1, 0);
    }
    reply.stat.is_some_and(|st| st.same_version(&h.stat))
}
