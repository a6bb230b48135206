//! Background fills: a read-only regular file too large to come with its open is copied into its
//! placeholder by a task that keeps several reads in flight, so the program reads at the kernel's speed
//! as soon as its bytes are there (streaming, like readahead, but to the end of the file).
//!
//! A read waits only for the bytes it asks for ([`crate::fdtable::Handle::wait_filled`]). When the fill
//! ends, home's attributes of the handle are read again: the copy is fresh only if the file is still the
//! version that was opened, else it is stale and reads go home. A failed fill (the file shrank, the handle
//! was closed) leaves the copy stale too: nothing is ever served that home did not say.

use crate::fdtable::Handle;
use crate::supervisor::Supervisor;
use homeward_proto::pb::{self, call_request::Op};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Bytes per read.
const CHUNK: u64 = 2 << 20;
/// Reads in flight at once.
const DEPTH: usize = 4;
/// Files larger than this are not copied (their reads go home).
pub const MAX_FILL: i64 = 1 << 30;
/// Filled files up to this size also go to the content cache (reopened without a transfer).
const CACHE_UPTO: i64 = 64 << 20;

/// Copies `h`'s content into its placeholder; see the module text.
pub async fn run(sup: Arc<Supervisor>, h: Arc<Handle>) {
    let ok = copy_all(&sup, &h).await && unchanged(&sup, &h).await;
    if ok {
        if h.stat.size <= CACHE_UPTO {
            if let Some(key) = crate::content::Key::of(&h.stat) {
                sup.content.insert(key, &h.memfd);
            }
        }
        h.fill_done();
    } else {
        h.mark_stale();
    }
    tracing::debug!(handle = h.id, size = h.stat.size, ok, "background fill ended");
}

async fn copy_all(sup: &Arc<Supervisor>, h: &Arc<Handle>) -> bool {
    let size = h.stat.size as u64;
    let Ok(file) = h.memfd.try_clone().map(std::fs::File::from) else { return false };
    let file = Arc::new(file);
    let mut reads = tokio::task::JoinSet::new();
    let (mut next, mut contiguous) = (0u64, 0u64);
    let mut landed: BTreeMap<u64, u64> = BTreeMap::new();
    loop {
        while next < size && reads.len() < DEPTH {
            let (sup, file, handle, offset) = (sup.clone(), file.clone(), h.id, next);
            let len = CHUNK.min(size - offset);
            reads.spawn(async move {
                let op = Op::Read(pb::Read { handle, len, offset: Some(offset as i64) });
                let reply = sup.link.call(pb::Proc { id: 0, parent: 0 }, op).await.ok()?;
                if let Some(t) = &sup.tracer {
                    t.background(1, reply.data.len() as u64);
                }
                let n = reply.outcome.and_then(|o| o.to_result().ok())?;
                // Short only at the end of a file that shrank: then the copy cannot be the version opened.
                (n as u64 == len && reply.data.len() as u64 == len).then_some(())?;
                let f = file.clone();
                tokio::task::spawn_blocking(move || f.write_all_at(&reply.data, offset).ok())
                    .await
                    .ok()??;
                Some((offset, len))
            });
            next += len;
        }
        match reads.join_next().await {
            None => return contiguous == size,
            Some(Ok(Some((offset, len)))) => {
                landed.insert(offset, len);
                while let Some(len) = landed.remove(&contiguous) {
                    contiguous += len;
                }
                h.filled_upto(contiguous);
            }
            Some(_) => return false,
        }
    }
}

/// Whether home's handle still shows the version that was opened (size, mtime, ctime).
async fn unchanged(sup: &Supervisor, h: &Handle) -> bool {
    let op = Op::Stat(pb::Stat {
        dir: Some(pb::Dir { handle: h.id }),
        path: Vec::new().into(),
        at_flags: homeward_proto::flags::at_to_wire(libc::AT_EMPTY_PATH, false),
        mask: 0,
    });
    let Ok(reply) = sup.link.call(pb::Proc { id: 0, parent: 0 }, op).await else { return false };
    if let Some(t) = &sup.tracer {
        t.background(1, 0);
    }
    let version = |s: &pb::FileStat| (s.size, s.mtime_sec, s.mtime_nsec, s.ctime_sec, s.ctime_nsec);
    reply.stat.is_some_and(|st| version(&st) == version(&h.stat))
}
