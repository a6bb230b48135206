//! A cache of home files' content for `mmap`, fetched programs and reopens: the dynamic loader maps the same
//! libraries in every process, so each is fetched from home once per job, not once per process; and a
//! version cached here may be opened without home at all (`lazy`).
//!
//! Entries are keyed by the file's identity and version at home as seen when it was opened (device, inode,
//! size, mtime and ctime to the nanosecond): a file changed at home has a new key on its next open
//! (close-to-open consistency). Content lives in sealed-off memfds the program never sees; a placeholder
//! gets a copy made inside the kernel.

use homeward_proto::pb::FileStat;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

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

    /// Whether the content of version `key` is cached.
    pub fn contains(&self, key: &Key) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).entries.contains_key(key)
    }

    /// Remembers `src`'s first `key.size` bytes (copied, so later changes to `src` do not leak in).
    pub fn insert(&self, key: Key, src: &OwnedFd) {
        if self.contains(&key) {
            return;
        }
        let Ok(copy) = crate::sys::memfd(c"homeward-content") else { return };
        if crate::sys::copy_all(src.as_fd(), copy.as_fd(), key.size as u64).is_err() {
            return;
        }
        self.keep(key, Content::File(Arc::new(copy)));
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
