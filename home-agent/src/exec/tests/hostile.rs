//! Hostile requests: every field out of range gets the kernel's errno (or `EINVAL` for what no shim sends),
//! never a panic, a hang or an allocation beyond the caps.

use super::*;
use crate::exec::*;
use homeward_proto::pb;

fn errno_of(home: &Home, op: Op) -> Errno {
    home.call(op).expect_err("a hostile request must fail")
}

#[test]
fn unknown_flag_bits_are_einval() {
    let home = Home::new();
    let bad_open = pb::Open {
        dir: cwd(),
        path: "made".into(),
        flags: pb::OpenFlag::Creat as u32 | 1 << 30,
        mode: 0o600,
        resolve: 0,
        content_max: 0,
        lease: false,
    };
    assert_eq!(errno_of(&home, Op::Open(bad_open)), Errno::EINVAL);
    assert!(!home.root.join("made").exists(), "nothing is created for a refused open");
    let bad_at = 1 << 20;
    let st = pb::Stat { dir: cwd(), path: ".".into(), at_flags: bad_at, mask: 0, lease: false };
    assert_eq!(errno_of(&home, Op::Stat(st)), Errno::EINVAL);
    std::fs::write(home.root.join("f"), b"x").unwrap();
    let unlink = pb::Unlink { dir: cwd(), path: "f".into(), at_flags: bad_at, lease: false };
    assert_eq!(errno_of(&home, Op::Unlink(unlink)), Errno::EINVAL);
    assert!(home.root.join("f").exists());
    let access = pb::Access { dir: cwd(), path: "f".into(), mode: 0, at_flags: bad_at, lease: false };
    assert_eq!(errno_of(&home, Op::Access(access)), Errno::EINVAL);
    let chmod = pb::Chmod { dir: cwd(), path: "f".into(), mode: 0o777, at_flags: bad_at };
    assert_eq!(errno_of(&home, Op::Chmod(chmod)), Errno::EINVAL);
    let chown = pb::Chown { dir: cwd(), path: "f".into(), uid: 0, gid: 0, at_flags: bad_at };
    assert_eq!(errno_of(&home, Op::Chown(chown)), Errno::EINVAL);
    let link = pb::Link {
        old_dir: cwd(),
        old_path: "f".into(),
        new_dir: cwd(),
        new_path: "g".into(),
        at_flags: bad_at,
    };
    assert_eq!(errno_of(&home, Op::Link(link)), Errno::EINVAL);
    let utimens = pb::Utimens { dir: cwd(), path: "f".into(), atime: None, mtime: None, at_flags: bad_at };
    assert_eq!(errno_of(&home, Op::Utimens(utimens)), Errno::EINVAL);
    let h = home.open("f", libc::O_RDONLY, 0).unwrap();
    let set = pb::SetFlags { handle: h, flags: pb::OpenFlag::Nonblock as u32 | 1 << 31 };
    assert_eq!(errno_of(&home, Op::SetFlags(set)), Errno::EINVAL);
    // Bits the kernel itself checks pass through to it, and it says EINVAL.
    let rename = pb::Rename {
        old_dir: cwd(),
        old_path: "f".into(),
        new_dir: cwd(),
        new_path: "g".into(),
        flags: 1 << 30,
    };
    assert_eq!(errno_of(&home, Op::Rename(rename)), Errno::EINVAL);
}

#[test]
fn paths_too_long_or_with_nul_bytes_are_refused_before_use() {
    let home = Home::new();
    // 2048 components: refused before a lease's walk would split it.
    let long = "a/".repeat(libc::PATH_MAX as usize / 2);
    let op = |path: &str| pb::Stat {
        dir: cwd(),
        path: path.to_string().into(),
        at_flags: 0,
        mask: 0,
        lease: true,
    };
    assert_eq!(errno_of(&home, Op::Stat(op(&long))), Errno::ENAMETOOLONG);
    assert_eq!(errno_of(&home, Op::Stat(op(&long[1..]))), Errno(libc::ENOENT as u16), "PATH_MAX - 1 bytes");
    let symlink = pb::Symlink { target: long.clone().into(), dir: cwd(), path: "l".into() };
    assert_eq!(errno_of(&home, Op::Symlink(symlink)), Errno::ENAMETOOLONG);
    let symlink = pb::Symlink { target: "a\0b".into(), dir: cwd(), path: "l".into() };
    assert_eq!(errno_of(&home, Op::Symlink(symlink)), Errno::EINVAL);
    let rename =
        pb::Rename { old_dir: cwd(), old_path: "x".into(), new_dir: cwd(), new_path: "y\0".into(), flags: 0 };
    assert_eq!(errno_of(&home, Op::Rename(rename)), Errno::EINVAL);
    assert_eq!(errno_of(&home, stat("")), Errno(libc::ENOENT as u16), "an empty path, as the kernel");
}

#[test]
fn xattr_names_are_checked_as_the_kernel_does() {
    let home = Home::new();
    std::fs::write(home.root.join("f"), b"x").unwrap();
    let get = |name: Vec<u8>| {
        Op::Xattr(pb::Xattr {
            op: pb::XattrOp::Get as i32,
            dir: cwd(),
            path: "f".into(),
            nofollow: false,
            name: name.into(),
            value: Default::default(),
            size: 100,
            flags: 0,
        })
    };
    assert_eq!(errno_of(&home, get(Vec::new())), Errno::ERANGE);
    assert_eq!(errno_of(&home, get(vec![b'u'; 256])), Errno::ERANGE);
    assert_eq!(errno_of(&home, get(b"user.a\0b".to_vec())), Errno::EINVAL);
    let bad_op = pb::Xattr { op: 99, dir: cwd(), path: "f".into(), ..Default::default() };
    assert_eq!(errno_of(&home, Op::Xattr(bad_op)), Errno::EINVAL);
}

#[test]
fn a_write_beyond_the_cap_is_short() {
    let home = Home::new();
    let h = home.open("big", libc::O_WRONLY | libc::O_CREAT, 0o600).unwrap();
    let data = vec![7u8; MAX_BUF + 1];
    assert_eq!(
        home.call(Op::Write(pb::Write { handle: h, data: data.into(), offset: Some(0), rwf: 0 })),
        Ok(MAX_BUF as i64)
    );
}

#[test]
fn out_of_range_numbers_get_the_kernels_errno() {
    let home = Home::new();
    let h = home.open("f", libc::O_RDWR | libc::O_CREAT, 0o600).unwrap();
    let huge_nsec = Some(pb::Timespec { sec: 0, nsec: i64::MAX, now: false, omit: false });
    let utimens = pb::Utimens { dir: cwd(), path: "f".into(), atime: huge_nsec, mtime: None, at_flags: 0 };
    assert_eq!(errno_of(&home, Op::Utimens(utimens)), Errno::EINVAL);
    let read = pb::Read { handle: h, len: 1, offset: Some(-1) };
    assert_eq!(errno_of(&home, Op::Read(read)), Errno::EINVAL, "pread at a negative offset");
    let write = pb::Write { handle: h, data: b"x".to_vec().into(), offset: Some(i64::MIN), rwf: 0 };
    assert_eq!(errno_of(&home, Op::Write(write)), Errno::EINVAL);
    let fallocate = pb::Fallocate { handle: h, mode: u32::MAX, offset: 0, len: 1 };
    assert!(home.call(Op::Fallocate(fallocate)).is_err());
    let truncate = pb::Truncate { dir: Some(Dir { handle: h }), path: Default::default(), length: -1 };
    assert_eq!(errno_of(&home, Op::Truncate(truncate)), Errno::EINVAL);
    for size in [0, 1 << 31, u64::MAX] {
        let readlink = pb::Readlink { dir: cwd(), path: "f".into(), size, lease: false, descriptor: false };
        assert_eq!(errno_of(&home, Op::Readlink(readlink)), Errno::EINVAL, "readlink size {size:#x}");
    }
    let copy =
        |len| pb::CopyRange { in_handle: h, in_offset: Some(-5), out_handle: h, out_offset: None, len };
    assert_eq!(errno_of(&home, Op::CopyRange(copy(1))), Errno::EINVAL);
    assert_eq!(errno_of(&home, Op::CopyRange(copy(u64::MAX))), Errno::EOVERFLOW, "the kernel checks the end");
    let access = pb::Access { dir: cwd(), path: "f".into(), mode: u32::MAX, at_flags: 0, lease: false };
    assert_eq!(errno_of(&home, Op::Access(access)), Errno::EINVAL);
    let flock = pb::Flock { handle: h, operation: u32::MAX };
    assert_eq!(errno_of(&home, Op::Flock(flock)), Errno::EINVAL);
    let set = pb::SetClock { clock: libc::CLOCK_REALTIME, sec: 0, nsec: -1 };
    assert_eq!(errno_of(&home, Op::SetClock(set)), Errno::EINVAL);
    let kill = pb::Kill { pid: 1, signal: 65, tid: 0 };
    assert_eq!(errno_of(&home, Op::Kill(kill)), Errno::EINVAL);
    // A huge listing buffer is capped, not allocated.
    let d = home.open(".", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    assert!(
        home.call(Op::Getdents(pb::Getdents { handle: d, size: u64::MAX, lease: false, content_max: 0 }))
            .unwrap()
            > 0
    );
}

#[test]
fn forget_proc_refuses_impossible_ends() {
    let home = Home::new();
    home.call(mkdir("d")).unwrap();
    for end in [
        pb::forget_proc::End::ExitCode(256),
        pb::forget_proc::End::ExitCode(-1),
        pb::forget_proc::End::KilledBy(0),
        pb::forget_proc::End::KilledBy(i32::MAX),
        pb::forget_proc::End::KilledBy(i32::MIN),
    ] {
        let forget = pb::ForgetProc { id: 1, end: Some(end) };
        assert_eq!(errno_of(&home, Op::ForgetProc(forget)), Errno::EINVAL, "{end:?}");
    }
    assert!(home.session.knows(1), "a refused ForgetProc forgets nothing");
    let forget = pb::ForgetProc { id: 1, end: Some(pb::forget_proc::End::ExitCode(255)) };
    assert_eq!(home.call(Op::ForgetProc(forget)), Ok(0));
}

#[test]
fn unknown_handles_are_ebadf_everywhere() {
    let home = Home::new();
    let h = 999;
    let dir = Some(Dir { handle: h });
    let ops = [
        Op::Read(pb::Read { handle: h, len: 1, offset: None }),
        Op::Write(pb::Write { handle: h, data: b"x".to_vec().into(), offset: None, rwf: 0 }),
        Op::Seek(pb::Seek { handle: h, offset: 0, whence: 0 }),
        Op::Fsync(pb::Fsync { handle: h, datasync: false, ..Default::default() }),
        Op::Fallocate(pb::Fallocate { handle: h, mode: 0, offset: 0, len: 1 }),
        Op::Getdents(pb::Getdents { handle: h, size: 4096, lease: true, content_max: 0 }),
        Op::GetFlags(pb::GetFlags { handle: h }),
        Op::SetFlags(pb::SetFlags { handle: h, flags: 0 }),
        Op::Flock(pb::Flock { handle: h, operation: libc::LOCK_SH as u32 }),
        Op::Close(pb::Close { handle: h, more: vec![] }),
        Op::Ioctl(pb::Ioctl { handle: h, op: 0 }),
        Op::CopyRange(pb::CopyRange {
            in_handle: h,
            in_offset: None,
            out_handle: h,
            out_offset: None,
            len: 1,
        }),
        Op::Stat(pb::Stat { dir, path: "x".into(), at_flags: 0, mask: 0, lease: true }),
        Op::Statfs(pb::Statfs { dir, path: Default::default(), lease: false }),
        Op::Chdir(pb::Chdir { dir, path: Default::default() }),
        Op::Truncate(pb::Truncate { dir, path: Default::default(), length: 0 }),
        Op::Xattr(pb::Xattr {
            op: pb::XattrOp::List as i32,
            dir,
            path: Default::default(),
            ..Default::default()
        }),
        Op::Open(pb::Open { dir, path: Default::default(), ..Default::default() }),
    ];
    for op in ops {
        let name = op_name(Some(&op));
        assert_eq!(home.call(op), Err(Errno::EBADF), "{name}");
    }
}
