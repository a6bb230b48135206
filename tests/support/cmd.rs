//! One command for [`Hosts`], run remotely (under `remote-shim`, the home directory hidden), natively (in
//! a copy seen at the home directory's path) or from outside, and the comparison of native and remote.

use std::path::PathBuf;
use std::time::Duration;

use crate::compare::{differences, Compare};
use crate::env::deterministic_env;
use crate::hosts::{command, Hosts, NativeCopy};
use crate::process::{run_with, Run, Side, DEFAULT_TIMEOUT};

/// The remote side: hide the home directory under an empty tmpfs, check that it is empty, create the
/// starting directory's path in it (so the shim's cwd exists locally; its contents are home's), and exec.
/// One line, so that failure messages stay readable.
const REMOTE_SCRIPT: &str = "set -e; home=$1 rel=$2; shift 2; \
    mount -t tmpfs -o mode=0755 homeward-remote-view \"$home\"; \
    if [ -n \"$(ls -A \"$home\")\" ]; then echo \"homeward harness: $home is not empty on the remote side\" >&2; exit 199; fi; \
    mkdir -p \"$home/$rel\"; cd \"$home/$rel\"; umask 022; exec \"$@\"";

/// The native side: the copy bind-mounted over the home directory's path, so paths are the same.
const NATIVE_SCRIPT: &str = "set -e; home=$1 rel=$2 copy=$3; shift 3; \
    mount --bind \"$copy\" \"$home\"; cd \"$home/$rel\"; umask 022; exec \"$@\"";

/// Outside: plainly in the home directory.
const OUTSIDE_SCRIPT: &str = "set -e; cd \"$1/$2\"; shift 2; umask 022; exec \"$@\"";

/// Which token `remote-shim` is given.
#[derive(Clone, Debug)]
pub enum Token {
    /// `--token-file` with the agent's token (the default).
    Agent,
    /// `--token-file` with this file.
    File(PathBuf),
    /// No `--token-file` (the token may still come from `HOMEWARD_TOKEN` via [`Cmd::env`]).
    None,
}

/// The native and the remote run of one command ([`Cmd::check`]).
pub struct Both {
    /// The run in the native copy.
    pub native: Run,
    /// The run under `remote-shim`.
    pub remote: Run,
}

/// One command for [`Hosts`], with its options, run on any side.
pub struct Cmd<'h> {
    hosts: &'h Hosts,
    argv: Vec<String>,
    cwd: String,
    stdin: Option<Vec<u8>>,
    env: Vec<(String, String)>,
    timeout: Duration,
    token: Token,
    shim_args: Vec<String>,
}

impl<'h> Cmd<'h> {
    pub(crate) fn new(hosts: &'h Hosts, argv: Vec<String>) -> Self {
        Cmd {
            hosts,
            argv,
            cwd: ".".into(),
            stdin: None,
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            token: Token::Agent,
            shim_args: Vec::new(),
        }
    }

    /// Start in `rel` below the home directory (default `.`).
    pub fn cwd(mut self, rel: &str) -> Self {
        assert!(
            !rel.starts_with('/') && !rel.split('/').any(|c| c == ".."),
            "cwd must be inside home: {rel}"
        );
        self.cwd = if rel.is_empty() { ".".into() } else { rel.into() };
        self
    }

    /// Feed this to stdin (default: closed).
    pub fn stdin(mut self, data: impl AsRef<[u8]>) -> Self {
        self.stdin = Some(data.as_ref().to_vec());
        self
    }

    /// Add an environment variable (on every side).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Kill and fail after this long (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Which token the shim gets (default: the agent's, by `--token-file`).
    pub fn token(mut self, token: Token) -> Self {
        self.token = token;
        self
    }

    /// An extra `remote-shim` argument before `--` (e.g. `--local`).
    pub fn shim_arg(mut self, arg: &str) -> Self {
        self.shim_args.push(arg.into());
        self
    }

    /// Runs under `remote-shim` with the home directory hidden. Panics if it had to be killed.
    #[track_caller]
    pub fn remote(&self) -> Run {
        let hosts = self.hosts;
        let mut argv = hosts.netns_prefix();
        argv.extend(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", REMOTE_SCRIPT, "homeward-remote"]
                .map(String::from),
        );
        argv.push(hosts.home.display().to_string());
        argv.push(self.cwd.clone());
        argv.extend(hosts.user_prefix());
        argv.push(crate::bins::shim_bin().display().to_string());
        argv.push("--home".into());
        argv.push(hosts.addr().to_string());
        match &self.token {
            Token::Agent => argv.extend(["--token-file".into(), hosts.token_file.display().to_string()]),
            Token::File(path) => argv.extend(["--token-file".into(), path.display().to_string()]),
            Token::None => {}
        }
        argv.extend(self.shim_args.iter().cloned());
        argv.push("--".into());
        argv.extend(self.argv.iter().cloned());
        self.finish(Side::Remote, argv)
    }

    /// Runs under `remote-shim` (as [`Cmd::remote`]) while home changes behind the program's back: each time
    /// the program writes `ready` in the home directory's `dir` (`""`: the home directory itself), the
    /// marker is removed, the next of `changes` is made, and `go` is written there.
    #[track_caller]
    pub fn remote_while(&self, dir: &str, changes: &[&dyn Fn()]) -> Run {
        let hosts = self.hosts;
        let marker = |name: &str| if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") };
        std::thread::scope(|s| {
            let run = s.spawn(|| self.remote());
            for change in changes {
                hosts.wait_for(&marker("ready"));
                std::fs::remove_file(hosts.path(&marker("ready"))).expect("removing the ready marker");
                change();
                hosts.write(&marker("go"), "");
            }
            run.join().expect("the remote run")
        })
    }

    /// Runs natively in `native`, which is bind-mounted over the home directory's path.
    #[track_caller]
    pub fn native(&self, native: &NativeCopy) -> Run {
        let hosts = self.hosts;
        let mut argv: Vec<String> =
            ["unshare", "-m", "--propagation", "private", "sh", "-c", NATIVE_SCRIPT, "homeward-native"]
                .map(String::from)
                .to_vec();
        argv.push(hosts.home.display().to_string());
        argv.push(self.cwd.clone());
        argv.push(native.path.display().to_string());
        argv.extend(hosts.user_prefix());
        argv.extend(self.argv.iter().cloned());
        self.finish(Side::Native, argv)
    }

    /// Runs in the home directory itself, as root, with no namespace: to inspect home from outside.
    #[track_caller]
    pub fn outside(&self) -> Run {
        let mut argv: Vec<String> =
            ["sh", "-c", OUTSIDE_SCRIPT, "homeward-outside"].map(String::from).to_vec();
        argv.push(self.hosts.home.display().to_string());
        argv.push(self.cwd.clone());
        argv.extend(self.argv.iter().cloned());
        self.finish(Side::Outside, argv)
    }

    /// Runs natively and remotely and panics with a report (both runs in full and a diff; the agent's
    /// output follows when `Hosts` drops) unless status and stdout are equal.
    #[track_caller]
    pub fn check(&self, native: &NativeCopy) -> Both {
        self.check_with(native, &Compare::new())
    }

    /// Runs natively and remotely and panics with a report unless they agree in what `how` compares.
    #[track_caller]
    pub fn check_with(&self, native: &NativeCopy, how: &Compare<'_>) -> Both {
        let native = self.native(native);
        let remote = self.remote();
        if let Some(report) = differences(&native, &remote, how) {
            panic!("{report}");
        }
        Both { native, remote }
    }

    #[track_caller]
    fn finish(&self, side: Side, argv: Vec<String>) -> Run {
        let mut cmd = command(&argv);
        cmd.env_clear().envs(deterministic_env(&self.hosts.user_home)).envs(self.env.iter().cloned());
        cmd.current_dir(&self.hosts.root);
        let mut run = run_with(cmd, self.stdin.as_deref(), self.timeout);
        run.side = side;
        run.argv = self.argv.clone();
        run.cwd = match self.cwd.as_str() {
            "." => self.hosts.home.clone(),
            rel => self.hosts.home.join(rel),
        };
        if run.timed_out {
            panic!("{side} run timed out:\n{run}");
        }
        run
    }
}
