//! Directories and names: mkdir, mknod, unlink, rmdir, rename, link, symlink, getdents, chdir, getcwd.

use super::{simple, Action, Call, Outcome, Route};
use crate::memory;
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::{flags, Errno};
use std::io::Write;

pub async fn serve(call: &Call<'_>, nr: i64) -> Option<Outcome> {
    let fdcwd = libc::AT_FDCWD;
    Some(match nr {
        #[cfg(target_arch = "x86_64")]
        libc::SYS_mkdir => mkdir(call, fdcwd, 0, call.arg(1) as u32).await,
        libc::SYS_mkdirat => mkdir(call, call.arg_i32(0), 1, call.arg(2) as u32).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_mknod => mknod(call, fdcwd, 0, call.arg(1) as u32, call.arg(2)).await,
        libc::SYS_mknodat => mknod(call, call.arg_i32(0), 1, call.arg(2) as u32, call.arg(3)).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_rmdir => unlink(call, fdcwd, 0, libc::AT_REMOVEDIR).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_unlink => unlink(call, fdcwd, 0, 0).await,
        libc::SYS_unlinkat => unlink(call, call.arg_i32(0), 1, call.arg_i32(2)).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_rename => rename(call, (fdcwd, 0), (fdcwd, 1), 0).await,
        libc::SYS_renameat => rename(call, (call.arg_i32(0), 1), (call.arg_i32(2), 3), 0).await,
        libc::SYS_renameat2 => {
            rename(call, (call.arg_i32(0), 1), (call.arg_i32(2), 3), call.arg(4) as u32).await
        }
        #[cfg(target_arch = "x86_64")]
        libc::SYS_link => link(call, (fdcwd, 0), (fdcwd, 1), 0).await,
        libc::SYS_linkat => link(call, (call.arg_i32(0), 1), (call.arg_i32(2), 3), call.arg_i32(4)).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_symlink => symlink(call, 0, fdcwd, 1).await,
        libc::SYS_symlinkat => symlink(call, 0, call.arg_i32(1), 2).await,
        libc::SYS_getdents64 => getdents(call, Format::Dirent64).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_getdents => getdents(call, Format::Dirent).await,
        libc::SYS_chdir => chdir(call).await,
        libc::SYS_fchdir => fchdir(call).await,
        libc::SYS_getcwd => getcwd(call).await,
        _ => return None,
    })
}

async fn mkdir(call: &Call<'_>, dirfd: i32, path_arg: usize, mode: u32) -> Outcome {
    let path = call.path(path_arg)?;
    let Route::Home(dir) = call.route(dirfd, &path) else { return Ok(Action::Continue) };
    simple(call, Op::Mkdir(pb::Mkdir { dir: Some(dir), path: path.into(), mode: mode & 0o7777 })).await
}

async fn mknod(call: &Call<'_>, dirfd: i32, path_arg: usize, mode: u32, dev: u64) -> Outcome {
    let path = call.path(path_arg)?;
    let Route::Home(dir) = call.route(dirfd, &path) else { return Ok(Action::Continue) };
    simple(call, Op::Mknod(pb::Mknod { dir: Some(dir), path: path.into(), mode, dev })).await
}

async fn unlink(call: &Call<'_>, dirfd: i32, path_arg: usize, at: i32) -> Outcome {
    if at & !libc::AT_REMOVEDIR != 0 {
        return Err(Errno::EINVAL);
    }
    let path = call.path(path_arg)?;
    let Route::Home(dir) = call.route(dirfd, &path) else { return Ok(Action::Continue) };
    let at_flags = flags::at_to_wire(at, true);
    // The name is then missing, as lookups that follow a last link or not find it (sqlite's journal,
    // looked for at every transaction): home leases that answer.
    let keys: Vec<_> = [false, true].into_iter().filter_map(|f| call.lookup_key(&dir, &path, f, 0)).collect();
    let attrs = &call.sup.link.attrs;
    let ticket = attrs.ticket_past_own_change();
    let lease = !keys.is_empty();
    let op = Op::Unlink(pb::Unlink { dir: Some(dir), path: path.clone().into(), at_flags, lease });
    // A file the job created, whose name home said it may remove, with nothing on the way changed since:
    // the unlink cannot be refused, so it goes behind (sqlite's journal, at every commit).
    let removable = keys
        .first()
        .filter(|k| !k.follow)
        .map(|k| crate::attrcache::Key { mask: crate::attrcache::REMOVABLE, ..k.clone() });
    // The last component as written: a trailing slash (ENOTDIR for a file), `.` or `..` never go behind.
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
    let plain = !name.is_empty() && name != b"." && name != b"..";
    if let Some(removable) = removable.filter(|_| at == 0 && plain) {
        if unlink_behind(call, dir, &path, op.clone(), &keys, ticket, &removable, name).await? {
            return Ok(Action::Value(0));
        }
    }
    let (v, reply) = call.home_value(op).await?;
    for key in keys {
        call.put_leased(&dir, &path, key, crate::attrcache::Cached::Missing(Errno::ENOENT), ticket, &reply);
    }
    Ok(Action::Value(v))
}

/// Sends an unlink that cannot be refused without waiting (see [`crate::behind`]), if the name is still
/// removable (`removable`, checked once nothing is left to wait for before sending); when its reply comes,
/// the name's absence that home leased after it is kept under `keys`. Should it fail after all (a disk
/// error), remote-shim says so on stderr: no descriptor is left to owe the error to. False: not sent.
#[allow(clippy::too_many_arguments)]
async fn unlink_behind(
    call: &Call<'_>,
    dir: pb::Dir,
    path: &[u8],
    op: Op,
    keys: &[crate::attrcache::Key],
    ticket: crate::attrcache::Ticket,
    removable: &crate::attrcache::Key,
    name: &[u8],
) -> Result<bool, Errno> {
    // Taken now: the directory handle it depends on may be gone by the time the reply comes.
    let origin = keys.first().and_then(|key| call.origin_deps(&dir, path, key));
    let attrs = call.sup.link.attrs.clone();
    let leased = keys.to_vec();
    let mut removed = None;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answer = answered.clone();
    let sent = call
        .home_behind_if(
            op,
            || {
                removed = call.sup.link.attrs.take_removable(removable, name);
                removed.is_some()
            },
            move |reply| {
                answer.store(true, std::sync::atomic::Ordering::SeqCst);
                let Some(reply) = reply else {
                    attrs.removal_answered(&leased);
                    return;
                };
                if let Err(e) = super::outcome(&reply) {
                    // The name was said to be missing: nothing cached can be trusted to know better.
                    attrs.forget_all();
                    let _ = writeln!(
                        std::io::stderr(),
                        "remote-shim: an unlink the program was told succeeded failed at home ({})",
                        e.name()
                    );
                    return;
                }
                if let Some(mut deps) = origin {
                    deps.extend(crate::attrcache::deps(&reply));
                    for key in &leased {
                        let missing = crate::attrcache::Cached::Missing(Errno::ENOENT);
                        attrs.put(key.clone(), missing, ticket, reply.lease, deps.clone());
                    }
                }
                attrs.removal_answered(&leased);
            },
        )
        .await?;
    if let Some(removed) = removed.filter(|_| sent) {
        call.sup.link.attrs.removed(removed, keys, ticket, &answered);
    }
    Ok(sent)
}

/// Two home names: (directory, path) of the old and of the new name.
type HomePair = ((pb::Dir, Vec<u8>), (pb::Dir, Vec<u8>));

/// Routes the two names of a rename or link: both home, both local, or `EXDEV` across the two.
fn route_pair(call: &Call<'_>, old: (i32, usize), new: (i32, usize)) -> Result<Option<HomePair>, Errno> {
    let (old_path, new_path) = (call.path(old.1)?, call.path(new.1)?);
    match (call.route(old.0, &old_path), call.route(new.0, &new_path)) {
        (Route::Local, Route::Local) => Ok(None),
        (Route::Home(a), Route::Home(b)) => Ok(Some(((a, old_path), (b, new_path)))),
        _ => Err(Errno::EXDEV),
    }
}

async fn rename(call: &Call<'_>, old: (i32, usize), new: (i32, usize), flags: u32) -> Outcome {
    let Some(((old_dir, old_path), (new_dir, new_path))) = route_pair(call, old, new)? else {
        return Ok(Action::Continue);
    };
    let op = Op::Rename(pb::Rename {
        old_dir: Some(old_dir),
        old_path: old_path.into(),
        new_dir: Some(new_dir),
        new_path: new_path.into(),
        flags,
    });
    simple(call, op).await
}

async fn link(call: &Call<'_>, old: (i32, usize), new: (i32, usize), at: i32) -> Outcome {
    if at & !(libc::AT_SYMLINK_FOLLOW | libc::AT_EMPTY_PATH) != 0 {
        return Err(Errno::EINVAL);
    }
    let Some(((old_dir, old_path), (new_dir, new_path))) = route_pair(call, old, new)? else {
        return Ok(Action::Continue);
    };
    let op = Op::Link(pb::Link {
        old_dir: Some(old_dir),
        old_path: old_path.into(),
        new_dir: Some(new_dir),
        new_path: new_path.into(),
        at_flags: flags::at_to_wire(at, false),
    });
    simple(call, op).await
}

async fn symlink(call: &Call<'_>, target_arg: usize, dirfd: i32, path_arg: usize) -> Outcome {
    let target = call.path(target_arg)?;
    let path = call.path(path_arg)?;
    let Route::Home(dir) = call.route(dirfd, &path) else { return Ok(Action::Continue) };
    simple(call, Op::Symlink(pb::Symlink { target: target.into(), dir: Some(dir), path: path.into() })).await
}

#[derive(Clone, Copy)]
enum Format {
    /// `struct linux_dirent64`: ino, off, reclen, type, name.
    Dirent64,
    /// The legacy `struct linux_dirent`: ino, off, reclen, name, pad, type in the last byte.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Dirent,
}

async fn getdents(call: &Call<'_>, format: Format) -> Outcome {
    let Some(h) = call.handle(0) else { return Ok(Action::Continue) };
    let size = (call.arg(2) as u32 as usize).min(memory::MAX_IO);
    memory::probe(call.tid, call.arg(1), size)?;
    let attrs = &call.sup.link.attrs;
    // The listing itself counts as one change (it may move the directory's access time, `AttrCache`).
    let ticket = attrs.ticket_past_own_change();
    let lease = h.origin().is_some();
    let content_max = if lease { call.sup.prefetch.content_max() } else { 0 };
    if let Some(origin) = h.origin() {
        call.sup.prefetch.listed(&origin.key);
    }
    let op = Op::Getdents(pb::Getdents { handle: h.id, size: size as u64, lease, content_max });
    let (_, reply) = call.home_value(op).await?;
    if !reply.dirents.iter().all(|e| entry_name(&e.name)) {
        // Not what any kernel lists (and a name with `/` or `..` would poison the attribute cache).
        return Err(Errno::EIO);
    }
    if let Some(origin) = h.origin() {
        // Opened by a leased lookup that still holds: the entries' attributes answer the lookups of
        // `<dir>/<name>` that follow (readdir-plus), depending on the path to the directory and their names.
        let dir = crate::attrcache::deps(&reply);
        if let (Some(path), [(wd, _)]) = (attrs.deps_of(&origin.key), dir.as_slice()) {
            if reply.lease != 0 && h.origin_finds(attrs) {
                prefill(attrs, origin, &reply.dirents, ticket, reply.lease, &path, *wd);
            }
        }
    }
    // Small files' content, at the version listed: later opens of them need no round trip (`lazy`).
    for e in reply.dirents.iter().filter(|e| e.whole) {
        if let Some(version) = e.stat.as_ref().and_then(crate::content::Key::of) {
            call.sup.content.insert_bytes(version, &e.content);
        }
    }
    let buf = encode_dirents(&reply.dirents, format, size);
    if buf.is_empty() && !reply.dirents.is_empty() {
        return Err(Errno::EINVAL);
    }
    memory::write_bytes(call.tid, call.arg(1), &buf)?;
    Ok(Action::Value(buf.len() as i64))
}

/// Stores the attributes of a listed directory's entries under `<dir>/<name>`, as the lookup that opened
/// the directory named it.
fn prefill(
    attrs: &crate::attrcache::AttrCache,
    origin: &crate::fdtable::Origin,
    entries: &[pb::Dirent],
    ticket: crate::attrcache::Ticket,
    lease: u64,
    path_deps: &[crate::attrcache::Dep],
    wd: u32,
) {
    // The path to the directory, but not the directory's own attributes, which every entry made or removed
    // in it changes: an entry depends on its own name. (A change of the directory's permissions is
    // reported to the directory itself, with no name, which voids everything depending on it, and to the
    // directory it is in, under its name.)
    let entry_deps: Vec<_> =
        path_deps.iter().filter(|(w, name)| !(*w == wd && name.is_empty())).cloned().collect();
    for e in entries {
        let Some(st) = e.stat else { continue };
        // A subdirectory's own attributes (mtime, link count) change with its entries, which the watch on
        // this directory does not report: looked up on its own, it is watched itself.
        if st.mode & libc::S_IFMT == libc::S_IFDIR {
            continue;
        }
        let path = crate::attrcache::join(&origin.key.path, &e.name);
        let link = st.mode & libc::S_IFMT == libc::S_IFLNK;
        for follow in [false, true] {
            // A symbolic link's target is not known here: only the lookup that does not follow it.
            if follow && link {
                continue;
            }
            let key = crate::attrcache::Key { proc: origin.key.proc, path: path.clone(), follow, mask: 0 };
            let mut deps = entry_deps.clone();
            deps.push((wd, e.name.to_vec()));
            attrs.put(key, crate::attrcache::Cached::Found(st), ticket, lease, deps);
        }
    }
}

/// Whether a listed name is one a directory can hold: 1 to 255 bytes (`NAME_MAX`), no `/`, no NUL.
fn entry_name(name: &[u8]) -> bool {
    (1..=255).contains(&name.len()) && !name.contains(&b'/') && !name.contains(&0)
}

/// Encodes entries in the kernel's record format, stopping before the first that does not fit in `size`.
fn encode_dirents(entries: &[pb::Dirent], format: Format, size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let name = &e.name[..];
        let (header, trailer) = match format {
            Format::Dirent64 => (19, 1),
            Format::Dirent => (18, 2),
        };
        let reclen = (header + name.len() + trailer).div_ceil(8) * 8;
        if out.len() + reclen > size {
            break;
        }
        let start = out.len();
        out.extend_from_slice(&e.ino.to_ne_bytes());
        out.extend_from_slice(&e.off.to_ne_bytes());
        out.extend_from_slice(&(reclen as u16).to_ne_bytes());
        if let Format::Dirent64 = format {
            out.push(e.kind as u8);
        }
        out.extend_from_slice(name);
        out.resize(start + reclen, 0);
        if let Format::Dirent = format {
            out[start + reclen - 1] = e.kind as u8;
        }
    }
    out
}

async fn chdir(call: &Call<'_>) -> Outcome {
    let path = call.path(0)?;
    let Route::Home(dir) = call.route(libc::AT_FDCWD, &path) else { return Ok(Action::Continue) };
    change_cwd(call, Op::Chdir(pb::Chdir { dir: Some(dir), path: path.into() })).await
}

async fn fchdir(call: &Call<'_>) -> Outcome {
    let Some(h) = call.handle(0) else { return Ok(Action::Continue) };
    change_cwd(call, Op::Chdir(pb::Chdir { dir: Some(pb::Dir { handle: h.id }), path: Default::default() }))
        .await
}

/// A chdir at home: the process's cwd path is forgotten before it is sent and when it is answered (see
/// `cwds`).
async fn change_cwd(call: &Call<'_>, op: Op) -> Outcome {
    let proc = call.proc().id;
    call.sup.cwds.changing(proc);
    let outcome = simple(call, op).await;
    call.sup.cwds.changing(proc);
    outcome
}

/// getcwd: the path home last gave while its lease holds (see `cwds`), else home's answer, leased.
async fn getcwd(call: &Call<'_>) -> Outcome {
    let size = call.arg(1);
    let proc = call.proc().id;
    let attrs = &call.sup.link.attrs;
    let cached = call.sup.cwds.get(proc, attrs);
    let bytes = match cached {
        Some(mut bytes) => {
            bytes.push(0);
            bytes
        }
        None => ask_cwd(call, size).await?,
    };
    if bytes.len() as u64 > size {
        return Err(Errno::ERANGE);
    }
    memory::write_bytes(call.tid, call.arg(0), &bytes)?;
    Ok(Action::Value(bytes.len() as i64))
}

/// Asks home for the calling process's cwd path (with its NUL; `size`: the program's buffer), and keeps it
/// under home's lease.
async fn ask_cwd(call: &Call<'_>, size: u64) -> Result<Vec<u8>, Errno> {
    let attrs = &call.sup.link.attrs;
    let (ticket, cwd_ticket) = (attrs.ticket(), call.sup.cwds.ticket());
    let (len, reply) = call.home_value(Op::Getcwd(pb::Getcwd { size, lease: true })).await?;
    let mut bytes = reply.data.to_vec();
    bytes.push(0);
    if len != bytes.len() as i64 {
        // The value counts the path and its NUL: anything else is a malformed reply.
        return Err(Errno::EIO);
    }
    if let Some(st) = reply.stat.filter(|_| reply.lease != 0 && reply.data.first() == Some(&b'/')) {
        crate::cwds::lease(attrs, &reply.data, (st.dev, st.ino), ticket, &reply);
        call.sup.cwds.put(call.proc().id, cwd_ticket, reply.data.to_vec(), (st.dev, st.ino));
    } else if reply.lease == 0 {
        call.sup.cwds.refused.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(bytes)
}

/// The calling process's cwd path while home's lease on it holds: kept, or asked of home (`lazy` opens of
/// relative paths).
pub async fn leased_cwd(call: &Call<'_>) -> Option<Vec<u8>> {
    let (proc, attrs) = (call.proc().id, &call.sup.link.attrs);
    if let Some(path) = call.sup.cwds.get(proc, attrs) {
        return Some(path);
    }
    if call.sup.cwds.refused.load(std::sync::atomic::Ordering::Relaxed) || call.sup.cwds.has_failed(proc) {
        return None;
    }
    if ask_cwd(call, libc::PATH_MAX as u64).await.is_err() {
        call.sup.cwds.failed(proc);
        return None;
    }
    call.sup.cwds.get(proc, attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirent64_records_are_aligned_and_bounded() {
        let e = |name: &str| pb::Dirent {
            ino: 7,
            off: 1,
            kind: 8,
            name: name.as_bytes().to_vec().into(),
            stat: None,
            content: Default::default(),
            whole: false,
        };
        let entries = vec![e("a"), e("longer-name")];
        let buf = encode_dirents(&entries, Format::Dirent64, 4096);
        assert_eq!(buf.len(), 24 + 32);
        assert_eq!(u16::from_ne_bytes([buf[16], buf[17]]), 24);
        assert_eq!(buf[18], 8);
        assert_eq!(&buf[19..21], b"a\0");
        // Only the first fits in 30 bytes.
        assert_eq!(encode_dirents(&entries, Format::Dirent64, 30).len(), 24);
        assert!(encode_dirents(&entries, Format::Dirent64, 10).is_empty());
    }

    #[test]
    fn listed_names_are_checked() {
        assert!(entry_name(b"a") && entry_name(b"..") && entry_name(&[b'n'; 255]));
        // A reply listing one of these is malformed: a record length would wrap, or the cache be poisoned.
        let long = [b'n'; 70_000];
        for bad in [&b""[..], &long[..256], &long[..], &b"a/b"[..], &b"../etc"[..], &b"a\0b"[..]] {
            assert!(!entry_name(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
