//! One session's state: its handle table, the per-process cwd and umask, and the processes' deputies.
//!
//! A handle is a number on the wire that names an `OwnedFd` of this session; handles are per session, so
//! a session can never name another's files. Handle 0 is never allocated: in a `Dir` it means "the cwd".

use crate::confine::Allow;
use crate::deputies::{Deputies, End};
use crate::outbox::Outbox;
use crate::sys;
use homeward_proto::pb::{CallReply, Proc};
use homeward_proto::Errno;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most handles a session holds at once; one more open gets `EMFILE`.
pub const MAX_HANDLES: usize = 65536;
/// Most processes a session tracks at once; a further new process gets `EAGAIN`, as fork would.
pub const MAX_PROCS: usize = 65536;

/// A process's state at home.
#[derive(Clone)]
pub struct ProcState {
    /// The cwd, as an `O_PATH | O_DIRECTORY` descriptor.
    pub cwd: Arc<OwnedFd>,
    pub umask: u32,
}

/// The calling process of one request, with its state as the request started.
pub struct ProcCtx {
    pub id: u64,
    pub cwd: Arc<OwnedFd>,
    pub umask: u32,
}

pub struct Session {
    pub id: u64,
    handles: Mutex<HashMap<u64, Arc<OwnedFd>>>,
    next_handle: AtomicU64,
    procs: Mutex<HashMap<u64, ProcState>>,
    initial: ProcState,
    closed: AtomicBool,
    inflight: sys::Inflight,
    /// `None` for sessions made without deputies (the executors' unit tests).
    deputies: Option<Deputies>,
    /// Leases on lookups ([`crate::leases`]).
    pub leases: Arc<crate::leases::Leases>,
    /// What goes to the shim, kept until it has it; the calls running ([`crate::outbox`]).
    pub outbox: Arc<Outbox>,
    /// The directories its paths must stay beneath (`--allow`); `None`: unconfined.
    allow: Option<Arc<Allow>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking executor leaves the maps consistent (every update is a single insert or remove).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Session {
    pub fn new(id: u64, cwd: OwnedFd, umask: u32) -> Session {
        Session {
            id,
            handles: Mutex::default(),
            next_handle: AtomicU64::new(1),
            procs: Mutex::default(),
            initial: ProcState { cwd: Arc::new(cwd), umask: umask & 0o777 },
            closed: AtomicBool::new(false),
            inflight: sys::Inflight::default(),
            deputies: None,
            leases: Arc::default(),
            outbox: Arc::default(),
            allow: None,
        }
    }

    /// Confines the session's paths to the allowed directories ([`crate::confine`]).
    pub fn with_allow(mut self, allow: Option<Arc<Allow>>) -> Session {
        self.allow = allow;
        self
    }

    /// The allowed directories, when the session is confined.
    pub fn allow(&self) -> Option<&Allow> {
        self.allow.as_deref()
    }

    /// Gives every process of the session a deputy at home, named after `description`.
    pub fn with_deputies(mut self, description: &str, runtime: tokio::runtime::Handle) -> Session {
        self.deputies = Some(Deputies::new(description, self.outbox.clone(), runtime));
        self
    }

    /// The session's deputies, if it has them.
    pub fn deputies(&self) -> Option<&Deputies> {
        self.deputies.as_ref()
    }

    /// The state of `proc`, created on its first call as a copy of its parent's (or the session's start),
    /// when its deputy is started too.
    pub fn proc_ctx(&self, proc: Proc) -> Result<ProcCtx, Errno> {
        if let Some(state) = lock(&self.procs).get(&proc.id) {
            return Ok(ProcCtx { id: proc.id, cwd: state.cwd.clone(), umask: state.umask });
        }
        if lock(&self.procs).len() >= MAX_PROCS {
            return Err(Errno(libc::EAGAIN as u16));
        }
        if let Some(deputies) = &self.deputies {
            deputies.ensure(proc)?;
        }
        let mut procs = lock(&self.procs);
        let state = match procs.get(&proc.id) {
            Some(state) => state.clone(),
            None => {
                let state = procs.get(&proc.parent).unwrap_or(&self.initial).clone();
                procs.insert(proc.id, state.clone());
                state
            }
        };
        Ok(ProcCtx { id: proc.id, cwd: state.cwd, umask: state.umask })
    }

    /// Whether `proc` already has state here (a first call also starts its deputy).
    pub fn knows(&self, proc: u64) -> bool {
        lock(&self.procs).contains_key(&proc)
    }

    /// Replaces a process's cwd.
    pub fn set_cwd(&self, proc: u64, cwd: OwnedFd) {
        let mut procs = lock(&self.procs);
        let umask = procs.get(&proc).map_or(self.initial.umask, |s| s.umask);
        procs.insert(proc, ProcState { cwd: Arc::new(cwd), umask });
    }

    /// Sets a process's umask; returns the previous one.
    pub fn set_umask(&self, proc: u64, mask: u32) -> u32 {
        let mut procs = lock(&self.procs);
        let state = procs.entry(proc).or_insert_with(|| self.initial.clone());
        std::mem::replace(&mut state.umask, mask & 0o777)
    }

    /// Drops a process's state (it has ended) and ends its deputy the same way.
    pub fn forget_proc(&self, proc: u64, how: End) {
        lock(&self.procs).remove(&proc);
        if let Some(deputies) = &self.deputies {
            deputies.end(proc, how);
        }
    }

    /// The descriptor behind a handle; `EBADF` for a handle this session does not hold.
    pub fn handle(&self, handle: u64) -> Result<Arc<OwnedFd>, Errno> {
        lock(&self.handles).get(&handle).cloned().ok_or(Errno::EBADF)
    }

    /// `EMFILE` when the table is full (checked before opening, so nothing is created in vain).
    pub fn check_room(&self) -> Result<(), Errno> {
        if lock(&self.handles).len() >= MAX_HANDLES {
            return Err(Errno::EMFILE);
        }
        Ok(())
    }

    /// Registers a descriptor as a new handle.
    pub fn insert(&self, fd: OwnedFd) -> Result<u64, Errno> {
        let mut handles = lock(&self.handles);
        if handles.len() >= MAX_HANDLES {
            return Err(Errno::EMFILE);
        }
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        handles.insert(handle, Arc::new(fd));
        Ok(handle)
    }

    /// Forgets a handle. Its descriptor closes now, or when the last running call using it finishes.
    pub fn close_handle(&self, handle: u64) -> Result<(), Errno> {
        lock(&self.handles).remove(&handle).map(drop).ok_or(Errno::EBADF)
    }

    /// Runs one call on the current (blocking) thread, registered so that [`Session::interrupt`] can reach
    /// it; returns `None` without running it once the session is closed.
    /// `seq`: the call's number, if [`Session::interrupt_call`] may reach it (a call that may wait, see
    /// `effects::may_wait`), else 0.
    pub fn run(&self, seq: u64, f: impl FnOnce() -> CallReply) -> Option<CallReply> {
        let _registered = self.inflight.enter(seq);
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        Some(f())
    }

    /// Interrupts call `seq` (`Interrupt`) if it runs and may wait: its thread gets the interrupt signal,
    /// so a wait in the kernel ends with `EINTR`. True when one was signalled. A call not started yet is
    /// not reached: the shim asks again while it waits.
    pub fn interrupt_call(&self, seq: u64) -> bool {
        self.inflight.interrupt(seq)
    }

    /// Closes the session: no new call runs, every handle and cwd is dropped (which releases their locks
    /// unless a running call still uses the descriptor), every deputy is killed.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.outbox.close();
        self.leases.close();
        if let Some(deputies) = &self.deputies {
            deputies.close();
        }
        let handles = std::mem::take(&mut *lock(&self.handles));
        let procs = std::mem::take(&mut *lock(&self.procs));
        drop((handles, procs));
    }

    /// Interrupts the calls still running (after [`Session::close`]); returns how many there were.
    pub fn interrupt(&self) -> usize {
        self.inflight.interrupt_all()
    }
}
