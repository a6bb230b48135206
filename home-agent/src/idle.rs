//! Polling before a runtime's worker sleeps: the user-space form of the kernel's guest halt polling, for
//! both ends of the link (the agent and remote-shim install it on their runtimes).
//!
//! A forwarded call is a chain of wake-ups across processes (shim → agent → shim). On a VM each one that
//! lands on an idle vCPU costs ~20-35 µs (the vCPU has halted and the host must wake it), more than the
//! work itself: on the development VM a 32-byte TCP ping-pong between two CPUs takes ~45 µs when the
//! receiver sleeps and ~10 µs when it polls. So before a worker parks, it polls the sockets that calls and
//! replies come on ([`Watched`] connections) for a while, and data arriving meanwhile is taken without a
//! wake-up.
//!
//! How long it polls adapts as the kernel's haltpoll governor does: when a worker that polled in vain was
//! woken within [`MAX_POLL`], a longer poll would have caught it, so the budget doubles (from
//! [`START_POLL`]); when it slept longer, polling was waste, so the budget halves, to zero. An idle job or
//! agent, or one a millisecond away from the other end, soon stops polling. One worker polls at a time; it
//! stops as soon as the runtime has work queued by another thread (a task handed over), and yields the CPU
//! at each turn, so a runnable thread of the job or of the agent is not kept waiting.

use crate::sys::{self, Readiness};
use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The longest poll (the kernel's haltpoll default).
pub const MAX_POLL: Duration = Duration::from_micros(200);
/// The first budget after none, and the shortest.
pub const START_POLL: Duration = Duration::from_micros(25);

/// How long to poll before sleeping, adapted to how long the sleeps that followed vain polls were.
struct Budget(AtomicU64);

impl Budget {
    fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    /// After a park that polled in vain (or not at all) and then slept: `idle` in all.
    fn slept(&self, idle: Duration) {
        let (start, max) = (START_POLL.as_nanos() as u64, MAX_POLL.as_nanos() as u64);
        let budget = self.0.load(Ordering::Relaxed);
        let next = if idle <= MAX_POLL {
            (budget * 2).clamp(start, max)
        } else if budget / 2 < start {
            0
        } else {
            budget / 2
        };
        self.0.store(next, Ordering::Relaxed);
    }
}

/// The runtime's sockets and its budget (one per process).
struct IdlePoll {
    fds: Mutex<Vec<RawFd>>,
    budget: Budget,
    polling: AtomicBool,
    runtime: OnceLock<tokio::runtime::Handle>,
}

static IDLE: IdlePoll = IdlePoll {
    fds: Mutex::new(Vec::new()),
    budget: Budget(AtomicU64::new(0)),
    polling: AtomicBool::new(false),
    runtime: OnceLock::new(),
};

thread_local! {
    /// When this worker began to poll in vain (so it then slept): read when it is woken.
    static IDLE_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Adds the idle poll to a multi-thread runtime's workers; call [`attach`] once it is built.
pub fn install(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder.on_thread_park(before_park).on_thread_unpark(after_unpark)
}

/// Lets the idle poll stop as soon as the runtime has work queued from outside its workers.
pub fn attach(runtime: tokio::runtime::Handle) {
    let _ = IDLE.runtime.set(runtime);
}

/// A connection of the link whose socket the idle poll watches while it is open: dropping it stops the
/// watch before the socket is closed, so its number, once reused (say for a regular file, always
/// readable), is not polled in its place.
pub struct Watched<T> {
    inner: T,
    fd: RawFd,
}

impl<T: AsRawFd> Watched<T> {
    pub fn new(inner: T) -> Watched<T> {
        let fd = inner.as_raw_fd();
        let mut fds = IDLE.fds.lock().unwrap_or_else(PoisonError::into_inner);
        if !fds.contains(&fd) {
            fds.push(fd);
        }
        Watched { inner, fd }
    }
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        IDLE.fds.lock().unwrap_or_else(PoisonError::into_inner).retain(|&fd| fd != self.fd);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Watched<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

fn before_park() {
    let budget = IDLE.budget.get();
    let begun = Instant::now();
    IDLE_SINCE.set(Some(begun));
    if budget.is_zero() || IDLE.polling.swap(true, Ordering::Acquire) {
        return;
    }
    let fds = IDLE.fds.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let mut found = Vec::with_capacity(fds.len());
    while !fds.is_empty() {
        sys::poll_now(&fds, &mut found);
        if found.contains(&Readiness::Gone) {
            forget_gone(&fds, &found);
        }
        if found.contains(&Readiness::Readable) || queued_work() {
            IDLE_SINCE.set(None);
            break;
        }
        if begun.elapsed() >= budget {
            break;
        }
        sys::yield_cpu();
    }
    IDLE.polling.store(false, Ordering::Release);
}

fn after_unpark() {
    if let Some(since) = IDLE_SINCE.take() {
        IDLE.budget.slept(since.elapsed());
    }
}

fn queued_work() -> bool {
    IDLE.runtime.get().is_some_and(|rt| rt.metrics().global_queue_depth() > 0)
}

fn forget_gone(fds: &[RawFd], found: &[Readiness]) {
    let mut watched = IDLE.fds.lock().unwrap_or_else(PoisonError::into_inner);
    for (fd, _) in fds.iter().zip(found).filter(|(_, r)| **r == Readiness::Gone) {
        watched.retain(|w| w != fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_budget_grows_after_short_sleeps_and_falls_to_none_after_long_ones() {
        let budget = Budget(AtomicU64::new(0));
        budget.slept(Duration::from_micros(30));
        assert_eq!(budget.get(), START_POLL);
        for _ in 0..10 {
            budget.slept(Duration::from_micros(30));
        }
        assert_eq!(budget.get(), MAX_POLL);
        budget.slept(MAX_POLL + Duration::from_micros(1));
        assert_eq!(budget.get(), MAX_POLL / 2);
        for _ in 0..10 {
            budget.slept(Duration::from_millis(5));
        }
        assert_eq!(budget.get(), Duration::ZERO);
    }

    #[test]
    fn a_connection_is_polled_until_it_is_dropped() {
        let watched = || IDLE.fds.lock().unwrap().clone();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let connection = Watched::new(a);
        assert!(watched().contains(&fd));
        drop(connection);
        assert!(!watched().contains(&fd), "a closed socket's number stays polled");
    }

    /// A runtime that polls before parking still runs what other threads hand it, and reads what
    /// arrives on a watched socket, whether it came while the worker polled or slept.
    #[test]
    fn a_polling_runtime_misses_neither_handed_work_nor_socket_data() {
        let rt = install(&mut tokio::runtime::Builder::new_multi_thread())
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        attach(rt.handle().clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = rt.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = Watched::new(tokio::net::TcpStream::connect(addr).await.unwrap());
            let mut buf = [0u8; 1];
            while stream.read_exact(&mut buf).await.is_ok() {
                stream.write_all(&buf).await.unwrap();
            }
        });
        let (mut peer, _) = listener.accept().unwrap();
        for round in 0..200u32 {
            // Some answers come within the poll, some after the worker slept.
            if round % 50 == 49 {
                std::thread::sleep(Duration::from_millis(2));
            }
            peer.write_all(&[round as u8]).unwrap();
            let mut back = [0u8; 1];
            peer.read_exact(&mut back).unwrap();
            assert_eq!(back[0], round as u8);
            let (tx, rx) = std::sync::mpsc::channel();
            rt.spawn(async move { tx.send(round).unwrap() });
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(round));
        }
        drop(peer);
        rt.block_on(echo).unwrap();
    }
}
