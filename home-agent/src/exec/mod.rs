//! Executors: one plain function per operation, grouped by syscall family (mirroring remote-shim).
//!
//! Each returns the syscall's value or errno exactly as home's kernel gives it: errors are data
//! ([`Outcome`] errno), never a transport fault. Malformed requests (a missing operation or `Dir`, an
//! unknown enum value or flag bit, a path with a NUL byte) get `EINVAL`, a path of `PATH_MAX` bytes or more
//! `ENAMETOOLONG`, an unknown handle `EBADF`; buffers are capped ([`MAX_BUF`]), so no request allocates
//! without bound, and a read or write larger than the cap is a short one.
//!
//! - [`open`]: Open. [`stat`]: Stat, Statfs, Access, Readlink.
//! - [`dir`]: Mkdir, Mknod, Unlink, Rename, Link, Symlink, Getdents, Chdir, Getcwd.
//! - [`attr`]: Chmod, Chown, Truncate, Utimens, Xattr, Umask.
//! - [`io`]: Read, Write, Seek, Fsync, Fallocate, CopyRange, Ioctl.
//! - [`fd`]: GetFlags, SetFlags, Lock, Flock, Close.
//! - [`process`]: Identity, Kill, ForgetProc (the processes' deputies at home).
//! - [`clock`]: ClockRead, SetClock, Adjtime.

mod attr;
mod clock;
mod dir;
pub(crate) use dir::decode_dirents;
mod fd;
mod io;
mod open;
mod process;
mod stat;
#[cfg(test)]
mod tests;

use crate::confine::How;
use crate::session::{ProcCtx, Session};
use homeward_proto::pb::{self, call_request::Op, CallReply, CallRequest, Dir, Outcome};
use homeward_proto::Errno;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Not an errno: an executor running inline found that its call may wait after all (an open that met a
/// fifo) and must be run again on a blocking thread. Never sent.
pub const RETRY_BLOCKING: Errno = Errno(u16::MAX);

thread_local! {
    static INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the executor runs inline on an async worker (where it must not wait).
pub fn running_inline() -> bool {
    INLINE.with(|i| i.get())
}

/// Runs `f` marked as inline (see [`running_inline`]).
pub fn inline<T>(f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            INLINE.with(|i| i.set(false));
        }
    }
    INLINE.with(|i| i.set(true));
    let _reset = Reset;
    f()
}

/// Most bytes one call reads, lists, copies or returns (16 MiB).
pub const MAX_BUF: usize = 16 << 20;

/// An executor's result: the reply (without `seq`), or the errno.
type Res = Result<CallReply, Errno>;

/// A reply carrying only a value.
fn value(v: i64) -> CallReply {
    CallReply { outcome: Some(Outcome::value(v)), ..Default::default() }
}

/// A lease on looking up `path` from `dir` (see `crate::leases`), when `wanted`: its number (0: none) and
/// dependencies, and the names of the directory where a component was found missing, if listed.
/// Taken before the lookup itself reads the file system.
fn lease_lookup(s: &Session, dir: &OwnedFd, path: &[u8], follow: bool, wanted: bool) -> Leased {
    lease_lookup_of(s, dir, path, follow, wanted, Scope::Answer)
}

/// [`lease_lookup`] for an access check, which depends on a directory found by name only through its
/// attributes ([`crate::leases::Grant::directory_by_entry`]).
fn lease_access_lookup(s: &Session, dir: &OwnedFd, path: &[u8], follow: bool, wanted: bool) -> Leased {
    lease_lookup_of(s, dir, path, follow, wanted, Scope::Attributes)
}

/// What a leased answer depends on, of what the walk finds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Everything the answer shows: a directory found is watched itself.
    Answer,
    /// The attributes of what it finds: a directory found is watched through the entry naming it.
    Attributes,
    /// Which entry the path names ([`crate::leases::Grant::entry_only`]).
    Entry,
}

/// [`lease_lookup`] for an answer that depends only on which entry the path names
/// ([`crate::leases::Grant::entry_only`]).
fn lease_entry_lookup(s: &Session, dir: &OwnedFd, path: &[u8], wanted: bool) -> Leased {
    lease_lookup_of(s, dir, path, false, wanted, Scope::Entry)
}

fn lease_lookup_of(
    s: &Session,
    dir: &OwnedFd,
    path: &[u8],
    follow: bool,
    wanted: bool,
    scope: Scope,
) -> Leased {
    use std::os::fd::AsFd;
    if !wanted || path.is_empty() {
        return Leased::default();
    }
    let Some(mut grant) = s.leases.begin() else { return Leased::default() };
    match scope {
        Scope::Answer => {}
        Scope::Attributes => grant.directory_by_entry(),
        Scope::Entry => grant.entry_only(),
    }
    if grant.walk(dir.as_fd(), path, follow, s.allow()) {
        let (lease, deps, listing) = grant.finish();
        Leased { lease, deps, listing }
    } else {
        Leased::default()
    }
}

/// A lease on a lookup's answer ([`lease_lookup`]); `lease` 0: none.
#[derive(Default)]
pub(crate) struct Leased {
    pub lease: u64,
    pub deps: Vec<pb::Dep>,
    /// The names of the directory in which the lookup found a component of the path missing, when home
    /// could list them (`CallReply.listing`).
    pub listing: Option<pb::DirNames>,
}

/// A lease on looking up `path` from `dir` again after a call changed what it finds (created or removed
/// the name), when `wanted`: the walk's watches go in place first, then the lookup is made once more
/// (without following a last symbolic link unless `follow`), and the lease is granted only if `expected`
/// holds for what it finds (`None`: nothing; else its attributes). Any change after that lookup is
/// reported, and the change made by the call itself was queued before the grant, so it does not void it.
/// Not for confined sessions (their lookups resolve beneath the allowed directories, not as a plain walk).
fn lease_after(
    s: &Session,
    dir: &OwnedFd,
    path: &[u8],
    follow: bool,
    wanted: bool,
    expected: impl FnOnce(Option<&libc::statx>) -> bool,
) -> Leased {
    lease_after_of(s, dir, path, follow, wanted, Scope::Answer, expected)
}

/// [`lease_after`] for an answer of `scope`.
fn lease_after_of(
    s: &Session,
    dir: &OwnedFd,
    path: &[u8],
    follow: bool,
    wanted: bool,
    scope: Scope,
    expected: impl FnOnce(Option<&libc::statx>) -> bool,
) -> Leased {
    use std::os::fd::AsFd;
    // (A path the kernel would refuse with `ENAMETOOLONG` is not walked.)
    if !wanted || s.allow().is_some() || path.len() >= libc::PATH_MAX as usize {
        return Leased::default();
    }
    let Ok(cpath) = std::ffi::CString::new(path) else { return Leased::default() };
    let leased = lease_lookup_of(s, dir, path, follow, true, scope);
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    let mask = libc::STATX_INO | libc::STATX_CTIME;
    let found = match crate::sys::statx(dir.as_fd(), &cpath, flags | libc::AT_NO_AUTOMOUNT, mask) {
        Ok(sx) => Some(sx),
        Err(e) if e == Errno::ENOENT => None,
        Err(_) => return Leased::default(),
    };
    if leased.lease == 0 || !expected(found.as_ref()) {
        return Leased::default();
    }
    leased
}

/// Whether `fd`'s file system is a local one (a disk or memory, where a file's events are all this
/// machine's: see `io::local`).
pub(crate) fn on_local_file_system(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    io::local(fd)
}

/// A reply carrying only an errno (for executors that return more than the outcome on failure).
fn failed(e: Errno) -> CallReply {
    CallReply { outcome: Some(Outcome::errno(e)), ..Default::default() }
}

fn done(v: i64) -> Res {
    Ok(value(v))
}

/// Whether a request may wait on something outside the agent (another process: a fifo, a lock, a deputy
/// being started; or the disk: fsync) and so must run on a blocking thread. Everything else runs inline on
/// the connection's task, which saves a thread hand-off per call.
pub fn may_block(session: &Session, req: &CallRequest) -> bool {
    let Some(op) = &req.op else { return false };
    let proc = req.proc.unwrap_or_default().id;
    if proc != 0 && !session.knows(proc) && !matches!(op, Op::ForgetProc(_)) {
        return true;
    }
    let regular = |handle: u64| {
        session
            .handle(handle)
            .ok()
            .and_then(|fd| {
                use std::os::fd::AsFd;
                crate::sys::statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH, libc::STATX_TYPE).ok()
            })
            .is_some_and(|sx| matches!(u32::from(sx.stx_mode) & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR))
    };
    let local = |handle: u64| session.handle(handle).is_ok_and(|fd| io::local(std::os::fd::AsFd::as_fd(&fd)));
    match op {
        Op::Read(o) => !regular(o.handle),
        // A listing that reads files' content (up to a thousand of them) runs on a blocking thread.
        Op::Getdents(o) => o.lease && o.content_max > 0,
        Op::Write(o) => !regular(o.handle),
        Op::CopyRange(o) => !(regular(o.in_handle) && regular(o.out_handle)),
        Op::Ioctl(o) => !regular(o.handle),
        Op::Stat(_)
        | Op::Statfs(_)
        | Op::Access(_)
        | Op::Readlink(_)
        | Op::Mkdir(_)
        | Op::Mknod(_)
        | Op::Unlink(_)
        | Op::Rename(_)
        | Op::Link(_)
        | Op::Symlink(_)
        | Op::Chmod(_)
        | Op::Chown(_)
        | Op::Utimens(_)
        | Op::Chdir(_)
        | Op::Getcwd(_)
        | Op::Umask(_)
        | Op::Xattr(_)
        | Op::Seek(_)
        | Op::GetFlags(_)
        | Op::SetFlags(_)
        | Op::ClockRead(_)
        | Op::Interrupt(_) => false,
        // Run inline non-blocking; a fifo is retried on a blocking thread (`RETRY_BLOCKING`).
        Op::Open(_) => false,
        // On a local disk only a lock that waits for another holder blocks; a query, a try and an unlock
        // answer at once. (On a network file system each is a call to its server.)
        Op::Lock(o) => {
            !local(o.handle)
                || o.cmd == pb::LockCmd::SetWait as i32
                    && o.range.as_ref().is_some_and(|r| r.kind != pb::LockType::Unlock as i32)
        }
        Op::Flock(o) => !local(o.handle) || o.operation & (libc::LOCK_NB | libc::LOCK_UN) as u32 == 0,
        // Truncate/fsync/fallocate truncate/fsync/fallocate (the disk), locks, close (a network
        // file system flushing), deputies (Kill may hand an event to a deputy's session stream).
        _ => true,
    }
}

/// Executes one request for `session` on the calling (blocking) thread.
pub fn execute(session: &Session, req: &CallRequest) -> CallReply {
    let result = match &req.op {
        None => Err(Errno::EINVAL),
        // Forgetting a process must not first create its state; nor starting a spare deputy.
        Some(Op::ForgetProc(f)) => process::forget_proc(session, f),
        Some(Op::Identity(i)) if i.spare => process::start_spare(session, req.proc.unwrap_or_default().id),
        Some(op) => {
            session.proc_ctx(req.proc.unwrap_or_default()).and_then(|ctx| dispatch(session, &ctx, op))
        }
    };
    let mut reply =
        result.unwrap_or_else(|e| CallReply { outcome: Some(Outcome::errno(e)), ..Default::default() });
    reply.seq = req.seq;
    reply
}

fn dispatch(s: &Session, ctx: &ProcCtx, op: &Op) -> Res {
    match op {
        Op::Open(o) => open::open(s, ctx, o),
        Op::Stat(o) => stat::stat(s, ctx, o),
        Op::Statfs(o) => stat::statfs(s, ctx, o),
        Op::Access(o) => stat::access(s, ctx, o),
        Op::Readlink(o) => stat::readlink(s, ctx, o),
        Op::Mkdir(o) => dir::mkdir(s, ctx, o),
        Op::Mknod(o) => dir::mknod(s, ctx, o),
        Op::Unlink(o) => dir::unlink(s, ctx, o),
        Op::Rename(o) => dir::rename(s, ctx, o),
        Op::Link(o) => dir::link(s, ctx, o),
        Op::Symlink(o) => dir::symlink(s, ctx, o),
        Op::Getdents(o) => dir::getdents(s, o),
        Op::Chdir(o) => dir::chdir(s, ctx, o),
        Op::Getcwd(o) => dir::getcwd(s, ctx, o),
        Op::Chmod(o) => attr::chmod(s, ctx, o),
        Op::Chown(o) => attr::chown(s, ctx, o),
        Op::Truncate(o) => attr::truncate(s, ctx, o),
        Op::Utimens(o) => attr::utimens(s, ctx, o),
        Op::Xattr(o) => attr::xattr(s, ctx, o),
        Op::Umask(o) => attr::umask(s, ctx, o),
        Op::Read(o) => io::read(s, o),
        Op::Write(o) => io::write(s, o),
        Op::Seek(o) => io::seek(s, o),
        Op::Fsync(o) => io::fsync(s, ctx, o),
        Op::Fallocate(o) => io::fallocate(s, o),
        Op::CopyRange(o) => io::copy_range(s, o),
        Op::Ioctl(o) => io::ioctl(s, o),
        Op::GetFlags(o) => fd::get_flags(s, o),
        Op::SetFlags(o) => fd::set_flags(s, o),
        Op::Lock(o) => fd::lock(s, o),
        Op::Flock(o) => fd::flock(s, o),
        Op::Close(o) => fd::close(s, o),
        Op::ForgetProc(o) => process::forget_proc(s, o),
        Op::Identity(_) => process::identity(s, ctx),
        Op::Kill(o) => process::kill(s, o),
        Op::ClockRead(_) => clock::read(),
        Op::Interrupt(o) => done(i64::from(s.interrupt_call(o.seq))),
        Op::SetClock(o) => clock::set(o),
        Op::Adjtime(o) => clock::adjtime(o),
    }
}

/// The operation's name, for logs.
pub fn op_name(op: Option<&Op>) -> &'static str {
    let Some(op) = op else { return "none" };
    match op {
        Op::Open(_) => "open",
        Op::Stat(_) => "stat",
        Op::Statfs(_) => "statfs",
        Op::Access(_) => "access",
        Op::Readlink(_) => "readlink",
        Op::Mkdir(_) => "mkdir",
        Op::Mknod(_) => "mknod",
        Op::Unlink(_) => "unlink",
        Op::Rename(_) => "rename",
        Op::Link(_) => "link",
        Op::Symlink(_) => "symlink",
        Op::Chmod(_) => "chmod",
        Op::Chown(_) => "chown",
        Op::Truncate(_) => "truncate",
        Op::Utimens(_) => "utimens",
        Op::Chdir(_) => "chdir",
        Op::Getcwd(_) => "getcwd",
        Op::Umask(_) => "umask",
        Op::Xattr(_) => "xattr",
        Op::Read(_) => "read",
        Op::Write(_) => "write",
        Op::Seek(_) => "seek",
        Op::Fsync(_) => "fsync",
        Op::Fallocate(_) => "fallocate",
        Op::Getdents(_) => "getdents",
        Op::GetFlags(_) => "get_flags",
        Op::SetFlags(_) => "set_flags",
        Op::Lock(_) => "lock",
        Op::Flock(_) => "flock",
        Op::Close(_) => "close",
        Op::Ioctl(_) => "ioctl",
        Op::CopyRange(_) => "copy_range",
        Op::ForgetProc(_) => "forget_proc",
        Op::Identity(_) => "identity",
        Op::ClockRead(_) => "clock_read",
        Op::Interrupt(_) => "interrupt",
        Op::SetClock(_) => "set_clock",
        Op::Adjtime(_) => "adjtime",
        Op::Kill(_) => "kill",
    }
}

/// A path call's target: a directory descriptor and a path relative to it.
struct At {
    dir: Arc<OwnedFd>,
    path: CString,
    /// The directory the program's path starts at (for leases, which walk the path as the program wrote it).
    start: Arc<OwnedFd>,
}

/// Wire path bytes as a C string; an interior NUL is `EINVAL` (the program's string ends there anyway).
fn cpath(bytes: &[u8]) -> Result<CString, Errno> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// A path from the wire, checked as the kernel takes one before anything (a lease's walk) looks at it:
/// `PATH_MAX` bytes or more is `ENAMETOOLONG` (the kernel's `getname`), an interior NUL `EINVAL`.
fn wire_path(bytes: &[u8]) -> Result<CString, Errno> {
    if bytes.len() >= libc::PATH_MAX as usize {
        return Err(Errno::ENAMETOOLONG);
    }
    cpath(bytes)
}

/// Wire `OpenFlag` bits as native flags; an unknown bit is `EINVAL` (no shim sends one).
fn open_flags(wire: u32) -> Result<libc::c_int, Errno> {
    homeward_proto::flags::open_from_wire_checked(wire).ok_or(Errno::EINVAL)
}

/// Wire `AtFlag` bits as native flags; an unknown bit is `EINVAL`, as the `*at` calls answer one.
fn at_flags(wire: u32) -> Result<libc::c_int, Errno> {
    homeward_proto::flags::at_from_wire_checked(wire).ok_or(Errno::EINVAL)
}

/// The directory a `Dir` names: the process's cwd for handle 0, else the session's handle (`EBADF`).
fn dir_fd(s: &Session, ctx: &ProcCtx, dir: Option<&Dir>) -> Result<Arc<OwnedFd>, Errno> {
    match dir.ok_or(Errno::EINVAL)?.handle {
        0 => Ok(ctx.cwd.clone()),
        handle => s.handle(handle),
    }
}

/// The directory (Dir, path) starts at, as the `*at` calls do: an absolute path ignores the directory.
fn start(s: &Session, ctx: &ProcCtx, dir: Option<&Dir>, path: &[u8]) -> Result<Arc<OwnedFd>, Errno> {
    // Checked before a lease's walk looks at the path, as the kernel's `getname` does.
    if path.len() >= libc::PATH_MAX as usize {
        return Err(Errno::ENAMETOOLONG);
    }
    if path.first() == Some(&b'/') {
        dir.ok_or(Errno::EINVAL)?;
        Ok(ctx.cwd.clone())
    } else {
        dir_fd(s, ctx, dir)
    }
}

/// Resolves (Dir, path) for a call that needs `how` of it. Unconfined, that is the `*at` call's own
/// (directory, path); confined (`--allow`), a target beneath the allowed directories (see `crate::confine`)
/// or `EACCES`. An empty path names the directory itself (with `AT_EMPTY_PATH`) or nothing.
fn at(s: &Session, ctx: &ProcCtx, dir: Option<&Dir>, path: &[u8], how: How) -> Result<At, Errno> {
    let cpath = wire_path(path)?;
    let start = start(s, ctx, dir, path)?;
    match s.allow() {
        Some(allow) if !path.is_empty() => {
            let target = allow.at(&start, path, how)?;
            Ok(At { dir: target.dir, path: target.path, start })
        }
        _ => Ok(At { dir: start.clone(), path: cpath, start }),
    }
}

/// `/proc/self/fd/<fd>`: the magic link to exactly the file a descriptor refers to.
fn fd_path(fd: &OwnedFd) -> Result<CString, Errno> {
    use std::os::fd::AsRawFd;
    cpath(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())
}

impl At {
    /// A path that reaches the same file without a directory descriptor: the path itself when absolute,
    /// else `/proc/self/fd/<dir>/<path>` (the magic link jumps to the directory, the rest walks from there).
    fn proc_path(&self) -> Result<CString, Errno> {
        let path = self.path.as_bytes();
        if path.first() == Some(&b'/') {
            return Ok(self.path.clone());
        }
        let mut full = fd_path(&self.dir)?.into_bytes();
        full.push(b'/');
        full.extend_from_slice(path);
        cpath(&full)
    }
}
