//! Writable shared mappings of home files (`mmap` with `MAP_SHARED` and `PROT_WRITE`): the program's
//! stores land in the placeholder's memory, never in home's file, so the supervisor writes them home
//! itself. It compares the placeholder with what home last had, chunk by chunk (by a sum of each), and
//! writes the chunks that changed: when the program asks for it (`msync`; `fsync` of the file), before a
//! process that mapped the file ends or replaces its image (`exit_group`, `execve`: its parent may read
//! the file next, as it reads a linker's output), once no process of the job maps it any more (a process
//! killed, a mapping undone and the file closed), and at the job's end. While some process of the job maps
//! the file its handle stays open at home (pinned), so the writes have somewhere to go.
//!
//! Natively the page cache shows a store to every reader at once; here a reader through another
//! descriptor sees it once it is written home (what a second machine sharing the file over NFS sees).

use crate::fdtable::Handle;
use crate::supervisor::Supervisor;
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::Errno;
use std::collections::HashSet;
use std::hash::Hasher;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes compared, and written when they changed, at a time.
const CHUNK: usize = 1 << 20;
/// A mapping is looked for in the processes' maps only this long after it was registered (the kernel
/// makes it after the `mmap` is answered).
const SETTLE: Duration = Duration::from_secs(1);
/// Files up to this size are written before any open ([`Which::Small`]): comparing them costs little.
const SMALL: u64 = 1 << 20;

/// Which mapped files a write-back covers.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    /// Those process (thread group) `tgid` mapped: it ends, or replaces its image.
    Process(u32),
    /// Every one: the program asked (`msync`).
    All,
    /// Those of at most [`SMALL`] bytes: before an open, which may be of one of them.
    Small,
}

/// The files some process of the job maps writable and shared.
#[derive(Default)]
pub struct SharedMaps {
    maps: Mutex<Vec<Arc<Mapped>>>,
    /// One write-back at a time: two processes ending together would send the same chunks twice.
    writing: tokio::sync::Mutex<()>,
}

struct Mapped {
    handle: Arc<Handle>,
    /// The processes (thread group ids) that mapped it.
    mappers: Mutex<HashSet<u32>>,
    /// Each chunk's sum as home last had it.
    sums: Mutex<Vec<u64>>,
    registered: Instant,
}

impl SharedMaps {
    /// Registers a mapping of `h` by process `tgid`, once its placeholder holds home's content: pins the
    /// handle (kept open at home) and takes each chunk's sum.
    pub fn add(&self, h: &Arc<Handle>, tgid: u32) -> Result<(), Errno> {
        let mut maps = self.lock();
        if let Some(m) = maps.iter().find(|m| m.handle.id == h.id) {
            m.mappers.lock().unwrap_or_else(|p| p.into_inner()).insert(tgid);
            return Ok(());
        }
        let mut sums = Vec::new();
        for_each_chunk(h, |_, bytes| {
            sums.push(sum(bytes));
            Ok(())
        })?;
        h.pins.fetch_add(1, Ordering::SeqCst);
        maps.push(Arc::new(Mapped {
            handle: h.clone(),
            mappers: Mutex::new(HashSet::from([tgid])),
            sums: Mutex::new(sums),
            registered: Instant::now(),
        }));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Writes home what changed in the mapped files `which` names; the first error (after trying every
    /// file).
    pub async fn write_back(&self, sup: &Supervisor, which: Which) -> Result<(), Errno> {
        let chosen: Vec<Arc<Mapped>> = self
            .lock()
            .iter()
            .filter(|m| match which {
                Which::Process(tgid) => m.mappers.lock().unwrap_or_else(|p| p.into_inner()).contains(&tgid),
                Which::All => true,
                Which::Small => m.handle.memfd_len().is_some_and(|len| len <= SMALL),
            })
            .cloned()
            .collect();
        self.write(sup, &chosen).await
    }

    /// Writes home what changed in handle `id`, if it is mapped.
    pub async fn write_back_handle(&self, sup: &Supervisor, id: u64) -> Result<(), Errno> {
        let chosen: Vec<Arc<Mapped>> = self.lock().iter().filter(|m| m.handle.id == id).cloned().collect();
        self.write(sup, &chosen).await
    }

    /// At a collection: writes home, and then forgets (unpins), the files no process of `job` maps any
    /// more (all of them once the job is over, `job` empty).
    pub async fn collect(&self, sup: &Supervisor, job: &[u32]) {
        if self.is_empty() {
            return;
        }
        let mapped = sup.fds.mapped_handles(job);
        let unmapped: Vec<Arc<Mapped>> = self
            .lock()
            .iter()
            .filter(|m| !mapped.contains(&m.handle.id) && (job.is_empty() || m.registered.elapsed() > SETTLE))
            .cloned()
            .collect();
        if unmapped.is_empty() {
            return;
        }
        if let Err(e) = self.write(sup, &unmapped).await {
            tracing::warn!(errno = e.raw(), "writing a shared mapping's stores home failed");
        }
        let gone: HashSet<u64> = unmapped.iter().map(|m| m.handle.id).collect();
        self.lock().retain(|m| !gone.contains(&m.handle.id));
        for m in unmapped {
            m.handle.pins.fetch_sub(1, Ordering::SeqCst);
        }
    }

    async fn write(&self, sup: &Supervisor, chosen: &[Arc<Mapped>]) -> Result<(), Errno> {
        let _one = self.writing.lock().await;
        let mut first = Ok(());
        for m in chosen {
            if let Err(e) = write_changed(sup, m).await {
                first = first.and(Err(e));
            }
        }
        first
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Mapped>>> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes home each chunk of `m`'s placeholder whose sum differs from home's last.
async fn write_changed(sup: &Supervisor, m: &Mapped) -> Result<(), Errno> {
    let h = &m.handle;
    // Writes sent behind through this handle go first: they were made before these stores were written.
    h.behind.settle(h.behind.mark()).await;
    let mut changed = Vec::new();
    {
        let sums = m.sums.lock().unwrap_or_else(|p| p.into_inner());
        for_each_chunk(h, |index, bytes| {
            if sums.get(index) != Some(&sum(bytes)) {
                changed.push(index);
            }
            Ok(())
        })?;
    }
    let file = placeholder(h)?;
    let mut buf = vec![0u8; CHUNK];
    for index in changed {
        let offset = (index * CHUNK) as u64;
        let n = read_chunk(&file, &mut buf, offset)?;
        write_home(sup, h.id, &buf[..n], offset).await?;
        let mut sums = m.sums.lock().unwrap_or_else(|p| p.into_inner());
        if sums.len() <= index {
            sums.resize(index + 1, 0);
        }
        sums[index] = sum(&buf[..n]);
    }
    Ok(())
}

/// `bytes` written at `offset` through home handle `id`, all of them.
async fn write_home(sup: &Supervisor, id: u64, mut bytes: &[u8], mut offset: u64) -> Result<(), Errno> {
    while !bytes.is_empty() {
        let op = Op::Write(pb::Write {
            handle: id,
            data: bytes.to_vec().into(),
            offset: Some(offset as i64),
            rwf: 0,
        });
        let reply = sup.link.call(pb::Proc::default(), op).await.map_err(|_| Errno::EIO)?;
        let n = crate::syscalls::outcome(&reply)? as usize;
        if n == 0 || n > bytes.len() {
            return Err(Errno::EIO);
        }
        bytes = &bytes[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Calls `f` with each chunk of `h`'s placeholder (its index and bytes), in order.
fn for_each_chunk(h: &Handle, mut f: impl FnMut(usize, &[u8]) -> Result<(), Errno>) -> Result<(), Errno> {
    let file = placeholder(h)?;
    let mut buf = vec![0u8; CHUNK];
    let mut index = 0;
    loop {
        let n = read_chunk(&file, &mut buf, (index * CHUNK) as u64)?;
        if n == 0 {
            return Ok(());
        }
        f(index, &buf[..n])?;
        index += 1;
    }
}

/// The placeholder's memory file (a descriptor of its own: reads here take no offset).
fn placeholder(h: &Handle) -> Result<std::fs::File, Errno> {
    h.memfd.as_fd().try_clone_to_owned().map(std::fs::File::from).map_err(|e| Errno::from_io(&e))
}

/// Up to `buf.len()` bytes at `offset` (fewer only at the end).
fn read_chunk(file: &std::fs::File, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Errno::from_io(&e)),
        }
    }
    Ok(done)
}

fn sum(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}
