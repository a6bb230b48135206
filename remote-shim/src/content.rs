//! A cache of home files' content for `mmap`, fetched programs and reopens: the dynamic loader maps the same
//! libraries in every process, so each is fetched from home once per job, not once per process; and a
//! version cached here may be opened without home at all (`lazy`).
//!
//! Entries are keyed by the file's identity and version at home as seen when it was opened (device, inode,
//! size, mtime and ctime to the nanosecond): a file changed at home has a new key on its next open
//! (close-to-open consistency). Content lives in sealed-off memfds the program never sees; a placeholder
//! gets a copy made inside the kernel.
//!
//! Versions of 64 KiB to 64 MiB also go to a cache on this machine's disk ([`Disk`], `--cache DIR`), so a
//! later job's first open of a library or program home has not changed since copies it from there instead
//! of reading it from home (every job's dynamic loader maps `libc.so.6`, ~2 MB). Only after home opened
//! the file for that job and showed that very version: a version on disk never answers an open without
//! home (`lazy` uses what this job read only), so home's permission checks are the job's own.

use homeward_proto::pb::FileStat;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Files larger than this are not cached.
const MAX_ENTRY: i64 = 256 << 20;
/// Total cached bytes before the cache starts over.
const MAX_TOTAL: i64 = 2 << 30;
/// What an entry costs besides its content, as counted against `MAX_TOTAL`.
const ENTRY_OVERHEAD: i64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// Mode, owner and group: a copy is answered for an open only at the permissions home read it with
    /// (`lazy`), and a change of them within one coarse ctime tick keeps the ctime.
    access: (u32, u32, u32),
}

impl Key {
    pub fn size(&self) -> i64 {
        self.size
    }

    /// The key of a regular file, `None` for anything else (its content is not a stable function of the key).
    pub fn of(st: &FileStat) -> Option<Key> {
        (st.mode & libc::S_IFMT == libc::S_IFREG && st.size <= MAX_ENTRY && st.ino != 0).then_some(Key {
            dev: st.dev,
            ino: st.ino,
            size: st.size,
            mtime: (st.mtime_sec, st.mtime_nsec),
            ctime: (st.ctime_sec, st.ctime_nsec),
            access: (st.mode, st.uid, st.gid),
        })
    }
}

#[derive(Default)]
pub struct ContentCache {
    inner: Mutex<Inner>,
    disk: OnceLock<Disk>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Content>,
    total: i64,
}

/// One version's bytes: a memfd (copied into placeholders inside the kernel), or for the small files a
/// directory listing brought, the bytes themselves (no descriptor per file).
#[derive(Clone)]
enum Content {
    File(Arc<OwnedFd>),
    Bytes(Arc<[u8]>),
}

impl ContentCache {
    /// Copies the cached content for `key` into `dst`; false on a miss.
    pub fn copy_into(&self, key: &Key, dst: &OwnedFd) -> bool {
        let entry = self.inner.lock().unwrap_or_else(|p| p.into_inner()).entries.get(key).cloned();
        match entry {
            Some(Content::File(src)) => {
                crate::sys::copy_all(src.as_fd(), dst.as_fd(), key.size as u64).is_ok()
            }
            Some(Content::Bytes(bytes)) => {
                let file = dst.try_clone().map(std::fs::File::from);
                file.and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &bytes, 0)).is_ok()
            }
            None => false,
        }
    }

    /// Copies version `key` into `dst` from the cache on disk; false on a miss. Only for a version home has
    /// just shown for a file it opened for this job, which [`ContentCache::copy_into`] missed (the copy is
    /// kept in memory from then on, for this job's later opens).
    pub fn copy_from_disk(&self, key: &Key, dst: &OwnedFd) -> bool {
        let Some(file) = self.disk.get().and_then(|disk| disk.open(key)) else { return false };
        if copy_by_buffer(file.as_fd(), dst.as_fd(), key.size as u64).is_err() {
            return false;
        }
        // In memory as any version (a copy between two memfds is made inside the kernel; one from a file
        // on disk is not).
        self.remember(*key, dst);
        true
    }

    /// The job is over: waits (at most `wait`) for the versions still being written to disk, so the next
    /// job finds them.
    pub fn finish_writes(&self, wait: std::time::Duration) {
        if let Some(disk) = self.disk.get() {
            disk.finish(wait);
        }
    }

    /// Keeps versions on disk in `dir` from now on, as versions of home `home` (its machine id): off when
    /// `home` is unknown, or when `dir` cannot be made private to this user.
    pub fn use_disk(&self, dir: &Path, home: &str) {
        // (Anything else never becomes part of a file name here.)
        if !homeward_proto::is_machine_id(home) {
            tracing::debug!("no content cache on disk: home did not say which installation it is");
            return;
        }
        match Disk::new(dir, home) {
            Ok(disk) => {
                let _ = self.disk.set(disk);
            }
            Err(e) => tracing::debug!(dir = %dir.display(), cause = %e, "no content cache on disk"),
        }
    }

    /// Whether the content of version `key` is cached.
    pub fn contains(&self, key: &Key) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).entries.contains_key(key)
    }

    /// Remembers `src`'s first `key.size` bytes (copied, so later changes to `src` do not leak in), on disk
    /// too.
    pub fn insert(&self, key: Key, src: &OwnedFd) {
        if let (Some(copy), Some(disk)) = (self.remember(key, src), self.disk.get()) {
            disk.store(&key, &copy);
        }
    }

    /// [`ContentCache::insert`] in memory only: the copy kept, unless the version was there already.
    fn remember(&self, key: Key, src: &OwnedFd) -> Option<Arc<OwnedFd>> {
        if self.contains(&key) {
            return None;
        }
        let copy = crate::sys::memfd(c"homeward-content").ok()?;
        crate::sys::copy_all(src.as_fd(), copy.as_fd(), key.size as u64).ok()?;
        let copy = Arc::new(copy);
        self.keep(key, Content::File(copy.clone()));
        Some(copy)
    }

    /// Remembers `bytes` as the content of version `key` (its size is the key's).
    pub fn insert_bytes(&self, key: Key, bytes: &[u8]) {
        if i64::try_from(bytes.len()) != Ok(key.size) || self.contains(&key) {
            return;
        }
        self.keep(key, Content::Bytes(bytes.into()));
    }

    fn keep(&self, key: Key, content: Content) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.total + key.size + ENTRY_OVERHEAD > MAX_TOTAL {
            inner.entries.clear();
            inner.total = 0;
        }
        // Each entry counts its bookkeeping too, so many empty or tiny files stay bounded.
        if inner.entries.insert(key, content).is_none() {
            inner.total += key.size + ENTRY_OVERHEAD;
        }
    }
}

/// Smallest and largest version kept on disk: smaller files come with their open anyway; larger ones are
/// not kept in memory either.
const DISK_MIN: i64 = 64 << 10;
const DISK_MAX: i64 = crate::fill::CACHE_UPTO;
/// Bytes the cache on disk holds at most; beyond, the versions used longest ago go (to three quarters).
const DISK_TOTAL: u64 = 2 << 30;

/// The cache on disk: one file per version, named by home's machine id and the version's key, written
/// whole under a temporary name and renamed, so a file under a version's name always holds that version
/// (whatever number of remote-shims share the directory); its size is checked again when read. Read back
/// only as [`ContentCache::copy_from_disk`] says. Written by a thread of its own, off every call's path.
pub struct Disk {
    dir: PathBuf,
    home: String,
    writer: Mutex<Option<Writer>>,
}

/// The thread writing versions: what it is sent, and what tells that it is done.
struct Writer {
    versions: std::sync::mpsc::Sender<(PathBuf, Arc<OwnedFd>, u64)>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Disk {
    /// Uses `dir`/`versions` (made if missing, mode 0700; every file in it is the cache's): only a directory
    /// of this user that nobody else may write.
    fn new(dir: &Path, home: &str) -> std::io::Result<Disk> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let dir = dir.join("versions");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let meta = std::fs::symlink_metadata(&dir)?;
        if !meta.is_dir() || meta.uid() != crate::sys::euid() || meta.mode() & 0o077 != 0 {
            return Err(std::io::Error::other("not a private directory of this user"));
        }
        Ok(Disk { dir, home: home.to_string(), writer: Mutex::new(None) })
    }

    fn path(&self, key: &Key) -> PathBuf {
        let Key { dev, ino, size, mtime, ctime, access } = key;
        self.dir.join(format!(
            "{}-{dev:x}-{ino:x}-{size:x}-{:x}.{:x}-{:x}.{:x}-{:o}-{}-{}",
            self.home, mtime.0, mtime.1, ctime.0, ctime.1, access.0, access.1, access.2
        ))
    }

    /// Whether versions of `key`'s size are kept here.
    fn keeps(key: &Key) -> bool {
        (DISK_MIN..=DISK_MAX).contains(&key.size)
    }

    /// The file holding version `key`, when there is one of its size (marked used now).
    fn open(&self, key: &Key) -> Option<std::fs::File> {
        if !Disk::keeps(key) {
            return None;
        }
        let file = std::fs::File::open(self.path(key)).ok()?;
        if file.metadata().ok()?.len() != key.size as u64 {
            return None;
        }
        // Its modification time says when it was last used (the oldest go first).
        let _ = file.set_modified(std::time::SystemTime::now());
        Some(file)
    }

    /// Writes version `key` (the bytes of `content`, which nothing changes) to disk, in the background.
    fn store(&self, key: &Key, content: &Arc<OwnedFd>) {
        if !Disk::keeps(key) {
            return;
        }
        let path = self.path(key);
        if path.exists() {
            return;
        }
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let writer = writer.get_or_insert_with(|| {
            let (versions, to_write) = std::sync::mpsc::channel();
            let (finished, done) = std::sync::mpsc::channel();
            let dir = self.dir.clone();
            let _ = std::thread::Builder::new().name("content-disk".into()).spawn(move || {
                write_versions(&dir, to_write);
                let _ = finished.send(());
            });
            Writer { versions, done }
        });
        let _ = writer.versions.send((path, content.clone(), key.size as u64));
    }

    /// Lets the versions sent to disk be written, waiting at most `wait` (the job is over).
    fn finish(&self, wait: std::time::Duration) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Writer { versions, done }) = writer {
            drop(versions);
            let _ = done.recv_timeout(wait);
        }
    }
}

/// The writer of the cache on disk: each version to a temporary file of a random name, then renamed to its
/// name (not synced: see Known limits); the versions used longest ago go while the directory holds more
/// than [`DISK_TOTAL`].
fn write_versions(dir: &Path, versions: std::sync::mpsc::Receiver<(PathBuf, Arc<OwnedFd>, u64)>) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut total = prune(dir, u64::MAX);
    for (path, content, size) in versions {
        if path.exists() {
            continue;
        }
        // Random: several remote-shims (of several machines, for a shared home directory) write here.
        let temp = dir.join(format!(".partial-{:016x}", crate::fdtable::random_u64()));
        let Ok(file) = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)
        else {
            continue;
        };
        let written =
            copy_by_buffer(content.as_fd(), file.as_fd(), size).and_then(|()| std::fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            tracing::debug!(cause = %e, "a version could not be written to the cache on disk");
            continue;
        }
        total += size;
        if total > DISK_TOTAL {
            total = prune(dir, DISK_TOTAL / 4 * 3);
        }
    }
}

/// Removes the versions used longest ago until the directory holds at most `keep` bytes (and partial
/// files an hour old: their writer died); returns the bytes it holds then.
fn prune(dir: &Path, keep: u64) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        if entry.file_name().to_string_lossy().starts_with(".partial-") {
            if used < hour_ago {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        if meta.is_file() {
            files.push((used, meta.len(), entry.path()));
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, size, path) in files {
        if total <= keep {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= size;
        }
    }
    total
}

/// Copies the first `len` bytes of `src` to the start of `dst` through a buffer, at explicit offsets (no
/// descriptor's offset moves; works between any two file systems).
fn copy_by_buffer(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (src, dst) =
        (std::fs::File::from(src.try_clone_to_owned()?), std::fs::File::from(dst.try_clone_to_owned()?));
    let mut buf = vec![0u8; (1 << 20).min(len as usize).max(1)];
    let mut at = 0u64;
    while at < len {
        let want = buf.len().min((len - at) as usize);
        src.read_exact_at(&mut buf[..want], at)?;
        dst.write_all_at(&buf[..want], at)?;
        at += want as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64, size: i64) -> Key {
        Key { dev: 1, ino, size, mtime: (2, 3), ctime: (4, 5), access: (0o100644, 0, 0) }
    }

    fn memfd_with(bytes: &[u8]) -> OwnedFd {
        let fd = crate::sys::memfd(c"test").expect("memfd");
        let file = std::fs::File::from(fd.try_clone().expect("dup"));
        std::os::unix::fs::FileExt::write_all_at(&file, bytes, 0).expect("write");
        fd
    }

    fn read_all(fd: &OwnedFd, len: usize) -> Vec<u8> {
        let file = std::fs::File::from(fd.try_clone().expect("dup"));
        let mut buf = vec![0u8; len];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0).expect("read");
        buf
    }

    #[test]
    fn a_version_written_to_disk_serves_a_later_cache_and_a_damaged_one_does_not() {
        let dir = std::env::temp_dir().join(format!("homeward-content-disk-{}", std::process::id()));
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let k = key(7, bytes.len() as i64);
        let first = ContentCache::default();
        first.use_disk(&dir, "0123456789abcdef0123456789abcdef");
        first.insert(k, &memfd_with(&bytes));
        first.finish_writes(std::time::Duration::from_secs(5));
        // A new job: not in memory, on disk.
        let second = ContentCache::default();
        second.use_disk(&dir, "0123456789abcdef0123456789abcdef");
        let dst = crate::sys::memfd(c"dst").expect("memfd");
        assert!(!second.copy_into(&k, &dst), "a version on disk does not answer an open without home");
        assert!(second.copy_from_disk(&k, &dst));
        assert_eq!(read_all(&dst, bytes.len()), bytes);
        assert!(second.copy_into(&k, &dst), "kept in memory for this job from then on");
        // Another home's versions are not this one's; a file cut short is not the version.
        let other = ContentCache::default();
        other.use_disk(&dir, "ffffffffffffffffffffffffffffffff");
        assert!(!other.copy_from_disk(&k, &dst));
        let path = second.disk.get().expect("disk").path(&k);
        std::fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(10)).expect("truncate");
        let third = ContentCache::default();
        third.use_disk(&dir, "0123456789abcdef0123456789abcdef");
        assert!(!third.copy_from_disk(&k, &dst));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pruning_removes_the_versions_used_longest_ago() {
        let dir = std::env::temp_dir().join(format!("homeward-content-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let now = std::time::SystemTime::now();
        for (name, age) in [("old", 300), ("middle", 200), ("new", 100)] {
            let file = std::fs::File::create(dir.join(name)).expect("create");
            file.set_len(1000).expect("size");
            file.set_modified(now - std::time::Duration::from_secs(age)).expect("time");
        }
        assert_eq!(prune(&dir, 2000), 2000);
        assert!(!dir.join("old").exists() && dir.join("middle").exists() && dir.join("new").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
