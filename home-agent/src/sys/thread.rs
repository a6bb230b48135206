//! Thread-level mechanisms: a per-thread umask, interrupting blocked calls, randomness.

use super::cvt_long;
use homeward_proto::Errno;
use std::cell::Cell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

/// A random `u64` from the kernel's CSPRNG (`getrandom(2)`).
pub fn random_u64() -> Result<u64, Errno> {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` has `rest.len()` writable bytes, the length we pass.
        let n = cvt_long(unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) } as i64);
        match n {
            Ok(n) => filled += n as usize,
            Err(e) if e.raw() == libc::EINTR => {}
            Err(e) => return Err(e),
        }
    }
    Ok(u64::from_ne_bytes(buf))
}

thread_local! {
    /// Whether this thread has its own umask (`unshare(CLONE_FS)` done and succeeded).
    static OWN_FS: Cell<Option<bool>> = const { Cell::new(None) };
}

fn own_fs() -> bool {
    OWN_FS.with(|own| {
        if let Some(done) = own.get() {
            return done;
        }
        // SAFETY: unshare(CLONE_FS) gives this thread a private copy of its cwd, root and umask; it touches
        // no memory of ours, and the agent never uses the process cwd (every path call is *at a dirfd).
        let ok = unsafe { libc::unshare(libc::CLONE_FS) } == 0;
        if !ok {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(cause = %Errno::last(), "unshare(CLONE_FS) failed: applying umasks by hand \
                    (default ACLs of parent directories then see the masked mode)");
            }
        }
        own.set(Some(ok));
        ok
    })
}

/// Makes the kernel apply `mask` to files this thread creates, until dropped.
///
/// The umask is per process in Linux but per remote process here, so each thread that creates files gets
/// its own `fs_struct` (`unshare(CLONE_FS)`, once) and sets the mask around each call, restoring it after.
/// This keeps the kernel's semantics exactly (a parent's default ACL overrides the umask) and leaves the
/// process umask alone, which matters when the agent runs inside remote-shim. Where `unshare` is refused,
/// [`UmaskScope::mode`] masks the mode by hand instead.
pub struct UmaskScope {
    mask: u32,
    old: Option<libc::mode_t>,
    _same_thread: PhantomData<*const ()>,
}

impl UmaskScope {
    pub fn enter(mask: u32) -> UmaskScope {
        let old = own_fs().then(|| {
            // SAFETY: umask only swaps this thread's (unshared) file-creation mask; no memory is involved.
            unsafe { libc::umask(mask & 0o777) }
        });
        UmaskScope { mask, old, _same_thread: PhantomData }
    }

    /// The mode to pass to the creating call.
    pub fn mode(&self, mode: u32) -> u32 {
        if self.old.is_some() {
            mode
        } else {
            mode & !self.mask
        }
    }
}

impl Drop for UmaskScope {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            // SAFETY: as in `enter`; this restores the thread's mask (the guard is !Send: same thread).
            unsafe { libc::umask(old) };
        }
    }
}

/// The signal that interrupts a blocked call: a real-time signal nothing else in the agent uses.
fn interrupt_signal() -> libc::c_int {
    libc::SIGRTMAX() - 3
}

extern "C" fn on_interrupt(_: libc::c_int) {}

static HANDLER: Once = Once::new();
static HANDLER_OK: AtomicBool = AtomicBool::new(false);

/// Installs a do-nothing handler without `SA_RESTART` for the interrupt signal, so that delivering it to a
/// thread blocked in `read`, `F_OFD_SETLKW` or `flock` makes the call return `EINTR`. Leaves a handler that
/// someone else installed alone (interrupts are then off). Idempotent.
pub fn install_interrupt_handler() {
    HANDLER.call_once(|| {
        let sig = interrupt_signal();
        // SAFETY: `sigaction` is a plain C struct; all-zero is a valid value (empty mask, no flags).
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: both pointers point at live structs; the handler is an `extern "C"` function that does
        // nothing and so is async-signal-safe. Querying first with a null `act` changes nothing.
        let ok = unsafe {
            libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_DFL
                && libc::sigaction(sig, &act, std::ptr::null_mut()) == 0
        };
        if !ok {
            tracing::warn!(
                signal = sig,
                "interrupt signal unavailable: blocked calls of closed sessions stay blocked"
            );
        }
        HANDLER_OK.store(ok, Ordering::Relaxed);
    });
}

/// The threads currently executing calls for one owner (a session), so that they can be interrupted.
#[derive(Default)]
pub struct Inflight {
    /// By registration: the call's seq (0: none) and its thread.
    threads: Mutex<HashMap<u64, (u64, libc::pthread_t)>>,
    next: AtomicU64,
}

/// Registration of the current thread in an [`Inflight`]; deregisters on drop, on the same thread.
pub struct InflightGuard<'a> {
    set: &'a Inflight,
    key: u64,
    _same_thread: PhantomData<*const ()>,
}

impl Inflight {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (u64, libc::pthread_t)>> {
        self.threads.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers the calling thread, running call `seq`, until the guard is dropped.
    pub fn enter(&self, seq: u64) -> InflightGuard<'_> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().insert(key, (seq, me));
        InflightGuard { set: self, key, _same_thread: PhantomData }
    }

    /// Sends the interrupt signal to the thread running call `seq`; false when none is (or nothing can
    /// be interrupted). As for [`Inflight::interrupt_all`], a thread not yet blocked may block afterwards.
    pub fn interrupt(&self, seq: u64) -> bool {
        if !HANDLER_OK.load(Ordering::Relaxed) || seq == 0 {
            return false;
        }
        let threads = self.lock();
        let mut found = false;
        for (_, thread) in threads.values().filter(|(s, _)| *s == seq) {
            // SAFETY: as in `interrupt_all`: registered, hence alive while we hold the lock.
            unsafe { libc::pthread_kill(*thread, interrupt_signal()) };
            found = true;
        }
        found
    }

    /// Sends the interrupt signal to every registered thread; returns how many there were.
    ///
    /// The lock is held while signalling: a registered thread cannot deregister, hence cannot have exited
    /// or moved on to another call, until every signal is queued, and a queued signal is delivered before
    /// that thread runs past the lock. A thread not yet blocked when signalled may block afterwards, so
    /// callers repeat until none is left.
    /// Without the signal handler nothing can be interrupted and this returns 0.
    pub fn interrupt_all(&self) -> usize {
        if !HANDLER_OK.load(Ordering::Relaxed) {
            return 0;
        }
        let threads = self.lock();
        for (_, thread) in threads.values() {
            // SAFETY: the thread is registered, so it is alive (its guard, dropped on that thread before it
            // returns, needs the lock we hold); the signal has a do-nothing handler installed.
            unsafe { libc::pthread_kill(*thread, interrupt_signal()) };
        }
        threads.len()
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}
