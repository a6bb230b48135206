//! Syscall families, one file each, mirrored by the executors at home: decode the program's arguments,
//! decide local or home, forward, and deliver the result as the kernel would.

mod attr;
mod attr_xattr;
mod clock;
pub mod dir;
pub mod exec;
mod fd;
pub mod io;
mod open;
pub mod process;
mod rlimit;
pub mod socket;
mod stat;

use crate::fdtable::Handle;
use crate::memory;
use crate::supervisor::Supervisor;
use crate::sys::seccomp::Notif;
use homeward_proto::pb::{self, call_request::Op, CallReply};
use homeward_proto::Errno;
use std::os::fd::AsFd;
use std::sync::Arc;

/// How often the calling thread's signals are looked at while `op` waits at home: only for calls that may
/// wait natively (`effects::may_wait`) on something other than the CPU: soon for a lock or a read of a
/// fifo, pipe, terminal or socket; late for an open (which waits only for a fifo's other end); never for a
/// read of a regular file (a machine short of CPU makes many calls wait, and `/proc/TID/status` is not
/// cheap).
fn watch_every(sup: &crate::supervisor::Supervisor, op: &Op) -> Option<std::time::Duration> {
    use std::time::Duration;
    let kind = |handle: u64| sup.fds.get(handle).map(|h| h.stat.mode & libc::S_IFMT);
    match op {
        _ if !homeward_proto::effects::may_wait(op) => None,
        Op::Read(r) => match kind(r.handle) {
            Some(libc::S_IFREG | libc::S_IFDIR) => None,
            Some(_) => Some(Duration::from_millis(10)),
            None => Some(Duration::from_millis(100)),
        },
        Op::Open(_) => Some(Duration::from_millis(250)),
        _ => Some(Duration::from_millis(10)),
    }
}

/// The kernel's internal errno for a call a signal interrupted, to be restarted after the handler if it
/// was installed with `SA_RESTART` (else the program gets EINTR); never seen by a program.
const ERESTARTSYS: u16 = 512;

/// What to tell the kernel about an intercepted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The call returns this value.
    Value(i64),
    /// The local kernel executes the call.
    Continue,
    /// The notification was already answered (by `ADDFD` with `SEND`) with this descriptor number.
    Answered(i64),
    /// The notification was already answered: the local kernel executes the call.
    Continued,
}

pub type Outcome = Result<Action, Errno>;

/// Where a path names a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Local,
    Home(pb::Dir),
}

/// One intercepted call and what it needs to be served.
pub struct Call<'a> {
    pub sup: &'a Supervisor,
    pub id: u64,
    pub tid: u32,
    pub nr: i64,
    pub args: [u64; 6],
    cost: std::sync::Mutex<Cost>,
}

/// What serving one call cost at home: round trips, time waiting on home, bytes moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub round_trips: u32,
    /// Calls sent home without waiting for their replies ([`crate::behind`]).
    pub behind: u32,
    pub wait_ns: u64,
    pub bytes: u64,
}

impl Call<'_> {
    pub fn arg(&self, i: usize) -> u64 {
        self.args[i]
    }

    /// An argument as the kernel reads an `int`.
    pub fn arg_i32(&self, i: usize) -> i32 {
        self.args[i] as u32 as i32
    }

    pub fn proc(&self) -> pb::Proc {
        self.sup.procs.proc_of(self.tid)
    }

    pub fn tgid(&self) -> u32 {
        self.sup.procs.tgid_of(self.tid)
    }

    /// Installs a placeholder for `h` in the calling program and answers the call with its number.
    /// Installs `h`'s placeholder (its memfd's description, the supervisor's own).
    pub fn install(&self, h: &Arc<Handle>, cloexec: bool, min: u32) -> Result<i32, Errno> {
        let listener = self.sup.listener.as_fd();
        self.install_with(h, cloexec, min, |slot| self.sup.fds.install(listener, slot, h))
    }

    /// Installs `description` (an open file of `h`'s placeholder) as [`Call::install`] does.
    pub fn install_description(
        &self,
        h: &Arc<Handle>,
        description: std::os::fd::BorrowedFd<'_>,
        cloexec: bool,
        min: u32,
    ) -> Result<i32, Errno> {
        let listener = self.sup.listener.as_fd();
        self.install_with(h, cloexec, min, |slot| {
            self.sup.fds.install_description(listener, slot, h, description)
        })
    }

    /// Runs `install` in the caller's slot for `h`, in the half of the range `native::place` says; in the
    /// lower half when the upper one is full (it serves the copy as any other).
    fn install_with(
        &self,
        h: &Arc<Handle>,
        cloexec: bool,
        min: u32,
        install: impl Fn(crate::fdtable::Slot) -> std::io::Result<i32>,
    ) -> Result<i32, Errno> {
        let native = crate::native::place(self.sup, h);
        let slot = crate::fdtable::Slot {
            notif_id: self.id,
            tid: self.tid,
            tgid: self.tgid(),
            min,
            cloexec,
            native,
        };
        match install(slot) {
            Err(e) if native && e.raw_os_error() == Some(libc::EMFILE) => {
                install(crate::fdtable::Slot { native: false, ..slot })
            }
            installed => installed,
        }
        .map_err(|e| Errno::from_io(&e))
    }

    pub fn path(&self, i: usize) -> Result<Vec<u8>, Errno> {
        memory::read_path(self.tid, self.arg(i))
    }

    /// Forwards one operation to home. When home is lost, the call fails with `EIO` under `--on-home-loss
    /// eio`, and is never answered otherwise: the job is ended (see `client`).
    pub async fn home(&self, op: Op) -> Result<CallReply, Errno> {
        self.home_as(self.proc(), op).await
    }

    /// Forwards one operation to home on behalf of `proc`.
    pub async fn home_as(&self, proc: pb::Proc, op: Op) -> Result<CallReply, Errno> {
        let op = self.resolve(proc, op).await?;
        self.home_resolved(proc, op).await
    }

    /// `op` with its placeholders opened without home given their home handles first (`lazy`).
    async fn resolve(&self, proc: pb::Proc, op: Op) -> Result<Op, Errno> {
        crate::lazy::before_change(self, proc, &op).await;
        crate::lazy::resolve(self, proc, op).await
    }

    /// The call's answer when home is lost: `EIO` under `--on-home-loss eio`; otherwise none, ever: the job
    /// is about to be killed (see `supervise`). Answering EIO then would let the program act on a failure
    /// that is not its own (print, clean up, go on) in the moment before the SIGKILL; the call stays
    /// unanswered instead and the kill ends it.
    async fn home_lost(&self, e: &crate::client::LinkError) -> Errno {
        self.sup.link_failed(e);
        if self.sup.link.policy() != crate::client::HomeLoss::Eio {
            std::future::pending::<()>().await;
        }
        Errno::EIO
    }

    /// [`Call::home_as`] for an operation that names no placeholder opened without home.
    pub async fn home_resolved(&self, proc: pb::Proc, op: Op) -> Result<CallReply, Errno> {
        self.sup.flush_pumps().await;
        let touched = crate::native::touched(self.sup, &op);
        let sent = sent_bytes(&op);
        let start = std::time::Instant::now();
        // A call that waits at home (a lock, a fifo) is interrupted by a signal the program catches, as
        // natively: home makes it fail with EINTR.
        let tid = self.tid;
        let mut restart = true;
        let watched = match watch_every(self.sup, &op) {
            // Read at that interval: `/proc/TID/status` is not cheap, and a machine short of CPU makes
            // many calls wait (a lock waits for another holder; an open or a read mostly for the CPU).
            Some(every) => {
                let signalled = || match crate::sys::tracee::caught_signal_pending(tid) {
                    Some(sure) => {
                        restart &= sure;
                        true
                    }
                    None => false,
                };
                let gone = || crate::sys::tracee::thread_gone(tid);
                self.sup.link.call_interruptible(proc, op, every, signalled, gone).await
            }
            None => self.sup.link.call(proc, op).await.map(|reply| (reply, false)),
        };
        let result = watched.map(|(mut reply, interrupted)| {
            // Answered `ERESTARTSYS`, as the kernel does for the calls that wait (locks, fifos): the kernel
            // then restarts the call after the handler if it was installed with `SA_RESTART`, else fails it
            // with EINTR. Only when the signal is sure to be there when the call returns (else the
            // program would see that internal errno): otherwise EINTR.
            if interrupted && restart && outcome(&reply) == Err(Errno(libc::EINTR as u16)) {
                reply.outcome = Some(homeward_proto::pb::Outcome::errno(Errno(ERESTARTSYS)));
            }
            reply
        });
        {
            let mut cost = self.cost.lock().unwrap_or_else(|p| p.into_inner());
            cost.round_trips += 1;
            cost.wait_ns += start.elapsed().as_nanos() as u64;
            cost.bytes += sent + result.as_ref().map_or(0, |r| r.data.len() as u64);
        }
        match result {
            Ok(reply) => {
                crate::native::refresh_touched(self.sup, Some(self), proc, touched, Some(&reply)).await;
                Ok(reply)
            }
            // No one is left to answer (the notification's answer fails).
            Err(crate::client::LinkError::Abandoned) => Err(Errno(libc::EINTR as u16)),
            Err(e) => Err(self.home_lost(&e).await),
        }
    }

    /// Sends `op` home to run before any later call, without waiting for it (write-behind, see
    /// [`crate::behind`]); `done` gets its reply when it comes (`None`: home was lost).
    pub async fn home_behind(
        &self,
        op: Op,
        done: impl FnOnce(Option<CallReply>) + Send + 'static,
    ) -> Result<(), Errno> {
        self.home_behind_if(op, || true, done).await.map(drop)
    }

    /// [`Call::home_behind`] if `ready` still says so once everything the call waits for first is done
    /// (placeholders opened at home, pumps flushed), with no wait between that check and the sending;
    /// false (nothing sent) otherwise.
    pub async fn home_behind_if(
        &self,
        op: Op,
        ready: impl FnOnce() -> bool,
        done: impl FnOnce(Option<CallReply>) + Send + 'static,
    ) -> Result<bool, Errno> {
        let proc = self.proc();
        let op = self.resolve(proc, op).await?;
        self.sup.flush_pumps().await;
        if !ready() {
            return Ok(false);
        }
        let sent = sent_bytes(&op);
        let touched = crate::native::touched(self.sup, &op);
        match self.sup.link.send_ordered(proc, op).await {
            Ok(reply) => {
                {
                    let mut cost = self.cost.lock().unwrap_or_else(|p| p.into_inner());
                    cost.behind += 1;
                    cost.bytes += sent;
                }
                tokio::spawn(async move { done(reply.await.ok()) });
                // Home runs the call before any later one: the refresh reads what it left.
                crate::native::refresh_touched(self.sup, Some(self), proc, touched, None).await;
                Ok(true)
            }
            Err(e) => {
                // Never sent: the call itself fails.
                drop(done);
                Err(self.home_lost(&e).await)
            }
        }
    }

    /// Forwards and returns the call's own outcome (value or errno).
    pub async fn home_value(&self, op: Op) -> Result<(i64, CallReply), Errno> {
        let reply = self.home(op).await?;
        let v = outcome(&reply)?;
        Ok((v, reply))
    }

    /// The attribute cache's key for a lookup of `path` from `dir` (the cwd, or a directory handle opened
    /// by a leased lookup that still holds), or `None` when it is not cached. A path from the cwd is keyed
    /// under the cwd's path while home leases that path (`cwds`), so the job's processes share the
    /// answers and those of absolute lookups and listings of the same names; otherwise it is the process's own.
    pub fn lookup_key(
        &self,
        dir: &pb::Dir,
        path: &[u8],
        follow: bool,
        mask: u32,
    ) -> Option<crate::attrcache::Key> {
        let proc = self.proc().id;
        // A trailing slash (or `/.`) follows a link in the last component whatever the call.
        let follow = follow || path.ends_with(b"/") || path.ends_with(b"/.");
        if path.first() == Some(&b'/') {
            return crate::attrcache::Key::of(proc, None, path, follow, mask);
        }
        if dir.handle == 0 {
            return crate::attrcache::Key::of(proc, self.cwd_base(proc).as_ref(), path, follow, mask);
        }
        let h = self.sup.fds.get(dir.handle)?;
        if h.stat.mode & libc::S_IFMT != libc::S_IFDIR || !h.origin_finds(&self.sup.link.attrs) {
            return None;
        }
        crate::attrcache::Key::of(proc, Some(&h.origin()?.key), path, follow, mask)
    }

    /// The key of `proc`'s cwd as a lookup of its path, while home leases that path.
    fn cwd_base(&self, proc: u64) -> Option<crate::attrcache::Key> {
        let path = self.sup.cwds.get(proc, &self.sup.link.attrs)?;
        Some(crate::attrcache::Key { proc: 0, path, follow: true, mask: 0 })
    }

    /// Stores a leased answer to a lookup of `path` from `dir` under `key` (from [`Call::lookup_key`]). Home
    /// walked a path relative to a directory handle or the cwd from there: the answer then also depends on
    /// the lookup that opened the directory, or on the lease of the cwd's path (either may be renamed or
    /// replaced at home), and is not stored once that one is gone.
    pub fn put_leased(
        &self,
        dir: &pb::Dir,
        path: &[u8],
        key: crate::attrcache::Key,
        value: crate::attrcache::Cached,
        ticket: crate::attrcache::Ticket,
        reply: &CallReply,
    ) {
        // The names of the directory a missing name was looked up in, when home listed them.
        if let (Some(listing), crate::attrcache::Cached::Missing(Errno::ENOENT)) = (&reply.listing, &value) {
            let at = crate::attrcache::listing_key_of(&key, path, listing.at as usize);
            if let (Some(at), Some(mut deps)) = (at, self.origin_deps(dir, path, &key)) {
                deps.extend(listing.deps.iter().map(|d| (d.wd, d.name.to_vec())));
                let names = listing.names.iter().map(|n| n.to_vec()).collect();
                let names = crate::attrcache::Cached::Listing(std::sync::Arc::new(names));
                self.sup.link.attrs.put_with(at, names, ticket, reply.lease, deps, true);
            }
        }
        if let Some(deps) = self.lease_deps(dir, path, &key, reply) {
            self.sup.link.attrs.put(key, value, ticket, reply.lease, deps);
        }
    }

    /// What the leased answer `reply` to a lookup of `path` from `dir`, kept under `key`, depends on:
    /// home's dependencies and [`Call::origin_deps`].
    pub fn lease_deps(
        &self,
        dir: &pb::Dir,
        path: &[u8],
        key: &crate::attrcache::Key,
        reply: &CallReply,
    ) -> Option<Vec<crate::attrcache::Dep>> {
        let mut deps = self.origin_deps(dir, path, key)?;
        deps.extend(crate::attrcache::deps(reply));
        Some(deps)
    }

    /// What an answer to a lookup of `path` from `dir`, kept under `key`, depends on besides home's
    /// dependencies: nothing for an absolute path (or one from the cwd under the process's own key), the
    /// lease on the cwd's path for one from the cwd under that path (`None` once it is gone, or names
    /// another path than `key` was made with), the lookup that opened the directory for a path from a
    /// directory handle (`None` once that one is gone).
    pub fn origin_deps(
        &self,
        dir: &pb::Dir,
        path: &[u8],
        key: &crate::attrcache::Key,
    ) -> Option<Vec<crate::attrcache::Dep>> {
        if path.first() == Some(&b'/') || (dir.handle == 0 && key.proc != 0) {
            return Some(Vec::new());
        }
        if dir.handle == 0 {
            let base = self.cwd_base(self.proc().id)?;
            if crate::attrcache::Key::of(0, Some(&base), path, key.follow, key.mask)?.path != key.path {
                return None;
            }
            return self.sup.link.attrs.deps_of(&crate::cwds::key(&base.path));
        }
        let origin = self.sup.fds.get(dir.handle).and_then(|h| h.origin().cloned())?;
        self.sup.link.attrs.deps_of(&origin.key)
    }

    /// The forwarded handle behind descriptor argument `i`, if any.
    pub fn handle(&self, i: usize) -> Option<Arc<Handle>> {
        self.fd_handle(self.tid, self.arg(i))
    }

    /// The home handle behind descriptor `fd` of thread `tid`: a placeholder in the range, or a pumped alias
    /// of a home file below it.
    pub fn fd_handle(&self, tid: u32, fd: u64) -> Option<Arc<Handle>> {
        if self.sup.fds.range.contains(fd) {
            self.sup.fds.lookup(tid, fd)
        } else if fd as u32 as i32 >= 0 {
            // Below the range: a directory placeholder or a pumped pipe; one readlink serves both checks.
            let link = crate::fdtable::fd_link(tid, fd)?;
            self.sup.fds.for_link(&link).or_else(|| self.sup.pumps.for_link(&link))
        } else {
            None
        }
    }

    /// Routes a path relative to directory descriptor argument `dirfd`.
    pub fn route(&self, dirfd: i32, path: &[u8]) -> Route {
        if path.first() == Some(&b'/') {
            return if self.sup.policy.is_local(path) { Route::Local } else { Route::Home(cwd()) };
        }
        if dirfd == libc::AT_FDCWD {
            if self.sup.exec.is_staged(path) {
                return Route::Local;
            }
            return Route::Home(cwd());
        }
        match self.fd_handle(self.tid, dirfd as u32 as u64) {
            Some(h) => Route::Home(pb::Dir { handle: h.id }),
            None => Route::Local,
        }
    }
}

/// A path call's target after looking through descriptors: the route, the path to send, the `AT_*` flags.
pub struct Target {
    pub route: Route,
    pub path: Vec<u8>,
    pub at: i32,
}

impl Call<'_> {
    /// Resolves what a path call names, as the kernel would see it: an empty path with `AT_EMPTY_PATH` names
    /// the directory descriptor itself, and a magic link to one of our placeholders (`/proc/self/fd/N`,
    /// `/dev/fd/N`, `/proc/PID/fd/N`) names that home handle (sent as the handle with an empty path and
    /// `AT_EMPTY_PATH`; an open of it reopens the home file, a readlink reads its path at home) unless the
    /// call does not follow it (`AT_SYMLINK_NOFOLLOW`).
    pub fn target(&self, dirfd: i32, path: Vec<u8>, at: i32) -> Target {
        if path.is_empty() && at & libc::AT_EMPTY_PATH != 0 && dirfd != libc::AT_FDCWD {
            let route = match self.fd_handle(self.tid, dirfd as u32 as u64) {
                Some(h) => Route::Home(pb::Dir { handle: h.id }),
                None => Route::Local,
            };
            return Target { route, path, at };
        }
        // A call that does not follow the last link (`lstat`) of a magic link is about the link itself,
        // which is this machine's /proc.
        // (A trailing slash follows it all the same.)
        let follows = at & libc::AT_SYMLINK_NOFOLLOW == 0 || path.ends_with(b"/");
        let magic = if follows { magic_fd_link(&path) } else { None };
        if let Some((pid, fd)) = magic {
            // `/proc/PID` names a pid as the job sees it (its namespace's); one we cannot map is left local.
            let tid = match pid {
                None => Some(self.tid),
                Some(p) if !self.sup.init.in_pid_ns => Some(p),
                Some(p) => self.sup.procs.local_of_nspid(p),
            };
            if let Some(h) = tid.and_then(|tid| self.fd_handle(tid, fd)) {
                return Target {
                    route: Route::Home(pb::Dir { handle: h.id }),
                    path: Vec::new(),
                    at: at | libc::AT_EMPTY_PATH,
                };
            }
        }
        Target { route: self.route(dirfd, &path), path, at }
    }
}

/// `(pid, fd)` when `path` is a descriptor's magic link: `/proc/self/fd/N`, `/proc/thread-self/fd/N`,
/// `/proc/PID/fd/N`, `/proc/PID/task/TID/fd/N`, `/dev/fd/N`, or `/dev/stdin`, `/dev/stdout`,
/// `/dev/stderr`; the pid is `None` for the caller itself.
fn magic_fd_link(path: &[u8]) -> Option<(Option<u32>, u64)> {
    let n = crate::paths::normalize(path);
    let parts: Vec<&[u8]> = n.split(|&b| b == b'/').skip(1).collect();
    let num = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u64>().ok();
    match parts.as_slice() {
        [b"dev", b"fd", fd] => Some((None, num(fd)?)),
        // Links to /proc/self/fd/0, 1 and 2 (`readlink` reads those links themselves: `std_link`).
        [b"dev", b"stdin"] => Some((None, 0)),
        [b"dev", b"stdout"] => Some((None, 1)),
        [b"dev", b"stderr"] => Some((None, 2)),
        [b"proc", b"self" | b"thread-self", b"fd", fd] => Some((None, num(fd)?)),
        [b"proc", pid, b"fd", fd] => Some((Some(num(pid)? as u32), num(fd)?)),
        [b"proc", pid, b"task", _, b"fd", fd] => Some((Some(num(pid)? as u32), num(fd)?)),
        _ => None,
    }
}

/// Whether `path` is `/dev/stdin`, `/dev/stdout` or `/dev/stderr`: this machine's links to a magic link.
pub fn std_link(path: &[u8]) -> bool {
    matches!(&crate::paths::normalize(path)[..], b"/dev/stdin" | b"/dev/stdout" | b"/dev/stderr")
}

fn cwd() -> pb::Dir {
    pb::Dir { handle: 0 }
}

/// Serves one notification; returns what to answer and what it cost.
/// Bytes of data `op` carries home (for `Cost::bytes`).
fn sent_bytes(op: &Op) -> u64 {
    match op {
        Op::Write(w) => w.data.len() as u64,
        _ => 0,
    }
}

pub async fn dispatch(sup: &Supervisor, n: &Notif) -> (Outcome, Cost) {
    let call = Call {
        sup,
        id: n.id,
        tid: n.pid,
        nr: i64::from(n.data.nr),
        args: n.data.args,
        cost: Default::default(),
    };
    let outcome = serve(&call).await;
    let cost = *call.cost.lock().unwrap_or_else(|p| p.into_inner());
    (outcome, cost)
}

/// Offers the call to each family in turn; the first that knows the call serves it.
macro_rules! first_family {
    ($call:expr, $nr:expr, $($family:ident),+) => {
        $(
            if let Some(out) = $family::serve($call, $nr).await {
                return out;
            }
        )+
    };
}

async fn serve(call: &Call<'_>) -> Outcome {
    let nr = call.nr;
    first_family!(call, nr, open, stat, dir, attr, io, fd, exec, process, clock, socket, rlimit);
    tracing::debug!(nr, "intercepted call without a handler: left to the kernel");
    sup_unhandled(call);
    Ok(Action::Continue)
}

/// The outcome of a forwarded call that returns only a value.
pub async fn simple(call: &Call<'_>, op: Op) -> Outcome {
    call.home_value(op).await.map(|(v, _)| Action::Value(v))
}

impl Call<'_> {
    /// A duplicate of the program's own descriptor `fd` (same open file), taken with `pidfd_getfd`.
    pub fn local_fd(&self, fd: i32) -> Result<std::os::fd::OwnedFd, Errno> {
        use std::os::fd::AsFd;
        let pidfd = crate::sys::tracee::pidfd_open(self.tgid()).map_err(|e| Errno::from_io(&e))?;
        crate::sys::tracee::pidfd_getfd(pidfd.as_fd(), fd).map_err(|e| Errno::from_io(&e))
    }
}

/// A reply's value or errno (`EIO` when it carries neither, or an errno no kernel returns: a malformed reply).
pub fn outcome(reply: &CallReply) -> Result<i64, Errno> {
    match reply.outcome.as_ref().map(|o| o.to_result()) {
        // Not an errno the kernel could return (1 to 4095): a corrupted or hostile reply.
        Some(Err(e)) if !(1..=4095).contains(&e.raw()) => Err(Errno::EIO),
        Some(result) => result,
        None => Err(Errno::EIO),
    }
}

/// A byte count in a reply to a call that moves at most `asked` bytes (read, write, copy): `EIO`, as for a
/// reply without an outcome, when it is negative or more than was asked, which no kernel answers. So a
/// hostile or corrupted reply never moves an offset past what the program asked for, or overflows it.
pub fn count(value: i64, asked: usize) -> Result<usize, Errno> {
    usize::try_from(value).ok().filter(|&n| n <= asked).ok_or(Errno::EIO)
}

/// The handle an open's reply names: `EIO` for 0 (which means the cwd in a `Dir`) or a negative value.
pub fn handle_id(value: i64) -> Result<u64, Errno> {
    u64::try_from(value).ok().filter(|&h| h != 0).ok_or(Errno::EIO)
}

/// The bytes a read's reply returns: `EIO` unless its value counts exactly its data, at most `asked`.
pub fn read_data(value: i64, reply: &CallReply, asked: usize) -> Result<&[u8], Errno> {
    match count(value, asked)? {
        n if n == reply.data.len() => Ok(&reply.data),
        _ => Err(Errno::EIO),
    }
}

/// Counts an intercepted call that no family handles (shown by `--stats`).
fn sup_unhandled(call: &Call<'_>) {
    if let Some(t) = &call.sup.tracer {
        t.unhandled(call.nr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_beyond_the_request_are_malformed() {
        assert_eq!(count(5, 5), Ok(5));
        assert_eq!(count(6, 5), Err(Errno::EIO));
        assert_eq!(count(-1, 5), Err(Errno::EIO));
        assert_eq!(count(i64::MAX, usize::MAX), Ok(i64::MAX as usize));
        let reply = |data: &'static [u8]| CallReply { data: data.into(), ..Default::default() };
        assert_eq!(read_data(3, &reply(b"abc"), 10), Ok(&b"abc"[..]));
        assert_eq!(read_data(3, &reply(b"abc"), 2), Err(Errno::EIO), "more than asked");
        assert_eq!(read_data(1, &reply(b""), 10), Err(Errno::EIO), "a count without its data");
        assert_eq!(read_data(0, &reply(b"abc"), 10), Err(Errno::EIO), "data without its count");
        assert_eq!(read_data(i64::MIN, &reply(b""), 10), Err(Errno::EIO));
        assert_eq!(handle_id(7), Ok(7));
        assert_eq!(handle_id(0), Err(Errno::EIO), "0 is the cwd, never an opened handle");
        assert_eq!(handle_id(-7), Err(Errno::EIO));
    }

    #[test]
    fn only_errnos_a_kernel_returns_reach_the_program() {
        let reply = |e: u16| CallReply { outcome: Some(pb::Outcome::errno(Errno(e))), ..Default::default() };
        assert_eq!(outcome(&reply(2)), Err(Errno::ENOENT));
        assert_eq!(outcome(&reply(4095)), Err(Errno(4095)));
        assert_eq!(outcome(&reply(0)), Err(Errno::EIO));
        assert_eq!(outcome(&reply(4096)), Err(Errno::EIO));
        assert_eq!(outcome(&CallReply::default()), Err(Errno::EIO));
    }
}
