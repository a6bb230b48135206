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
//! `Hello` ([`run_hello`]) runs on a fresh service; it only opens the cwd it names.
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
    let service = crate::service::HomeService::default();
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
    session.attach(replies);
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
        let opened = exec::execute(&session, &CallRequest { seq: 1, proc: None, op: Some(open) });
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
        | Op::ClockRead(_) => &[],
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

/// One request of each kind (and a few sequences) as seeds for the fuzz corpus: `(name, requests)`.
pub fn seeds() -> Vec<(String, Vec<CallRequest>)> {
    use pb::*;
    let cwd = || Some(Dir { handle: 0 });
    let h = |handle| Some(Dir { handle });
    let path = |p: &str| -> prost::bytes::Bytes { p.as_bytes().to_vec().into() };
    let wire = homeward_proto::flags::open_to_wire;
    let at_empty = AtFlag::EmptyPath as u32;
    let ts = |sec| Some(Timespec { sec, nsec: 5, now: false, omit: false });
    let ops: Vec<(&str, Op)> = vec![
        (
            "open_read",
            Op::Open(Open {
                dir: cwd(),
                path: path("f"),
                flags: 0,
                content_max: 65536,
                lease: true,
                ..Default::default()
            }),
        ),
        (
            "open_create",
            Op::Open(Open {
                dir: h(2),
                path: path("new"),
                flags: wire(libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY),
                mode: 0o640,
                ..Default::default()
            }),
        ),
        (
            "open_tmpfile",
            Op::Open(Open {
                dir: cwd(),
                path: path("d"),
                flags: wire(libc::O_TMPFILE | libc::O_RDWR),
                mode: 0o600,
                ..Default::default()
            }),
        ),
        (
            "open_resolve",
            Op::Open(Open { dir: cwd(), path: path("l"), flags: 0, resolve: 0x04, ..Default::default() }),
        ),
        ("open_reopen", Op::Open(Open { dir: h(3), path: path(""), flags: 0, ..Default::default() })),
        ("stat", Op::Stat(Stat { dir: cwd(), path: path("d/s"), at_flags: 0, mask: 0, lease: true })),
        (
            "lstat",
            Op::Stat(Stat {
                dir: cwd(),
                path: path("l"),
                at_flags: AtFlag::SymlinkNofollow as u32,
                mask: 0x7ff,
                lease: true,
            }),
        ),
        ("fstat", Op::Stat(Stat { dir: h(1), path: path(""), at_flags: at_empty, mask: 0, lease: false })),
        ("statfs", Op::Statfs(Statfs { dir: cwd(), path: path("d") })),
        ("fstatfs", Op::Statfs(Statfs { dir: h(1), path: path("") })),
        (
            "access",
            Op::Access(Access {
                dir: cwd(),
                path: path("f"),
                mode: 6,
                at_flags: AtFlag::Eaccess as u32,
                lease: true,
            }),
        ),
        ("readlink", Op::Readlink(Readlink { dir: h(2), path: path("s"), size: 64, lease: true })),
        ("mkdir", Op::Mkdir(Mkdir { dir: cwd(), path: path("d/e/m"), mode: 0o755 })),
        ("mknod", Op::Mknod(Mknod { dir: cwd(), path: path("node"), mode: libc::S_IFREG | 0o600, dev: 0 })),
        ("unlink", Op::Unlink(Unlink { dir: cwd(), path: path("d/a"), at_flags: 0 })),
        ("rmdir", Op::Unlink(Unlink { dir: h(2), path: path("e"), at_flags: AtFlag::Removedir as u32 })),
        (
            "rename",
            Op::Rename(Rename {
                old_dir: cwd(),
                old_path: path("f"),
                new_dir: h(2),
                new_path: path("g"),
                flags: 1,
            }),
        ),
        (
            "rename_exchange",
            Op::Rename(Rename {
                old_dir: cwd(),
                old_path: path("f"),
                new_dir: cwd(),
                new_path: path("l"),
                flags: 2,
            }),
        ),
        (
            "link",
            Op::Link(Link {
                old_dir: cwd(),
                old_path: path("l"),
                new_dir: cwd(),
                new_path: path("hard"),
                at_flags: AtFlag::SymlinkFollow as u32,
            }),
        ),
        ("symlink", Op::Symlink(Symlink { target: path("d/e"), dir: cwd(), path: path("sl") })),
        ("chmod", Op::Chmod(Chmod { dir: cwd(), path: path("f"), mode: 0o4755, at_flags: 0 })),
        ("fchmod", Op::Chmod(Chmod { dir: h(4), path: path(""), mode: 0o700, at_flags: at_empty })),
        (
            "chown",
            Op::Chown(Chown {
                dir: cwd(),
                path: path("l"),
                uid: u32::MAX,
                gid: 0,
                at_flags: AtFlag::SymlinkNofollow as u32,
            }),
        ),
        ("truncate", Op::Truncate(Truncate { dir: cwd(), path: path("f"), length: 3 })),
        ("ftruncate", Op::Truncate(Truncate { dir: h(1), path: path(""), length: 1 << 20 })),
        (
            "utimens",
            Op::Utimens(Utimens { dir: cwd(), path: path("f"), atime: ts(1), mtime: ts(2), at_flags: 0 }),
        ),
        (
            "futimens",
            Op::Utimens(Utimens {
                dir: h(1),
                path: path(""),
                atime: None,
                mtime: Some(Timespec { omit: true, ..Default::default() }),
                at_flags: at_empty,
            }),
        ),
        ("chdir", Op::Chdir(Chdir { dir: cwd(), path: path("d") })),
        ("fchdir", Op::Chdir(Chdir { dir: h(2), path: path("") })),
        ("getcwd", Op::Getcwd(Getcwd { size: 4096 })),
        ("umask", Op::Umask(Umask { mask: 0o077 })),
        (
            "xattr_set",
            Op::Xattr(Xattr {
                op: XattrOp::Set as i32,
                dir: cwd(),
                path: path("f"),
                name: path("user.k"),
                value: path("v"),
                flags: 1,
                ..Default::default()
            }),
        ),
        (
            "xattr_get",
            Op::Xattr(Xattr {
                op: XattrOp::Get as i32,
                dir: h(1),
                path: path(""),
                name: path("user.k"),
                size: 16,
                ..Default::default()
            }),
        ),
        (
            "xattr_list",
            Op::Xattr(Xattr {
                op: XattrOp::List as i32,
                dir: cwd(),
                path: path("l"),
                nofollow: true,
                size: 0,
                ..Default::default()
            }),
        ),
        (
            "xattr_remove",
            Op::Xattr(Xattr {
                op: XattrOp::Remove as i32,
                dir: cwd(),
                path: path("f"),
                name: path("user.k"),
                ..Default::default()
            }),
        ),
        ("read", Op::Read(Read { handle: 1, len: 5, offset: None })),
        ("pread", Op::Read(Read { handle: 3, len: 1 << 24, offset: Some(7) })),
        ("write", Op::Write(Write { handle: 1, data: path("more"), offset: None })),
        ("pwrite", Op::Write(Write { handle: 1, data: path("far"), offset: Some(1 << 30) })),
        ("seek", Op::Seek(Seek { handle: 1, offset: -2, whence: Whence::End as i32 })),
        ("seek_data", Op::Seek(Seek { handle: 3, offset: 0, whence: Whence::Data as i32 })),
        ("fsync", Op::Fsync(Fsync { handle: 1, datasync: true })),
        ("fallocate", Op::Fallocate(Fallocate { handle: 1, mode: 0x01, offset: 0, len: 4096 })),
        ("getdents", Op::Getdents(Getdents { handle: 2, size: 32768, lease: true })),
        ("getdents_small", Op::Getdents(Getdents { handle: 2, size: 24, lease: false })),
        ("get_flags", Op::GetFlags(GetFlags { handle: 1 })),
        (
            "set_flags",
            Op::SetFlags(SetFlags { handle: 1, flags: OpenFlag::Append as u32 | OpenFlag::Nonblock as u32 }),
        ),
        (
            "lock_set",
            Op::Lock(Lock {
                handle: 1,
                cmd: LockCmd::Set as i32,
                ofd: false,
                range: Some(LockRange { kind: LockType::Write as i32, whence: 0, start: 0, len: 10, pid: 0 }),
            }),
        ),
        (
            "lock_get",
            Op::Lock(Lock {
                handle: 3,
                cmd: LockCmd::Get as i32,
                ofd: true,
                range: Some(LockRange { kind: LockType::Read as i32, whence: 1, start: 0, len: 0, pid: 0 }),
            }),
        ),
        ("flock", Op::Flock(Flock { handle: 1, operation: libc::LOCK_EX as u32 })),
        ("close", Op::Close(Close { handle: 3 })),
        ("ioctl", Op::Ioctl(Ioctl { handle: 1, op: IoctlOp::Fionread as i32 })),
        (
            "copy_range",
            Op::CopyRange(CopyRange {
                in_handle: 3,
                in_offset: Some(0),
                out_handle: 1,
                out_offset: Some(100),
                len: 12,
            }),
        ),
        ("forget_proc", Op::ForgetProc(ForgetProc { id: 2, end: Some(forget_proc::End::ExitCode(3)) })),
        ("identity", Op::Identity(Identity {})),
        ("clock_read", Op::ClockRead(ClockRead {})),
    ];
    let req = |seq: u64, proc: u64, op: Op| CallRequest {
        seq,
        proc: Some(Proc { id: proc, parent: 0 }),
        op: Some(op),
    };
    let mut seeds: Vec<(String, Vec<CallRequest>)> = ops
        .into_iter()
        .enumerate()
        .map(|(i, (name, op))| (name.to_string(), vec![req(i as u64 + 1, 1, op)]))
        .collect();
    let op = |name: &str| {
        seeds
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, r)| r[0].op.clone())
            .unwrap_or(Op::ClockRead(ClockRead {}))
    };
    let sequences: Vec<(&str, Vec<Op>)> = vec![
        (
            "seq_write_read",
            vec![
                op("open_create"),
                Op::Write(Write { handle: 5, data: path("data"), offset: None }),
                Op::Seek(Seek { handle: 5, offset: 0, whence: 0 }),
                Op::Read(Read { handle: 5, len: 10, offset: None }),
                Op::Close(Close { handle: 5 }),
            ],
        ),
        (
            "seq_dirs",
            vec![
                op("mkdir"),
                Op::Chdir(Chdir { dir: cwd(), path: path("d/e/m") }),
                op("getcwd"),
                op("open_create"),
                Op::Getdents(Getdents { handle: 2, size: 4096, lease: true }),
            ],
        ),
        (
            "seq_links",
            vec![
                op("symlink"),
                Op::Readlink(Readlink { dir: cwd(), path: path("sl"), size: 3, lease: true }),
                op("link"),
                op("rename"),
                op("stat"),
            ],
        ),
        (
            "seq_locks",
            vec![
                op("lock_set"),
                op("lock_get"),
                op("flock"),
                Op::Flock(Flock { handle: 3, operation: libc::LOCK_SH as u32 }),
            ],
        ),
        ("seq_xattrs", vec![op("xattr_set"), op("xattr_get"), op("xattr_list"), op("xattr_remove")]),
    ];
    for (name, ops) in sequences {
        let reqs =
            ops.into_iter().enumerate().map(|(i, op)| req(i as u64 + 1, 1 + i as u64 % 2, op)).collect();
        seeds.push((name.to_string(), reqs));
    }
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed runs (through both entry points) and passes [`check`]. With `HOMEWARD_FUZZ_SEEDS=<dir>`
    /// it also writes the corpus: `<dir>/decode_request/<name>` (single requests) and
    /// `<dir>/decode_requests/<name>` (every seed, length-delimited).
    #[test]
    fn seeds_run_and_pass_the_checks() {
        let out = std::env::var_os("HOMEWARD_FUZZ_SEEDS").map(std::path::PathBuf::from);
        for (name, reqs) in seeds() {
            let scratch = std::env::temp_dir().join(format!("homeward-seed-{}-{name}", std::process::id()));
            for multi in [false, true] {
                std::fs::create_dir_all(&scratch).unwrap();
                let bytes = if multi { encode_requests(&reqs) } else { reqs[0].encode_to_vec() };
                if multi {
                    run_requests(&scratch, &bytes);
                } else {
                    run_request(&scratch, &bytes);
                }
                std::fs::remove_dir_all(&scratch).unwrap();
                if let Some(out) = &out {
                    let target = if multi { "decode_requests" } else { "decode_request" };
                    if multi || reqs.len() == 1 {
                        std::fs::create_dir_all(out.join(target)).unwrap();
                        std::fs::write(out.join(target).join(&name), &bytes).unwrap();
                    }
                }
            }
        }
    }

    /// Hello seeds: written to `<dir>/decode_hello/` with `HOMEWARD_FUZZ_SEEDS=<dir>`.
    #[test]
    fn hello_seeds_run() {
        let hello = |version, cwd: &[u8], umask, description: &str| pb::HelloRequest {
            version,
            cwd: cwd.to_vec().into(),
            umask,
            description: description.to_string(),
        };
        let v = homeward_proto::PROTOCOL_VERSION;
        let seeds = [
            ("ok", hello(v, b"/", 0o022, "sh -c true")),
            ("relative", hello(v, b"tmp", 0, "")),
            ("nul", hello(v, b"/tmp\0x", 0, "")),
            ("missing", hello(v, b"/nonexistent/homeward", 0, "")),
            ("not_a_dir", hello(v, b"/proc/self/exe", 0, "")),
            ("version", hello(v + 1, b"/", 0, "")),
            ("umask", hello(v, b"/", u32::MAX, "\u{1b}[31mred\n")),
        ];
        let out =
            std::env::var_os("HOMEWARD_FUZZ_SEEDS").map(|d| std::path::PathBuf::from(d).join("decode_hello"));
        for (name, hello) in seeds {
            let bytes = hello.encode_to_vec();
            run_hello(&bytes);
            if let Some(out) = &out {
                std::fs::create_dir_all(out).unwrap();
                std::fs::write(out.join(name), &bytes).unwrap();
            }
        }
    }

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
