//! Home files moved below the reserved range (`dup2(home_fd, 1)`, as a shell does for `> file`).
//! (A read-only copy is not pumped: [`crate::native::alias`].)
//!
//! The seccomp filter routes calls by descriptor number, and a number below the range is never notified,
//! so such an alias cannot be a placeholder. It becomes one end of a pipe whose other end the supervisor
//! pumps: bytes the program writes are written to the home handle (at its shared offset), and for a file
//! opened for reading, the home file's bytes are fed into the pipe. A file open for reading and writing
//! gets a socket pair instead, both ways: fed until its end (then the program reads end of file) and
//! drained; as standard output or error, only drained (a pipe). Before any other call goes home, the supervisor waits until every write pump is empty, so a
//! later call never overtakes earlier writes.
//! Limits: the alias is a pipe (or a socket) to `fstat` and `lseek` (`ESPIPE`), but at 1 and 2, where the
//! filter notifies those calls and the handlers serve them on the home handle; both ways, the feed reads
//! on from where the description stood (without moving it, so the program's writes land there) whatever
//! the program wrote meanwhile; and a write error at home after the program's write returned is reported
//! in the log only.

use crate::fdtable::Handle;
use crate::supervisor::Supervisor;
use crate::syscalls::{Action, Call, Outcome};
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::Errno;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::unix::AsyncFd;

/// Chunk size moved per home call.
const CHUNK: usize = 256 << 10;

/// A write pump's state, as seen by [`Pumps::flush`].
struct WritePump {
    pipe: Arc<AsyncFd<std::fs::File>>,
    busy: AtomicBool,
    done: AtomicBool,
}

#[derive(Default)]
pub struct Pumps {
    writers: Mutex<Vec<Arc<WritePump>>>,
    /// The drains (program → home), and the feeds (home → program).
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    feeds: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The job is over: a feed's read waiting at home is interrupted (`Interrupt`).
    stopping: AtomicBool,
    /// Pipe inode → the home handle it stands for, while its pump runs.
    aliases: Mutex<HashMap<u64, Arc<Handle>>>,
}

impl Pumps {
    /// The home handle behind a descriptor whose `/proc/PID/fd` link target is `link`, when it is one of our
    /// pumped pipes, so that a call naming the descriptor (`futimens(1, ...)`) reaches the home file.
    pub fn for_link(&self, link: &[u8]) -> Option<Arc<Handle>> {
        let inner = link.strip_prefix(b"pipe:[").or_else(|| link.strip_prefix(b"socket:["))?;
        let ino: u64 = std::str::from_utf8(inner.strip_suffix(b"]")?).ok()?.parse().ok()?;
        self.aliases.lock().unwrap_or_else(|p| p.into_inner()).get(&ino).cloned()
    }

    /// Waits until every write pump has forwarded what the program wrote so far.
    pub async fn flush(&self) {
        loop {
            let pending = {
                let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
                writers.retain(|w| !w.done.load(Ordering::SeqCst));
                writers.iter().any(|w| {
                    w.busy.load(Ordering::SeqCst)
                        || crate::sys::bytes_readable(w.pipe.get_ref().as_fd()).unwrap_or(0) > 0
                })
            };
            if !pending {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_micros(50)).await;
        }
    }

    /// One way of an alias is over; the alias is, once `ways` (what is left of its ways) is none.
    fn finished(&self, ino: u64, h: &Handle, ways: &AtomicUsize) {
        if ways.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.aliases.lock().unwrap_or_else(|p| p.into_inner()).remove(&ino);
        }
        h.pins.fetch_sub(1, Ordering::SeqCst);
    }

    /// At the end of the job, once the program's ends are closed: waits until what the program wrote is
    /// at home, and stops feeding (a feed may wait at home for ever: a fifo whose writer is the job's own
    /// handle, closed only after this, or one the job holds open both ways): home interrupts its read,
    /// and a feed that still has not ended after a second is dropped.
    pub async fn drain(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let feeds = std::mem::take(&mut *self.feeds.lock().unwrap_or_else(|p| p.into_inner()));
        for mut feed in feeds {
            if tokio::time::timeout(std::time::Duration::from_secs(1), &mut feed).await.is_err() {
                feed.abort();
            }
        }
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Installs a pipe end at `target` in the program for home handle `h`, and starts its pump.
pub async fn alias(call: &Call<'_>, h: &Arc<Handle>, target: u32, cloexec: bool) -> Outcome {
    let sup = call.sup;
    // The pump moves the description's offset at home without saying where to.
    h.behind.untrack();
    let accmode = h.flags & libc::O_ACCMODE;
    // Open both ways, standard output and error are written (a pipe from the program, as for a file opened
    // to write); any other number both ways.
    let output = target == 1 || target == 2;
    let (reading, writing) = (accmode != libc::O_WRONLY && !output, accmode != libc::O_RDONLY);
    // Both ways (`O_RDWR`: Python's `stdin=` a `TemporaryFile`, a shell's `<>`): a socket pair,
    // fed with the file and drained into it, the feed reading from where the description stands without
    // moving it, so the program's writes land there (`exec 3<> f; printf Z >&3`); one way, a pipe.
    let start = if reading && writing {
        let seek = pb::Seek { handle: h.wire_id(), offset: 0, whence: pb::Whence::Cur as i32 };
        call.home_value(Op::Seek(seek)).await.ok().map(|(at, _)| at)
    } else {
        None
    };
    let (give, keep) = if reading && writing {
        crate::sys::socketpair().map_err(|e| Errno::from_io(&e))?
    } else {
        let (read_end, write_end) = crate::sys::pipe().map_err(|e| Errno::from_io(&e))?;
        if reading {
            (read_end, write_end)
        } else {
            (write_end, read_end)
        }
    };
    crate::sys::set_nonblocking(keep.as_fd()).map_err(|e| Errno::from_io(&e))?;
    let file = std::fs::File::from(keep);
    let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata().map_err(|e| Errno::from_io(&e))?);
    let keep = Arc::new(crate::sys::async_file(file).map_err(|e| Errno::from_io(&e))?);
    let proc = call.proc();
    // Registered before it is installed: the program runs on as soon as it has the number. (Each way's task
    // lets go of one pin.)
    let ways = Arc::new(AtomicUsize::new(usize::from(reading) + usize::from(writing)));
    h.pins.fetch_add(ways.load(Ordering::SeqCst), Ordering::SeqCst);
    sup.pumps.aliases.lock().unwrap_or_else(|p| p.into_inner()).insert(ino, h.clone());
    let installed =
        crate::sys::seccomp::add_fd(sup.listener.as_fd(), call.id, give.as_fd(), target, cloexec, true);
    drop(give);
    if let Err(e) = installed {
        for _ in 0..ways.load(Ordering::SeqCst) {
            sup.pumps.finished(ino, h, &ways);
        }
        return Err(Errno::from_io(&e));
    }
    let mut tasks = Vec::new();
    if reading {
        let (sup_arc, handle, keep, ways) = (sup.self_arc(), h.clone(), keep.clone(), ways.clone());
        let feed = tokio::spawn(async move {
            feed(&sup_arc, proc, &handle, &keep, start).await;
            if writing {
                // The program reads end of file; what it writes still comes.
                let _ = crate::sys::shutdown_write(keep.get_ref().as_fd());
            }
            sup_arc.pumps.finished(ino, &handle, &ways);
        });
        let mut feeds = sup.pumps.feeds.lock().unwrap_or_else(|p| p.into_inner());
        feeds.retain(|f| !f.is_finished());
        feeds.push(feed);
    }
    if writing {
        let (sup_arc, handle) = (sup.self_arc(), h.clone());
        let state =
            Arc::new(WritePump { pipe: keep, busy: AtomicBool::new(false), done: AtomicBool::new(false) });
        sup.pumps.writers.lock().unwrap_or_else(|p| p.into_inner()).push(state.clone());
        tasks.push(tokio::spawn(async move {
            drain_into_home(&sup_arc, proc, &handle, &state).await;
            state.done.store(true, Ordering::SeqCst);
            sup_arc.pumps.finished(ino, &handle, &ways);
        }));
    }
    sup.pumps.tasks.lock().unwrap_or_else(|p| p.into_inner()).extend(tasks);
    Ok(Action::Answered(i64::from(target)))
}

/// Program → home: forwards what arrives on the pipe until every writer has closed it.
async fn drain_into_home(sup: &Supervisor, proc: pb::Proc, h: &Handle, state: &WritePump) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let Ok(mut guard) = state.pipe.readable().await else { return };
        state.busy.store(true, Ordering::SeqCst);
        let n = match guard.try_io(|fd| read_fd(fd.get_ref(), &mut buf)) {
            Ok(Ok(0)) => {
                state.busy.store(false, Ordering::SeqCst);
                return;
            }
            Ok(Ok(n)) => n,
            // The program closed a socket pair's end with bytes of the feed unread: its end of file.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                state.busy.store(false, Ordering::SeqCst);
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(cause = %e, "write pump: reading the program's pipe failed");
                return;
            }
            Err(_would_block) => {
                state.busy.store(false, Ordering::SeqCst);
                continue;
            }
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            // It takes room home does not report (see `crate::behind`).
            crate::behind::forget_room(h.stat.dev);
            let op = Op::Write(pb::Write {
                handle: h.wire_id(),
                data: data.to_vec().into(),
                offset: None,
                rwf: 0,
            });
            match sup.link.call(proc, op).await.map(|r| r.outcome.map(|o| o.to_result())) {
                Ok(Some(Ok(w))) if w > 0 => data = &data[(w as usize).min(data.len())..],
                other => {
                    tracing::warn!(handle = h.id, result = ?other, "write pump: home refused a write; bytes dropped");
                    break;
                }
            }
        }
        // Copies of the file whose reads are the kernel's follow what the pump wrote.
        if let Some(via) = h.home_handle() {
            let touched = crate::native::Touched::File(h.inode(), via);
            crate::native::refresh_touched(sup, None, proc, touched, None).await;
        }
        state.busy.store(false, Ordering::SeqCst);
    }
}

/// Home → program: feeds the file into the pipe until end of file or until the program closes its end.
/// `from`: read at this place and on (`pread`), leaving home's offset to the writes of a file open both
/// ways; `None`: at home's offset, which moves.
async fn feed(
    sup: &Supervisor,
    proc: pb::Proc,
    h: &Handle,
    pipe: &AsyncFd<std::fs::File>,
    mut from: Option<i64>,
) {
    loop {
        let op = Op::Read(pb::Read { handle: h.wire_id(), len: CHUNK as u64, offset: from });
        let stopping = || sup.pumps.stopping.load(Ordering::SeqCst);
        let every = std::time::Duration::from_millis(10);
        let data =
            match sup.link.call_interruptible(proc, op, every, stopping, || false).await.map(|(r, _)| r) {
                Ok(r) if matches!(r.outcome.as_ref().map(|o| o.to_result()), Some(Ok(n)) if n > 0) => r.data,
                _ => return,
            };
        from = from.map(|at| at + data.len() as i64);
        let mut rest = &data[..];
        while !rest.is_empty() {
            let Ok(mut guard) = pipe.writable().await else { return };
            match guard.try_io(|fd| write_fd(fd.get_ref(), rest)) {
                Ok(Ok(n)) => rest = &rest[n..],
                Ok(Err(_)) => return, // EPIPE: the program closed its end.
                Err(_would_block) => continue,
            }
        }
    }
}

fn read_fd(mut file: &std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    std::io::Read::read(&mut file, buf)
}

fn write_fd(mut file: &std::fs::File, buf: &[u8]) -> std::io::Result<usize> {
    std::io::Write::write(&mut file, buf)
}
