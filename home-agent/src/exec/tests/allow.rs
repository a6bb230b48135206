//! Confinement (`--allow`): paths outside the allowed directories, and every way of reaching out of one
//! (`..`, symbolic links, magic links, renames during the lookup), fail with `EACCES`; inside, calls work
//! as unconfined.

use super::*;
use crate::confine::{Allow, AllowError, OUTSIDE};
use homeward_proto::pb;
use std::os::unix::ffi::OsStrExt;

/// A confined home and a directory outside it holding `secret` and `dir/`.
fn homes() -> (Home, Home) {
    let outside = Home::new();
    std::fs::write(outside.root.join("secret"), "outside\n").unwrap();
    std::fs::create_dir(outside.root.join("dir")).unwrap();
    (Home::confined(&[]), outside)
}

fn lstat(path: &str) -> Op {
    Op::Stat(pb::Stat {
        dir: cwd(),
        path: path.to_string().into(),
        at_flags: pb::AtFlag::SymlinkNofollow as u32,
        mask: 0,
        lease: false,
    })
}

fn readlink(path: &str) -> Op {
    Op::Readlink(pb::Readlink {
        dir: cwd(),
        path: path.to_string().into(),
        size: 4096,
        lease: false,
        descriptor: false,
    })
}

fn rename(from: &str, to: &str) -> Op {
    Op::Rename(pb::Rename {
        old_dir: cwd(),
        old_path: from.to_string().into(),
        new_dir: cwd(),
        new_path: to.to_string().into(),
        flags: 0,
    })
}

fn chdir(path: &str) -> Op {
    Op::Chdir(pb::Chdir { dir: cwd(), path: path.to_string().into() })
}

fn symlink(target: &str, path: &str) -> Op {
    Op::Symlink(pb::Symlink { target: target.to_string().into(), dir: cwd(), path: path.to_string().into() })
}

fn abs(home: &Home, rel: &str) -> String {
    home.root.join(rel).display().to_string()
}

/// Every way of looking a path up (open, stat, lstat when `nofollow_too`, access, chdir) is refused.
#[track_caller]
fn refused(home: &Home, path: &str, nofollow_too: bool) {
    assert_eq!(home.open(path, libc::O_RDONLY, 0), Err(OUTSIDE), "open {path}");
    // With a trailing slash, O_CREAT is EISDIR before the last component is looked up.
    let creat = home.open(path, libc::O_WRONLY | libc::O_CREAT, 0o600);
    let isdir = path.ends_with('/') && creat == Err(Errno(libc::EISDIR as u16));
    assert!(creat == Err(OUTSIDE) || isdir, "creat {path}: {creat:?}");
    assert_eq!(home.call(stat(path)), Err(OUTSIDE), "stat {path}");
    let access = pb::Access { dir: cwd(), path: path.to_string().into(), mode: 0, at_flags: 0, lease: false };
    assert_eq!(home.call(Op::Access(access)), Err(OUTSIDE), "access {path}");
    if nofollow_too {
        assert_eq!(home.call(lstat(path)), Err(OUTSIDE), "lstat {path}");
    }
}

#[test]
fn a_path_outside_is_refused() {
    let (home, outside) = homes();
    let secret = abs(&outside, "secret");
    refused(&home, &secret, true);
    refused(&home, "/etc/passwd", true);
    refused(&home, "/", true);
    assert_eq!(home.call(mkdir(&abs(&outside, "new"))), Err(OUTSIDE));
    assert_eq!(home.call(rename(&secret, "stolen")), Err(OUTSIDE));
    std::fs::write(home.root.join("mine"), "inside\n").unwrap();
    assert_eq!(home.call(rename("mine", &abs(&outside, "mine"))), Err(OUTSIDE));
    assert_eq!(home.call(chdir(&abs(&outside, "dir"))), Err(OUTSIDE));
    let link = pb::Link {
        old_dir: cwd(),
        old_path: secret.clone().into(),
        new_dir: cwd(),
        new_path: "hard".into(),
        at_flags: 0,
    };
    assert_eq!(home.call(Op::Link(link)), Err(OUTSIDE));
    let unlink = pb::Unlink { dir: cwd(), path: secret.into(), at_flags: 0, lease: false };
    assert_eq!(home.call(Op::Unlink(unlink)), Err(OUTSIDE));
    // The allowed directory itself can be looked at, but not removed or renamed (its parent is outside).
    assert!(home.call(stat(&abs(&home, ""))).is_ok());
    assert_eq!(home.call(rename(&abs(&home, ""), &abs(&home, "x"))), Err(OUTSIDE));
    assert!(outside.root.join("secret").exists() && !outside.root.join("new").exists());
}

#[test]
fn dot_dot_cannot_climb_out() {
    let (home, outside) = homes();
    let name = outside.root.file_name().unwrap().to_str().unwrap().to_string();
    home.call(mkdir("sub")).unwrap();
    refused(&home, &format!("../{name}/secret"), true);
    refused(&home, &format!("sub/../../{name}/secret"), true);
    refused(&home, "..", true);
    refused(&home, &format!("{}/../../{name}/secret", abs(&home, "sub")), true);
    assert_eq!(home.call(chdir("..")), Err(OUTSIDE));
    // `..` that stays inside is fine, from the cwd too.
    home.call(chdir("sub")).unwrap();
    assert!(home.call(stat("..")).is_ok());
    home.open("../made-from-sub", libc::O_WRONLY | libc::O_CREAT, 0o600).unwrap();
    assert!(home.root.join("made-from-sub").exists());
    refused(&home, &format!("../../{name}/secret"), true);
}

#[test]
fn a_cwd_moved_out_at_home_cannot_be_climbed_from() {
    let (home, outside) = homes();
    home.call(mkdir("sub")).unwrap();
    std::fs::write(home.root.join("sub/f"), "moved\n").unwrap();
    home.call(chdir("sub")).unwrap();
    // Someone at home (not the job, which cannot name anything outside) moves the cwd out.
    std::fs::rename(home.root.join("sub"), outside.root.join("sub")).unwrap();
    refused(&home, "../secret", true);
    assert_eq!(home.call(chdir("..")), Err(OUTSIDE));
    assert!(home.call(stat("f")).is_ok(), "beneath itself it stays usable");
}

#[test]
fn symbolic_links_cannot_lead_out() {
    let (home, outside) = homes();
    let name = outside.root.file_name().unwrap().to_str().unwrap().to_string();
    home.call(symlink(&abs(&outside, "secret"), "abs")).unwrap();
    home.call(symlink(&format!("../{name}/secret"), "rel")).unwrap();
    home.call(symlink(&abs(&outside, "dir"), "absdir")).unwrap();
    home.call(symlink(&format!("../{name}"), "reldir")).unwrap();
    for link in ["abs", "rel"] {
        refused(&home, link, false);
        // The link itself is inside: lstat and readlink read it.
        assert!(home.call(lstat(link)).is_ok());
        let reply = home.reply(readlink(link));
        assert!(reply.outcome.unwrap().to_result().is_ok(), "readlink {link}");
        assert!(reply.data.ends_with(b"/secret"));
    }
    refused(&home, "absdir/", true);
    refused(&home, "absdir/x", true);
    refused(&home, "reldir/secret", true);
    assert_eq!(home.call(chdir("absdir")), Err(OUTSIDE));
    assert_eq!(home.call(mkdir("absdir/new")), Err(OUTSIDE));
    assert_eq!(home.call(rename("abs", "absdir/moved")), Err(OUTSIDE));
    // Writing through a link, or creating through a dangling one, stays out too.
    home.call(symlink(&abs(&outside, "created"), "dangling")).unwrap();
    assert_eq!(home.open("dangling", libc::O_WRONLY | libc::O_CREAT, 0o600), Err(OUTSIDE));
    assert!(!outside.root.join("created").exists());
    let chmod = pb::Chmod { dir: cwd(), path: "abs".into(), mode: 0o777, at_flags: 0 };
    assert_eq!(home.call(Op::Chmod(chmod)), Err(OUTSIDE));
    let truncate = pb::Truncate { dir: cwd(), path: "abs".into(), length: 0 };
    assert_eq!(home.call(Op::Truncate(truncate)), Err(OUTSIDE));
    assert_eq!(std::fs::read(outside.root.join("secret")).unwrap(), b"outside\n");
    let link = pb::Link {
        old_dir: cwd(),
        old_path: "abs".into(),
        new_dir: cwd(),
        new_path: "hard".into(),
        at_flags: pb::AtFlag::SymlinkFollow as u32,
    };
    assert_eq!(home.call(Op::Link(link)), Err(OUTSIDE));
}

#[test]
fn symbolic_links_within_work() {
    let home = Home::confined(&[]);
    home.call(mkdir("d")).unwrap();
    std::fs::write(home.root.join("d/f"), "inside\n").unwrap();
    // Absolute links into the allowed directory, relative ones, and `..` through a link.
    home.call(symlink(&abs(&home, "d/f"), "abs")).unwrap();
    home.call(symlink("d/f", "rel")).unwrap();
    home.call(symlink(&abs(&home, "d"), "absdir")).unwrap();
    home.call(symlink("../d/f", "d/up")).unwrap();
    for path in ["abs", "rel", "absdir/f", "absdir/../d/f", "d/up", "absdir/up"] {
        let reply = home.reply(stat(path));
        assert!(reply.outcome.unwrap().to_result().is_ok(), "stat {path}");
        assert_eq!(reply.stat.unwrap().size, 7, "stat {path}");
        let handle = home.open(path, libc::O_RDONLY, 0).unwrap_or_else(|e| panic!("open {path}: {e:?}"));
        let read = home.reply(Op::Read(pb::Read { handle, len: 100, offset: Some(0) }));
        assert_eq!(&read.data[..], b"inside\n", "read {path}");
    }
    home.open("absdir/new", libc::O_WRONLY | libc::O_CREAT, 0o600).unwrap();
    assert!(home.root.join("d/new").exists());
    home.call(symlink(&abs(&home, "d/through-dangling"), "dangling")).unwrap();
    home.open("dangling", libc::O_WRONLY | libc::O_CREAT, 0o600).unwrap();
    assert!(home.root.join("d/through-dangling").exists());
    home.call(chdir("absdir")).unwrap();
    let cwd = home.reply(Op::Getcwd(pb::Getcwd { size: 4096, lease: false }));
    assert_eq!(&cwd.data[..], home.root.join("d").as_os_str().as_bytes());
    // A loop is still a loop (the cwd is `d` now).
    home.call(symlink(&abs(&home, "d/loop"), "loop")).unwrap();
    assert_eq!(home.call(stat("loop")), Err(Errno(libc::ELOOP as u16)));
}

#[test]
fn inside_everything_works() {
    let home = Home::confined(&[]);
    home.call(mkdir("d")).unwrap();
    let h = home.open("d/f", libc::O_WRONLY | libc::O_CREAT, 0o666).unwrap();
    assert_eq!(
        home.call(Op::Write(pb::Write { handle: h, data: b"hi".to_vec().into(), offset: None, rwf: 0 })),
        Ok(2)
    );
    assert_eq!(home.mode_of("d/f"), 0o644);
    assert_eq!(home.reply(stat(&abs(&home, "d/f"))).stat.unwrap().size, 2);
    assert_eq!(home.reply(stat("d/")).stat.unwrap().mode & libc::S_IFMT, libc::S_IFDIR);
    assert_eq!(home.call(stat("d/f/")), Err(Errno::ENOTDIR));
    assert_eq!(home.call(stat("d/missing")), Err(Errno::ENOENT));
    assert_eq!(home.call(stat("missing/x")), Err(Errno::ENOENT));
    assert_eq!(home.call(mkdir("d")), Err(Errno(libc::EEXIST as u16)));
    home.call(rename("d/f", "g")).unwrap();
    home.call(rename(&abs(&home, "g"), &abs(&home, "d/h"))).unwrap();
    assert!(home.root.join("d/h").exists());
    home.call(mkdir("e/")).unwrap();
    let rmdir = |p: &str| {
        Op::Unlink(pb::Unlink {
            dir: cwd(),
            path: p.to_string().into(),
            at_flags: pb::AtFlag::Removedir as u32,
            lease: false,
        })
    };
    assert_eq!(home.call(rmdir("d/h/")), Err(Errno::ENOTDIR));
    home.call(rmdir("e/")).unwrap();
    assert_eq!(home.call(rmdir(".")), Err(Errno::EINVAL));
    let utimens = pb::Utimens { dir: cwd(), path: "d/h".into(), atime: None, mtime: None, at_flags: 0 };
    home.call(Op::Utimens(utimens)).unwrap();
    let chmod = pb::Chmod { dir: cwd(), path: "d/h".into(), mode: 0o600, at_flags: 0 };
    home.call(Op::Chmod(chmod)).unwrap();
    assert_eq!(home.mode_of("d/h"), 0o600);
    let truncate = pb::Truncate { dir: cwd(), path: "d/h".into(), length: 1 };
    home.call(Op::Truncate(truncate)).unwrap();
    assert_eq!(std::fs::read(home.root.join("d/h")).unwrap(), b"h");
    let statfs = pb::Statfs { dir: cwd(), path: "d".into(), lease: false };
    assert!(home.call(Op::Statfs(statfs)).is_ok());
    // A directory handle is a start like the cwd.
    let dir = home.open("d", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    let at_dir = |path: &str| {
        Op::Stat(pb::Stat {
            dir: Some(Dir { handle: dir }),
            path: path.to_string().into(),
            at_flags: 0,
            mask: 0,
            lease: false,
        })
    };
    assert!(home.call(at_dir("h")).is_ok());
    assert!(home.call(at_dir("../d/h")).is_ok());
    assert_eq!(home.call(at_dir("../..")), Err(OUTSIDE));
}

#[test]
fn magic_links_do_not_escape() {
    let (home, outside) = homes();
    let secret = abs(&outside, "secret");
    refused(&home, &format!("/proc/self/root{secret}"), true);
    home.call(symlink(&format!("/proc/self/root{secret}"), "magic")).unwrap();
    refused(&home, "magic", false);
    // Even with /proc allowed, a magic link is only its text, resolved by the same rule.
    let with_proc = Home::confined(&[std::path::Path::new("/proc")]);
    refused(&with_proc, &format!("/proc/self/root{secret}"), true);
    refused(&with_proc, &format!("/proc/{}/cwd/../{}", std::process::id(), "etc/passwd"), true);
    let fd = std::fs::File::open(outside.root.join("secret")).unwrap();
    use std::os::fd::AsRawFd;
    refused(&with_proc, &format!("/proc/self/fd/{}", fd.as_raw_fd()), false);
    // A link to a file inside is fine.
    std::fs::write(with_proc.root.join("mine"), "inside\n").unwrap();
    let mine = std::fs::File::open(with_proc.root.join("mine")).unwrap();
    assert!(with_proc.open(&format!("/proc/self/fd/{}", mine.as_raw_fd()), libc::O_RDONLY, 0).is_ok());
}

#[test]
fn renames_during_lookups_do_not_escape() {
    let (home, outside) = homes();
    let name = outside.root.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::create_dir_all(home.root.join("a/b/c")).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Moves `a/b` to the top and back: a lookup's `..` counted from the old place would climb out.
        let mover = s.spawn(|| {
            let (deep, top) = (home.root.join("a/b"), home.root.join("b"));
            let mut moves = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (from, to) = if moves % 2 == 0 { (&deep, &top) } else { (&top, &deep) };
                std::fs::rename(from, to).unwrap();
                moves += 1;
            }
            moves
        });
        let escape = format!("a/b/c/../../../{name}/secret");
        let escape_top = format!("b/c/../../{name}/secret");
        for _ in 0..2000 {
            for path in [&escape, &escape_top] {
                let got = home.open(path, libc::O_RDONLY, 0);
                assert!(matches!(got, Err(e) if e == OUTSIDE || e == Errno::ENOENT), "{path}: {got:?}");
                let got = home.call(stat(path));
                assert!(matches!(got, Err(e) if e == OUTSIDE || e == Errno::ENOENT), "{path}: {got:?}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(mover.join().unwrap() > 0);
    });
}

#[test]
fn leases_never_watch_outside() {
    let (home, outside) = homes();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _entered = runtime.enter();
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    home.session.leases.attach(tx);
    std::fs::create_dir(home.root.join("d")).unwrap();
    std::fs::write(home.root.join("d/f"), "inside\n").unwrap();
    home.call(symlink(&abs(&outside, "secret"), "abs")).unwrap();
    let leased = |path: &str| {
        let stat = pb::Stat { dir: cwd(), path: path.to_string().into(), at_flags: 0, mask: 0, lease: true };
        home.reply(Op::Stat(stat))
    };
    // Inside: leased, watching only from the allowed directory down (not `/tmp`, its parent).
    let reply = leased(&abs(&home, "d/f"));
    assert_ne!(reply.lease, 0);
    let names: Vec<&[u8]> = reply.deps.iter().map(|d| &d.name[..]).collect();
    assert_eq!(names, [&b"d"[..], b"f"]);
    assert_ne!(leased("d/f").lease, 0);
    // Leaving the allowed directory: refused, and not leased (nothing outside is watched).
    let name = outside.root.file_name().unwrap().to_str().unwrap().to_string();
    for path in [abs(&outside, "secret"), "abs".to_string(), format!("../{name}/secret")] {
        let reply = leased(&path);
        assert_eq!(reply.outcome.unwrap().to_result(), Err(OUTSIDE), "{path}");
        assert_eq!(reply.lease, 0, "{path}");
    }
}

#[test]
fn nested_allowed_directories() {
    let mut home = Home::new();
    std::fs::create_dir_all(home.root.join("inner/d")).unwrap();
    std::fs::write(home.root.join("top"), "top\n").unwrap();
    let path = CString::new(home.root.as_os_str().as_bytes()).unwrap();
    let cwd = sys::open(&path, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC).unwrap();
    let allow = Allow::new(&[home.root.join("inner"), home.root.clone()]).unwrap();
    home.session = Arc::new(Session::new(1, cwd, 0o022).with_allow(allow));
    // `..` from the inner directory goes on into the outer one, and stops there.
    assert!(home.call(stat(&abs(&home, "inner/d/../../top"))).is_ok());
    assert!(home.call(stat("inner/d/../../top")).is_ok());
    assert_eq!(home.call(stat(&abs(&home, "inner/../../x"))), Err(OUTSIDE));
}

#[test]
fn bad_allowed_directories_are_reported() {
    let relative = Allow::new(&["relative/dir".into()]).err().unwrap();
    assert!(matches!(relative, AllowError::Relative(_)));
    assert!(relative.to_string().contains("relative/dir"));
    let missing = Allow::new(&["/no/such/homeward/dir".into()]).err().unwrap();
    assert!(missing.to_string().contains("/no/such/homeward/dir"), "{missing}");
    assert!(missing.to_string().contains("No such file"), "{missing}");
    let file = Allow::new(&["/etc/passwd".into()]).err().unwrap();
    assert!(file.to_string().contains("Not a directory"), "{file}");
    assert!(Allow::new(&[]).unwrap().is_none());
}
