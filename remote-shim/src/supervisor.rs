//! The supervisor: receives notifications, serves each on its own task, answers each exactly once.
//!
//! One thread blocks in `SECCOMP_IOCTL_NOTIF_RECV` and hands every notification to the tokio runtime, so a
//! call that blocks at home (a fifo read, `F_SETLKW`) never holds up another thread's call. A handler that
//! panics is answered with `EIO` (a bug, logged), so the program never hangs on a dead handler.

use crate::client::{HomeLink, LinkError};
use crate::fdtable::FdTable;
use crate::paths::PathPolicy;
use crate::procs::Procs;
use crate::pump::Pumps;
use crate::sys::seccomp::{self, Reply};
use crate::syscalls::{self, exec::ExecStage, Action};
use crate::trace::{Ending, Tracer, Who};
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::Errno;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// Handles made since the last collection that make the collector run at once.
const COLLECT_AFTER: usize = 256;
/// Handles closed at home by one call of the collector.
const CLOSE_BATCH: usize = 1024;

/// How long a process announced at its fork may stay unseen before it is taken for a fork that failed.
const ANNOUNCED_TTL: Duration = Duration::from_secs(2);

/// Answers a notification with EIO when its handler never returned: it panicked (tokio drops the task's
/// state after catching the panic) or was cancelled. Forgotten once the handler has returned, so the program
/// never waits forever on a bug.
struct AnswerIfAbandoned<'a> {
    listener: std::os::fd::BorrowedFd<'a>,
    id: u64,
    nr: i32,
}

impl Drop for AnswerIfAbandoned<'_> {
    fn drop(&mut self) {
        // A call left unanswered because its process was killed (home lost) is not a bug: the answer finds
        // no waiter and nothing is said.
        if seccomp::respond(self.listener, self.id, Reply::Errno(Errno::EIO.raw())).is_ok() {
            tracing::error!(
                nr = self.nr,
                "a syscall handler did not finish (a bug); the call failed with EIO"
            );
        }
    }
}

pub struct Supervisor {
    pub listener: OwnedFd,
    pub link: HomeLink,
    pub fds: FdTable,
    pub procs: Procs,
    /// Deputies started ahead of forks (`crate::spares`).
    pub spares: crate::spares::Spares,
    /// The processes' cwd paths, while home's lease on them holds.
    pub cwds: crate::cwds::Cwds,
    /// The processes' virtual `RLIMIT_NOFILE`.
    pub limits: crate::limits::Limits,
    pub policy: PathPolicy,
    pub exec: ExecStage,
    pub pumps: Pumps,
    pub content: crate::content::ContentCache,
    /// Home files mapped writable and shared, whose stores the supervisor writes home.
    pub shared_maps: crate::shared_maps::SharedMaps,
    /// Whether listings bring small files' content along ([`crate::lazy::Prefetch`]).
    pub prefetch: crate::lazy::Prefetch,
    /// Directory versions opened read-only at home ([`crate::lazy::DirOpens`]).
    pub dir_opens: crate::lazy::DirOpens,
    pub unix_names: crate::syscalls::socket::UnixNames,
    /// `--trace`/`--stats`, when asked for.
    pub tracer: Option<Tracer>,
    /// `--home none`: the "home" is this machine's kernel (through an in-process agent); the trace says local.
    pub home_is_local: bool,
    /// The job's init: its pid namespace, where each process takes its deputy's pid.
    pub init: crate::jobinit::JobInit,
    /// Home's wall clock minus this machine's, in ns; 0 when they agree (then nothing is routed).
    wall_clock_offset: std::sync::atomic::AtomicI64,
    /// Thread groups that exec'd and whose new image's vDSO is not yet routed.
    vdso_pending: Mutex<std::collections::HashSet<u32>>,
    me: Weak<Supervisor>,
    stopping: AtomicBool,
    link_error: Mutex<Option<String>>,
    link_failed: Notify,
    /// Asks the collector for a collection now (a burst of opens).
    collect_soon: Notify,
}

impl Supervisor {
    // Each argument is one concern of the supervisor, built by `run_job`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        listener: OwnedFd,
        link: HomeLink,
        fds: FdTable,
        limits: crate::limits::Limits,
        policy: PathPolicy,
        exec: ExecStage,
        tracer: Option<Tracer>,
        home_is_local: bool,
        init: crate::jobinit::JobInit,
    ) -> Arc<Supervisor> {
        Arc::new_cyclic(|me| Supervisor {
            listener,
            link,
            fds,
            procs: Procs::default(),
            spares: Default::default(),
            cwds: Default::default(),
            limits,
            policy,
            exec,
            pumps: Pumps::default(),
            content: Default::default(),
            shared_maps: Default::default(),
            prefetch: Default::default(),
            dir_opens: Default::default(),
            unix_names: Default::default(),
            tracer,
            home_is_local,
            init,
            wall_clock_offset: Default::default(),
            vdso_pending: Mutex::default(),
            me: me.clone(),
            stopping: AtomicBool::new(false),
            link_error: Mutex::new(None),
            link_failed: Notify::new(),
            collect_soon: Notify::new(),
        })
    }

    pub fn self_arc(&self) -> Arc<Supervisor> {
        self.me.upgrade().expect("the supervisor outlives its handlers")
    }

    pub fn set_wall_clock_offset(&self, o: &crate::clock::Offsets) {
        let offset = crate::clock::wall_clock_offset(o);
        self.wall_clock_offset.store(offset, Ordering::SeqCst);
        if offset != 0 {
            tracing::debug!(offset_ns = offset, "the job's wall-clock reads are answered with home's time");
        }
    }

    /// Home's wall clock minus this machine's (0: the clocks agree and reads are not routed).
    pub fn wall_clock_offset(&self) -> i64 {
        self.wall_clock_offset.load(Ordering::SeqCst)
    }

    /// Notes that thread group `tgid` is executing a new image: its vDSO is routed at its next call.
    pub fn exec_started(&self, tgid: u32) {
        if self.wall_clock_offset() != 0 {
            self.vdso_pending.lock().unwrap_or_else(|p| p.into_inner()).insert(tgid);
        }
    }

    /// Routes the wall-clock reads of a freshly exec'd image (at its first notified call).
    fn route_vdso_if_pending(&self, tid: u32) {
        let tgid = self.procs.tgid_of(tid);
        if self.vdso_pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&tgid) {
            if let Err(e) = crate::vdso::route_clock_reads(tid) {
                tracing::warn!(pid = tid, cause = %e, "cannot route the program's wall-clock reads; it sees this machine's");
            }
        }
    }

    pub async fn flush_pumps(&self) {
        self.pumps.flush().await;
    }

    /// Records that the link to home failed; the job is ended by [`Supervisor::wait_link_failure`]'s waiter.
    pub fn link_failed(&self, e: &LinkError) {
        let mut slot = self.link_error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e.to_string());
            self.link_failed.notify_waiters();
            self.link_failed.notify_one();
        }
    }

    /// Resolves with a message once the link to home is lost (seen by a call or by the stream itself).
    pub async fn wait_link_failure(&self) -> String {
        tokio::select! {
            e = self.link.lost() => {
                self.link_failed(&e);
            }
            _ = self.link_failed.notified() => {}
        }
        self.link_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// The receive loop; runs on its own thread until [`Supervisor::stop`] or the listener is gone.
    pub fn receive_loop(self: Arc<Self>, rt: tokio::runtime::Handle) {
        let fd = self.listener.as_fd();
        let mut received: u64 = 0;
        while !self.stopping.load(Ordering::SeqCst) {
            let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            match crate::sys::poll_one(&mut pfd, 200) {
                Ok(0) => continue,
                Ok(_) if pfd.revents & libc::POLLIN == 0 => {
                    // POLLHUP: every process of the job is gone.
                    if pfd.revents & libc::POLLHUP != 0 {
                        break;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!(cause = %e, "polling the seccomp listener failed");
                    break;
                }
            }
            match seccomp::recv(fd) {
                Ok(notif) => {
                    received += 1;
                    let order = received;
                    if self.serve_from_copy(&notif, order) {
                        continue;
                    }
                    let sup = self.clone();
                    let task = Box::pin(async move { sup.serve(notif, order).await });
                    if syscalls::process::is_clone(i64::from(notif.data.nr)) {
                        // A clone may wait for the previous one (the job's init, up to a second) before it
                        // waits for anything else: never on this thread.
                        rt.spawn(task);
                    } else {
                        self.start_serving(&rt, task);
                    }
                }
                // The thread died between notification and receipt, or a signal interrupted us.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINTR)) => continue,
                Err(e) => {
                    tracing::error!(cause = %e, "receiving a seccomp notification failed");
                    break;
                }
            }
        }
    }

    /// Runs a call's handler on the receiving thread until it first waits, and hands it to the runtime only
    /// then. A call answered without waiting (a lookup from the attribute cache, a path this machine serves)
    /// is then answered at once: handing every call over cost a wake-up of the runtime's thread, often on
    /// the other CPU (~20 µs on the development VM, more than the kernel's part of a notification). A
    /// handler that panics in that first step is dropped here, which answers its call `EIO`
    /// ([`AnswerIfAbandoned`]), as tokio does for one that panics later.
    fn start_serving(&self, rt: &tokio::runtime::Handle, mut task: Pin<Box<dyn Future<Output = ()> + Send>>) {
        let _runtime = rt.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // The runtime polls a handed-over task at once, with its own waker, which the future's resources
        // then keep in place of this no-op one.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.as_mut().poll(&mut cx))) {
            Ok(std::task::Poll::Ready(())) => {}
            Ok(std::task::Poll::Pending) => {
                rt.spawn(task);
            }
            Err(_) => drop(task),
        }
    }

    /// The fast path, on the receiving thread: a read or seek of a home file whose content is in its
    /// placeholder (and, while a fill runs, whose bytes are there) is left to the kernel at once, without a
    /// hand-off to the runtime (which may be busy filling). False when the call needs the full path.
    fn serve_from_copy(&self, notif: &seccomp::Notif, order: u64) -> bool {
        let started = std::time::Instant::now();
        let (tid, nr, args) = (notif.pid, i64::from(notif.data.nr), notif.data.args);
        let Some(h) = syscalls::io::copy_serves(self, tid, nr, &args) else { return false };
        if let Some(t) = &self.tracer {
            let args =
                if t.traces() { crate::trace::decode::args(tid, nr, &args) } else { serde_json::Value::Null };
            let pid = self.procs.tgid_of(tid);
            let who = Who { pid, tid, home_pid: self.procs.home_ids(pid).map(|(p, _)| p) };
            t.record(order, who, nr, args, Ending::Local, started.elapsed(), Default::default());
        }
        drop(h);
        if let Err(e) = seccomp::respond(self.listener.as_fd(), notif.id, Reply::Continue) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!(nr, cause = %e, "answering a notification failed");
            }
        }
        true
    }

    /// Serves notification number `order` (in order of receipt, which is each thread's call order).
    async fn serve(self: Arc<Self>, notif: seccomp::Notif, order: u64) {
        let id = notif.id;
        let nr = notif.data.nr;
        let (tid, raw_args) = (notif.pid, notif.data.args);
        let started = std::time::Instant::now();
        let args = match &self.tracer {
            Some(t) if t.traces() => crate::trace::decode::args(tid, i64::from(nr), &raw_args),
            _ => serde_json::Value::Null,
        };
        if self.wall_clock_offset() != 0 {
            self.route_vdso_if_pending(tid);
        }
        let guard = AnswerIfAbandoned { listener: self.listener.as_fd(), id, nr };
        let outcome = syscalls::dispatch(&self, &notif).await;
        std::mem::forget(guard);
        let (reply, ending, cost) = match outcome {
            (Ok(Action::Value(v)), c) => (Some(Reply::Value(v)), Ending::Value(v), c),
            (Ok(Action::Continue), c) => (Some(Reply::Continue), Ending::Local, c),
            (Ok(Action::Answered(fd)), c) => (None, Ending::Value(fd), c),
            (Ok(Action::Continued), c) => (None, Ending::Local, c),
            (Err(errno), c) => (Some(Reply::Errno(errno.raw())), Ending::Errno(errno), c),
        };
        tracing::trace!(nr, ?reply, "answer");
        // Recorded before the answer, so a process's lines are in the order of its calls; except a call its
        // handler answered itself (an open installs its placeholder and answers), recorded when the handler
        // ends, possibly after the program's next call: read a trace in `seq` order (as `trace-diff` does).
        if let Some(t) = &self.tracer {
            let pid = self.procs.tgid_of(tid);
            let who = Who { pid, tid, home_pid: self.procs.home_ids(pid).map(|(p, _)| p) };
            let cost = if self.home_is_local { Default::default() } else { cost };
            t.record(order, who, i64::from(nr), args, ending, started.elapsed(), cost);
        }
        if let Some(reply) = reply {
            if let Err(e) = seccomp::respond(self.listener.as_fd(), id, reply) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::warn!(nr, cause = %e, "answering a notification failed");
                }
            }
        }
    }

    /// Closes at home the handles no process of the job holds any more, and forgets exited processes.
    /// Collects the handles of file `inode` that the job closed, now (see [`FdTable::collect_with`]): a lock
    /// they hold at home, or a write access, is the job's no more.
    pub async fn collect_file(&self, inode: (u64, u64)) {
        let job = crate::launch::job_pids(self.init.pid);
        let dead = self.fds.collect_with(&job, Some(inode));
        self.close_at_home(&dead).await;
    }

    async fn close_at_home(&self, dead: &[u64]) {
        let root = pb::Proc { id: 0, parent: 0 };
        for batch in dead.chunks(CLOSE_BATCH) {
            let close = pb::Close { handle: batch[0], more: batch[1..].to_vec() };
            let _ = self.link.call(root, Op::Close(close)).await;
        }
    }

    pub async fn collect(&self, job: &[u32]) {
        // Before the handles go: the stores of mappings undone are written through them.
        self.shared_maps.collect(self, job).await;
        let dead = self.fds.collect(job);
        let mut gone = self.procs.reap();
        self.limits.reap();
        if self.stopping.load(Ordering::SeqCst) {
            // The job is over: whatever was announced and never seen is gone too.
            gone.extend(self.procs.reap_announced(Duration::ZERO, |_| false));
        } else if self.init.in_pid_ns {
            gone.extend(self.procs.reap_announced(ANNOUNCED_TTL, |nspid| self.init.ns_has(nspid as i32)));
        }
        self.close_at_home(&dead).await;
        for (id, end) in gone {
            self.forget_proc(id, end).await;
        }
    }

    /// Tells home that proc `id` ended (`end`): its deputy ends the same way.
    pub async fn forget_proc(&self, id: u64, end: crate::procs::End) {
        self.cwds.forget(id);
        let root = pb::Proc { id: 0, parent: 0 };
        let _ = self.link.call(root, Op::ForgetProc(pb::ForgetProc { id, end: Some(end.to_wire()) })).await;
    }

    /// Delivers a signal sent at home to the deputy of `proc` to its process (`None`: no such process).
    pub fn deliver_signal(&self, proc: u64, signal: i32) -> Option<std::io::Result<()>> {
        match self.procs.local_of_proc(proc) {
            Some(tgid) => Some(crate::sys::kill(tgid as i32, signal)),
            // Forked but without a call yet: known by its pid in the job's namespace.
            None => self.procs.announced_nspid(proc).map(|n| self.init.signal(n as i32, signal)),
        }
    }

    /// Delivers the signals sent at home to the deputies of the job's processes.
    pub async fn deliver_events(self: Arc<Self>) {
        let Some(mut events) = self.link.take_events() else { return };
        while let Some(event) = events.recv().await {
            if self.spares.signalled(event.proc, event.signal) {
                tracing::debug!(
                    proc = event.proc,
                    signal = event.signal,
                    "signal from home for a spare deputy"
                );
                continue;
            }
            match self.deliver_signal(event.proc, event.signal) {
                Some(Ok(())) => tracing::debug!(proc = event.proc, signal = event.signal, "signal from home"),
                Some(Err(e)) => tracing::debug!(cause = %e, "delivering a signal from home failed"),
                None => tracing::debug!(proc = event.proc, "signal from home for a process already gone"),
            }
        }
    }

    /// A handle was made: after a burst of them (a program opening and closing many files faster than the
    /// collector's period) the collector runs at once, so home does not hold thousands of closed files.
    pub fn handle_made(&self) {
        if self.fds.made_since_collection() >= COLLECT_AFTER {
            self.collect_soon.notify_one();
        }
    }

    /// Collects over the job's processes now (also when home ran out of descriptors: some may be held for
    /// the job's closed files).
    pub async fn collect_now(&self) {
        let job = crate::launch::job_pids(self.init.pid);
        self.collect(&job).await;
    }

    /// Runs [`Supervisor::collect`] every `period` while the job runs, or sooner when asked.
    pub async fn collector(self: Arc<Self>, period: Duration) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = self.collect_soon.notified() => {}
            }
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            self.collect_now().await;
        }
    }
}
