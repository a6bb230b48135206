//! A session's deputies (see [`crate::deputy`]): one per proc, started on the proc's first call, ended as
//! the process ended (`ForgetProc`) or killed when the session closes.
//!
//! Each deputy has two watchers: a task that reads the signals it forwards and sends each as an unsolicited
//! [`Event`] through the session's outbox (kept until the shim has it, like a reply), and a thread that waits on its pidfd (stops cannot be learned
//! any other way) and reaps it. A SIGKILL or SIGSTOP sent to a deputy at home, which the deputy cannot
//! catch, is reported from that wait. SIGCONT needs no such report: a deputy continued from a stop
//! receives the SIGCONT as well and forwards it itself.

use crate::deputy;
use crate::outbox::Outbox;
use crate::session::MAX_PROCS;
use crate::sys::{self, ChildEvent};
use homeward_proto::pb::{CallReply, Event, Proc};
use homeward_proto::Errno;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::AsyncReadExt;
use tracing::{debug, warn};

/// Stack of a waiter thread: it only waits, logs and sends.
const WAITER_STACK: usize = 128 << 10;

/// How a deputy ends.
#[derive(Clone, Copy, Debug)]
pub enum End {
    Exit(i32),
    Signal(i32),
}

/// The pids of every deputy of this process (all sessions) not yet reaped.
static LIVE: Mutex<std::collections::BTreeSet<i32>> = Mutex::new(std::collections::BTreeSet::new());

/// Whether `pid` is a deputy of any session of this agent.
pub fn is_deputy(pid: i32) -> bool {
    lock(&LIVE).contains(&pid)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where a session's events go: its outbox.
#[derive(Clone)]
struct Sink(Arc<Outbox>);

impl Sink {
    fn reply(proc: u64, signal: i32) -> CallReply {
        CallReply { seq: 0, event: Some(Event { proc, signal, ..Default::default() }), ..Default::default() }
    }

    /// Sends from a thread that is not an async worker (a waiter, an executor's blocking thread).
    fn emit_blocking(&self, proc: u64, signal: i32) {
        debug!(proc, signal, "signal at home");
        self.0.blocking_send(Sink::reply(proc, signal));
    }

    async fn emit(&self, proc: u64, signal: i32) {
        debug!(proc, signal, "signal at home");
        self.0.send(Sink::reply(proc, signal)).await;
    }
}

/// What the agent and a deputy's watchers share.
#[derive(Default)]
struct Watch {
    /// The agent ended the deputy: what it does from now on is no news for the program.
    ending: AtomicBool,
    /// Stopped (by SIGSTOP): it reads commands only once continued.
    stopped: AtomicBool,
}

struct Deputy {
    pid: i32,
    /// The parent proc and its deputy's pid, when the proc was created by a proc of this session.
    parent: Option<(u64, i32)>,
    pidfd: Arc<OwnedFd>,
    control: UnixStream,
    watch: Arc<Watch>,
}

impl Deputy {
    /// Ends the deputy as the process ended.
    fn end(self, how: End) {
        self.watch.ending.store(true, SeqCst);
        let (kind, value) = match how {
            End::Exit(code) => (deputy::EXIT, code),
            End::Signal(signal) => (deputy::KILL, signal),
        };
        let v = value.to_le_bytes();
        if sys::send_all(self.control.as_fd(), &[kind, v[0], v[1], v[2], v[3]]).is_err() {
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        }
        // A stopped deputy reads the command once continued. The waiter checks `ending` after setting
        // `stopped`, and this checks `stopped` after setting `ending`: one of the two sees the other.
        if self.watch.stopped.load(SeqCst) {
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGCONT);
        }
    }
}

impl Drop for Deputy {
    /// Kills the deputy unless it was told how to end; its waiter reaps it.
    fn drop(&mut self) {
        if !self.watch.ending.swap(true, SeqCst) {
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        }
        let _ = self.control.shutdown(std::net::Shutdown::Both);
    }
}

/// The deputies of one session.
pub struct Deputies {
    description: String,
    runtime: tokio::runtime::Handle,
    sink: Sink,
    table: Mutex<HashMap<u64, Deputy>>,
    /// Deputies started ahead of the forks that will adopt them (`Identity.spare`), by proc.
    spares: Mutex<HashMap<u64, Deputy>>,
    closed: AtomicBool,
}

/// Spare deputies a session may hold at once.
const MAX_SPARES: usize = 8;

impl Deputies {
    /// Deputies named after `description`, reporting to `outbox`; their signal readers run on `runtime`.
    pub fn new(description: &str, outbox: Arc<Outbox>, runtime: tokio::runtime::Handle) -> Deputies {
        Deputies {
            description: description.to_string(),
            runtime,
            sink: Sink(outbox),
            table: Mutex::default(),
            spares: Mutex::default(),
            closed: AtomicBool::new(false),
        }
    }

    /// Starts the deputy of `proc` unless it has one. Proc 0 (the shim's housekeeping calls) has none.
    pub fn ensure(&self, proc: Proc) -> Result<(), Errno> {
        if proc.id == 0 {
            return Ok(());
        }
        let parent = {
            let mut table = lock(&self.table);
            if table.contains_key(&proc.id) {
                return Ok(());
            }
            let parent = table.get(&proc.parent).map(|p| (proc.parent, p.pid));
            // A spare started for this proc: adopted, as its parent's child.
            if let Some(mut spare) = lock(&self.spares).remove(&proc.id) {
                spare.parent = parent;
                if !self.closed.load(SeqCst) {
                    table.insert(proc.id, spare);
                }
                return Ok(());
            }
            if table.len() >= MAX_PROCS {
                return Err(Errno(libc::EAGAIN as u16));
            }
            parent
        };
        // Started without the lock held: a start takes a fork and an exec.
        let deputy = self.start(proc.id, parent)?;
        let mut table = lock(&self.table);
        // Unless another thread of the same new process won the race, or the session closed meanwhile:
        // then this deputy is dropped, hence killed and reaped.
        if !self.closed.load(SeqCst) && !table.contains_key(&proc.id) {
            table.insert(proc.id, deputy);
        }
        Ok(())
    }

    /// Starts a deputy for `proc` ahead of its fork (`Identity.spare`); its pid.
    pub fn start_spare(&self, proc: u64) -> Result<i32, Errno> {
        // (The table's lock is always taken before the spares'.)
        {
            let table = lock(&self.table);
            let spares = lock(&self.spares);
            if spares.contains_key(&proc) || table.contains_key(&proc) {
                return Err(Errno::EINVAL);
            }
            if spares.len() >= MAX_SPARES || table.len() >= MAX_PROCS {
                return Err(Errno(libc::EAGAIN as u16));
            }
        }
        // Started without the locks held; dropped (killed and reaped) if it lost a race.
        let deputy = self.start(proc, None)?;
        let pid = deputy.pid;
        let table = lock(&self.table);
        let mut spares = lock(&self.spares);
        if self.closed.load(SeqCst) || spares.contains_key(&proc) || table.contains_key(&proc) {
            return Err(Errno::EINVAL);
        }
        spares.insert(proc, deputy);
        Ok(pid)
    }

    fn start(&self, proc: u64, parent: Option<(u64, i32)>) -> Result<Deputy, Errno> {
        let spawned = deputy::spawn(&deputy::name(proc, &self.description)).map_err(|e| {
            warn!(proc, cause = %e, "cannot start a deputy");
            match e.raw_os_error() {
                Some(n @ (libc::EAGAIN | libc::ENOMEM)) => Errno(n as u16),
                _ => Errno(libc::EAGAIN as u16),
            }
        })?;
        let pidfd = Arc::new(spawned.pidfd);
        let watch = Arc::new(Watch::default());
        let (pid, reader) = (spawned.pid, spawned.control.try_clone());
        let deputy =
            Deputy { pid, parent, pidfd: pidfd.clone(), control: spawned.control, watch: watch.clone() };
        let sink = self.sink.clone();
        lock(&LIVE).insert(pid);
        let waiter = std::thread::Builder::new().name("deputy-wait".into()).stack_size(WAITER_STACK).spawn(
            move || {
                wait(proc, pid, &pidfd, &watch, &sink);
                lock(&LIVE).remove(&pid);
            },
        );
        if let Err(e) = waiter {
            warn!(proc, cause = %e, "cannot start a deputy's waiter");
            let pidfd = deputy.pidfd.clone();
            drop(deputy);
            while matches!(sys::wait_pidfd(pidfd.as_fd()), Ok(ChildEvent::Stopped(_) | ChildEvent::Continued))
            {
            }
            lock(&LIVE).remove(&pid);
            return Err(Errno(libc::EAGAIN as u16));
        }
        // From here on the waiter reaps the deputy, whatever happens.
        let reader = reader.and_then(|r| {
            r.set_nonblocking(true)?;
            let _runtime = self.runtime.enter();
            tokio::net::UnixStream::from_std(r)
        });
        let reader = reader.map_err(|e| {
            warn!(proc, cause = %e, "cannot watch a deputy's signals");
            Errno(libc::EAGAIN as u16)
        })?;
        self.runtime.spawn(forward(proc, reader, deputy.watch.clone(), self.sink.clone()));
        debug!(proc, pid, "deputy started");
        Ok(deputy)
    }

    /// (pid, ppid) of `proc` at home: its deputy's pid, and its parent proc's deputy's pid while that
    /// parent lives, else this process's pid (the parent of the job's first process, and the new parent of
    /// orphans, as init is).
    pub fn identity(&self, proc: u64) -> Option<(i32, i32)> {
        let table = lock(&self.table);
        let deputy = table.get(&proc)?;
        let ppid = deputy
            .parent
            .filter(|(id, pid)| table.get(id).is_some_and(|p| p.pid == *pid))
            .map_or(std::process::id() as i32, |(_, pid)| pid);
        Some((deputy.pid, ppid))
    }

    /// The proc whose deputy has home pid `pid`, if it is one of this session's.
    pub fn proc_of(&self, pid: i32) -> Option<u64> {
        lock(&self.table).iter().find(|(_, d)| d.pid == pid).map(|(id, _)| *id)
    }

    /// Sends `signal` to `proc` as if its deputy had received it.
    pub fn deliver(&self, proc: u64, signal: i32) {
        self.sink.emit_blocking(proc, signal);
    }

    /// Ends `proc`'s deputy as the process ended.
    pub fn end(&self, proc: u64, how: End) {
        let deputy = lock(&self.table).remove(&proc);
        if let Some(deputy) = deputy {
            deputy.end(how);
        }
    }

    /// Kills every deputy (their waiters reap them; the outbox, closed, sends nothing); starts no more.
    pub fn close(&self) {
        let (table, spares) = {
            let mut table = lock(&self.table);
            self.closed.store(true, SeqCst);
            (std::mem::take(&mut *table), std::mem::take(&mut *lock(&self.spares)))
        };
        drop(table);
        drop(spares);
    }
}

/// Forwards the signals a deputy reports until it is gone.
async fn forward(proc: u64, mut control: tokio::net::UnixStream, watch: Arc<Watch>, sink: Sink) {
    let mut signal = [0u8; 4];
    while control.read_exact(&mut signal).await.is_ok() {
        if !watch.ending.load(SeqCst) {
            sink.emit(proc, i32::from_le_bytes(signal)).await;
        }
    }
}

/// Signals a deputy dies by only when it is broken, never because someone at home sent them.
fn is_fault(signal: i32) -> bool {
    matches!(
        signal,
        libc::SIGSEGV
            | libc::SIGBUS
            | libc::SIGILL
            | libc::SIGFPE
            | libc::SIGABRT
            | libc::SIGSYS
            | libc::SIGTRAP
    )
}

/// Waits on a deputy until it is gone, and reaps it; reports what it could not forward itself.
fn wait(proc: u64, pid: i32, pidfd: &OwnedFd, watch: &Watch, sink: &Sink) {
    loop {
        let ending = || watch.ending.load(SeqCst);
        match sys::wait_pidfd(pidfd.as_fd()) {
            Ok(ChildEvent::Stopped(_)) => {
                watch.stopped.store(true, SeqCst);
                if ending() {
                    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGCONT);
                } else {
                    sink.emit_blocking(proc, libc::SIGSTOP);
                }
            }
            Ok(ChildEvent::Continued) => watch.stopped.store(false, SeqCst),
            Ok(ChildEvent::Killed(signal)) if !ending() && !is_fault(signal) => {
                return sink.emit_blocking(proc, signal);
            }
            Ok(end) => {
                if !ending() {
                    warn!(
                        proc,
                        pid,
                        ?end,
                        "a deputy ended by itself: is the agent's executable one that \
                        calls home_agent::deputy::run_if_deputy()?"
                    );
                }
                return;
            }
            Err(e) if e.raw() == libc::EINTR => {}
            // ECHILD: reaped by someone else (a `waitpid(-1)` of the process embedding the agent).
            Err(e) => return debug!(proc, pid, cause = %e, "deputy gone"),
        }
    }
}
