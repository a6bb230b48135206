//! Seeds for the fuzz corpus: one request of each kind, a few sequences, a few `Hello`s. Their test runs
//! them all and, with `HOMEWARD_FUZZ_SEEDS=<dir>`, writes them as `<dir>/<target>/<name>`.

use homeward_proto::pb::{self, call_request::Op, CallRequest};

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
        ("statfs", Op::Statfs(Statfs { dir: cwd(), path: path("d"), lease: true })),
        ("fstatfs", Op::Statfs(Statfs { dir: h(1), path: path(""), lease: false })),
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
        (
            "readlink",
            Op::Readlink(Readlink { dir: h(2), path: path("s"), size: 64, lease: true, descriptor: false }),
        ),
        (
            "readlink descriptor",
            Op::Readlink(Readlink { dir: h(2), path: path(""), size: 64, lease: false, descriptor: true }),
        ),
        ("mkdir", Op::Mkdir(Mkdir { dir: cwd(), path: path("d/e/m"), mode: 0o755 })),
        ("mknod", Op::Mknod(Mknod { dir: cwd(), path: path("node"), mode: libc::S_IFREG | 0o600, dev: 0 })),
        ("unlink", Op::Unlink(Unlink { dir: cwd(), path: path("d/a"), at_flags: 0, lease: false })),
        (
            "rmdir",
            Op::Unlink(Unlink {
                dir: h(2),
                path: path("e"),
                at_flags: AtFlag::Removedir as u32,
                lease: false,
            }),
        ),
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
        ("getcwd", Op::Getcwd(Getcwd { size: 4096, lease: true })),
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
        ("write", Op::Write(Write { handle: 1, data: path("more"), offset: None, rwf: 0 })),
        ("pwrite", Op::Write(Write { handle: 1, data: path("far"), offset: Some(1 << 30), rwf: 0 })),
        ("seek", Op::Seek(Seek { handle: 1, offset: -2, whence: Whence::End as i32 })),
        ("seek_data", Op::Seek(Seek { handle: 3, offset: 0, whence: Whence::Data as i32 })),
        ("fsync", Op::Fsync(Fsync { handle: 1, datasync: true, ..Default::default() })),
        (
            "fsync_lease",
            Op::Fsync(Fsync {
                handle: 1,
                lease_path: path("/tmp/../etc"),
                lease_follow: true,
                ..Default::default()
            }),
        ),
        (
            "fsync_by_path",
            Op::Fsync(Fsync {
                handle: 0,
                datasync: true,
                lease_path: path("/tmp"),
                dev: 1,
                ino: 2,
                ..Default::default()
            }),
        ),
        ("fallocate", Op::Fallocate(Fallocate { handle: 1, mode: 0x01, offset: 0, len: 4096 })),
        ("getdents", Op::Getdents(Getdents { handle: 2, size: 32768, lease: true, content_max: 0 })),
        ("getdents_small", Op::Getdents(Getdents { handle: 2, size: 24, lease: false, content_max: 0 })),
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
        ("close", Op::Close(Close { handle: 3, more: vec![] })),
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
        ("identity", Op::Identity(Identity { spare: false })),
        ("spare_deputy", Op::Identity(Identity { spare: true })),
        ("clock_read", Op::ClockRead(ClockRead {})),
        ("interrupt", Op::Interrupt(Interrupt { seq: 1 })),
    ];
    let req = |seq: u64, proc: u64, op: Op| CallRequest {
        seq,
        proc: Some(Proc { id: proc, parent: 0 }),
        op: Some(op),
        ack: 0,
        // Odd seqs go as write-behind would send them.
        ordered: seq % 2 == 1,
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
                Op::Write(Write { handle: 5, data: path("data"), offset: None, rwf: 0 }),
                Op::Seek(Seek { handle: 5, offset: 0, whence: 0 }),
                Op::Read(Read { handle: 5, len: 10, offset: None }),
                Op::Close(Close { handle: 5, more: vec![] }),
            ],
        ),
        (
            "seq_dirs",
            vec![
                op("mkdir"),
                Op::Chdir(Chdir { dir: cwd(), path: path("d/e/m") }),
                op("getcwd"),
                op("open_create"),
                Op::Getdents(Getdents { handle: 2, size: 4096, lease: true, content_max: 0 }),
            ],
        ),
        (
            "seq_links",
            vec![
                op("symlink"),
                Op::Readlink(Readlink {
                    dir: cwd(),
                    path: path("sl"),
                    size: 3,
                    lease: true,
                    descriptor: false,
                }),
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
    use crate::fuzzing::*;

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
            resume_seconds: 60,
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
}
