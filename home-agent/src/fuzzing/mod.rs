//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz); built only with the `fuzzing` feature and
//! not part of the agent's API.
//!
//! A request is decoded as the service decodes it (prost) and run through [`crate::exec::execute`] as the
//! service runs it inline, on a scratch session whose cwd is `session_dir` (made fresh by the caller for
//! each input), with leases on. The scratch directory holds `f` (a small file), `d/` (with `a`, `e/` and a
//! symbolic link `s -> a`) and `l -> f`; handles 1 (`f`, read-write), 2 (`d`, a directory), 3 (`f`,
//! read-only) and 4 (`d`, `O_PATH`) are open.
//!
//! The executors act on home's real files with the agent's privileges (root in CI), so what a request may
//! reach is confined to the scratch directory ([`confine`]):
//! - skipped: any path or symbolic link target that is absolute or has a `..` component, `Kill`,
//!   `SetClock` and `Adjtime` (they reach other processes and the machine's clocks), `Mknod` of anything but a
//!   regular file (a device node would reach the machine's disks, a fifo could block);
//! - rewritten so that nothing waits forever or fills the disk: `Lock` waits become non-waiting ones,
//!   `Flock` gets `LOCK_NB`, `Fallocate` and `CopyRange` lengths are capped at 1 MiB.
//!
//! `Hello` ([`run_hello`]) runs on a fresh service; it only opens the cwd it names. The seed corpus
//! (`fuzz/corpus/`) comes from [`seeds`] (module `seeds`, whose test writes it).
//!
//! After the call, the reply is checked against what the shim relies on ([`check`]): the seq, an outcome
//! (a value ≥ 0 or an errno 1-4095), and data no longer than the request allowed. A violation panics, which
//! the fuzzer reports as a crash.

use crate::exec::{self, MAX_BUF};
use crate::session::Session;
use crate::sys;
use homeward_proto::pb::{self, call_request::Op, outcome, CallReply, CallRequest, Dir};
use prost::Message;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

mod seeds;
pub use seeds::seeds;

/// Most requests one input of [`run_requests`] runs.
pub const MAX_REQUESTS: usize = 32;

/// Longest `Fallocate`/`CopyRange` a fuzzed request may ask for.
const MAX_SPAN: i64 = 1 << 20;

/// Runs `f` on a fresh empty directory, `$TMPDIR/homeward-fuzz-<pid>`, removed again afterwards.
pub fn in_fresh_dir(f: impl FnOnce(&Path)) {
    let dir = std::env::temp_dir().join(format!("homeward-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_ok() {
        f(&dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Decodes `bytes` as one `CallRequest` and runs it on a scratch session in `session_dir`.
pub fn run_request(session_dir: &Path, bytes: &[u8]) {
    let Ok(req) = CallRequest::decode(bytes) else { return };
    with_scratch(session_dir, |session| run_one(session, req));
}

/// Decodes `bytes` as a sequence of length-delimited `CallRequest`s (at most [`MAX_REQUESTS`]) and runs
/// them in order on one scratch session in `session_dir`, so that a request can use what an earlier one
/// opened, made or changed.
pub fn run_requests(session_dir: &Path, bytes: &[u8]) {
    let mut rest = bytes;
    let mut reqs = Vec::new();
    while !rest.is_empty() && reqs.len() < MAX_REQUESTS {
        match CallRequest::decode_length_delimited(&mut rest) {
            Ok(req) => reqs.push(req),
            Err(_) => break,
        }
    }
    with_scratch(session_dir, |session| {
        for req in reqs {
            run_one(session, req);
        }
    });
}

/// Decodes `bytes` as a `HelloRequest` and runs the `Hello` call on a fresh service: an error status or a
/// session, never a panic. (Hello only opens the cwd, `O_PATH`: nothing at home changes.)
pub fn run_hello(bytes: &[u8]) {
    use homeward_proto::pb::home_server::Home;
    let Ok(hello) = pb::HelloRequest::decode(bytes) else { return };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    let service = crate::service::HomeService::new(None);
    let version = hello.version;
    if let Ok(reply) = runtime.block_on(service.hello(tonic::Request::new(hello))) {
        let reply = reply.into_inner();
        assert_eq!(version, homeward_proto::PROTOCOL_VERSION, "only this version is accepted");
        assert!(reply.session != 0 && reply.version == version);
    }
}

/// Encodes requests as [`run_requests`] decodes them.
pub fn encode_requests(reqs: &[CallRequest]) -> Vec<u8> {
    let mut out = Vec::new();
    for req in reqs {
        // Writing into a Vec cannot fail.
        let _ = req.encode_length_delimited(&mut out);
    }
    out
}

fn run_one(session: &Session, mut req: CallRequest) {
    if !confine(&mut req) {
        return;
    }
    let reply = exec::inline(|| exec::execute(session, &req));
    check(&req, &reply);
}

/// Makes the scratch session (with its files and handles), runs `f`, then makes whatever `f` left in
/// `session_dir` removable by its owner (the caller removes it).
fn with_scratch(session_dir: &Path, f: impl FnOnce(&Session)) {
    if prepare(session_dir).is_err() {
        return;
    }
    let Ok(path) = CString::new(session_dir.as_os_str().as_bytes()) else { return };
    let Ok(cwd) = sys::open(&path, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) else { return };
    let session = Session::new(1, cwd, 0o022);
    // Leases need a call stream and a runtime to spawn their (never polled) event reader on.
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_io().build() else { return };
    let _entered = runtime.enter();
    let (replies, _events) = tokio::sync::mpsc::channel(16);
    session.leases.attach(replies);
    for (path, flags) in [
        ("f", libc::O_RDWR),
        ("d", libc::O_RDONLY | libc::O_DIRECTORY),
        ("f", libc::O_RDONLY),
        ("d", libc::O_PATH),
    ] {
        let open = Op::Open(pb::Open {
            dir: Some(Dir { handle: 0 }),
            path: path.as_bytes().to_vec().into(),
            flags: homeward_proto::flags::open_to_wire(flags),
            ..Default::default()
        });
        let opened = exec::execute(&session, &CallRequest { seq: 1, op: Some(open), ..Default::default() });
        assert!(opened.outcome.is_some_and(|o| o.to_result().is_ok()), "scratch handle {path}");
    }
    f(&session);
    session.close();
    drop(session);
    make_removable(session_dir);
}

fn prepare(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("f"), b"hello, home\n")?;
    std::fs::create_dir(dir.join("d"))?;
    std::fs::write(dir.join("d/a"), b"a")?;
    std::fs::create_dir(dir.join("d/e"))?;
    std::os::unix::fs::symlink("a", dir.join("d/s"))?;
    std::os::unix::fs::symlink("f", dir.join("l"))
}

/// Gives every directory under `dir` (not following links) owner permissions again, so that a request's
/// `chmod 0` does not keep a non-root caller from removing the scratch directory.
fn make_removable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_removable(&entry.path());
        }
    }
}

/// Whether a path (or a symbolic link's target) stays inside the directory it is looked up from: relative,
/// without a `..` component.
fn inside(path: &[u8]) -> bool {
    path.first() != Some(&b'/') && !path.split(|&b| b == b'/').any(|c| c == b"..")
}

/// Confines a request to the scratch directory (see the module doc): false when it must not run, else
/// rewrites what could wait forever or grow without need.
pub fn confine(req: &mut CallRequest) -> bool {
    let Some(op) = &mut req.op else { return true };
    let paths: &[&[u8]] = match op {
        Op::Open(o) => &[&o.path],
        Op::Stat(o) => &[&o.path],
        Op::Statfs(o) => &[&o.path],
        Op::Access(o) => &[&o.path],
        Op::Readlink(o) => &[&o.path],
        Op::Mkdir(o) => &[&o.path],
        Op::Mknod(o) => {
            if !matches!(o.mode & libc::S_IFMT, 0 | libc::S_IFREG) {
                return false;
            }
            &[&o.path]
        }
        Op::Unlink(o) => &[&o.path],
        Op::Rename(o) => &[&o.old_path, &o.new_path],
        Op::Link(o) => &[&o.old_path, &o.new_path],
        Op::Symlink(o) => &[&o.path, &o.target],
        Op::Chmod(o) => &[&o.path],
        Op::Chown(o) => &[&o.path],
        Op::Truncate(o) => &[&o.path],
        Op::Utimens(o) => &[&o.path],
        Op::Chdir(o) => &[&o.path],
        Op::Xattr(o) => &[&o.path],
        Op::Kill(_) | Op::SetClock(_) | Op::Adjtime(_) => return false,
        Op::Lock(o) => {
            if o.cmd == pb::LockCmd::SetWait as i32 {
                o.cmd = pb::LockCmd::Set as i32;
            }
            &[]
        }
        Op::Flock(o) => {
            o.operation |= libc::LOCK_NB as u32;
            &[]
        }
        Op::Fallocate(o) => {
            o.offset = o.offset.min(MAX_SPAN);
            o.len = o.len.min(MAX_SPAN);
            &[]
        }
        Op::CopyRange(o) => {
            o.len = o.len.min(MAX_SPAN as u64);
            &[]
        }
        Op::Getcwd(_)
        | Op::Umask(_)
        | Op::Read(_)
        | Op::Write(_)
        | Op::Seek(_)
        | Op::Fsync(_)
        | Op::Getdents(_)
        | Op::GetFlags(_)
        | Op::SetFlags(_)
        | Op::Close(_)
        | Op::Ioctl(_)
        | Op::ForgetProc(_)
        | Op::Identity(_)
        | Op::ClockRead(_)
        | Op::Interrupt(_) => &[],
    };
    paths.iter().all(|p| inside(p))
}

/// Checks a reply against what the shim relies on; panics on a violation.
pub fn check(req: &CallRequest, reply: &CallReply) {
    assert_eq!(reply.seq, req.seq, "the reply answers the request");
    let result = match reply.outcome.and_then(|o| o.result) {
        Some(outcome::Result::Value(v)) => {
            assert!(v >= 0, "a value is never negative: {v}");
            Ok(v)
        }
        Some(outcome::Result::Errno(e)) => {
            let retry = e == u32::from(exec::RETRY_BLOCKING.0);
            assert!((1..=4095).contains(&e) || retry, "an errno is 1-4095: {e}");
            Err(e)
        }
        None => panic!("a reply without an outcome"),
    };
    assert!(reply.data.len() <= MAX_BUF, "data beyond the cap: {}", reply.data.len());
    let Ok(value) = result else { return };
    let len = |n: usize| n as i64;
    match &req.op {
        Some(Op::Read(o)) => {
            assert_eq!(value, len(reply.data.len()), "a read's value counts its data");
            assert!(reply.data.len() as u64 <= o.len, "a read returns at most what was asked");
        }
        Some(Op::Write(o)) => assert!(value <= len(o.data.len()), "a write writes at most what it got"),
        Some(Op::Readlink(o)) => {
            assert_eq!(value, len(reply.data.len()));
            assert!(reply.data.len() as u64 <= o.size);
        }
        Some(Op::Getcwd(o)) => {
            assert_eq!(value, len(reply.data.len()) + 1, "getcwd counts the NUL");
            assert!(value as u64 <= o.size);
        }
        Some(Op::Getdents(o)) => {
            assert!(value as u64 <= o.size.min(MAX_BUF as u64), "entries fit the buffer");
            assert!(reply.dirents.iter().all(|d| !d.name.is_empty() && d.name.len() <= 255));
        }
        Some(Op::Xattr(o))
            if o.size > 0 && (o.op == pb::XattrOp::Get as i32 || o.op == pb::XattrOp::List as i32) =>
        {
            assert_eq!(value, len(reply.data.len()));
            assert!(reply.data.len() as u64 <= o.size);
        }
        Some(Op::Open(o)) if reply.whole => {
            let size = reply.stat.map_or(-1, |s| s.size);
            assert_eq!(len(reply.data.len()), size, "whole content is the whole file");
            assert!(reply.data.len() as u64 <= o.content_max);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement_keeps_requests_inside() {
        assert!(inside(b"a/b/c") && inside(b"") && inside(b"a..b/..c"));
        assert!(!inside(b"/etc/passwd") && !inside(b"..") && !inside(b"a/../..") && !inside(b"a/.."));
        let symlink = |target: &str| CallRequest {
            op: Some(Op::Symlink(pb::Symlink {
                target: target.as_bytes().to_vec().into(),
                dir: None,
                path: "x".into(),
            })),
            ..Default::default()
        };
        assert!(!confine(&mut symlink("/")));
        assert!(!confine(&mut symlink("../x")));
        assert!(confine(&mut symlink("y")));
        let mut wait = CallRequest {
            op: Some(Op::Lock(pb::Lock { cmd: pb::LockCmd::SetWait as i32, ..Default::default() })),
            ..Default::default()
        };
        assert!(confine(&mut wait));
        assert!(matches!(wait.op, Some(Op::Lock(pb::Lock { cmd, .. })) if cmd == pb::LockCmd::Set as i32));
        let mut device = CallRequest {
            op: Some(Op::Mknod(pb::Mknod {
                mode: libc::S_IFBLK | 0o600,
                path: "sda".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(!confine(&mut device));
    }
}
