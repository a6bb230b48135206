//! Running one command with a timeout and capturing it as a [`Run`] that prints itself fully when a test
//! fails: the command line, the working directory, the status, stdout and stderr.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a command may run before the harness kills it and fails the test.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

/// How much of stdout/stderr a failure message shows.
const SHOWN_BYTES: usize = 6000;

/// Where a command ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Natively, in a copy of the home directory bind-mounted over the home directory's path.
    Native,
    /// Under `remote-shim`, with the home directory hidden by an empty tmpfs.
    Remote,
    /// Plainly on this machine (inspection from outside, tools, setup).
    Outside,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Native => "native",
            Side::Remote => "remote",
            Side::Outside => "outside",
        })
    }
}

/// A finished command.
pub struct Run {
    /// Where it ran.
    pub side: Side,
    /// The program and arguments the test asked for (without the harness's wrappers).
    pub argv: Vec<String>,
    /// The directory the program started in, as it sees it.
    pub cwd: PathBuf,
    /// Everything the harness executed, shell-quoted, to reproduce the run by hand.
    pub command_line: String,
    /// The exit status (SIGKILL after a timeout).
    pub status: ExitStatus,
    /// Whether the harness killed it after its timeout.
    pub timed_out: bool,
    /// What it wrote to stdout.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Wall-clock time from spawn to exit.
    pub elapsed: Duration,
}

impl Run {
    /// The status as a shell reports it: the exit code, or 128+N when killed by signal N.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }

    /// stdout as text (lossy).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// `round trips to home: N` from remote-shim's `--stats` output.
    #[track_caller]
    pub fn round_trips(&self) -> u64 {
        let stderr = self.stderr();
        stderr
            .lines()
            .find_map(|l| l.strip_prefix("round trips to home: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no round-trip count in:\n{stderr}"))
    }

    /// Panics, printing the whole run, unless it exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        if self.timed_out || !self.status.success() {
            panic!("expected success:\n{self}");
        }
        self
    }

    /// Panics, printing the whole run, unless it exited with `code` (shell convention, see [`Run::code`]).
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        if self.timed_out || self.code() != code {
            panic!("expected exit status {code}, got {}:\n{self}", self.code());
        }
        self
    }

    /// Panics, printing the whole run, if the harness had to kill it.
    #[track_caller]
    pub fn assert_finished(&self) -> &Self {
        if self.timed_out {
            panic!("timed out:\n{self}");
        }
        self
    }

    /// A one-line description of the status.
    pub fn status_text(&self) -> String {
        if self.timed_out {
            return format!("TIMED OUT after {:.1} s, killed", self.elapsed.as_secs_f64());
        }
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("killed by signal {sig} ({})", 128 + sig),
            _ => format!("{}", self.status),
        }
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[{}] {} (in {})", self.side, quote_all(&self.argv), self.cwd.display())?;
        writeln!(f, "  executed: {}", self.command_line)?;
        if self.timed_out {
            writeln!(f, "  status: {}", self.status_text())?;
        } else {
            writeln!(f, "  status: {} after {:.3} s", self.status_text(), self.elapsed.as_secs_f64())?;
        }
        write_stream(f, "stdout", &self.stdout)?;
        write_stream(f, "stderr", &self.stderr)
    }
}

fn write_stream(f: &mut fmt::Formatter<'_>, name: &str, data: &[u8]) -> fmt::Result {
    if data.is_empty() {
        return writeln!(f, "  {name}: (empty)");
    }
    writeln!(f, "  {name} ({} bytes):", data.len())?;
    let shown = &data[..data.len().min(SHOWN_BYTES)];
    for line in String::from_utf8_lossy(shown).lines() {
        writeln!(f, "    | {line}")?;
    }
    if data.len() > shown.len() {
        writeln!(f, "    ... ({} more bytes)", data.len() - shown.len())?;
    }
    Ok(())
}

/// Shell-quotes one word when it needs it.
pub(crate) fn quote(word: &str) -> String {
    let plain =
        !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./:=@%+,".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

pub(crate) fn quote_all<S: AsRef<str>>(words: &[S]) -> String {
    words.iter().map(|w| quote(w.as_ref())).collect::<Vec<_>>().join(" ")
}

/// Runs `cmd` as it is configured (environment, directory) with stdin closed and [`DEFAULT_TIMEOUT`].
pub fn run(cmd: Command) -> Run {
    run_with(cmd, None, DEFAULT_TIMEOUT)
}

/// Runs `cmd` in its own process group, feeding it `stdin` (or closed stdin), and captures its output.
/// After `timeout` the whole process group is killed and the run is marked `timed_out` (this function does
/// not panic on a timeout; [`Run::assert_finished`] does). Panics if the program cannot be spawned.
pub fn run_with(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Run {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    let cwd = cmd.get_current_dir().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let command_line = quote_all(&words);
    let (status, timed_out, stdout, stderr, elapsed) =
        execute(&mut cmd, stdin, timeout).unwrap_or_else(|e| panic!("cannot run {command_line}: {e}"));
    Run { side: Side::Outside, argv: words, cwd, command_line, status, timed_out, stdout, stderr, elapsed }
}

type Executed = (ExitStatus, bool, Vec<u8>, Vec<u8>, Duration);

fn execute(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> std::io::Result<Executed> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let stdout = Collector::start(child.stdout.take());
    let stderr = Collector::start(child.stderr.take());
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let data = data.to_vec();
        // A program that exits without reading all of stdin makes this fail with EPIPE: not an error here.
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let deadline = start + timeout;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (status, false);
        }
        if Instant::now() >= deadline {
            kill_group(child.id());
            break (child.wait()?, true);
        }
        thread::sleep(Duration::from_millis(2));
    };
    let elapsed = start.elapsed();
    // A stray grandchild that keeps the pipes open must not hang the test: wait a little, then take what
    // arrived.
    let grace = Duration::from_secs(5);
    Ok((status, timed_out, stdout.finish(grace), stderr.finish(grace), elapsed))
}

/// Kills the process group led by `pid`, which the caller spawned with `process_group(0)` and has not
/// reaped yet (so the group id cannot have been reused).
fn kill_group(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) has no memory-safety preconditions; the negative id names the process group of our
    // own unreaped child, so no unrelated process can be hit.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// Reads a pipe to its end on a thread, keeping what arrived available even if the end never comes.
struct Collector {
    data: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

trait Pipe: Read + Send + 'static {}
impl Pipe for ChildStdout {}
impl Pipe for ChildStderr {}

impl Collector {
    fn start<P: Pipe>(pipe: Option<P>) -> Collector {
        let data = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        if let Some(mut pipe) = pipe {
            let data = Arc::clone(&data);
            thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => data.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(());
            });
        }
        Collector { data, done }
    }

    fn finish(self, grace: Duration) -> Vec<u8> {
        let _ = self.done.recv_timeout(grace);
        let data = self.data.lock().unwrap_or_else(|p| p.into_inner());
        data.clone()
    }
}
