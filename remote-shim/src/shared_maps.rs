//! Writable shared mappings of home files (`mmap` with `MAP_SHARED` and `PROT_WRITE`): the program's
//! stores land in the placeholder's memory, never in home's file, so the supervisor writes them home
//! itself. Each mapped file keeps a *baseline*, a copy of what home had when the placeholder was last
//! filled or written; a write-back sends the byte runs where the placeholder differs from it (only those:
//! a `write` the program made through a descriptor meanwhile is not overwritten). It happens when the
//! program asks for it (`msync`; `fsync` of the file), before a process that maps the file ends or replaces
//! its image (`exit_group`, `execve`: its parent may read the file next, as it reads a linker's output),
//! before an open of any kind while a small file is mapped and before anything truncates, once no process
//! of the job maps the file any more (a process killed, a mapping undone and the file closed), and at the
//! job's end. While a file is registered its handle stays open at home (pinned), so the writes have
//! somewhere to go. A new mapping first writes back, then fills the placeholder from home again: the
//! file may have grown (Go's linker maps, grows the file, and maps it again) or changed by writes.
//!
//! Natively the page cache shows a store to every reader at once; here a reader through another
//! descriptor sees it once it is written home (what a second machine sharing the file over NFS sees).

use crate::fdtable::Handle;
use crate::supervisor::Supervisor;
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::Errno;
use std::collections::HashSet;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes compared, and at most sent in one write, at a time.
const BLOCK: usize = 1 << 20;
/// Differing runs closer than this are sent as one.
const GAP: usize = 64;
/// A mapping is looked for in the processes' maps only this long after it was last registered (the
/// kernel makes it after the `mmap` is answered).
const SETTLE: Duration = Duration::from_secs(1);
/// Files up to this size are written before any open ([`Which::Small`]): comparing them costs little
/// (sqlite's `-shm` index is 32 KiB).
const SMALL: u64 = 256 << 10;
/// `pwritev2`'s flag that writes at the offset even on a descriptor opened `O_APPEND` (Linux 6.9).
const RWF_NOAPPEND: u32 = 0x20;

/// Which mapped files a write-back covers.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    /// Those process (thread group) `tgid` mapped, or maps now (inherited mappings): it ends, or replaces
    /// its image.
    Process(u32),
    /// Every one: the program asked (`msync`), or something may truncate one of them.
    All,
    /// Those of at most [`SMALL`] bytes: before an open, which may be of one of them.
    Small,
    /// Those of file (device, inode): it is synced.
    Inode((u64, u64)),
    /// Home handle `id`'s: it is mapped again.
    Handle(u64),
}

/// The files some process of the job maps writable and shared.
#[derive(Default)]
pub struct SharedMaps {
    maps: Mutex<Vec<Arc<Mapped>>>,
    /// One collection at a time (the periodic one, one asked for, the job's last).
    collecting: tokio::sync::Mutex<()>,
}

struct Mapped {
    handle: Arc<Handle>,
    /// The processes (thread group ids) that mapped it (a mapping undone before the process ends still
    /// has its stores to write).
    mappers: Mutex<HashSet<u32>>,
    /// What home had: the placeholder's bytes as last filled from home or written there.
    baseline: Mutex<std::fs::File>,
    /// Bumped at each registration, so that a collection that found the file unmapped leaves a file
    /// mapped again meanwhile alone.
    generation: AtomicU64,
    registered: Mutex<Instant>,
    /// One write-back of this file at a time (two processes ending together would send the same runs).
    writing: tokio::sync::Mutex<()>,
}

impl SharedMaps {
    /// Registers a mapping of `h` by process `tgid`, whose placeholder was just filled from home: pins the
    /// handle (kept open at home) and takes the baseline.
    pub fn add(&self, h: &Arc<Handle>, tgid: u32) -> Result<(), Errno> {
        let baseline = copy_of(h)?;
        let mut maps = self.lock();
        if let Some(m) = maps.iter().find(|m| m.handle.id == h.id) {
            m.mappers.lock().unwrap_or_else(|p| p.into_inner()).insert(tgid);
            *m.baseline.lock().unwrap_or_else(|p| p.into_inner()) = baseline;
            m.generation.fetch_add(1, Ordering::SeqCst);
            *m.registered.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            return Ok(());
        }
        h.pins.fetch_add(1, Ordering::SeqCst);
        maps.push(Arc::new(Mapped {
            handle: h.clone(),
            mappers: Mutex::new(HashSet::from([tgid])),
            baseline: Mutex::new(baseline),
            generation: AtomicU64::new(0),
            registered: Mutex::new(Instant::now()),
            writing: tokio::sync::Mutex::new(()),
        }));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The program set the length of handle `id`'s file to `len` (`ftruncate`): its placeholder and
    /// baseline follow, as the mapping of a file follows its size natively.
    pub fn resized(&self, id: u64, len: u64) {
        let Some(m) = self.lock().iter().find(|m| m.handle.id == id).cloned() else { return };
        let _ = placeholder(&m.handle).and_then(|p| p.set_len(len).map_err(|e| Errno::from_io(&e)));
        let _ = m.baseline().and_then(|b| b.set_len(len).map_err(|e| Errno::from_io(&e)));
    }

    /// Writes home what changed in the mapped files `which` names; the first error (after trying every
    /// file).
    pub async fn write_back(&self, sup: &Supervisor, which: Which) -> Result<(), Errno> {
        if self.is_empty() {
            return Ok(());
        }
        let mapped_by = match which {
            Which::Process(tgid) => Some(sup.fds.mapped_handles(&[tgid])),
            _ => None,
        };
        let chosen: Vec<Arc<Mapped>> = self
            .lock()
            .iter()
            .filter(|m| match which {
                Which::Process(tgid) => {
                    mapped_by.as_ref().is_some_and(|ids| ids.contains(&m.handle.id))
                        || m.mappers.lock().unwrap_or_else(|p| p.into_inner()).contains(&tgid)
                }
                Which::All => true,
                Which::Small => m.handle.memfd_len().is_some_and(|len| len <= SMALL),
                Which::Inode(inode) => m.handle.inode() == inode,
                Which::Handle(id) => m.handle.id == id,
            })
            .cloned()
            .collect();
        let mut first = Ok(());
        for m in chosen {
            if let Err(e) = m.write_changed(sup).await {
                first = first.and(Err(e));
            }
        }
        first
    }

    /// At a collection: writes home, and then forgets (unpins), the files no process of `job` maps any
    /// more (all of them once the job is over, `job` empty).
    pub async fn collect(&self, sup: &Supervisor, job: &[u32]) {
        if self.is_empty() {
            return;
        }
        let _one = self.collecting.lock().await;
        let mapped = sup.fds.mapped_handles(job);
        let unmapped: Vec<(Arc<Mapped>, u64)> = self
            .lock()
            .iter()
            .filter(|m| {
                let settled = m.registered.lock().unwrap_or_else(|p| p.into_inner()).elapsed() > SETTLE;
                !mapped.contains(&m.handle.id) && (job.is_empty() || settled)
            })
            .map(|m| (m.clone(), m.generation.load(Ordering::SeqCst)))
            .collect();
        for (m, _) in &unmapped {
            if let Err(e) = m.write_changed(sup).await {
                tracing::warn!(errno = e.raw(), "writing a shared mapping's stores home failed");
            }
        }
        let mut maps = self.lock();
        for (m, generation) in unmapped {
            // Mapped again while its stores were written: it stays.
            let before = maps.len();
            if m.generation.load(Ordering::SeqCst) == generation {
                maps.retain(|kept| !Arc::ptr_eq(kept, &m));
            }
            if maps.len() < before {
                m.handle.pins.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Mapped>>> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Mapped {
    /// Writes home each run of bytes where the placeholder differs from the baseline, and takes it into
    /// the baseline.
    async fn write_changed(&self, sup: &Supervisor) -> Result<(), Errno> {
        let _one = self.writing.lock().await;
        let h = &self.handle;
        // Writes sent behind through this handle go first: they were made before these stores were written.
        h.behind.settle(h.behind.mark()).await;
        let (placeholder, baseline) = (placeholder(h)?, self.baseline()?);
        let compared = (placeholder.try_clone(), baseline.try_clone());
        let (Ok(p), Ok(b)) = compared else { return Err(Errno::ENOMEM) };
        let runs =
            tokio::task::spawn_blocking(move || differing_runs(&p, &b)).await.map_err(|_| Errno::EIO)??;
        let rwf = if h.flags & libc::O_APPEND != 0 { RWF_NOAPPEND } else { 0 };
        if !runs.is_empty() {
            // As for any write the job makes: a shadow of the file's content no longer holds, and home's
            // free room is not what it said.
            h.behind.drop_shadow();
            crate::behind::forget_room(h.stat.dev);
        }
        let mut buf = Vec::new();
        for (start, len) in runs {
            let mut at = start;
            while at < start + len {
                buf.resize(BLOCK.min((start + len - at) as usize), 0);
                let n = read_at(&placeholder, &mut buf, at)?;
                if n == 0 {
                    break;
                }
                write_home(sup, h.id, &buf[..n], at, rwf).await?;
                baseline.write_all_at(&buf[..n], at).map_err(|e| Errno::from_io(&e))?;
                at += n as u64;
            }
        }
        Ok(())
    }

    fn baseline(&self) -> Result<std::fs::File, Errno> {
        self.baseline.lock().unwrap_or_else(|p| p.into_inner()).try_clone().map_err(|e| Errno::from_io(&e))
    }
}

/// Fills `h`'s placeholder from home's file as it is now (its whole content, at its current size), for a
/// new writable shared mapping.
pub async fn refill(call: &crate::syscalls::Call<'_>, h: &Handle) -> Result<(), Errno> {
    let mut filled = h.filled.lock().await;
    crate::syscalls::io::copy_from_home(call, h).await?;
    *filled = true;
    Ok(())
}

/// `bytes` written at `offset` through home handle `id`, all of them.
async fn write_home(
    sup: &Supervisor,
    id: u64,
    mut bytes: &[u8],
    mut offset: u64,
    rwf: u32,
) -> Result<(), Errno> {
    while !bytes.is_empty() {
        let op = Op::Write(pb::Write {
            handle: id,
            data: bytes.to_vec().into(),
            offset: Some(offset as i64),
            rwf,
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

/// The (offset, length) runs where `placeholder` differs from `baseline` (bytes past the baseline's end
/// differ), runs closer than [`GAP`] merged.
fn differing_runs(placeholder: &std::fs::File, baseline: &std::fs::File) -> Result<Vec<(u64, u64)>, Errno> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let (mut a, mut b) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut offset = 0u64;
    loop {
        let n = read_at(placeholder, &mut a, offset)?;
        if n == 0 {
            return Ok(runs);
        }
        let m = read_at(baseline, &mut b[..n], offset)?;
        b[m..n].fill(0);
        if a[..n] != b[..n] || m < n {
            let mut i = 0;
            while i < n {
                if a[i] == b[i] && i < m {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < n && (a[i] != b[i] || i >= m) {
                    i += 1;
                }
                let (run_start, run_end) = (offset + start as u64, offset + i as u64);
                match runs.last_mut() {
                    Some((s, len)) if run_start - (*s + *len) < GAP as u64 => *len = run_end - *s,
                    _ => runs.push((run_start, run_end - run_start)),
                }
            }
        }
        offset += n as u64;
    }
}

/// A memory file holding a copy of `h`'s placeholder now.
fn copy_of(h: &Handle) -> Result<std::fs::File, Errno> {
    let len = h.memfd_len().ok_or(Errno::EIO)?;
    let copy = crate::sys::memfd(c"homeward-baseline").map_err(|e| Errno::from_io(&e))?;
    crate::sys::copy_all(h.memfd.as_fd(), copy.as_fd(), len).map_err(|e| Errno::from_io(&e))?;
    Ok(std::fs::File::from(copy))
}

/// The placeholder's memory file (a descriptor of its own: reads here take no offset).
fn placeholder(h: &Handle) -> Result<std::fs::File, Errno> {
    h.memfd.as_fd().try_clone_to_owned().map(std::fs::File::from).map_err(|e| Errno::from_io(&e))
}

/// Up to `buf.len()` bytes at `offset` (fewer only at the end).
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> std::fs::File {
        let f = std::fs::File::from(crate::sys::memfd(c"test").unwrap());
        f.write_all_at(bytes, 0).unwrap();
        f
    }

    #[test]
    fn only_the_bytes_that_differ_are_sent_nearby_runs_together() {
        let base = vec![b'a'; 3 * BLOCK + 10];
        let mut now = base.clone();
        now[5..8].copy_from_slice(b"xyz");
        now[40..42].copy_from_slice(b"qq"); // within GAP of the first run: one run
        now[BLOCK + 100] = b'!';
        now[3 * BLOCK + 9] = b'?';
        let runs = differing_runs(&file_with(&now), &file_with(&base)).unwrap();
        assert_eq!(runs, vec![(5, 37), (BLOCK as u64 + 100, 1), (3 * BLOCK as u64 + 9, 1)]);
        assert!(differing_runs(&file_with(&base), &file_with(&base)).unwrap().is_empty());
    }

    #[test]
    fn bytes_past_the_baseline_differ() {
        let runs = differing_runs(&file_with(b"abcdef"), &file_with(b"abc")).unwrap();
        assert_eq!(runs, vec![(3, 3)]);
    }
}
