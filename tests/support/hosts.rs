//! Two emulated hosts on one machine: a temporary home directory served by a real `home-agent`, and a
//! "remote" view of the machine in which that directory is an empty tmpfs, where `remote-shim` runs.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crate::agent::Agent;
use crate::cmd::{Both, Cmd};
use crate::env::{deterministic_env, unprivileged_prefix, NOBODY};
use crate::process::{run_with, Run, DEFAULT_TIMEOUT};
use crate::tree::{assert_same_tree, Times, Tree};

/// Options for [`Hosts`]; see [`Hosts::builder`].
#[derive(Clone, Debug, Default)]
pub struct HostsBuilder {
    netns: bool,
    unprivileged: bool,
    no_agent: bool,
    agent_args: Vec<String>,
    allow: Vec<String>,
}

impl HostsBuilder {
    /// Put the agent and the remote side in a private network namespace with only `lo`.
    pub fn netns(mut self) -> Self {
        self.netns = true;
        self
    }

    /// Run the agent, the remote side and the native runs as `nobody` (for EACCES). The home directory is
    /// root's with mode 0755; `HOME` and the token file belong to `nobody`.
    pub fn unprivileged(mut self) -> Self {
        self.unprivileged = true;
        self
    }

    /// An extra `home-agent` argument (e.g. `--tls-cert FILE`), after `--listen` and `--token-file`.
    pub fn agent_arg(mut self, arg: impl Into<String>) -> Self {
        self.agent_args.push(arg.into());
        self
    }

    /// Confine the agent to `rel` below the home directory (`home-agent --allow`; repeatable). The
    /// directory is created before the agent starts.
    pub fn allow(mut self, rel: &str) -> Self {
        self.allow.push(rel.into());
        self
    }

    /// No agent: only the emulation and native runs (for testing the harness itself).
    pub fn without_agent(mut self) -> Self {
        self.no_agent = true;
        self
    }

    /// Creates the directories, checks the emulation and starts the agent. Panics when any of it fails.
    pub fn start(self) -> Hosts {
        if let Err(why) = crate::env::can_emulate_hosts() {
            panic!("cannot emulate two hosts here: {why} (use skip_unless_root!() first)");
        }
        let tmp = tempfile::Builder::new()
            .prefix("homeward-test-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let root = tmp.path().to_path_buf();
        let user = if self.unprivileged {
            Some(unprivileged_prefix().unwrap_or_else(|| panic!("no setpriv or runuser to drop privileges")))
        } else {
            None
        };
        let home = root.join("home");
        let user_home = root.join("user-home");
        let token_file = root.join("token");
        let token = random_token();
        for dir in [&root, &home, &user_home] {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            set_mode(dir, 0o755);
        }
        std::fs::write(&token_file, format!("{token}\n")).unwrap_or_else(|e| panic!("write token: {e}"));
        set_mode(&token_file, 0o600);
        if user.is_some() {
            for path in [&user_home, &token_file] {
                std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            }
        }
        let mut hosts = Hosts {
            tmp: Some(tmp),
            root,
            home,
            user_home,
            token_file,
            token,
            user,
            netns: None,
            agent: None,
            copies: AtomicUsize::new(0),
        };
        if self.netns {
            hosts.netns = Some(create_netns());
        }
        hosts.verify_emulation();
        let mut agent_args = Vec::new();
        for rel in &self.allow {
            hosts.mkdir(rel);
            agent_args.extend(["--allow".to_string(), hosts.path(rel).display().to_string()]);
        }
        if !self.no_agent {
            agent_args.extend(self.agent_args.iter().cloned());
            hosts.agent = Some(hosts.start_agent(&agent_args));
        }
        hosts
    }
}

/// A temporary home directory served by a real `home-agent`, and the means to run programs against it
/// remotely (under `remote-shim`, the directory hidden), natively (in a copy) and from outside.
/// Dropping it kills the agent, deletes the network namespace and removes the directories (kept when
/// `HOMEWARD_KEEP_TMP` is set).
pub struct Hosts {
    tmp: Option<tempfile::TempDir>,
    pub(crate) root: PathBuf,
    pub(crate) home: PathBuf,
    pub(crate) user_home: PathBuf,
    pub(crate) token_file: PathBuf,
    token: String,
    user: Option<Vec<String>>,
    netns: Option<String>,
    agent: Option<Agent>,
    copies: AtomicUsize,
}

/// A copy of the home directory for native runs ([`Hosts::native_copy`]). Native runs see it at the home
/// directory's path; [`NativeCopy::path`] is where it really is, for inspecting it from outside.
pub struct NativeCopy {
    pub(crate) path: PathBuf,
}

impl NativeCopy {
    /// Where the copy is on this machine.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `rel` inside the copy.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Hosts {
    /// Home and agent on this machine's network, as root.
    pub fn start() -> Hosts {
        Self::builder().start()
    }

    /// Home and agent in a private network namespace (only `lo`), as root.
    pub fn with_netns() -> Hosts {
        Self::builder().netns().start()
    }

    /// Options: [`HostsBuilder::netns`], [`HostsBuilder::unprivileged`], [`HostsBuilder::agent_arg`],
    /// [`HostsBuilder::allow`].
    pub fn builder() -> HostsBuilder {
        HostsBuilder::default()
    }

    /// The home data directory `D`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `rel` inside the home directory, as seen from outside.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.home.join(rel)
    }

    /// The temporary directory holding home, copies, `HOME` and the token (outside the home directory).
    pub fn scratch(&self) -> &Path {
        &self.root
    }

    /// `HOME` of every command: outside the home data directory, the same for native and remote runs.
    pub fn user_home(&self) -> &Path {
        &self.user_home
    }

    /// The agent's address (`--home`). Panics without an agent.
    /// The home agent's pid.
    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("hosts started with an agent").pid()
    }

    pub fn addr(&self) -> SocketAddr {
        self.agent().addr()
    }

    /// The agent's token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The file holding the agent's token.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// The private network namespace's name, with [`HostsBuilder::netns`].
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The agent's stdout and stderr so far, the last lines.
    pub fn agent_log(&self) -> String {
        match &self.agent {
            Some(agent) => agent.log_tail(),
            None => "(no agent)".into(),
        }
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().unwrap_or_else(|| panic!("these Hosts were started without an agent"))
    }

    // ---- setting up and inspecting home's data from outside ----

    /// Writes a file into the home directory (parents created), from outside.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Writes a file into the home directory and sets its permission bits.
    pub fn write_mode(&self, rel: &str, contents: impl AsRef<[u8]>, mode: u32) {
        self.write(rel, contents);
        set_mode(&self.path(rel), mode);
    }

    /// Creates a directory (and parents) in the home directory.
    pub fn mkdir(&self, rel: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    }

    /// Creates a symbolic link `rel` -> `target` in the home directory.
    pub fn symlink(&self, target: &str, rel: &str) {
        let path = self.path(rel);
        std::os::unix::fs::symlink(target, &path)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
    }

    /// Sets permission bits of a path in the home directory.
    pub fn chmod(&self, rel: &str, mode: u32) {
        set_mode(&self.path(rel), mode);
    }

    /// Gives a path in the home directory to `nobody` (user and group), for an unprivileged agent.
    pub fn chown_to_nobody(&self, rel: &str) {
        let path = self.path(rel);
        std::os::unix::fs::chown(&path, Some(crate::NOBODY), Some(crate::NOBODY))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }

    /// Reads a file of the home directory, from outside.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        let path = self.path(rel);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// Whether `rel` exists in the home directory (without following a final symlink).
    pub fn exists(&self, rel: &str) -> bool {
        std::fs::symlink_metadata(self.path(rel)).is_ok()
    }

    /// Waits (≤ 20 s) until `rel` exists at home, written there by the remote program (a test's step
    /// marker).
    #[track_caller]
    pub fn wait_for(&self, rel: &str) {
        let start = std::time::Instant::now();
        while !self.exists(rel) {
            assert!(start.elapsed() < std::time::Duration::from_secs(20), "the program never wrote {rel}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Sets the modification and access times of everything in the home directory (symlinks themselves
    /// included) to `epoch` seconds, from outside.
    pub fn touch_all(&self, epoch: i64) {
        let mut cmd = Command::new("find");
        cmd.arg(&self.home).args(["-exec", "touch", "-h", "-d"]).arg(format!("@{epoch}")).args(["{}", "+"]);
        self.plain(cmd).assert_success();
    }

    /// Compiles a C program from `source` into `out_rel` in the home directory, from outside (so on the
    /// remote side it exists only at home). Extra `flags` go to gcc.
    pub fn gcc(&self, source: &str, out_rel: &str, flags: &[&str]) {
        let n = self.copies.fetch_add(1, Ordering::Relaxed);
        let src = self.root.join(format!("source-{n}.c"));
        std::fs::write(&src, source).unwrap_or_else(|e| panic!("write {}: {e}", src.display()));
        let mut cmd = Command::new("gcc");
        cmd.args(["-O1", "-Wall", "-Werror", "-o"]).arg(self.path(out_rel)).arg(&src).args(flags);
        self.plain(cmd).assert_success();
    }

    /// A snapshot of the home directory.
    pub fn snapshot(&self) -> Tree {
        Tree::read(&self.home)
    }

    /// Panics with every difference unless the home directory (after remote runs) matches the native
    /// copy (after the same native runs).
    #[track_caller]
    pub fn assert_home_matches(&self, native: &NativeCopy, times: Times) {
        self.assert_home_matches_excluding(native, times, &[]);
    }

    /// [`Hosts::assert_home_matches`], leaving out some relative paths (and what is below them).
    #[track_caller]
    pub fn assert_home_matches_excluding(&self, native: &NativeCopy, times: Times, excluded: &[&str]) {
        let expected = Tree::read_excluding(native.path(), excluded);
        let actual = Tree::read_excluding(&self.home, excluded);
        assert_same_tree(&expected, &actual, times);
    }

    /// Copies the home directory (`cp -a`) for native runs.
    pub fn native_copy(&self) -> NativeCopy {
        let n = self.copies.fetch_add(1, Ordering::Relaxed);
        let path = self.root.join(format!("native-{n}"));
        let mut cmd = Command::new("cp");
        cmd.arg("-a").arg(&self.home).arg(&path);
        self.plain(cmd).assert_success();
        NativeCopy { path }
    }

    // ---- running programs ----

    /// A command to run remotely, natively or from outside; see [`Cmd`].
    pub fn cmd<S: AsRef<str>>(&self, argv: &[S]) -> Cmd<'_> {
        Cmd::new(self, argv.iter().map(|s| s.as_ref().to_string()).collect())
    }

    /// Runs `argv` under `remote-shim` in `cwd_rel` of the home directory.
    pub fn run_remote<S: AsRef<str>>(&self, cwd_rel: &str, argv: &[S]) -> Run {
        self.cmd(argv).cwd(cwd_rel).remote()
    }

    /// Runs `argv` natively in `cwd_rel` of `native` (seen at the home directory's path).
    pub fn run_native<S: AsRef<str>>(&self, native: &NativeCopy, cwd_rel: &str, argv: &[S]) -> Run {
        self.cmd(argv).cwd(cwd_rel).native(native)
    }

    /// Runs `argv` in the home directory from outside (no shim, no namespace): to inspect home's disk.
    pub fn outside<S: AsRef<str>>(&self, argv: &[S]) -> Run {
        self.cmd(argv).outside()
    }

    /// Runs `argv` natively in `native` and remotely, both in the home directory's top, and panics with a
    /// report unless status and stdout are equal.
    #[track_caller]
    pub fn check<S: AsRef<str>>(&self, native: &NativeCopy, argv: &[S]) -> Both {
        self.cmd(argv).check(native)
    }

    /// Runs a command in the private network namespace (e.g. `tc`); panics without one.
    pub fn netns_exec<S: AsRef<str>>(&self, argv: &[S]) -> Run {
        let ns = self.netns().unwrap_or_else(|| panic!("these Hosts have no network namespace"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(argv.iter().map(|s| s.as_ref()));
        self.plain(cmd)
    }

    /// A setup or inspection command with the deterministic environment, as root, outside.
    fn plain(&self, mut cmd: Command) -> Run {
        cmd.env_clear().envs(deterministic_env(&self.user_home)).current_dir(&self.root);
        run_with(cmd, None, DEFAULT_TIMEOUT)
    }

    pub(crate) fn netns_prefix(&self) -> Vec<String> {
        match &self.netns {
            Some(ns) => vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()],
            None => Vec::new(),
        }
    }

    pub(crate) fn user_prefix(&self) -> Vec<String> {
        self.user.clone().unwrap_or_default()
    }

    // ---- setting up ----

    /// Checks that a file in the home directory is invisible on the remote side and still there after.
    fn verify_emulation(&self) {
        let marker = self.home.join(".homeward-emulation-marker");
        std::fs::write(&marker, "only at home\n").unwrap_or_else(|e| panic!("write marker: {e}"));
        let script = r#"set -e
mount -t tmpfs -o mode=0755 homeward-remote-view "$1"
mountpoint -q "$1"
ls -A "$1"
test ! -e "$2"
echo hidden
"#;
        let mut argv = self.netns_prefix();
        argv.extend(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "verify"].map(String::from),
        );
        argv.push(self.home.display().to_string());
        argv.push(marker.display().to_string());
        let run = self.plain(command(&argv));
        if run.timed_out || !run.status.success() || run.stdout != b"hidden\n" {
            panic!("the remote side still sees the home directory's data (emulation broken):\n{run}");
        }
        if !marker.exists() {
            panic!("hiding the home directory on the remote side hid it on the home side too (mount leaked)");
        }
        std::fs::remove_file(&marker).unwrap_or_else(|e| panic!("remove marker: {e}"));
        if self.netns.is_some() {
            let links = self.netns_exec(&["ip", "-o", "link", "show"]);
            links.assert_success();
            let names: Vec<String> = links
                .stdout()
                .lines()
                .filter_map(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
                .collect();
            if names != ["lo"] {
                panic!("the test network namespace should hold only lo:\n{links}");
            }
        }
    }

    fn start_agent(&self, extra: &[String]) -> Agent {
        let mut argv = self.netns_prefix();
        argv.extend(self.user_prefix());
        argv.push(crate::bins::agent_bin().display().to_string());
        argv.extend(["--listen".into(), "127.0.0.1:0".into(), "--token-file".into()]);
        argv.push(self.token_file.display().to_string());
        argv.extend(extra.iter().cloned());
        let mut cmd = command(&argv);
        cmd.env_clear().envs(deterministic_env(&self.user_home)).current_dir(&self.root);
        Agent::start(cmd)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Every failing test shows what the agent said (its output is captured with the test's).
        if thread::panicking() && self.agent.is_some() {
            eprintln!("=== home-agent output (last lines) ===\n{}", self.agent_log());
        }
        // Stop the agent before its network namespace goes away.
        self.agent = None;
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        if std::env::var_os("HOMEWARD_KEEP_TMP").is_some() {
            if let Some(tmp) = self.tmp.take() {
                eprintln!("keeping {}", tmp.keep().display());
            }
        }
    }
}

pub(crate) fn command(argv: &[String]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap_or_else(|e| panic!("read /dev/urandom: {e}"));
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh network namespace with `lo` up. Named after this process and a counter, deleted by `Hosts`.
fn create_netns() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("homeward-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    for argv in [
        vec!["ip", "netns", "add", name.as_str()],
        vec!["ip", "netns", "exec", name.as_str(), "ip", "link", "set", "lo", "up"],
    ] {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]);
        let run = run_with(cmd, None, Duration::from_secs(30));
        if run.timed_out || !run.status.success() {
            let _ = Command::new("ip").args(["netns", "delete", &name]).status();
            panic!("cannot set up the network namespace {name}:\n{run}");
        }
    }
    name
}
