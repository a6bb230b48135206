//! Handle calls: I/O, locks, attributes; malformed requests; sessions.

use super::*;
use crate::exec::*;
use crate::sys;
use homeward_proto::pb;

#[test]
fn read_write_seek_share_the_offset() {
    let home = Home::new();
    let h = home.open("f", libc::O_RDWR | libc::O_CREAT, 0o600).unwrap();
    let write =
        |data: &'static [u8], offset| Op::Write(pb::Write { handle: h, data: data.into(), offset, rwf: 0 });
    let read = |len, offset| Op::Read(pb::Read { handle: h, len, offset });
    assert_eq!(home.call(write(b"hello world", None)), Ok(11));
    assert_eq!(home.call(Op::Seek(pb::Seek { handle: h, offset: 0, whence: pb::Whence::Set as i32 })), Ok(0));
    assert_eq!(&home.reply(read(5, None)).data[..], b"hello");
    assert_eq!(&home.reply(read(5, Some(6))).data[..], b"world", "pread");
    let rest = home.reply(read(u64::MAX, None));
    assert_eq!((rest.outcome.unwrap().to_result(), &rest.data[..]), (Ok(6), &b" world"[..]));
    assert_eq!(home.call(read(10, None)), Ok(0));
    assert_eq!(
        home.call(Op::Seek(pb::Seek { handle: h, offset: -5, whence: pb::Whence::End as i32 })),
        Ok(6)
    );
    assert_eq!(home.call(Op::Seek(pb::Seek { handle: h, offset: 0, whence: 99 })), Err(Errno::EINVAL));
    assert_eq!(home.call(write(b"W", Some(0))), Ok(1));
    assert_eq!(std::fs::read(home.root.join("f")).unwrap(), b"Wello world");
    let truncate = pb::Truncate { dir: Some(Dir { handle: h }), path: Default::default(), length: 5 };
    home.call(Op::Truncate(truncate)).unwrap();
    assert_eq!(home.reply(stat("f")).stat.unwrap().size, 5);
    let flags = home.call(Op::GetFlags(pb::GetFlags { handle: h })).unwrap();
    assert_eq!(flags as u32 & pb::OpenFlag::Rdwr as u32, pb::OpenFlag::Rdwr as u32);
    home.call(Op::Close(pb::Close { handle: h, more: vec![] })).unwrap();
    assert_eq!(home.call(Op::Close(pb::Close { handle: h, more: vec![] })), Err(Errno::EBADF));
    assert_eq!(home.call(read(1, None)), Err(Errno::EBADF));
}

#[test]
fn copy_range_between_handles() {
    let home = Home::new();
    std::fs::write(home.root.join("src"), b"0123456789").unwrap();
    let src = home.open("src", libc::O_RDONLY, 0).unwrap();
    let dst = home.open("dst", libc::O_WRONLY | libc::O_CREAT, 0o600).unwrap();
    let copy =
        pb::CopyRange { in_handle: src, in_offset: Some(2), out_handle: dst, out_offset: None, len: 100 };
    assert_eq!(home.call(Op::CopyRange(copy)), Ok(8));
    assert_eq!(std::fs::read(home.root.join("dst")).unwrap(), b"23456789");
}

fn lock(handle: u64, cmd: pb::LockCmd, kind: pb::LockType) -> Op {
    let range =
        pb::LockRange { kind: kind as i32, whence: pb::Whence::Set as i32, start: 0, len: 10, pid: 0 };
    Op::Lock(pb::Lock { handle, cmd: cmd as i32, ofd: false, range: Some(range) })
}

#[test]
fn ofd_locks_conflict_between_handles() {
    let home = Home::new();
    let a = home.open("f", libc::O_RDWR | libc::O_CREAT, 0o600).unwrap();
    let b = home.open("f", libc::O_RDWR, 0).unwrap();
    home.call(lock(a, pb::LockCmd::Set, pb::LockType::Write)).unwrap();
    assert_eq!(home.call(lock(b, pb::LockCmd::Set, pb::LockType::Write)), Err(Errno(libc::EAGAIN as u16)));
    let held = home.reply(lock(b, pb::LockCmd::Get, pb::LockType::Write)).lock.unwrap();
    assert_eq!((held.kind, held.start, held.len, held.pid), (pb::LockType::Write as i32, 0, 10, -1));
    let free = home.reply(lock(a, pb::LockCmd::Get, pb::LockType::Write)).lock.unwrap();
    assert_eq!(free.kind, pb::LockType::Unlock as i32, "a handle never conflicts with itself");
    // Closing the handle releases its locks.
    home.call(Op::Close(pb::Close { handle: a, more: vec![] })).unwrap();
    home.call(lock(b, pb::LockCmd::Set, pb::LockType::Write)).unwrap();
}

#[test]
fn malformed_requests_get_einval() {
    let home = Home::new();
    let none = execute(&home.session, &CallRequest { seq: 3, ..Default::default() });
    assert_eq!((none.seq, none.outcome.unwrap().to_result()), (3, Err(Errno::EINVAL)));
    let no_dir =
        pb::Open { dir: None, path: "f".into(), flags: 0, mode: 0, resolve: 0, content_max: 0, lease: false };
    assert_eq!(home.call(Op::Open(no_dir)), Err(Errno::EINVAL));
    assert_eq!(home.call(stat("a\0b")), Err(Errno::EINVAL));
    let bad_handle =
        pb::Stat { dir: Some(Dir { handle: 99 }), path: "x".into(), at_flags: 0, mask: 0, lease: false };
    assert_eq!(home.call(Op::Stat(bad_handle)), Err(Errno::EBADF));
    let lock = pb::Lock { handle: 1, cmd: 0, ofd: false, range: None };
    home.open("f", libc::O_CREAT | libc::O_RDWR, 0o600).unwrap();
    assert_eq!(home.call(Op::Lock(lock)), Err(Errno::EINVAL));
}

#[test]
fn sessions_cannot_name_each_others_handles() {
    let home = Home::new();
    let other = Home::new();
    let h = home.open("f", libc::O_CREAT | libc::O_RDWR, 0o600).unwrap();
    assert!(other.session.handle(h).is_err());
    assert_eq!(other.call(Op::Read(pb::Read { handle: h, len: 1, offset: None })), Err(Errno::EBADF));
}

#[test]
fn utimens_sets_and_keeps_times() {
    let home = Home::new();
    home.open("f", libc::O_CREAT | libc::O_RDWR, 0o600).unwrap();
    let ts = |sec, omit| Some(pb::Timespec { sec, nsec: 5, now: false, omit });
    let op = pb::Utimens {
        dir: cwd(),
        path: "f".into(),
        atime: ts(1000, false),
        mtime: ts(2000, false),
        at_flags: 0,
    };
    home.call(Op::Utimens(op)).unwrap();
    let st = home.reply(stat("f")).stat.unwrap();
    assert_eq!((st.atime_sec, st.mtime_sec, st.mtime_nsec), (1000, 2000, 5));
    let op =
        pb::Utimens { dir: cwd(), path: "f".into(), atime: ts(0, true), mtime: ts(3000, false), at_flags: 0 };
    home.call(Op::Utimens(op)).unwrap();
    let st = home.reply(stat("f")).stat.unwrap();
    assert_eq!((st.atime_sec, st.mtime_sec), (1000, 3000));
}

/// A home with the interrupt handler installed and a fifo `p` open both ways, and request `seq` reading
/// it: with read and write ends in one, the read blocks instead of seeing end of file.
fn fifo_read(seq: u64) -> (Home, CallRequest) {
    sys::install_interrupt_handler();
    let home = Home::new();
    let fifo = pb::Mknod { dir: cwd(), path: "p".into(), mode: libc::S_IFIFO | 0o600, dev: 0 };
    home.call(Op::Mknod(fifo)).unwrap();
    let h = home.open("p", libc::O_RDWR, 0).unwrap();
    let op = Some(Op::Read(pb::Read { handle: h, len: 10, offset: None }));
    (home, CallRequest { seq, proc: None, op, ..Default::default() })
}

#[test]
fn a_blocked_call_of_a_closed_session_is_interrupted() {
    let (home, read) = fifo_read(1);
    let session = home.session.clone();
    let reader = std::thread::spawn(move || session.run(1, || execute(&session, &read)));
    std::thread::sleep(std::time::Duration::from_millis(100));
    home.session.close();
    while home.session.interrupt() > 0 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let reply = reader.join().unwrap().expect("the call started before the session closed");
    assert_eq!(reply.outcome.unwrap().to_result(), Err(Errno(libc::EINTR as u16)));
    assert!(home.session.run(2, CallReply::default).is_none(), "no call runs in a closed session");
}

/// `Interrupt`: a call waiting at home (a fifo's read) fails with EINTR; one that cannot wait natively is
/// never registered under its number.
#[test]
fn a_call_waiting_at_home_is_interrupted() {
    let (home, read) = fifo_read(7);
    assert!(homeward_proto::effects::may_wait(read.op.as_ref().unwrap()));
    assert!(!homeward_proto::effects::may_wait(&stat("p")));
    let session = home.session.clone();
    let reader = std::thread::spawn(move || session.run(7, || execute(&session, &read)));
    // Repeated, as the shim does: a thread signalled just before it blocks stays blocked.
    let interrupt = Op::Interrupt(pb::Interrupt { seq: 7 });
    while !reader.is_finished() {
        home.call(interrupt.clone()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let reply = reader.join().unwrap().expect("the session is open");
    assert_eq!(reply.outcome.unwrap().to_result(), Err(Errno(libc::EINTR as u16)));
    assert_eq!(home.call(Op::Interrupt(pb::Interrupt { seq: 8 })).unwrap(), 0, "no call 8 runs");
}

#[test]
fn xattrs_round_trip_where_supported() {
    let home = Home::new();
    home.open("f", libc::O_CREAT | libc::O_RDWR, 0o600).unwrap();
    let xattr = |op: pb::XattrOp, value: &'static [u8], size| {
        Op::Xattr(pb::Xattr {
            op: op as i32,
            dir: cwd(),
            path: "f".into(),
            nofollow: false,
            name: "user.homeward".into(),
            value: value.into(),
            size,
            flags: 0,
        })
    };
    match home.call(xattr(pb::XattrOp::Set, b"v1", 0)) {
        Err(e) if e == Errno::EOPNOTSUPP => return eprintln!("skipped: no user xattrs on {:?}", home.root),
        r => assert_eq!(r, Ok(0)),
    }
    assert_eq!(home.call(xattr(pb::XattrOp::Get, b"", 0)), Ok(2), "size 0 asks for the length");
    let got = home.reply(xattr(pb::XattrOp::Get, b"", 100));
    assert_eq!(&got.data[..], b"v1");
    assert_eq!(home.call(xattr(pb::XattrOp::Get, b"", 1)), Err(Errno::ERANGE));
    home.call(xattr(pb::XattrOp::Remove, b"", 0)).unwrap();
    assert_eq!(home.call(xattr(pb::XattrOp::Get, b"", 100)), Err(Errno(libc::ENODATA as u16)));
}

#[test]
fn attributes_through_a_handle_even_an_o_path_one() {
    let home = Home::new();
    home.open("f", libc::O_CREAT | libc::O_RDWR, 0o600).unwrap();
    for flags in [libc::O_RDONLY, libc::O_PATH] {
        let h = home.open("f", flags, 0).unwrap();
        let dir = Some(Dir { handle: h });
        let at_flags = pb::AtFlag::EmptyPath as u32;
        let chmod = pb::Chmod { dir, path: Default::default(), mode: 0o640, at_flags };
        home.call(Op::Chmod(chmod)).unwrap();
        assert_eq!(home.mode_of("f"), 0o640);
        let chown = pb::Chown { dir, path: Default::default(), uid: u32::MAX, gid: u32::MAX, at_flags };
        home.call(Op::Chown(chown)).unwrap();
        let mtime = Some(pb::Timespec { sec: 4000, nsec: 0, now: false, omit: false });
        let utimens = pb::Utimens { dir, path: Default::default(), atime: None, mtime, at_flags };
        home.call(Op::Utimens(utimens)).unwrap();
        assert_eq!(home.reply(stat("f")).stat.unwrap().mtime_sec, 4000);
        let fstat = pb::Stat { dir, path: Default::default(), at_flags, mask: 0, lease: false };
        assert_eq!(home.reply(Op::Stat(fstat)).stat.unwrap().mode, libc::S_IFREG | 0o640);
        home.call(Op::Chmod(pb::Chmod { dir, path: Default::default(), mode: 0o600, at_flags })).unwrap();
    }
}
