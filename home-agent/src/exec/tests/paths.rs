//! Path calls: open, stat, directories, cwd.

use super::*;
use crate::exec::*;
use homeward_proto::pb;
use std::os::unix::ffi::OsStrExt;

#[test]
fn open_creates_with_the_process_umask() {
    let home = Home::new();
    let before = thread_umask();
    let reply = home.reply(open("f", libc::O_WRONLY | libc::O_CREAT, 0o666));
    let handle = reply.outcome.unwrap().to_result().unwrap();
    assert!(handle >= 1);
    let st = reply.stat.expect("open returns the file's attributes");
    assert_eq!(st.mode, libc::S_IFREG | 0o644);
    assert_eq!(home.mode_of("f"), 0o644);
    assert_eq!(thread_umask(), before, "the thread's umask is restored");

    assert_eq!(home.call(Op::Umask(pb::Umask { mask: 0o077 })), Ok(0o022));
    home.open("g", libc::O_WRONLY | libc::O_CREAT, 0o666).unwrap();
    assert_eq!(home.mode_of("g"), 0o600);
    home.call(mkdir("d")).unwrap();
    assert_eq!(home.mode_of("d"), 0o700);
    // Another process of the session keeps the session's umask.
    home.reply_as(2, open("h", libc::O_WRONLY | libc::O_CREAT, 0o666));
    assert_eq!(home.mode_of("h"), 0o644);
}

#[test]
fn missing_and_existing_files() {
    let home = Home::new();
    assert_eq!(home.call(stat("nope")), Err(Errno::ENOENT));
    assert_eq!(home.open("nope", libc::O_RDONLY, 0), Err(Errno::ENOENT));
    assert_eq!(home.call(stat("")), Err(Errno::ENOENT), "empty path without AT_EMPTY_PATH");
    home.call(mkdir("d")).unwrap();
    assert_eq!(home.call(mkdir("d")), Err(Errno(libc::EEXIST as u16)));
    let st = home.reply(stat("d")).stat.unwrap();
    assert_eq!(st.mode & libc::S_IFMT, libc::S_IFDIR);
    home.open("f", libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o600).unwrap();
    assert_eq!(
        home.open("f", libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o600),
        Err(Errno(libc::EEXIST as u16))
    );
    assert_eq!(
        home.call(Op::Access(pb::Access {
            dir: cwd(),
            path: "f".into(),
            mode: 0,
            at_flags: 0,
            lease: false
        })),
        Ok(0)
    );
}

#[test]
fn rmdir_and_unlink() {
    let home = Home::new();
    home.call(mkdir("d")).unwrap();
    home.open("d/x", libc::O_CREAT | libc::O_WRONLY, 0o600).unwrap();
    let rmdir = |path: &str| {
        Op::Unlink(pb::Unlink {
            dir: cwd(),
            path: path.to_string().into(),
            at_flags: pb::AtFlag::Removedir as u32,
            lease: false,
        })
    };
    assert_eq!(home.call(rmdir("d")), Err(Errno(libc::ENOTEMPTY as u16)));
    assert_eq!(home.call(rmdir("d/x")), Err(Errno::ENOTDIR));
    home.call(Op::Unlink(pb::Unlink { dir: cwd(), path: "d/x".into(), at_flags: 0, lease: false })).unwrap();
    home.call(rmdir("d")).unwrap();
    assert!(!home.root.join("d").exists());
}

#[test]
fn rename_and_links() {
    let home = Home::new();
    home.open("a", libc::O_CREAT | libc::O_WRONLY, 0o600).unwrap();
    home.open("c", libc::O_CREAT | libc::O_WRONLY, 0o600).unwrap();
    let rename = |from: &str, to: &str, flags| {
        Op::Rename(pb::Rename {
            old_dir: cwd(),
            old_path: from.to_string().into(),
            new_dir: cwd(),
            new_path: to.to_string().into(),
            flags,
        })
    };
    home.call(rename("a", "b", 0)).unwrap();
    assert!(!home.root.join("a").exists() && home.root.join("b").exists());
    assert_eq!(home.call(rename("b", "c", libc::RENAME_NOREPLACE)), Err(Errno(libc::EEXIST as u16)));

    home.call(Op::Symlink(pb::Symlink { target: "b".into(), dir: cwd(), path: "l".into() })).unwrap();
    let reply = home.reply(Op::Readlink(pb::Readlink {
        dir: cwd(),
        path: "l".into(),
        size: 100,
        lease: false,
        descriptor: false,
    }));
    assert_eq!((reply.outcome.unwrap().to_result(), &reply.data[..]), (Ok(1), &b"b"[..]));
    let zero =
        Op::Readlink(pb::Readlink { dir: cwd(), path: "l".into(), size: 0, lease: false, descriptor: false });
    assert_eq!(home.call(zero), Err(Errno::EINVAL));
    let link =
        pb::Link { old_dir: cwd(), old_path: "b".into(), new_dir: cwd(), new_path: "h".into(), at_flags: 0 };
    home.call(Op::Link(link)).unwrap();
    assert_eq!(home.reply(stat("b")).stat.unwrap().nlink, 2);
}

#[test]
fn getdents_lists_entries() {
    let home = Home::new();
    home.open("a", libc::O_CREAT | libc::O_WRONLY, 0o600).unwrap();
    home.call(mkdir("c")).unwrap();
    let dir = home.open(".", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    let reply =
        home.reply(Op::Getdents(pb::Getdents { handle: dir, size: 4096, lease: false, content_max: 0 }));
    assert!(reply.outcome.unwrap().to_result().unwrap() > 0);
    let mut names: Vec<(Vec<u8>, u32)> = reply.dirents.iter().map(|d| (d.name.to_vec(), d.kind)).collect();
    names.sort();
    let dt_dir = u32::from(libc::DT_DIR);
    let expected = [(&b"."[..], dt_dir), (b"..", dt_dir), (b"a", u32::from(libc::DT_REG)), (b"c", dt_dir)];
    assert_eq!(names, expected.map(|(n, k)| (n.to_vec(), k)));
    let again =
        home.reply(Op::Getdents(pb::Getdents { handle: dir, size: 4096, lease: false, content_max: 0 }));
    assert_eq!(again.outcome.unwrap().to_result(), Ok(0));
    assert!(again.dirents.is_empty());
    let tiny = home.open(".", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    assert_eq!(
        home.call(Op::Getdents(pb::Getdents { handle: tiny, size: 8, lease: false, content_max: 0 })),
        Err(Errno::EINVAL)
    );
}

#[test]
fn decode_stops_at_malformed_records() {
    let mut rec = Vec::new();
    rec.extend_from_slice(&5u64.to_ne_bytes());
    rec.extend_from_slice(&9i64.to_ne_bytes());
    rec.extend_from_slice(&24u16.to_ne_bytes());
    rec.push(libc::DT_REG);
    rec.extend_from_slice(b"ab\0\0\0");
    let mut buf = rec.clone();
    buf.extend_from_slice(&rec[..10]);
    let d = dir::decode_dirents(&buf);
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].ino, d[0].off, &d[0].name[..]), (5, 9, &b"ab"[..]));
    let mut zero = rec.clone();
    zero[16..18].copy_from_slice(&0u16.to_ne_bytes());
    assert!(dir::decode_dirents(&zero).is_empty());
}

#[test]
fn chdir_and_getcwd() {
    let home = Home::new();
    home.call(mkdir("sub")).unwrap();
    home.open("file", libc::O_CREAT | libc::O_WRONLY, 0o600).unwrap();
    let chdir = |path: &str| Op::Chdir(pb::Chdir { dir: cwd(), path: path.to_string().into() });
    assert_eq!(home.call(chdir("missing")), Err(Errno::ENOENT));
    assert_eq!(home.call(chdir("file")), Err(Errno::ENOTDIR));
    home.call(chdir("sub")).unwrap();
    let reply = home.reply(Op::Getcwd(pb::Getcwd { size: 4096, lease: false }));
    let expected = home.root.join("sub");
    assert_eq!(&reply.data[..], expected.as_os_str().as_bytes());
    assert_eq!(reply.outcome.unwrap().to_result(), Ok(expected.as_os_str().len() as i64 + 1));
    let short = expected.as_os_str().len() as u64;
    assert_eq!(home.call(Op::Getcwd(pb::Getcwd { size: short, lease: false })), Err(Errno::ERANGE));
    home.open("inside", libc::O_CREAT | libc::O_WRONLY, 0o600).unwrap();
    assert!(home.root.join("sub/inside").exists());
    // Process 2 still starts at the session's cwd.
    let other = home.reply_as(2, Op::Getcwd(pb::Getcwd { size: 4096, lease: false }));
    assert_eq!(&other.data[..], home.root.as_os_str().as_bytes());
    // fchdir back through a handle.
    let up = home.open("..", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    home.call(Op::Chdir(pb::Chdir { dir: Some(Dir { handle: up }), path: Default::default() })).unwrap();
    assert_eq!(
        &home.reply(Op::Getcwd(pb::Getcwd { size: 4096, lease: false })).data[..],
        home.root.as_os_str().as_bytes()
    );
    // A removed cwd.
    home.call(chdir("sub")).unwrap();
    std::fs::remove_file(home.root.join("sub/inside")).unwrap();
    std::fs::remove_dir(home.root.join("sub")).unwrap();
    assert_eq!(home.call(Op::Getcwd(pb::Getcwd { size: 4096, lease: false })), Err(Errno::ENOENT));
}

#[test]
fn a_descriptors_path_is_what_its_proc_link_reads() {
    let home = Home::new();
    let handle = home.open("f", libc::O_CREAT | libc::O_WRONLY, 0o600).unwrap();
    let ask = |handle: u64, path: &str, size: u64| {
        Op::Readlink(pb::Readlink {
            dir: Some(Dir { handle }),
            path: path.to_string().into(),
            size,
            lease: false,
            descriptor: true,
        })
    };
    let want = home.root.join("f").into_os_string().into_encoded_bytes();
    let reply = home.reply(ask(handle, "", 4096));
    assert_eq!((reply.outcome.unwrap().to_result(), &reply.data[..]), (Ok(want.len() as i64), &want[..]));
    // Cut to the buffer, as readlink cuts.
    let reply = home.reply(ask(handle, "", 3));
    assert_eq!((reply.outcome.unwrap().to_result(), &reply.data[..]), (Ok(3), &want[..3]));
    std::fs::remove_file(home.root.join("f")).unwrap();
    let reply = home.reply(ask(handle, "", 4096));
    assert!(reply.data.ends_with(b"/f (deleted)"), "{:?}", reply.data);
    // Only of a handle, with no path.
    assert_eq!(home.call(ask(handle, "g", 4096)), Err(Errno::EINVAL));
    assert_eq!(home.call(ask(0, "", 4096)), Err(Errno::EINVAL));
    assert_eq!(home.call(ask(9999, "", 4096)), Err(Errno::EBADF));
}
