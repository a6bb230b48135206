//! Forwarded descriptors: home handles, their placeholders in the program's descriptor table, and their
//! collection.
//!
//! Three kinds of descriptor are kept apart: a number in the traced program's table (`u32` fd numbers in the
//! reserved range), a home handle id (`u64`, on the wire), and the supervisor's own `OwnedFd`s.
//!
//! A forwarded file is a placeholder in the program's table: a memfd named `hw-<nonce>:<handle>`, installed
//! with `SECCOMP_IOCTL_NOTIF_ADDFD` at a free number of the reserved range. The kernel's table is the truth:
//! `dup2` within the range, `fork` (children inherit the placeholder, so they share the home handle and its
//! offset, as fork shares an open file description), `O_CLOEXEC` at exec, `close` and `close_range` all act on
//! placeholders natively, and the supervisor reads `/proc/TID/fd/N` to learn which handle a number names. A
//! home handle is closed once no process of the job holds its placeholder (a periodic scan, [`FdTable::collect`]).
//! The memfd also holds the file's content when the program maps it (`mmap` of a home file).

use crate::filter::FdRange;
use crate::sys::seccomp;
use homeward_proto::pb::FileStat;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One open file description at home, as the shim knows it.
pub struct Handle {
    pub id: u64,
    /// The placeholder's open file: the same description is installed in every program slot for this handle
    /// (for a shared one, each open is a description of its own of this memfd: [`Handle::is_shared`]).
    pub memfd: OwnedFd,
    /// Native open flags it was opened with.
    pub flags: i32,
    /// Attributes at open time.
    pub stat: FileStat,
    /// Whether `memfd` holds the file's content (for `mmap`); guarded so that one task fills it.
    pub filled: tokio::sync::Mutex<bool>,
    /// Users outside the program's table (a pump): not collected while non-zero.
    pub pins: AtomicUsize,
    /// Whether the placeholder holds the file's whole content as opened ([`CopyState`]).
    copy: AtomicU8,
    /// The job's last content change before the open that took the copy (`AttrCache::change_mark`), or
    /// before its last refresh ([`crate::native`]); `u64::MAX` until known.
    copied_at: AtomicU64,
    /// Installed in the upper half of the range at least once: its copy's reads are the kernel's, so the
    /// copy is refreshed when the file changes ([`crate::native`]).
    native: std::sync::atomic::AtomicBool,
    /// Its copy came from the content cache on disk: never in the upper half, so which of the program's
    /// calls are notified (what `--trace` shows) does not depend on what earlier jobs read.
    below: std::sync::atomic::AtomicBool,
    /// One refresh of the copy at a time.
    pub refreshing: tokio::sync::Mutex<()>,
    /// The version of the file a refreshed copy holds, when known.
    copy_version: Mutex<Option<FileStat>>,
    /// Bytes of content copies held by all handles, and this handle's share of them.
    budget: Arc<AtomicI64>,
    charged: AtomicI64,
    /// The lookup that opened it, if home leased it (or it created the file): its attributes and a
    /// directory's entries are cached while the lease holds.
    origin: std::sync::OnceLock<Origin>,
    /// Its name no longer finds it at home (`fstat` then asks for the handle's own attributes).
    pub name_moved: std::sync::atomic::AtomicBool,
    /// The readahead that copies a large file in ([`crate::fill`]).
    fill: std::sync::OnceLock<Arc<crate::fill::Fill>>,
    /// Writes and unlocks sent without waiting ([`crate::behind`]).
    pub behind: Arc<crate::behind::Behind>,
    /// Opened without home ([`crate::lazy`]): `id` is local, the home handle comes when a call needs it.
    lazy: Option<crate::lazy::Lazy>,
    /// Shared by the opens of one version ([`FdTable::shared`]): each open is a description of its own of
    /// the memfd, which the supervisor's `memfd` is not.
    shared: std::sync::atomic::AtomicBool,
    /// The descriptions of a shared placeholder that have a home handle of their own (their flags and
    /// locks at home).
    descriptions: Mutex<Descriptions>,
    /// The collection during which it was made, or last given to a new open (see [`FdTable::collect`]).
    born: AtomicU64,
    /// The collection during which it was last installed in the program (`u64::MAX`: never), for
    /// [`FdTable::collect_with`].
    installed: AtomicU64,
    /// Not collected by a scan that began before this generation: an install of it was under way
    /// (`u64::MAX` while it is), so the scan may have read the program's table before the new number and
    /// after the program closed the number it came from (`dup2(n, 0); close(n)`).
    hold: AtomicU64,
}

/// The records of a shared placeholder's descriptions.
#[derive(Default)]
struct Descriptions {
    list: Vec<Arc<Description>>,
    /// The collector took the placeholder: no record is made any more (its home handle would never close).
    collected: bool,
}

/// One of the program's descriptions of a shared placeholder, with a home handle of its own: what the
/// description is at home (its flags, its record locks and `flock`) is its own, not every open's.
pub struct Description {
    /// The program's description itself (taken with `pidfd_getfd`), to tell it from the others (`kcmp`).
    pub description: OwnedFd,
    /// How it is opened at home, and its home handle once it is.
    pub lazy: crate::lazy::Lazy,
    /// The collection during which it was made.
    born: u64,
}

impl Description {
    /// Whether descriptor `fd` of thread `tid` is this description (`kcmp`; one that cannot be told is
    /// not: placeholders are shared only where `kcmp` works, [`crate::sys::tracee::kcmp_works`]).
    fn is(&self, tid: u32, fd: i32) -> bool {
        crate::sys::tracee::same_description(self.description.as_fd(), tid, fd).unwrap_or(false)
    }
}

/// How a handle was opened: by a lookup that home leased.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The lookup (path, scope) that opened it; its answer is cached while the lease holds.
    pub key: crate::attrcache::Key,
}

/// Most bytes all content copies of a job hold at once (memory on this machine); beyond, files are read at
/// home.
const COPY_BUDGET: i64 = 4 << 30;

impl Drop for Handle {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.charged.load(Ordering::SeqCst), Ordering::SeqCst);
        if let Some(fill) = self.fill.get() {
            fill.end();
        }
    }
}

/// The content of a read-only regular file kept in its placeholder (close-to-open consistency): while the
/// copy is fresh the kernel serves reads, seeks and maps from it and the description's offset lives there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    /// No copy: every data call goes home, at home's offset.
    None,
    /// The placeholder holds the content the file had at open.
    Fresh,
    /// The file changed since (the job opened it for writing, or `fstat` at home saw a new version): data
    /// comes from home again, at the offset kept in the placeholder.
    Stale,
    /// A background fill is copying the content in ([`crate::fill`]): reads wait for their bytes.
    Filling,
}

impl Handle {
    pub fn copy(&self) -> CopyState {
        match self.copy.load(Ordering::SeqCst) {
            1 => CopyState::Fresh,
            2 => CopyState::Stale,
            3 => CopyState::Filling,
            _ => CopyState::None,
        }
    }

    /// Remembers the job's changes to the file as the copy is taken.
    pub fn set_copied_at(&self, mark: u64) {
        let _ = self.copied_at.compare_exchange(u64::MAX, mark, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn copied_at(&self) -> Option<u64> {
        Some(self.copied_at.load(Ordering::SeqCst)).filter(|&m| m != u64::MAX)
    }

    /// The copy was read again from home after the job's changes up to `mark` ([`crate::native`]), at
    /// version `version` if known: fresh.
    pub fn recopied(&self, mark: u64, version: Option<FileStat>) {
        self.copied_at.store(mark, Ordering::SeqCst);
        *self.copy_version.lock().unwrap_or_else(|p| p.into_inner()) = version;
        self.copy.store(1, Ordering::SeqCst);
    }

    /// The version a refreshed copy holds, when known ([`crate::native::changed_at_home`]).
    pub fn copy_version(&self) -> Option<FileStat> {
        *self.copy_version.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the copy is installed where its reads are not notified ([`crate::native`]).
    pub fn is_native(&self) -> bool {
        self.native.load(Ordering::SeqCst)
    }

    /// Whether this handle's placeholder may go to the upper half: a read-only regular file whose small copy
    /// is complete and fresh.
    pub fn native_candidate(&self) -> bool {
        self.stat.mode & libc::S_IFMT == libc::S_IFREG
            && self.flags & libc::O_ACCMODE == libc::O_RDONLY
            && self.flags & libc::O_PATH == 0
            && (0..=crate::native::MAX_SIZE).contains(&self.stat.size)
            && self.copy() == CopyState::Fresh
            && self.lazy.as_ref().is_none_or(|l| !l.gone())
            && !self.below.load(Ordering::SeqCst)
    }

    /// Keeps its placeholder out of the upper half ([`Handle::native_candidate`]).
    pub fn keep_below(&self) {
        self.below.store(true, Ordering::SeqCst);
    }

    /// Takes `bytes` of the job's copy budget for this handle; false (nothing taken) when it is spent.
    pub fn charge(&self, bytes: i64) -> bool {
        if self.budget.fetch_add(bytes, Ordering::SeqCst) + bytes > COPY_BUDGET {
            self.budget.fetch_sub(bytes, Ordering::SeqCst);
            return false;
        }
        self.charged.fetch_add(bytes, Ordering::SeqCst);
        true
    }

    /// Puts the file's whole content (as of `self.stat`) into the placeholder: reads are local from now on.
    pub fn keep_content(&self, content: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::from(self.memfd.try_clone()?);
        file.write_all_at(content, 0)?;
        file.set_len(content.len() as u64)?;
        self.mark_filled();
        Ok(())
    }

    /// The placeholder already holds the content (copied from the content cache): reads are local.
    pub fn mark_filled(&self) {
        if let Ok(mut filled) = self.filled.try_lock() {
            *filled = true;
        }
        self.copy.store(1, Ordering::SeqCst);
    }

    /// The file changed: its copy is no longer served.
    pub fn mark_stale(&self) {
        let _ = self.copy.compare_exchange(1, 2, Ordering::SeqCst, Ordering::SeqCst);
        let _ = self.copy.compare_exchange(3, 2, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// A fill starts ([`crate::fill`]): the placeholder takes the file's size, and reads wait for their bytes.
    pub fn start_fill(&self) -> io::Result<()> {
        let size = u64::try_from(self.stat.size).unwrap_or(0);
        let file = std::fs::File::from(self.memfd.try_clone()?);
        file.set_len(size)?;
        if self.fill.set(Arc::new(crate::fill::Fill::new(size))).is_err() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        self.copy.store(3, Ordering::SeqCst);
        Ok(())
    }

    /// Remembers the leased lookup that opened this handle.
    pub fn set_origin(&self, origin: Origin) {
        let _ = self.origin.set(origin);
    }

    pub fn origin(&self) -> Option<&Origin> {
        self.origin.get()
    }

    /// Whether the leased lookup that opened this handle still finds this file (nothing it depends on
    /// changed, at home or by the job): the attributes from the open are still the file's.
    pub fn attributes_leased(&self, attrs: &crate::attrcache::AttrCache) -> bool {
        self.origin.get().is_some_and(|o| attrs.holds(&o.key, &self.stat))
    }

    /// Whether the leased lookup that opened this handle still finds this file at the version opened (its
    /// access time aside: a directory the job lists is still the one its path names).
    pub fn origin_finds(&self, attrs: &crate::attrcache::AttrCache) -> bool {
        self.origin.get().is_some_and(|o| attrs.finds(&o.key, &self.stat))
    }

    /// The fill of this handle, if one was started.
    pub fn fill(&self) -> Option<&crate::fill::Fill> {
        self.fill.get().map(|f| &**f)
    }

    pub fn fill_arc(&self) -> Option<Arc<crate::fill::Fill>> {
        self.fill.get().cloned()
    }

    /// The fill is complete: the copy is fresh (unless it went stale meanwhile).
    pub fn fill_done(&self) {
        if self.copy.compare_exchange(3, 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            if let Ok(mut filled) = self.filled.try_lock() {
                *filled = true;
            }
        }
    }

    /// Home's identity of the file (device, inode).
    pub fn inode(&self) -> (u64, u64) {
        (self.stat.dev, self.stat.ino)
    }

    /// How a placeholder opened without home opens its file there ([`crate::lazy`]).
    pub fn lazy(&self) -> Option<&crate::lazy::Lazy> {
        self.lazy.as_ref()
    }

    /// The handle home knows this file by: `id`, or a lazy placeholder's home handle once it has one.
    pub fn home_handle(&self) -> Option<u64> {
        match &self.lazy {
            Some(lazy) => lazy.home(),
            None => Some(self.id),
        }
    }

    /// The id to send home for this handle: its home handle, or (a lazy placeholder not opened at home yet,
    /// which home will refuse with `EBADF`) its local id.
    pub fn wire_id(&self) -> u64 {
        self.home_handle().unwrap_or(self.id)
    }

    /// The home handle to close now that no process holds the placeholder (none for a lazy placeholder
    /// never opened at home; one opened after this call is closed by its opener, see [`crate::lazy`]).
    /// Whether opens share this placeholder ([`FdTable::share`]): each has its own description of the memfd.
    pub fn is_shared(&self) -> bool {
        self.shared.load(Ordering::SeqCst)
    }

    /// The placeholder's size now (`None` if it cannot be read).
    pub fn memfd_len(&self) -> Option<u64> {
        let file = std::fs::File::from(self.memfd.as_fd().try_clone_to_owned().ok()?);
        file.metadata().ok().map(|m| m.len())
    }

    fn descriptions(&self) -> std::sync::MutexGuard<'_, Descriptions> {
        self.descriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record of the program's description behind descriptor `fd` of thread `tid`, if it has one.
    pub fn description(&self, tid: u32, fd: i32) -> Option<Arc<Description>> {
        let descriptions = self.descriptions();
        descriptions.list.iter().find(|d| d.is(tid, fd)).cloned()
    }

    /// The record of the program's description behind descriptor `fd` of thread `tid`, made if it has none
    /// (`take`: that description, `lazy`: how it opens at home); looked for and made in one step, so two
    /// calls through one description at once make one record.
    pub fn description_or_add(
        &self,
        table: &FdTable,
        tid: u32,
        fd: i32,
        take: impl FnOnce() -> Result<OwnedFd, homeward_proto::Errno>,
        lazy: impl FnOnce() -> crate::lazy::Lazy,
    ) -> Result<Arc<Description>, homeward_proto::Errno> {
        let mut descriptions = self.descriptions();
        if let Some(found) = descriptions.list.iter().find(|d| d.is(tid, fd)) {
            return Ok(found.clone());
        }
        if descriptions.collected {
            return Err(homeward_proto::Errno::EBADF);
        }
        let born = table.generation.load(Ordering::SeqCst);
        let record = Arc::new(Description { description: take()?, lazy: lazy(), born });
        descriptions.list.push(record.clone());
        Ok(record)
    }

    /// Whether descriptor `fd` of thread `tid` may be a description with a record: one that is, or one
    /// that cannot be told from a record's (`kcmp` failed: the process is exiting, or no longer dumpable).
    pub fn may_have_description(&self, tid: u32, fd: i32) -> bool {
        let descriptions = self.descriptions();
        descriptions
            .list
            .iter()
            .any(|d| crate::sys::tracee::same_description(d.description.as_fd(), tid, fd).unwrap_or(true))
    }

    /// Forgets `record` (its home handle now belongs to another placeholder, which closes it).
    pub fn give_up_description(&self, record: &Arc<Description>) {
        self.descriptions().list.retain(|d| !Arc::ptr_eq(d, record));
    }

    /// Takes `record` back ([`Handle::give_up_description`] undone), unless the placeholder was collected
    /// meanwhile (a descriptor being replaced when nobody held it: its home handle then stays open at home
    /// until the session ends).
    pub fn restore_description(&self, record: Arc<Description>) {
        let mut descriptions = self.descriptions();
        if !descriptions.collected {
            descriptions.list.push(record);
        }
    }

    /// The home handles to close when nobody holds this placeholder any more.
    fn take_for_close(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = match &self.lazy {
            Some(lazy) => lazy.take_for_close().into_iter().collect(),
            None => vec![self.id],
        };
        let mut descriptions = self.descriptions();
        descriptions.collected = true;
        ids.extend(std::mem::take(&mut descriptions.list).iter().filter_map(|d| d.lazy.take_for_close()));
        ids
    }
}

/// Where a placeholder goes: the program behind a notification, and the lowest number it may take.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub notif_id: u64,
    pub tid: u32,
    pub tgid: u32,
    pub min: u32,
    pub cloexec: bool,
    /// In the upper half of the range (reads not notified: [`crate::native`]), else in the lower.
    pub native: bool,
}

pub struct FdTable {
    pub range: FdRange,
    nonce: String,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    /// Next number to try per thread group and half of the range, so allocation is usually one probe.
    hints: Mutex<HashMap<(u32, bool), u32>>,
    /// Files (device, inode) with a copy in the upper half ([`crate::native`]).
    natives: Mutex<HashSet<(u64, u64)>>,
    generation: AtomicU64,
    /// Handles made since the last collection (a burst of opens asks for an early one).
    made: AtomicUsize,
    /// Bytes held by content copies ([`Handle::charge`]).
    copied: Arc<AtomicI64>,
    /// Local ids given to placeholders opened without home ([`crate::lazy::LAZY_BIT`] set).
    lazy_ids: AtomicU64,
    /// Placeholders opened without home that later opens of the same version share ([`SharedKey`]).
    shared: Mutex<HashMap<SharedKey, u64>>,
    /// Descriptors recently read through copies ([`crate::readers`]).
    pub readers: crate::readers::Readers,
    /// Some placeholder was put below the range (a directory or a read-only copy moved there by `dup2`):
    /// the collector reads the job's descriptors below the range too.
    below: AtomicBool,
}

/// What the opens sharing one placeholder have in common: the version (so the content), the open flags but
/// close-on-exec (home's flags, should it open the file), and the lookup (home's path to it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SharedKey {
    pub version: crate::content::Key,
    pub flags: i32,
    pub lookup: crate::attrcache::Key,
}

impl FdTable {
    pub fn new(range: FdRange) -> FdTable {
        let nonce = format!("hw-{:016x}", random_u64());
        FdTable {
            range,
            nonce,
            handles: Mutex::default(),
            hints: Mutex::default(),
            generation: AtomicU64::new(1),
            made: AtomicUsize::new(0),
            copied: Arc::default(),
            lazy_ids: AtomicU64::new(0),
            shared: Mutex::default(),
            readers: Default::default(),
            below: AtomicBool::new(false),
            natives: Mutex::default(),
        }
    }

    /// Creates the placeholder for a handle just opened at home.
    pub fn new_handle(&self, id: u64, flags: i32, stat: FileStat) -> io::Result<Arc<Handle>> {
        self.make(id, flags, stat, None)
    }

    /// Creates a placeholder for a file opened without home: a local id, the home handle later.
    pub fn new_lazy(&self, flags: i32, stat: FileStat, lazy: crate::lazy::Lazy) -> io::Result<Arc<Handle>> {
        let id = crate::lazy::LAZY_BIT | (self.lazy_ids.fetch_add(1, Ordering::Relaxed) + 1);
        self.make(id, flags, stat, Some(lazy))
    }

    /// Every handle some process may hold (lazy placeholders included).
    pub fn all(&self) -> Vec<Arc<Handle>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    fn make(
        &self,
        id: u64,
        flags: i32,
        stat: FileStat,
        lazy: Option<crate::lazy::Lazy>,
    ) -> io::Result<Arc<Handle>> {
        let name = CString::new(format!("{}:{id}", self.nonce)).map_err(io::Error::other)?;
        let memfd = crate::sys::memfd(&name)?;
        self.made.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Handle {
            id,
            memfd,
            flags,
            stat,
            filled: tokio::sync::Mutex::new(false),
            pins: AtomicUsize::new(0),
            copy: AtomicU8::new(0),
            fill: std::sync::OnceLock::new(),
            origin: std::sync::OnceLock::new(),
            name_moved: Default::default(),
            copied_at: AtomicU64::new(u64::MAX),
            native: Default::default(),
            below: Default::default(),
            refreshing: Default::default(),
            copy_version: Mutex::default(),
            budget: self.copied.clone(),
            charged: AtomicI64::new(0),
            behind: Arc::default(),
            lazy,
            shared: Default::default(),
            descriptions: Mutex::default(),
            born: AtomicU64::new(self.generation.load(Ordering::SeqCst)),
            installed: AtomicU64::new(u64::MAX),
            hold: AtomicU64::new(0),
        }))
    }

    /// The state of `h`'s copy, made stale if the job has changed its file since the copy was taken.
    pub fn copy_of(&self, h: &Handle, attrs: &crate::attrcache::AttrCache) -> CopyState {
        let copy = h.copy();
        if h.is_native() {
            // Kept in step with the job's changes by `native` (or made stale there when it cannot be).
            return copy;
        }
        let changed = h.copied_at().is_none_or(|mark| attrs.changed_since(h.inode(), mark));
        if matches!(copy, CopyState::Fresh | CopyState::Filling) && changed {
            h.mark_stale();
            return CopyState::Stale;
        }
        copy
    }

    /// Installs `handle`'s placeholder in the program that made notification `slot.notif_id`, at the lowest
    /// free number ≥ `slot.min` of the reserved range it finds, and answers the notification with that number.
    pub fn install(
        &self,
        listener: std::os::fd::BorrowedFd<'_>,
        slot: Slot,
        handle: &Arc<Handle>,
    ) -> io::Result<i32> {
        self.install_description(listener, slot, handle, handle.memfd.as_fd())
    }

    /// [`FdTable::install`] of `description`, an open file of `handle`'s memfd (a shared placeholder's own
    /// description, [`Handle::is_shared`]).
    pub fn install_description(
        &self,
        listener: std::os::fd::BorrowedFd<'_>,
        slot: Slot,
        handle: &Arc<Handle>,
        description: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<i32> {
        let Slot { notif_id, tid, tgid, min, cloexec, native } = slot;
        let mut hints = self.hints.lock().unwrap_or_else(|p| p.into_inner());
        let (low, end) = if native {
            (self.range.native_start(), self.range.end())
        } else {
            (self.range.base, self.range.native_start())
        };
        let start = min.max(low);
        if start >= end {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let hint = hints.get(&(tgid, native)).copied().filter(|h| *h >= start && *h < end).unwrap_or(start);
        let free = (hint..end)
            .chain(start..hint)
            .find(|n| !slot_in_use(tid, *n))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EMFILE))?;
        // Registered before it is installed: with `answer` the program runs on at once and may use the number
        // before `add_fd` returns here.
        let fresh = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(handle.id, handle.clone())
            .is_none();
        match self.add_fd(listener, notif_id, handle, description, free, cloexec, true) {
            Ok(fd) => {
                hints.insert((tgid, native), free + 1);
                Ok(fd)
            }
            Err(e) => {
                if fresh {
                    self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&handle.id);
                }
                Err(e)
            }
        }
    }

    /// Installs `handle`'s placeholder at exactly `target` (which may be below the range: a directory moved
    /// there by dup2 still serves `*at` calls, which are always notified) and answers with that number.
    pub fn install_at(
        &self,
        listener: std::os::fd::BorrowedFd<'_>,
        notif_id: u64,
        target: u32,
        handle: &Arc<Handle>,
        cloexec: bool,
    ) -> io::Result<i32> {
        self.put_at(listener, notif_id, target, handle, cloexec, true)
    }

    /// Puts `handle`'s placeholder over descriptor `target` of the program that made notification `notif_id`
    /// (whose offset it takes), without answering the notification: that descriptor now stands for
    /// `handle`.
    pub fn replace(
        &self,
        listener: std::os::fd::BorrowedFd<'_>,
        notif_id: u64,
        target: u32,
        handle: &Arc<Handle>,
        cloexec: bool,
    ) -> io::Result<()> {
        self.put_at(listener, notif_id, target, handle, cloexec, false).map(drop)
    }

    /// Installs `description`, an open file of `handle`'s memfd, at exactly `target` below the range
    /// ([`crate::native::alias`]) and answers with that number.
    pub fn install_below(
        &self,
        listener: std::os::fd::BorrowedFd<'_>,
        notif_id: u64,
        target: u32,
        handle: &Arc<Handle>,
        description: std::os::fd::BorrowedFd<'_>,
        cloexec: bool,
    ) -> io::Result<i32> {
        self.put_description_at(listener, notif_id, target, handle, description, cloexec, true)
    }

    /// Registers `handle` and puts its placeholder at `target`, answering the notification with that number
    /// when `answer`.
    fn put_at(
        &self,
        listener: std::os::fd::BorrowedFd<'_>,
        notif_id: u64,
        target: u32,
        handle: &Arc<Handle>,
        cloexec: bool,
        answer: bool,
    ) -> io::Result<i32> {
        self.put_description_at(listener, notif_id, target, handle, handle.memfd.as_fd(), cloexec, answer)
    }

    /// [`FdTable::put_at`] of `description`, an open file of `handle`'s memfd.
    #[allow(clippy::too_many_arguments)]
    fn put_description_at(
        &self,
        listener: std::os::fd::BorrowedFd<'_>,
        notif_id: u64,
        target: u32,
        handle: &Arc<Handle>,
        description: std::os::fd::BorrowedFd<'_>,
        cloexec: bool,
        answer: bool,
    ) -> io::Result<i32> {
        self.register(handle);
        if !self.range.contains(u64::from(target)) {
            self.below.store(true, Ordering::SeqCst);
        }
        self.add_fd(listener, notif_id, handle, description, target, cloexec, answer)
    }

    /// `SECCOMP_IOCTL_NOTIF_ADDFD` of `description` (of `handle`'s memfd) at `target`, with what the
    /// collector needs to know of it: no scan that began before it ends takes `handle` for dead
    /// ([`Handle::hold`]), and when it went in ([`Handle::installed`]).
    #[allow(clippy::too_many_arguments)]
    fn add_fd(
        &self,
        listener: std::os::fd::BorrowedFd<'_>,
        notif_id: u64,
        handle: &Handle,
        description: std::os::fd::BorrowedFd<'_>,
        target: u32,
        cloexec: bool,
        answer: bool,
    ) -> io::Result<i32> {
        handle.hold.store(u64::MAX, Ordering::SeqCst);
        let added = seccomp::add_fd(listener, notif_id, description, target, cloexec, answer);
        handle.hold.store(self.generation.load(Ordering::SeqCst), Ordering::SeqCst);
        if added.is_ok() {
            handle.installed.store(self.generation.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        added
    }

    /// `handle`'s copy goes to the upper half from now on ([`crate::native`]): its file's changes refresh it.
    pub fn go_native(&self, handle: &Handle) {
        handle.native.store(true, Ordering::SeqCst);
        self.natives.lock().unwrap_or_else(|p| p.into_inner()).insert(handle.inode());
    }

    /// Whether any copy is in the upper half.
    pub fn has_natives(&self) -> bool {
        !self.natives.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// The handles of file `inode` whose copies are in the upper half.
    pub fn natives_of(&self, inode: (u64, u64)) -> Vec<Arc<Handle>> {
        if !self.natives.lock().unwrap_or_else(|p| p.into_inner()).contains(&inode) {
            return Vec::new();
        }
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.values().filter(|h| h.is_native() && h.inode() == inode).cloned().collect()
    }

    /// Every handle whose copy is in the upper half.
    pub fn natives(&self) -> Vec<Arc<Handle>> {
        if self.natives.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            return Vec::new();
        }
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|h| h.is_native())
            .cloned()
            .collect()
    }

    /// Takes `handle` out of the placeholders later opens share (its memfd no longer holds the version
    /// they would share).
    pub fn unshare_key(&self, handle: &Handle) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, id| *id != handle.id);
    }

    /// The placeholder opens of `key` share, if one is kept: given to a new open, it is not collected in the
    /// collection under way.
    pub fn shared(&self, key: &SharedKey) -> Option<Arc<Handle>> {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        let id = *self.shared.lock().unwrap_or_else(|p| p.into_inner()).get(key)?;
        let h = handles.get(&id)?.clone();
        h.born.store(self.generation.load(Ordering::SeqCst), Ordering::SeqCst);
        Some(h)
    }

    /// Makes `handle` the placeholder later opens of `key` share (it is registered, not installed).
    pub fn share(&self, key: SharedKey, handle: &Arc<Handle>) {
        handle.shared.store(true, Ordering::SeqCst);
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.insert(handle.id, handle.clone());
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).insert(key, handle.id);
    }

    /// The handle with home id `id`, while some process holds it.
    pub fn get(&self, id: u64) -> Option<Arc<Handle>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// The handle behind descriptor `fd` of thread `tid`, if it is one of our placeholders.
    pub fn lookup(&self, tid: u32, fd: u64) -> Option<Arc<Handle>> {
        self.for_link(&fd_link(tid, fd)?)
    }

    /// The handle whose placeholder a `/proc/PID/fd/N` link target names.
    pub fn for_link(&self, link: &[u8]) -> Option<Arc<Handle>> {
        let id = self.parse_placeholder(link)?;
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// The handle id in a `/proc/PID/fd` link target such as `/memfd:hw-…:12 (deleted)`.
    fn parse_placeholder(&self, link: &[u8]) -> Option<u64> {
        let rest = link.strip_prefix(b"/memfd:")?.strip_prefix(self.nonce.as_bytes())?.strip_prefix(b":")?;
        let digits: Vec<u8> = rest.iter().copied().take_while(u8::is_ascii_digit).collect();
        std::str::from_utf8(&digits).ok()?.parse().ok()
    }

    /// The handles whose placeholders some process of `job` maps (from `/proc/PID/maps`).
    pub fn mapped_handles(&self, job: &[u32]) -> HashSet<u64> {
        let mut mapped = HashSet::new();
        for pid in job {
            let Ok(maps) = std::fs::read(format!("/proc/{pid}/maps")) else { continue };
            for line in maps.split(|&b| b == b'\n') {
                let Some(at) = line.windows(7).position(|w| w == b"/memfd:") else { continue };
                if let Some(id) = self.parse_placeholder(&line[at..]) {
                    mapped.insert(id);
                }
            }
        }
        mapped
    }

    /// Forgets the handles that no process in `job` holds any more and that were created before the previous
    /// scan began (so a handle being installed is never taken for dead). Returns their home handles, to close
    /// at home.
    pub fn collect(&self, job: &[u32]) -> Vec<u64> {
        self.collect_with(job, None)
    }

    /// Whether file `inode` has handles besides `id`, or description records (a shared copy's): some may
    /// be closed by the program and still hold locks at home until collected.
    pub fn others_of(&self, inode: (u64, u64), id: u64) -> bool {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.values().any(|h| h.inode() == inode && (h.id != id || !h.descriptions().list.is_empty()))
    }

    /// Registers `handle` (before it is installed: [`crate::native::place`]).
    pub fn register(&self, handle: &Arc<Handle>) {
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).insert(handle.id, handle.clone());
    }

    /// Whether file `inode` has a handle open for writing.
    pub fn writers_of(&self, inode: (u64, u64)) -> bool {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.values().any(|h| h.inode() == inode && h.flags & libc::O_ACCMODE != libc::O_RDONLY)
    }

    /// [`FdTable::collect`]; handles of file `urgent` (and their descriptions) are collected even if made
    /// since the previous scan, once installed (a close is not notified: a lock or a write access they hold
    /// at home is one the job let go of), but for shared placeholders, which a new open may be taking.
    pub fn collect_with(&self, job: &[u32], urgent: Option<(u64, u64)>) -> Vec<u64> {
        self.made.store(0, Ordering::Relaxed);
        self.readers.clear();
        let started = self.generation.fetch_add(1, Ordering::SeqCst);
        let mut held: HashSet<u64> = HashSet::new();
        // The descriptions of shared placeholders that some process still holds (by address of the record).
        let mut held_descriptions: HashSet<usize> = HashSet::new();
        let with_descriptions: HashMap<u64, Vec<Arc<Description>>> = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|h| h.is_shared())
            .filter_map(|h| {
                let d = h.descriptions().list.clone();
                (!d.is_empty()).then_some((h.id, d))
            })
            .collect();
        for pid in job {
            let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
            for entry in dir.flatten() {
                let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
                    continue;
                };
                // (Asked once the number was listed: the flag is set before any placeholder goes there.)
                if !self.range.contains(n) && !self.below.load(Ordering::SeqCst) {
                    continue;
                }
                if let Ok(link) = std::fs::read_link(entry.path()) {
                    if let Some(id) = self.parse_placeholder(link.as_os_str().as_encoded_bytes()) {
                        held.insert(id);
                        for d in with_descriptions.get(&id).into_iter().flatten() {
                            // (One that cannot be told, say a process exiting, counts as held.)
                            let same =
                                crate::sys::tracee::same_description(d.description.as_fd(), *pid, n as i32);
                            if same.unwrap_or(true) {
                                held_descriptions.insert(Arc::as_ptr(d) as usize);
                            }
                        }
                    }
                }
            }
        }
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        let dead: Vec<u64> = handles
            .values()
            .filter(|h| {
                // Installed before this scan began (the store follows the install, which followed an
                // earlier generation's start): the program's table had it when it was read.
                let installed = h.installed.load(Ordering::SeqCst) <= started;
                let urgent = urgent == Some(h.inode()) && installed && !h.is_shared();
                (h.born.load(Ordering::SeqCst) < started || urgent)
                    && !held.contains(&h.id)
                    && h.pins.load(Ordering::SeqCst) == 0
                    && h.hold.load(Ordering::SeqCst) <= started
            })
            .map(|h| h.id)
            .collect();
        let dead: Vec<Arc<Handle>> = dead.iter().filter_map(|id| handles.remove(id)).collect();
        if dead.iter().any(|h| h.is_native()) {
            let natives = handles.values().filter(|h| h.is_native()).map(|h| h.inode()).collect();
            *self.natives.lock().unwrap_or_else(|p| p.into_inner()) = natives;
        }
        if dead.iter().any(|h| h.is_shared()) {
            self.shared.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, id| handles.contains_key(id));
        }
        let mut closing: Vec<u64> = dead.iter().flat_map(|h| h.take_for_close()).collect();
        // Descriptions of placeholders still held that nobody holds any more: their flags and locks at home
        // go as the kernel's go when a description's last descriptor closes.
        for id in with_descriptions.keys() {
            let Some(h) = handles.get(id) else { continue };
            // (Urgent: any record the scan looked for, not one made meanwhile.)
            let urgent = urgent == Some(h.inode());
            let looked_for: HashSet<usize> =
                with_descriptions[id].iter().map(|d| Arc::as_ptr(d) as usize).collect();
            let mut descriptions = h.descriptions();
            descriptions.list.retain(|d| {
                let at = Arc::as_ptr(d) as usize;
                let recent = if urgent { !looked_for.contains(&at) } else { d.born >= started };
                let keep = recent || held_descriptions.contains(&at);
                if !keep {
                    closing.extend(d.lazy.take_for_close());
                }
                keep
            });
        }
        closing
    }

    /// Handles made since the last collection.
    pub fn made_since_collection(&self) -> usize {
        self.made.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The offset and open flags of descriptor `fd` of thread `tid` (`/proc/TID/fdinfo/FD`).
pub fn fd_info(tid: u32, fd: u64) -> Option<(u64, i32)> {
    let info = std::fs::read_to_string(format!("/proc/{tid}/fdinfo/{}", fd as u32)).ok()?;
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let pos = field("pos:")?.parse().ok()?;
    let flags = i32::from_str_radix(field("flags:")?, 8).ok()?;
    Some((pos, flags))
}

/// The target of `/proc/TID/fd/FD`, if the descriptor exists.
pub fn fd_link(tid: u32, fd: u64) -> Option<Vec<u8>> {
    let link = std::fs::read_link(format!("/proc/{tid}/fd/{}", fd as u32)).ok()?;
    Some(link.into_os_string().into_encoded_bytes())
}

fn slot_in_use(tid: u32, n: u32) -> bool {
    std::fs::symlink_metadata(format!("/proc/{tid}/fd/{n}")).is_ok()
}

/// 64 random bits from the kernel.
pub fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.as_nanos() as u64 ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_names_parse() {
        let t = FdTable::new(FdRange { base: 4096, span: 4096 });
        let link = format!("/memfd:{}:42 (deleted)", t.nonce);
        assert_eq!(t.parse_placeholder(link.as_bytes()), Some(42));
        assert_eq!(t.parse_placeholder(b"/memfd:hw-0000000000000000:42 (deleted)"), None);
        assert_eq!(t.parse_placeholder(b"pipe:[1234]"), None);
    }
}
