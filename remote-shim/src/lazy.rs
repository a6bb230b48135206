//! Opens answered without home: a plain read-only open of a home regular file whose lookup home has leased
//! (the attribute cache holds its attributes, `attrcache`) and whose version (device, inode, size, mtime,
//! ctime) the content cache holds whole gets a placeholder filled from the content cache and no home handle
//! (a *lazy* placeholder). Reads, seeks and maps are the kernel's, as for any fresh copy, and `fstat` is
//! answered from the open while the lease holds. A directory found by a leased lookup at a version home
//! opened read-only for the job before ([`DirOpens`]) gets a lazy placeholder too (without content: a
//! listing opens it at home first); glibc opens each locale directory it looks into, then `fstat`s it.
//!
//! Why the answer is home's own: the lease says that home reported no change to any directory on the way
//! nor to the entry since it read those attributes (home's watches report entries' content and attribute
//! changes too, and send what is queued before every reply); and the content cache holds this version only
//! because home read it for this job, with the same credentials. Permission changes (mode, owner, ACLs,
//! security labels) change the ctime, which is part of the version, so home would grant this open as it
//! granted that read; the leased lookup shows that the directories are still searchable.
//!
//! A call that needs the home handle (locks, flags, ioctl, xattrs, attributes changes, reads of a copy gone
//! stale, a reopen through `/proc/self/fd`...) opens the file at home first, by the absolute path of the
//! lookup with the original flags ([`resolve`], on every request before it is sent). If home's file there
//! is another inode (replaced, or the name is gone), the placeholder's file cannot be reached at home: the
//! copy still serves reads (it is exactly the content opened), `fstat` answers the attributes at open, and
//! calls that need home fail with `ESTALE`, as NFS answers for a file handle whose file is gone. A file the
//! job itself is about to unlink or rename over is opened at home first ([`before_change`]), so the job's
//! own changes never make its descriptors unreachable.
//!
//! Lazy placeholders have local ids ([`LAZY_BIT`] set), never sent to home; the collector closes at home
//! only those that got a home handle.

use crate::attrcache::{Cached, Key};
use crate::fdtable::{Handle, Origin};
use crate::syscalls::{Action, Call, Outcome};
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::{flags, Errno};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Set in the local id of a lazy placeholder (home's handles are small counters).
pub const LAZY_BIT: u64 = 1 << 63;

/// `Lazy::home` once the collector took the placeholder: no home handle may be kept any more.
const COLLECTED: u64 = u64::MAX;

/// Open flags a lazy open accepts besides `O_RDONLY`: none changes what the open does to a regular file.
/// (`O_NOFOLLOW` is the lookup's: the attribute cache's key then names the link itself, never a file.)
const PLAIN: i32 = libc::O_CLOEXEC | libc::O_LARGEFILE | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW;

pub fn is_lazy(id: u64) -> bool {
    id & LAZY_BIT != 0
}

/// How a placeholder opened without home opens its file there.
pub struct Lazy {
    /// The lookup's absolute path.
    path: Vec<u8>,
    /// The program's open flags.
    flags: i32,
    /// The home handle (0: not opened at home yet; [`COLLECTED`]).
    home: AtomicU64,
    /// Home's file at `path` is another one: the placeholder's cannot be reached at home.
    gone: AtomicBool,
    /// One opener at a time.
    opening: tokio::sync::Mutex<()>,
}

impl Lazy {
    fn new(path: Vec<u8>, flags: i32) -> Lazy {
        Lazy {
            path,
            flags,
            home: AtomicU64::new(0),
            gone: AtomicBool::new(false),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// The home handle, once opened there.
    pub fn home(&self) -> Option<u64> {
        Some(self.home.load(Ordering::SeqCst)).filter(|&h| h != 0 && h != COLLECTED)
    }

    /// The collector took the placeholder: its home handle (if any) to close. One opened later is closed by
    /// its opener ([`home_handle`]), so each home handle is closed exactly once.
    pub fn take_for_close(&self) -> Option<u64> {
        Some(self.home.swap(COLLECTED, Ordering::SeqCst)).filter(|&h| h != 0 && h != COLLECTED)
    }

    pub fn gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    /// How another open of the same file opens it at home (a placeholder no longer shared, [`unshare`]).
    pub fn again(&self) -> Lazy {
        let lazy = Lazy::new(self.path.clone(), self.flags);
        lazy.gone.store(self.gone(), Ordering::SeqCst);
        lazy
    }
}

/// Whether the job opens the files of the directories it lists (a walk reading every file, `tar`, `grep
/// -r`), so that listings should bring small files' content along (`Getdents.content_max`) and the opens
/// that follow need no round trip. A job that only lists and looks up (`ls -l`, `git status`, `find`)
/// never asks home to read what it will not open.
#[derive(Default)]
pub struct Prefetch {
    /// The directories listed lately (their lookups' keys).
    listed: std::sync::Mutex<std::collections::VecDeque<Key>>,
    /// Opens that went home for a file of a directory listed lately.
    opened: AtomicU64,
}

/// Directories [`Prefetch`] remembers, and the opens of their files that turn prefetching on.
const LISTED: usize = 64;
const OPENS_TO_PREFETCH: u64 = 4;

/// Most bytes of a file a listing brings along.
pub const LISTED_CONTENT_MAX: u64 = 64 << 10;

impl Prefetch {
    /// The job listed the directory that `key` looked up.
    pub fn listed(&self, key: &Key) {
        let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        if listed.contains(key) {
            return;
        }
        if listed.len() >= LISTED {
            listed.pop_front();
        }
        listed.push_back(key.clone());
    }

    /// An open of `key` went home.
    pub fn opened_home(&self, key: &Key) {
        let Some(slash) = key.path.iter().rposition(|&b| b == b'/') else { return };
        let parent = &key.path[..slash.max(1)];
        let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        // A listed directory's path without a trailing slash (`/` stays `/`).
        fn dir(d: &Key) -> &[u8] {
            match d.path.strip_suffix(b"/") {
                Some(p) if !p.is_empty() => p,
                _ => &d.path,
            }
        }
        if listed.iter().any(|d| d.proc == key.proc && dir(d) == parent) {
            self.opened.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What a listing asks home to bring along (`Getdents.content_max`).
    pub fn content_max(&self) -> u64 {
        if self.opened.load(Ordering::Relaxed) >= OPENS_TO_PREFETCH {
            LISTED_CONTENT_MAX
        } else {
            0
        }
    }
}

/// Whether an open with `oflags` only reads a regular file and may be answered without home.
pub fn plain_read(oflags: i32) -> bool {
    oflags & libc::O_ACCMODE == libc::O_RDONLY && oflags & !(PLAIN | libc::O_ACCMODE) == 0
}

/// Whether an open with `oflags` only reads a directory (`O_DIRECTORY` allowed) and may be answered
/// without home.
pub fn plain_dir_read(oflags: i32) -> bool {
    plain_read(oflags & !libc::O_DIRECTORY)
}

/// The directory versions (device, inode, ctime, mode, owner, group) the job opened read-only at home: a
/// plain open of one of them, found again at that version by a leased lookup, is answered here. Home
/// allowed that open with the agent's credentials, and every change of the directory's mode, owner, ACL or
/// label moves its ctime (or, within one coarse tick, its mode or owner).
#[derive(Default)]
pub struct DirOpens(std::sync::Mutex<std::collections::HashSet<DirVersion>>);

/// (device, inode, ctime, mode, owner, group).
type DirVersion = (u64, u64, i64, i64, u32, u32, u32);

/// Most directory versions [`DirOpens`] remembers.
const DIR_OPENS: usize = 4096;

impl DirOpens {
    /// The mode, owner and group too: a change of them within one coarse ctime tick keeps the ctime.
    fn version(st: &pb::FileStat) -> DirVersion {
        (st.dev, st.ino, st.ctime_sec, st.ctime_nsec, st.mode, st.uid, st.gid)
    }

    /// Home opened the directory `st` read-only for the job.
    pub fn opened(&self, st: &pb::FileStat) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= DIR_OPENS {
            seen.clear();
        }
        seen.insert(Self::version(st));
    }

    fn contains(&self, st: &pb::FileStat) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(&Self::version(st))
    }
}

/// The version of the file the cached lookup `key` finds, when an open of it may be answered here.
fn cached_version(call: &Call<'_>, key: &Key) -> Option<(pb::FileStat, crate::content::Key)> {
    let Some(Cached::Found(st)) = call.sup.link.attrs.get(key) else { return None };
    if st.mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let version = crate::content::Key::of(&st)?;
    call.sup.content.contains(&version).then_some((st, version))
}

/// The directory the cached lookup `key` finds, when home opened it read-only for the job at that version;
/// or the directory home opened read-only for the job under a lease on opening it again
/// (`attrcache::DIR_OPEN`: its attributes then).
fn cached_dir(call: &Call<'_>, key: &Key) -> Option<pb::FileStat> {
    let attrs = &call.sup.link.attrs;
    let dir = |st: &pb::FileStat| st.mode & libc::S_IFMT == libc::S_IFDIR;
    match attrs.get(key) {
        Some(Cached::Found(st)) if dir(&st) && call.sup.dir_opens.contains(&st) => return Some(st),
        _ => {}
    }
    match attrs.get(&Key { mask: crate::attrcache::DIR_OPEN, ..key.clone() }) {
        Some(Cached::Opens(st)) => Some(st),
        _ => None,
    }
}

/// Answers an open of `key` (a lookup following links as the open does: absolute, or relative to the
/// caller's cwd, whose path home then leases, `crate::cwds`) without home when the attribute cache and the
/// content cache together vouch for it (for a directory: the attribute cache and [`DirOpens`]); `None`:
/// the open goes home.
pub async fn try_open(call: &Call<'_>, key: &Key, oflags: i32) -> Option<Outcome> {
    if !plain_dir_read(oflags) || key.mask != 0 {
        return None;
    }
    let dir = cached_dir(call, key).is_some();
    if !dir {
        if !plain_read(oflags) {
            return None;
        }
        cached_version(call, key)?;
    }
    // A lookup that follows a last link whatever the flags say (`.`, a trailing slash): so does home's open.
    let home_flags = if key.follow { oflags & !libc::O_NOFOLLOW } else { oflags };
    // Where home opens it if a call needs it: the same file, by an absolute path.
    let path = if key.proc == 0 {
        key.path.clone()
    } else if key.proc == call.proc().id {
        crate::attrcache::join(&crate::syscalls::dir::leased_cwd(call).await?, &key.path)
    } else {
        return None;
    };
    if path.first() != Some(&b'/') {
        return None;
    }
    if dir {
        // No content: every call on it but `fstat` (answered by the lookup, `syscalls::stat`) opens it at
        // home first.
        let st = cached_dir(call, key)?;
        let h = call.sup.fds.new_lazy(oflags, st, Lazy::new(path, home_flags)).ok()?;
        h.set_origin(Origin { key: key.clone() });
        call.sup.handle_made();
        tracing::trace!(handle = h.id, "directory open answered without home");
        return Some(
            call.install(&h, oflags & libc::O_CLOEXEC != 0, 0).map(|fd| Action::Answered(i64::from(fd))),
        );
    }
    // Taken before the lookup: a change the job makes to the file from now on makes the copy stale.
    let mark = call.sup.link.attrs.change_mark();
    let (st, version) = cached_version(call, key)?;
    let cloexec = oflags & libc::O_CLOEXEC != 0;
    // Shared only where the descriptions sharing a copy can be told apart (`kcmp`).
    let sharing = crate::sys::tracee::kcmp_works();
    let shared = crate::fdtable::SharedKey { version, flags: oflags & !libc::O_CLOEXEC, lookup: key.clone() };
    // Another open of this version already made the copy: this open is a description of its own of it.
    if let Some(h) = call.sup.fds.shared(&shared).filter(|_| sharing) {
        let fresh = call.sup.fds.copy_of(&h, &call.sup.link.attrs) == crate::fdtable::CopyState::Fresh;
        if fresh && h.stat == st && h.copied_at().is_some_and(|m| m <= mark) {
            // (A description the supervisor cannot make: the open goes home.)
            let description = reopen(&h)?;
            tracing::trace!(handle = h.id, "open answered without home, sharing a copy");
            let installed = call.install_description(&h, description.as_fd(), cloexec, 0);
            return Some(installed.map(|fd| Action::Answered(i64::from(fd))));
        }
    }
    if version.size() > 1 << 20 {
        // A large copy is made on the runtime, not on the thread that receives notifications (an open
        // sharing a copy made before makes none: `libc.so.6`, opened by every process, cost a hand-over).
        tokio::task::yield_now().await;
    }
    let h = call.sup.fds.new_lazy(oflags, st, Lazy::new(path, home_flags)).ok()?;
    if !h.charge(st.size.max(0)) || !call.sup.content.copy_into(&version, &h.memfd) {
        return None;
    }
    h.mark_filled();
    h.set_copied_at(mark);
    h.set_origin(Origin { key: key.clone() });
    if !sharing {
        call.sup.handle_made();
        tracing::trace!(handle = h.id, "open answered without home");
        return Some(call.install(&h, cloexec, 0).map(|fd| Action::Answered(i64::from(fd))));
    }
    let description = reopen(&h)?;
    call.sup.fds.share(shared, &h);
    call.sup.handle_made();
    tracing::trace!(handle = h.id, "open answered without home");
    let installed = call.install_description(&h, description.as_fd(), cloexec, 0);
    Some(installed.map(|fd| Action::Answered(i64::from(fd))))
}

/// A new read-only description of `h`'s placeholder memfd (one open of a shared copy).
fn reopen(h: &Handle) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::File::open(format!("/proc/self/fd/{}", h.memfd.as_raw_fd())).ok()
}

/// The home handle that stands for the program's description behind descriptor argument `fd_arg` in calls
/// that act on the description at home (its flags, its record locks, `flock`): `h`'s own (to be resolved
/// as any), unless opens share `h` ([`crate::fdtable::FdTable::share`]); then each description has a
/// record of its own ([`crate::fdtable::Description`], told apart with `kcmp`, so `dup`s and children
/// share it as they share the description), opened at home on first need: by reopening `h`'s home handle
/// when it has one (it holds the file whatever became of its name), else by its path. A description
/// without a record has the flags it was opened with and holds no lock, as `h`'s handle: a call that only
/// reads them, or releases locks (`changes`: false), uses that.
pub async fn description_handle(
    call: &Call<'_>,
    h: &std::sync::Arc<Handle>,
    fd_arg: usize,
    changes: bool,
) -> Result<u64, Errno> {
    let Some(lazy) = h.lazy().filter(|_| h.is_shared()) else { return Ok(h.id) };
    let fd = call.arg_i32(fd_arg);
    let record = if changes {
        h.description_or_add(&call.sup.fds, call.tid, fd, || call.local_fd(fd), || lazy.again())?
    } else {
        match h.description(call.tid, fd) {
            Some(record) => record,
            None => return Ok(h.id),
        }
    };
    let proc = call.proc();
    open_lazy(call, proc, h, &record.lazy, lazy.home()).await
}

/// The placeholder behind the caller's descriptor argument `fd_arg` as a handle of its own, before a pump
/// reads at home's offset for it: `h` itself unless opens share it; otherwise a copy of the content with
/// the same origin and state is put over that descriptor at its offset, and its own home handle comes
/// when needed. (Other descriptors of the same description, made by `dup` or inherited by a child, stay
/// with the shared placeholder: Known limits.)
pub async fn unshare(
    call: &Call<'_>,
    h: &std::sync::Arc<Handle>,
    fd_arg: usize,
) -> Result<std::sync::Arc<Handle>, Errno> {
    let fd = call.arg(fd_arg) as u32;
    let mut h = h.clone();
    // The number may stand for another placeholder by now (another thread closed it and the number was
    // reused): that one is the descriptor's.
    for _ in 0..4 {
        if !h.is_shared() {
            return Ok(h);
        }
        match unshare_once(call, &h, fd).await? {
            Ok(private) => return Ok(private),
            Err(now) => h = now,
        }
    }
    Err(Errno::EBADF)
}

/// [`unshare`] of descriptor `fd` while it stands for `h`; `Err(now)` when it stands for `now` instead.
async fn unshare_once(
    call: &Call<'_>,
    h: &std::sync::Arc<Handle>,
    fd: u32,
) -> Result<Result<std::sync::Arc<Handle>, std::sync::Arc<Handle>>, Errno> {
    let lazy = h.lazy().ok_or(Errno::EIO)?;
    // One thread at a time, and only while the number still stands for `h`.
    let _one = lazy.opening.lock().await;
    match call.sup.fds.lookup(call.tid, u64::from(fd)) {
        Some(now) if now.id == h.id => {}
        Some(now) => return Ok(Err(now)),
        None => return Err(Errno::EBADF),
    }
    let (pos, flags) = crate::fdtable::fd_info(call.tid, u64::from(fd)).ok_or(Errno::EBADF)?;
    let (pos, cloexec) = (i64::try_from(pos).map_err(|_| Errno::EOVERFLOW)?, flags & libc::O_CLOEXEC != 0);
    let private = call.sup.fds.new_lazy(h.flags, h.stat, lazy.again()).map_err(|e| Errno::from_io(&e))?;
    // What the shared memfd holds now (a copy in the upper half may have been read again since the open).
    let size = h.memfd.try_clone().map(std::fs::File::from).and_then(|f| f.metadata()).map(|m| m.len());
    let size = size.map_err(|e| Errno::from_io(&e))?;
    let _ = private.charge(h.stat.size.max(0));
    crate::sys::copy_all(h.memfd.as_fd(), private.memfd.as_fd(), size).map_err(|e| Errno::from_io(&e))?;
    crate::sys::lseek(private.memfd.as_fd(), pos, libc::SEEK_SET).map_err(|e| Errno::from_io(&e))?;
    private.mark_filled();
    if h.copy() == crate::fdtable::CopyState::Stale {
        private.mark_stale();
    }
    if let Some(mark) = h.copied_at() {
        private.set_copied_at(mark);
    }
    if h.is_native() {
        // It takes the descriptor's number, in the upper half: kept in step as the shared copy was.
        call.sup.fds.register(&private);
        call.sup.fds.go_native(&private);
    }
    if let Some(origin) = h.origin() {
        private.set_origin(origin.clone());
    }
    // The description's own record (its flags and locks at home) goes with it: its home handle becomes the
    // new placeholder's (registered by `replace`, so the collector closes it), once that is in place.
    // (Taken off `h` first, so the collector never closes it in between.)
    let record = h.description(call.tid, fd as i32);
    let mine = private.lazy().ok_or(Errno::EIO)?;
    if let Some(record) = &record {
        h.give_up_description(record);
        if let Some(home) = record.lazy.home() {
            mine.home.store(home, Ordering::SeqCst);
        }
    }
    if let Err(e) = call.sup.fds.replace(call.sup.listener.as_fd(), call.id, fd, &private, cloexec) {
        // The descriptor still is the shared description, which keeps its record.
        mine.home.store(0, Ordering::SeqCst);
        if let Some(record) = record {
            h.restore_description(record);
        }
        return Err(Errno::from_io(&e));
    }
    if let Some(record) = record {
        let _ = record.lazy.take_for_close();
    }
    call.sup.handle_made();
    tracing::trace!(shared = h.id, handle = private.id, "placeholder no longer shared");
    Ok(Ok(private))
}

/// The home handle of `h`, opening a lazy placeholder's file at home (on behalf of `proc`) if it has none
/// yet: `ESTALE` when home's file at its path is no longer the placeholder's.
pub async fn home_handle(call: &Call<'_>, proc: pb::Proc, h: &Handle) -> Result<u64, Errno> {
    let Some(lazy) = h.lazy() else { return Ok(h.id) };
    open_lazy(call, proc, h, lazy, None).await
}

/// The home handle of `lazy` (`h`'s, or one of its descriptions'), opening `h`'s file at home if it has
/// none yet: by reopening home handle `via` (one of the same file, which holds it whatever became of its
/// name) when given, else by its path.
async fn open_lazy(
    call: &Call<'_>,
    proc: pb::Proc,
    h: &Handle,
    lazy: &Lazy,
    via: Option<u64>,
) -> Result<u64, Errno> {
    let _one = lazy.opening.lock().await;
    match lazy.home.load(Ordering::SeqCst) {
        0 => {}
        COLLECTED => return Err(Errno::EBADF),
        id => return Ok(id),
    }
    if lazy.gone() {
        return Err(Errno::ESTALE);
    }
    // (Reopened through a handle, home opens a magic link: not with `O_NOFOLLOW`.)
    let (dir, path, oflags) = match via {
        Some(handle) => (pb::Dir { handle }, Vec::new(), lazy.flags & !libc::O_NOFOLLOW),
        None => (pb::Dir { handle: 0 }, lazy.path.clone(), lazy.flags),
    };
    let op = Op::Open(pb::Open {
        dir: Some(dir),
        path: path.into(),
        flags: flags::open_to_wire(oflags),
        mode: 0,
        resolve: 0,
        content_max: 0,
        lease: false,
    });
    let mut reply = call.home_resolved(proc, op.clone()).await?;
    if matches!(crate::syscalls::outcome(&reply), Err(Errno::EMFILE | Errno::ENFILE)) {
        // Home may be holding files the job closed and the collector has not closed there yet.
        call.sup.collect_now().await;
        reply = call.home_resolved(proc, op).await?;
    }
    let id = match crate::syscalls::outcome(&reply).and_then(crate::syscalls::handle_id) {
        Ok(id) => id,
        // Home's resources, or home itself: the placeholder's file may still be there.
        Err(e) if matches!(e, Errno::EMFILE | Errno::ENFILE | Errno::EIO | Errno::ENOMEM | Errno::EAGAIN) => {
            return Err(e)
        }
        Err(_) => {
            lazy.gone.store(true, Ordering::SeqCst);
            return Err(Errno::ESTALE);
        }
    };
    let st = reply.stat.unwrap_or_default();
    if (st.dev, st.ino) != h.inode() {
        lazy.gone.store(true, Ordering::SeqCst);
        close(call, proc, id).await;
        return Err(Errno::ESTALE);
    }
    call.sup.link.attrs.opened(id, h.inode());
    if lazy.home.compare_exchange(0, id, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        // Nobody holds the placeholder any more and the collector already took it.
        close(call, proc, id).await;
        return Err(Errno::EBADF);
    }
    if !h.stat.same_version(&st) {
        // Changed at home since the lazy open (as `fstat` at home would show): reads go home from now on
        // (or the copy is read again, if its reads are the kernel's).
        crate::native::opened_changed(call, h, &st).await;
    }
    tracing::trace!(handle = h.id, home = id, "lazy placeholder opened at home");
    Ok(id)
}

/// `fsync` of a directory not opened at home yet (sqlite's open and sync of its database's directory):
/// home opens it by its path and syncs it in one round trip, if the path still names it; `None` when that
/// cannot be done (the call then opens it at home as any other).
pub async fn sync_unopened(call: &Call<'_>, h: &Handle, datasync: bool) -> Option<Outcome> {
    let lazy = h.lazy()?;
    let directory = h.stat.mode & libc::S_IFMT == libc::S_IFDIR;
    if !directory || lazy.home.load(Ordering::SeqCst) != 0 || lazy.gone() {
        return None;
    }
    let (dev, ino) = h.inode();
    let op = Op::Fsync(pb::Fsync {
        handle: 0,
        datasync,
        lease_path: lazy.path.clone().into(),
        lease_follow: lazy.flags & libc::O_NOFOLLOW == 0,
        dev,
        ino,
    });
    match call.home_value(op).await {
        Err(Errno::ESTALE) => None,
        synced => Some(synced.map(|_| Action::Value(0))),
    }
}

async fn close(call: &Call<'_>, proc: pb::Proc, id: u64) {
    let _ = call.home_resolved(proc, Op::Close(pb::Close { handle: id, more: vec![] })).await;
}

/// `op` with every lazy placeholder it names replaced by its home handle (opened now if need be).
pub async fn resolve(call: &Call<'_>, proc: pb::Proc, mut op: Op) -> Result<Op, Errno> {
    for id in homeward_proto::handles::handles_mut(&mut op) {
        if is_lazy(*id) {
            let h = call.sup.fds.get(*id).ok_or(Errno::EBADF)?;
            *id = home_handle(call, proc, &h).await?;
        }
    }
    Ok(op)
}

/// Before the job unlinks or renames a name: the lazy placeholders whose path has that name as a component
/// get their home handles, so they keep naming their file at home whatever the change does to the path.
/// A lazy directory needs its home handle for nearly every call (a listing, a lookup relative to it), which
/// opening it needs read permission for: before any change of names or permissions (a rename through a
/// symbolic link may move it under any name; a `chmod` may refuse the open), every lazy directory is opened.
pub async fn before_change(call: &Call<'_>, proc: pb::Proc, op: &Op) {
    let (paths, dir): (Vec<&[u8]>, Option<&pb::Dir>) = match op {
        Op::Unlink(u) => (vec![&u.path], None),
        Op::Rename(r) => (vec![&r.old_path, &r.new_path], None),
        Op::Chmod(pb::Chmod { path, dir, .. }) | Op::Chown(pb::Chown { path, dir, .. }) => {
            (vec![path], dir.as_ref())
        }
        Op::Xattr(x) if matches!(x.op(), pb::XattrOp::Set | pb::XattrOp::Remove) => {
            (vec![&x.path], x.dir.as_ref())
        }
        _ => return,
    };
    // A change through a descriptor (`fchmod`, an empty path): the placeholders of that file, by inode.
    let through = dir.filter(|_| paths.iter().all(|p| p.is_empty())).and_then(|d| call.sup.fds.get(d.handle));
    let inode = through.as_ref().map(|h| h.inode());
    // (A change through a descriptor of anything but a directory changes no directory: sqlite's `fchown`
    // of each new journal.)
    let not_a_directory = through.is_some_and(|h| h.stat.mode & libc::S_IFMT != libc::S_IFDIR);
    let every_directory = !matches!(op, Op::Unlink(_)) && !not_a_directory;
    let names: Vec<Option<&[u8]>> =
        paths.iter().filter(|p| !p.is_empty()).map(|p| last_component(p)).collect();
    for h in call.sup.fds.all() {
        let Some(lazy) = h.lazy() else { continue };
        if lazy.home().is_some() || lazy.gone() || lazy.home.load(Ordering::SeqCst) == COLLECTED {
            continue;
        }
        // A path that does not name its last component (`..`, `/`) may be anything: every placeholder.
        let hit = names.iter().any(|n| match n {
            None => true,
            Some(name) => lazy.path.split(|&b| b == b'/').any(|c| c == *name),
        });
        let directory = h.stat.mode & libc::S_IFMT == libc::S_IFDIR;
        if hit || inode == Some(h.inode()) || (directory && every_directory) {
            let _ = home_handle(call, proc, &h).await;
        }
    }
}

/// Whether `h` is a lazy placeholder whose file cannot be reached at home (see the module text).
pub async fn unreachable(call: &Call<'_>, h: &Handle) -> bool {
    match h.lazy() {
        Some(lazy) if lazy.home().is_none() => {
            matches!(home_handle(call, call.proc(), h).await, Err(Errno::ESTALE)) && lazy.gone()
        }
        _ => false,
    }
}

fn last_component(path: &[u8]) -> Option<&[u8]> {
    path.split(|&b| b == b'/').rfind(|c| !c.is_empty() && *c != b".").filter(|c| *c != b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_reads_are_answered_without_home() {
        assert!(plain_read(libc::O_RDONLY));
        assert!(plain_read(libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK));
        for other in [
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_CREAT,
            libc::O_TRUNC,
            libc::O_PATH,
            libc::O_DIRECTORY,
            libc::O_NOATIME,
            libc::O_TMPFILE,
            libc::O_DIRECT,
            libc::O_APPEND,
        ] {
            assert!(!plain_read(libc::O_RDONLY | other), "{other:#o}");
        }
        assert!(is_lazy(LAZY_BIT | 1) && !is_lazy(1));
        assert_eq!(last_component(b"/a/b/"), Some(&b"b"[..]));
        assert_eq!(last_component(b"/a/.."), None);
        assert_eq!(last_component(b"/"), None);
    }
}
