//! Deputies: every process of a job has a real process at home that stands for it (Sprite's and MOSIX's
//! "home identity"). Its pid is the process's home pid, `ps` shows which remote program it stands for, and
//! signals sent to it at home are forwarded to the remote process. It does no work.
//!
//! A deputy is this same executable (`/proc/self/exe`, see [`set_program`]) started with the marker
//! argument `--homeward-deputy`; the binary's `main` calls [`run_if_deputy`] first thing. Its stdin is one
//! end of a socket pair, the control channel:
//! - deputy → agent: each signal it receives, as a 4-byte little-endian `i32`;
//! - agent → deputy: 5-byte commands, a kind byte and a little-endian `i32`: [`EXIT`] (`_exit` with that
//!   code) or [`KILL`] (die by that signal).
//!
//! On end of file (the agent ended the session, or died) the deputy kills itself with SIGKILL, so deputies
//! never outlive their agent. SIGKILL and SIGSTOP cannot be caught: the agent learns of them by waiting on
//! the deputy (see `deputies`). A deputy is in a process group of its own, so a terminal's Ctrl-C aimed at
//! the agent does not reach it.
//!
//! Deputies are made by a *starter*: the same executable started once per agent with [`STARTER`], a small
//! single-threaded process that, for each request on its stdin (a `SOCK_SEQPACKET` socket: the name and
//! the deputy's control socket, `SCM_RIGHTS`), clones itself with `CLONE_PARENT` (so the deputy is the
//! agent's child, which waits on it) and answers the new pid. No exec, no dynamic loading: a deputy costs a
//! fork of a small process (~0.1 ms) instead of starting this executable (~1 ms of CPU, which on a busy
//! machine also delayed the call that asked for it, the job's `fork`). If the starter cannot be started or
//! dies, deputies are started by exec as before.

use crate::sys;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError, RwLock};

/// The first argument that makes a binary a deputy.
pub const MARKER: &str = "--homeward-deputy";
/// The first argument that makes a binary the deputy starter.
pub const STARTER: &str = "--homeward-deputy-starter";
/// The starter's name (`comm`, at most 15 bytes) and the start of its command line; never "homeward-deputy…".
const STARTER_COMM: &std::ffi::CStr = c"homeward-starts";
/// Room for a deputy's name in the starter's command line (a deputy overwrites its copy of it).
const STARTER_TITLE_ROOM: usize = 512;
/// Command kind: exit with the given code.
pub const EXIT: u8 = b'x';
/// Command kind: die by the given signal.
pub const KILL: u8 = b'k';
/// Exit code of a deputy that cannot set itself up (its signals could not be caught).
const EXIT_BROKEN: i32 = 125;
/// The deputy's thread name (`comm`, what `ps -e` and `top` show): 15 bytes at most.
const COMM: &std::ffi::CStr = c"homeward-deputy";
/// Longest description shown in a deputy's name, in characters.
const MAX_DESCRIPTION: usize = 80;

static PROGRAM: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Makes deputies run `program` (which must call [`run_if_deputy`] first in `main`) instead of
/// `/proc/self/exe`. For integration tests, whose own executable is the test harness.
pub fn set_program(program: impl Into<PathBuf>) {
    *PROGRAM.write().unwrap_or_else(PoisonError::into_inner) = Some(program.into());
}

fn program() -> PathBuf {
    let chosen = PROGRAM.read().unwrap_or_else(PoisonError::into_inner).clone();
    chosen.unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// Becomes a deputy, and never returns, when the first argument is [`MARKER`] (or the deputy starter, when
/// it is [`STARTER`]); else returns at once. Call it first thing in `main`, before anything starts a thread
/// or installs a signal handler.
pub fn run_if_deputy() {
    match std::env::args_os().nth(1) {
        Some(arg) if arg == MARKER => serve(),
        Some(arg) if arg == STARTER => starter(),
        _ => {}
    }
}

/// The starter's loop: a deputy for each request, until end of file (the agent is gone).
fn starter() -> ! {
    sys::set_name(STARTER_COMM);
    let stdin = io::stdin();
    let requests = stdin.as_fd();
    loop {
        let (name, control) = match sys::recv_with_fd(requests, STARTER_TITLE_ROOM) {
            Ok((name, Some(control))) => (name, control),
            Ok((name, None)) if name.is_empty() => sys::exit_now(0),
            // A request without a socket: not the agent's; answered as a failed start.
            Ok(_) => {
                let _ = sys::send_all(requests, &(-libc::EINVAL).to_le_bytes());
                continue;
            }
            Err(e) if e.raw() == libc::EINTR => continue,
            Err(_) => sys::exit_now(0),
        };
        let answer = match sys::fork_sibling() {
            Ok(0) => become_deputy(&name, control),
            Ok(pid) => pid,
            Err(e) => -e.raw(),
        };
        drop(control);
        if sys::send_all(requests, &answer.to_le_bytes()).is_err() {
            sys::exit_now(0);
        }
    }
}

/// In a process the starter just cloned: the control socket becomes stdin (replacing the starter's
/// request socket), a process group and a command line of its own, then the deputy's loop.
fn become_deputy(name: &[u8], control: OwnedFd) -> ! {
    if sys::dup_onto(control.as_fd(), 0).is_err() || sys::own_process_group().is_err() {
        sys::exit_now(EXIT_BROKEN)
    }
    drop(control);
    // Only what `ps` shows: a deputy without it still works.
    let _ = sys::set_cmdline(name);
    serve()
}

/// The deputy's loop: forward every signal, obey commands, die on end of file.
fn serve() -> ! {
    sys::set_name(COMM);
    // Blocked signals are queued even when their disposition is "ignore", so SIGCHLD, SIGWINCH and SIGURG
    // reach the signalfd too.
    let Ok(signals) = sys::block_all_signals().and_then(|all| sys::signalfd(&all)) else {
        sys::exit_now(EXIT_BROKEN)
    };
    let stdin = io::stdin();
    let control = stdin.as_fd();
    let mut command = Vec::with_capacity(5);
    loop {
        let [from_agent, caught] = match sys::poll_readable([control, signals.as_fd()]) {
            Ok(ready) => ready,
            Err(e) if e.raw() == libc::EINTR => continue,
            Err(_) => sys::die_by_signal(libc::SIGKILL),
        };
        // Commands first: a SIGCONT that woke a stopped deputy must not be forwarded before the command
        // that was waiting for it.
        if from_agent {
            match sys::read(control, 5 - command.len(), None) {
                Ok(bytes) if bytes.is_empty() => sys::die_by_signal(libc::SIGKILL),
                Ok(bytes) => command.extend_from_slice(&bytes),
                Err(e) if e.raw() == libc::EINTR || e.raw() == libc::EAGAIN => {}
                Err(_) => sys::die_by_signal(libc::SIGKILL),
            }
            if command.len() == 5 {
                let value = i32::from_le_bytes([command[1], command[2], command[3], command[4]]);
                match command[0] {
                    EXIT => sys::exit_now(value),
                    KILL => sys::die_by_signal(value),
                    _ => command.clear(),
                }
            }
        }
        if caught {
            for signal in sys::read_signals(signals.as_fd()).unwrap_or_default() {
                // A failed send means the agent is gone or closing: the read above sees end of file next.
                let _ = sys::send_all(control, &signal.to_le_bytes());
            }
        }
    }
}

/// A deputy process as its agent holds it.
pub struct Spawned {
    pub pid: i32,
    /// Signals and waits go through the pidfd, so they never reach a process that reused the pid.
    pub pidfd: OwnedFd,
    /// The agent's end of the control channel.
    pub control: UnixStream,
}

/// The name a deputy shows in `ps`: which remote process it stands for.
pub fn name(proc: u64, description: &str) -> String {
    let shown: String =
        description.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_DESCRIPTION).collect();
    format!("homeward-deputy[{proc}]: {shown}")
}

/// The agent's deputy starter, once started; `None` inside when it could not be (or died): deputies are
/// then started by exec.
static STARTED: Mutex<Option<Option<Starter>>> = Mutex::new(None);

struct Starter {
    requests: OwnedFd,
    child: std::process::Child,
}

impl Starter {
    fn start() -> io::Result<Starter> {
        let (ours, theirs) = seqpacket_pair()?;
        let title = format!("homeward-starts{}", " ".repeat(STARTER_TITLE_ROOM));
        let child = start_program(&title, STARTER, theirs)?;
        Ok(Starter { requests: ours, child })
    }

    /// A deputy named `name`, cloned by the starter: (its pid, the agent's end of its control socket).
    fn deputy(&self, name: &str) -> io::Result<(i32, UnixStream)> {
        let (control, theirs) = UnixStream::pair()?;
        // Retried when interrupted: a call being started may be interrupted (`Interrupt`), and the starter's
        // answer must not be left for the next request to read.
        let eintr = |e: &homeward_proto::Errno| e.raw() == libc::EINTR;
        loop {
            match sys::send_with_fd(self.requests.as_fd(), name.as_bytes(), theirs.as_fd()) {
                Err(e) if eintr(&e) => continue,
                sent => break sent.map_err(to_io)?,
            };
        }
        drop(theirs);
        let (answer, _) = loop {
            match sys::recv_with_fd(self.requests.as_fd(), 4) {
                Err(e) if eintr(&e) => continue,
                got => break got.map_err(to_io)?,
            }
        };
        let answer: [u8; 4] = answer
            .try_into()
            .map_err(|_| io::Error::new(io::ErrorKind::UnexpectedEof, "the deputy starter is gone"))?;
        match i32::from_le_bytes(answer) {
            pid if pid > 0 => Ok((pid, control)),
            errno => Err(io::Error::from_raw_os_error(-errno)),
        }
    }
}

impl Drop for Starter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn to_io(e: homeward_proto::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw())
}

/// A connected `SOCK_SEQPACKET` pair: messages keep their bounds, and the starter reads end of file once
/// the agent's end is closed.
fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    sys::socketpair_seqpacket().map_err(to_io)
}

/// Starts the agent's deputy starter now (it is otherwise started by the first deputy, which then waits
/// for it: ~50 ms, the first job's first call). Run it on a thread of its own, once the program that
/// deputies run is set ([`set_program`]); a deputy asked for meanwhile waits for it.
pub fn start_starter() {
    let mut started = STARTED.lock().unwrap_or_else(PoisonError::into_inner);
    started_starter(&mut started);
}

fn started_starter(started: &mut Option<Option<Starter>>) -> &mut Option<Starter> {
    started.get_or_insert_with(|| {
        Starter::start().map_err(|e| tracing::warn!(cause = %e, "cannot start the deputy starter")).ok()
    })
}

/// Starts a deputy named `name` (see [`name`]), a child of this process: cloned by the agent's starter,
/// or started by exec if there is none.
pub fn spawn(name: &str) -> io::Result<Spawned> {
    let cloned = {
        let mut started = STARTED.lock().unwrap_or_else(PoisonError::into_inner);
        let starter = started_starter(&mut started);
        match starter.as_ref().map(|s| s.deputy(name)) {
            Some(Ok(made)) => Some(made),
            Some(Err(e)) if e.raw_os_error().is_some_and(|n| n == libc::EAGAIN || n == libc::ENOMEM) => {
                return Err(e)
            }
            Some(Err(e)) => {
                tracing::warn!(cause = %e, "the deputy starter failed; deputies are started by exec");
                *starter = None;
                None
            }
            None => None,
        }
    };
    let (pid, control) = match cloned {
        Some(cloned) => cloned,
        None => {
            let (control, theirs) = UnixStream::pair()?;
            let child = start_program(name, MARKER, OwnedFd::from(theirs))?;
            // Not waited for through `child`: the deputies module reaps it by its pidfd. Dropping `Child`
            // neither waits nor kills.
            (child.id() as i32, control)
        }
    };
    match sys::pidfd_open(pid) {
        Ok(pidfd) => Ok(Spawned { pid, pidfd, control }),
        // Only if it already died and someone else reaped it (a `waitpid(-1)` in the embedding process);
        // dropping `control` then ends whatever is left of it.
        Err(e) => Err(io::Error::from_raw_os_error(e.raw())),
    }
}

/// Starts this program (see [`set_program`]) as `arg0` with the single argument `marker` and `stdin` as its
/// standard input: no environment, `/` as its cwd, in a process group of its own, output to nowhere.
fn start_program(arg0: &str, marker: &str, stdin: OwnedFd) -> io::Result<std::process::Child> {
    Command::new(program())
        .arg0(arg0)
        .arg(marker)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_clear()
        .current_dir("/")
        .process_group(0)
        .spawn()
}
