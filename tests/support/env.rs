//! The deterministic environment every command runs in, the checks that decide whether a test can run
//! here (root, namespaces, tools) with the macros that skip it otherwise, and the unprivileged user.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// `PATH` for every command: the system directories only, so that native and remote runs pick the same
/// programs whatever the developer's own `PATH` holds.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Author and committer date for git, so that commit hashes are reproducible.
pub const GIT_DATE: &str = "2005-04-07T22:13:13+0000";

/// uid and gid of `nobody`, the unprivileged user of EACCES tests.
pub const NOBODY: u32 = 65534;

/// The environment of every command the harness runs (it clears everything else): C locale, UTC, a fixed
/// `HOME`, no system or global git configuration and a fixed git identity and date. `RUST_LOG` and
/// `RUST_BACKTRACE` pass through so that the binaries under test can be debugged from a failing test.
pub fn deterministic_env(home_dir: &Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("PATH", SYSTEM_PATH),
        ("LC_ALL", "C"),
        ("LANG", "C"),
        ("TZ", "UTC"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("GIT_AUTHOR_NAME", "Homeward Test"),
        ("GIT_AUTHOR_EMAIL", "test@homeward.invalid"),
        ("GIT_AUTHOR_DATE", GIT_DATE),
        ("GIT_COMMITTER_NAME", "Homeward Test"),
        ("GIT_COMMITTER_EMAIL", "test@homeward.invalid"),
        ("GIT_COMMITTER_DATE", GIT_DATE),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONHASHSEED", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.push(("HOME".into(), home_dir.display().to_string()));
    for key in ["RUST_LOG", "RUST_BACKTRACE"] {
        if let Ok(value) = std::env::var(key) {
            env.push((key.into(), value));
        }
    }
    env
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this is a CI run (`CI` set to anything but `false`), where skipping is an error.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A program found in [`SYSTEM_PATH`].
pub fn find_tool(name: &str) -> Option<PathBuf> {
    SYSTEM_PATH.split(':').map(|dir| Path::new(dir).join(name)).find(|path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `Ok` when every tool is installed, else which are missing.
pub fn have_tools(tools: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| find_tool(t).is_none()).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("needs {} (not found in {SYSTEM_PATH})", missing.join(", ")))
    }
}

/// `Ok` when this process can emulate two hosts: root, the tools, and a private mount namespace in which a
/// tmpfs can be mounted. Probed once per test process.
pub fn can_emulate_hosts() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe_namespaces).clone()
}

fn probe_namespaces() -> Result<(), String> {
    if !is_root() {
        return Err("needs root for mount/network namespaces".into());
    }
    have_tools(&["unshare", "mount", "mountpoint", "ip", "sh", "cp", "touch", "find"])?;
    let dir = tempfile::Builder::new()
        .prefix("homeward-probe-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs none \"$1\" && mountpoint -q \"$1\"",
    ])
    .arg("probe")
    .arg(dir.path())
    .env_clear()
    .env("PATH", SYSTEM_PATH);
    let run = crate::process::run_with(cmd, None, Duration::from_secs(30));
    if run.timed_out || !run.status.success() {
        return Err(format!("needs mount namespaces (unshare -m and mount work as root only): {run}"));
    }
    Ok(())
}

/// Prints why the current test skips, on stderr past libtest's capture so it is seen; in CI, where every
/// test must run, panics instead.
pub fn skip_or_fail(why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    if in_ci() {
        panic!("{test} cannot run in CI: {why}");
    }
    let _ = writeln!(std::io::stderr(), "skipping {test}: {why}");
}

/// Returns from the calling test, with a printed reason, unless this process can emulate two hosts (root,
/// mount namespaces). In CI (`CI=true`) it fails instead.
#[macro_export]
macro_rules! skip_unless_root {
    () => {
        if let Err(why) = $crate::can_emulate_hosts() {
            $crate::skip_or_fail(&why);
            return;
        }
    };
}

/// Returns from the calling test, with a printed reason, unless every named program is installed. In CI
/// (`CI=true`) it fails instead: `.ci/run` installs them.
#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),+ $(,)?) => {
        if let Err(why) = $crate::have_tools(&[$($tool),+]) {
            $crate::skip_or_fail(&why);
            return;
        }
    };
}

/// Returns from the calling test, with the reason `why` printed, unless programs can be run as `nobody`
/// ([`unprivileged_prefix`]). In CI (`CI=true`) it fails instead.
#[macro_export]
macro_rules! skip_unless_unprivileged {
    ($why:expr) => {
        if $crate::unprivileged_prefix().is_none() {
            $crate::skip_or_fail($why);
            return;
        }
    };
}

/// The command prefix that runs a program as `nobody` (uid and gid [`NOBODY`], no supplementary groups):
/// `setpriv`, else `runuser`; `None` when neither exists or the tests do not run as root.
pub fn unprivileged_prefix() -> Option<Vec<String>> {
    if !is_root() {
        return None;
    }
    if find_tool("setpriv").is_some() {
        let id = NOBODY.to_string();
        return Some(vec![
            "setpriv".into(),
            format!("--reuid={id}"),
            format!("--regid={id}"),
            "--clear-groups".into(),
        ]);
    }
    if find_tool("runuser").is_some() {
        return Some(vec!["runuser".into(), "-u".into(), "nobody".into(), "--".into()]);
    }
    None
}
