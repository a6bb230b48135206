//! End-to-end test harness for homeward: real programs run under the built `remote-shim` against a real
//! `home-agent`, on two emulated hosts, and are compared with the same programs run natively.
//!
//! # Two emulated hosts
//! The home data directory `D` (a fresh temporary directory per test) is visible to `home-agent`, which runs
//! as an ordinary child process of the test. `remote-shim` runs under `unshare -m` with `D` over-mounted by
//! an empty tmpfs, so whatever the program reads from or writes to `D` got there by forwarding. [`Hosts`]
//! checks that emulation when it starts (a marker written into `D` must be invisible on the remote side
//! and still present afterwards), and every remote run checks that `D` is empty in its own namespace.
//! Optionally both sides live in a private network namespace with only a loopback interface
//! ([`Hosts::with_netns`]).
//!
//! The native comparison runs in a copy of `D` ([`Hosts::native_copy`]) that is bind-mounted over `D` in a
//! private mount namespace, so both runs see the same paths and outputs need no path rewriting.
//!
//! # Example
//! ```no_run
//! use homeward::{skip_unless_root, Hosts};
//!
//! skip_unless_root!();
//! let hosts = Hosts::start();
//! hosts.write("a.txt", "hello\n");
//! let native = hosts.native_copy();
//! hosts.check(&native, &["cat", "a.txt"]); // same status and stdout, or a panic with a diff
//! hosts.check(&native, &["cp", "a.txt", "b.txt"]);
//! hosts.assert_home_matches(&native, homeward::Times::Ignore); // home's disk, seen from outside
//! ```
//!
//! # Running
//! `cargo test --workspace` as root runs everything; as another user the tests that need namespaces print
//! `skipping NAME: needs root for mount/network namespaces` and pass, except with `CI=true`, where they
//! fail. Each test binary first runs `cargo build --bins -p home-agent -p remote-shim` (a no-op when they
//! are fresh). Environment knobs:
//! - `HOMEWARD_KEEP_TMP=1`: keep each test's temporary directory (home, native copies, token) and print it.
//! - `HOMEWARD_NO_BUILD=1`: use the binaries in the target directory as they are.
//! - `HOMEWARD_AGENT_BIN`, `HOMEWARD_SHIM_BIN`: test these binaries instead.
//! - `RUST_LOG`, `RUST_BACKTRACE`: passed to the binaries under test (and the programs they run).
//!
//! # Layout
//! - `agent`: a running `home-agent` process ([`Agent`]): its address, its output, killed on drop.
//! - `bins`: finds the `home-agent` and `remote-shim` binaries under test ([`agent_bin`], [`shim_bin`]),
//!   building them first with the cargo that runs the tests.
//! - `env`: the deterministic environment, root and tool checks with the skip macros, the unprivileged user.
//! - `process`: running one command with a timeout and capturing it as a [`Run`].
//! - `hosts`: [`Hosts`]: the temporary home directory, its agent, the emulation check, [`NativeCopy`].
//! - `cmd`: [`Cmd`]: one command run remotely, natively or from outside, and [`Cmd::check`].
//! - `compare`: comparing a native and a remote [`Run`], with a readable diff when they differ.
//! - `tree`: snapshots of directory trees ([`Tree`]) and their differences, to check home's disk.

mod agent;
mod bins;
mod cmd;
mod compare;
mod env;
mod hosts;
mod process;
mod trace;
mod tree;

pub use agent::{Agent, AGENT_START_TIMEOUT};
pub use bins::{agent_bin, shim_bin, workspace_root};
pub use cmd::{Both, Cmd, Token};
pub use compare::{compare, compare_with, differences, sort_lines, text_diff, Compare};
pub use env::{
    can_emulate_hosts, deterministic_env, find_tool, have_tools, in_ci, is_root, skip_or_fail,
    unprivileged_prefix, GIT_DATE, NOBODY, SYSTEM_PATH,
};
pub use hosts::{Hosts, HostsBuilder, NativeCopy};
pub use process::{run, run_with, Run, Side, DEFAULT_TIMEOUT};
pub use trace::{trace_lines, trace_opened, trace_wheres};
pub use tree::{assert_same_tree, Entry, Kind, Times, Tree};
