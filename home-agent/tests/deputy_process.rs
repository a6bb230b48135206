//! The deputy process on its own: `home-agent --homeward-deputy` with a socket pair as stdin, driven the
//! way the agent drives it, and waited for here (its parent).

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_home-agent");

/// A deputy and the agent's end of its control channel.
fn deputy() -> (Child, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let child = Command::new(BIN)
        .arg0("homeward-deputy[1]: test")
        .arg("--homeward-deputy")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    wait_ready(child.id());
    (child, ours)
}

/// Waits until the deputy has blocked its signals (so a signal is forwarded rather than fatal).
fn wait_ready(pid: u32) {
    let start = Instant::now();
    loop {
        if common::blocks_signals(pid) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the deputy never blocked its signals");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill takes integers only; the child is ours and not yet waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn forwarded(control: &mut UnixStream) -> i32 {
    let mut buf = [0u8; 4];
    control.read_exact(&mut buf).unwrap();
    i32::from_le_bytes(buf)
}

fn command(control: &mut UnixStream, kind: u8, value: i32) {
    let v = value.to_le_bytes();
    control.write_all(&[kind, v[0], v[1], v[2], v[3]]).unwrap();
}

fn wait(mut child: Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the deputy did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn names_itself_and_forwards_every_catchable_signal() {
    let (child, mut control) = deputy();
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap();
    assert_eq!(comm.trim(), "homeward-deputy");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    assert!(cmdline.starts_with(b"homeward-deputy[1]: test\0--homeward-deputy\0"), "{cmdline:?}");
    for sig in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT, libc::SIGCHLD, libc::SIGWINCH, libc::SIGTSTP] {
        signal(&child, sig);
        assert_eq!(forwarded(&mut control), sig);
    }
    signal(&child, libc::SIGRTMIN() + 2);
    assert_eq!(forwarded(&mut control), libc::SIGRTMIN() + 2);
    command(&mut control, b'x', 0);
    assert_eq!(wait(child).code(), Some(0));
}

#[test]
fn exits_with_the_code_it_is_told() {
    let (child, mut control) = deputy();
    command(&mut control, b'x', 7);
    assert_eq!(wait(child).code(), Some(7));
}

#[test]
fn dies_by_the_signal_it_is_told_without_a_core_dump() {
    for sig in [libc::SIGTERM, libc::SIGKILL, libc::SIGSEGV] {
        let (child, mut control) = deputy();
        // A signal pending when the command comes does not change the outcome.
        command(&mut control, b'k', sig);
        let status = wait(child);
        assert_eq!(status.signal(), Some(sig), "{status:?}");
        assert!(!status.core_dumped());
    }
    // A signal that cannot kill: the conventional 128 + signal.
    let (child, mut control) = deputy();
    command(&mut control, b'k', libc::SIGCHLD);
    assert_eq!(wait(child).code(), Some(128 + libc::SIGCHLD));
}

#[test]
fn kills_itself_when_the_agent_goes() {
    let (child, control) = deputy();
    drop(control);
    assert_eq!(wait(child).signal(), Some(libc::SIGKILL));
}

#[test]
fn a_stopped_deputy_obeys_once_continued() {
    let (child, mut control) = deputy();
    signal(&child, libc::SIGSTOP);
    command(&mut control, b'x', 3);
    std::thread::sleep(Duration::from_millis(50));
    signal(&child, libc::SIGCONT);
    assert_eq!(wait(child).code(), Some(3));
}

#[test]
fn the_binary_still_runs_normally_without_the_marker() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--listen"));
}
