//! A running `home-agent` process: started, its `listening on ADDR:PORT` line awaited, its output kept
//! for failure messages, and killed when dropped.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::process::quote_all;

/// How long the agent may take to print `listening on`.
pub const AGENT_START_TIMEOUT: Duration = Duration::from_secs(20);

/// How many lines of the agent's output a failure message shows.
const LOG_LINES: usize = 80;

/// A running agent. Dropping it kills it.
pub struct Agent {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts `cmd` (a `home-agent` command line, possibly behind wrappers that exec it) and waits for its
    /// `listening on ADDR:PORT` line. Panics with its output if that does not come.
    pub fn start(cmd: Command) -> Agent {
        Self::try_start(cmd).unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Agent::start`], returning the reason instead of panicking.
    pub fn try_start(mut cmd: Command) -> Result<Agent, String> {
        let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
        words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", quote_all(&words)))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        follow(child.stdout.take(), "out", Arc::clone(&log), Some(tx));
        follow(child.stderr.take(), "err", Arc::clone(&log), None);
        match rx.recv_timeout(AGENT_START_TIMEOUT) {
            Ok(addr) => Ok(Agent { child, addr, log }),
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                let _ = child.wait();
                thread::sleep(Duration::from_millis(100));
                let lines = log.lock().unwrap_or_else(|p| p.into_inner()).join("\n    | ");
                Err(format!(
                    "home-agent did not print `listening on ADDR:PORT` within {} s (status: {}).\n  \
                     command: {}\n  output:\n    | {lines}",
                    AGENT_START_TIMEOUT.as_secs(),
                    status.map_or("still running, killed".into(), |s| s.to_string()),
                    quote_all(&words)
                ))
            }
        }
    }

    /// The address it printed.
    /// The agent's pid (for finding its deputies: processes it started).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The last lines of its stdout (`out:`) and stderr (`err:`), indented for a failure message.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let skip = log.len().saturating_sub(LOG_LINES);
        let mut out = String::new();
        if skip > 0 {
            out += &format!("    ... ({skip} earlier lines)\n");
        }
        for line in &log[skip..] {
            out += &format!("    | {line}\n");
        }
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies a pipe of the agent into `log` line by line; the first `listening on ADDR` goes to `addr_tx`.
fn follow<R: Read + Send + 'static>(
    pipe: Option<R>,
    tag: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    mut addr_tx: Option<mpsc::Sender<SocketAddr>>,
) {
    let Some(pipe) = pipe else { return };
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = addr_tx.as_ref().and_then(|_| parse_listening(&line)) {
                if let Some(tx) = addr_tx.take() {
                    let _ = tx.send(addr);
                }
            }
            log.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{tag}: {line}"));
        }
    });
}

/// The address in a line containing `listening on ADDR:PORT` (IPv4 or `[IPv6]`), trailing punctuation
/// allowed.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let word = rest.split_whitespace().next()?;
    let word = word.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric() || c == ']'));
    word.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_listening;

    #[test]
    fn parses_listening_lines() {
        let parsed = |l: &str| parse_listening(l).map(|a| a.to_string());
        assert_eq!(parsed("home-agent listening on 127.0.0.1:4321").as_deref(), Some("127.0.0.1:4321"));
        assert_eq!(
            parsed("INFO listening on 127.0.0.1:80, token required.").as_deref(),
            Some("127.0.0.1:80")
        );
        assert_eq!(parsed("listening on [::1]:9000").as_deref(), Some("[::1]:9000"));
        assert_eq!(parsed("listening soon"), None);
        assert_eq!(parsed("listening on nowhere"), None);
    }
}
