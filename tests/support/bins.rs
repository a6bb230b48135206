//! Locating the binaries under test.
//!
//! `env!("CARGO_BIN_EXE_...")` only exists for binaries of the test's own package, and `home-agent` and
//! `remote-shim` belong to other workspace packages, which `cargo test` does not build as binaries. So the
//! harness finds them in the target directory the test executable lives in (`target/<profile>/deps/..`),
//! after asking the cargo that runs the tests to build them there (a no-op when they are fresh; cargo does
//! not hold its build lock while tests run). Set `HOMEWARD_NO_BUILD=1` to skip that build, or
//! `HOMEWARD_AGENT_BIN` / `HOMEWARD_SHIM_BIN` to test other binaries.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};

const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);

struct Binaries {
    agent: PathBuf,
    shim: PathBuf,
}

/// The `home-agent` binary under test.
pub fn agent_bin() -> PathBuf {
    binaries().agent.clone()
}

/// The `remote-shim` binary under test.
pub fn shim_bin() -> PathBuf {
    binaries().shim.clone()
}

/// The workspace root (the directory of the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    match BINARIES.get_or_init(|| locate().map_err(|e| format!("{e:#}"))) {
        Ok(bins) => bins,
        Err(why) => panic!("cannot find the binaries under test: {why}"),
    }
}

fn locate() -> Result<Binaries> {
    let agent_override = std::env::var_os("HOMEWARD_AGENT_BIN").map(PathBuf::from);
    let shim_override = std::env::var_os("HOMEWARD_SHIM_BIN").map(PathBuf::from);
    let profile_dir = profile_dir();
    let needs_build = agent_override.is_none() || shim_override.is_none();
    if needs_build && std::env::var_os("HOMEWARD_NO_BUILD").is_none() {
        let profile_dir = profile_dir.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        build(profile_dir)?;
    }
    let pick = |over: Option<PathBuf>, name: &str| -> Result<PathBuf> {
        let path = match over {
            Some(path) => path,
            None => profile_dir.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?.join(name),
        };
        check_executable(&path)?;
        Ok(path)
    };
    Ok(Binaries { agent: pick(agent_override, "home-agent")?, shim: pick(shim_override, "remote-shim")? })
}

/// `target/<profile>`: the parent of the `deps/` directory holding the running test executable.
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let deps = exe.parent().context("test executable has no parent directory")?;
    if deps.file_name() != Some("deps".as_ref()) {
        bail!(
            "the test executable {} is not in a cargo `deps/` directory; set HOMEWARD_AGENT_BIN and \
             HOMEWARD_SHIM_BIN",
            exe.display()
        );
    }
    Ok(deps.parent().context("deps/ has no parent")?.to_path_buf())
}

fn check_executable(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "{} does not exist: run `cargo build --workspace` first (the end-to-end tests run the workspace's \
             binaries, which `cargo test` does not build for another package)",
            path.display()
        )
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("{} is not an executable file: run `cargo build --workspace`", path.display());
    }
    Ok(())
}

/// Builds both binaries into `profile_dir` with the cargo running the tests (same profile, same target).
fn build(profile_dir: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root()).args(["build", "--bins", "-p", "home-agent", "-p", "remote-shim"]);
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).context("profile directory name")?;
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let mut target_dir = profile_dir.parent().context("profile directory has no parent")?.to_path_buf();
    // A `--target TRIPLE` build puts the profile directory under target/TRIPLE/.
    if !target_dir.join("CACHEDIR.TAG").exists() {
        if let Some(parent) = target_dir.parent().filter(|p| p.join("CACHEDIR.TAG").exists()) {
            let triple = target_dir.file_name().context("target triple")?.to_owned();
            cmd.arg("--target").arg(triple);
            target_dir = parent.to_path_buf();
        }
    }
    cmd.env("CARGO_TARGET_DIR", &target_dir);
    let run = crate::process::run_with(cmd, None, BUILD_TIMEOUT);
    if run.timed_out || !run.status.success() {
        bail!(
            "building the binaries under test failed; run `cargo build --workspace` and fix it first \
             (or set HOMEWARD_NO_BUILD=1 to use what is in {}):\n{run}",
            profile_dir.display()
        );
    }
    Ok(())
}
