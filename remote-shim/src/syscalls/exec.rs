//! execve and execveat of programs that exist only at home.
//!
//! The kernel can only execute a local file, and a seccomp supervisor cannot change the path register. So a
//! home program is fetched whole into a private local staging directory, which is also the program's local
//! working directory in the kernel (its home cwd lives at home):
//! - a relative path without `..` (`./configure`, `build/app`) is staged at that same relative path, so the
//!   kernel finds it unchanged and a `#!` interpreter re-opens the same name, which goes home as it should;
//! - any other path is staged under a short name (`%` and a counter) that the supervisor writes over the
//!   program's path string (through `/proc/PID/mem`, as a debugger would); the original path is at least as
//!   long as the short name. An interpreter that opens that name is served locally. Only `$0` of such a
//!   script shows the short name.
//!
//! An absolute path that exists on this machine (`/bin/sh`, `/usr/bin/make`) runs the local program.
//!
//! A name that is not there (a shell or `make` trying each `$PATH` entry) costs one round trip, then none:
//! the fetch's open asks home for a lease on the lookup (decision 5), and its `ENOENT` or `ENOTDIR` is kept
//! in the attribute cache under the key `stat` uses, until home reports a change to what it depends on.
//! Every other errno (`EACCES`, `ENOEXEC`, ...) still comes from the real exec or the real fetch.

use super::io::fill_placeholder;
use super::{Action, Call, Outcome, Route};
use crate::attrcache::{Cached, Key};
use crate::memory;
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::{flags, Errno};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Largest program fetched from home.
const MAX_PROGRAM: i64 = 1 << 30;

pub struct ExecStage {
    dir: PathBuf,
    short_names: Mutex<HashSet<Vec<u8>>>,
    counter: AtomicU64,
}

impl ExecStage {
    /// Creates the staging directory in this machine's temporary space: `$TMPDIR` when it exists here (it
    /// may name a directory of home meant for the program), else `/tmp`, `/dev/shm` or `/var/tmp`.
    pub fn new() -> io::Result<ExecStage> {
        let name =
            format!("homeward-exec-{}-{:08x}", std::process::id(), crate::fdtable::random_u64() as u32);
        let mut last = io::Error::from(io::ErrorKind::NotFound);
        let candidates = [std::env::temp_dir(), "/tmp".into(), "/dev/shm".into(), "/var/tmp".into()];
        for base in candidates {
            let dir = base.join(&name);
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                    return Ok(ExecStage { dir, short_names: Mutex::default(), counter: AtomicU64::new(0) });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The staging directory: the program's working directory in the local kernel.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a relative path is one of the short names given to a staged program.
    pub fn is_staged(&self, rel: &[u8]) -> bool {
        rel.first() == Some(&b'%') && self.short_names.lock().unwrap_or_else(|p| p.into_inner()).contains(rel)
    }

    fn next_short_name(&self) -> Vec<u8> {
        const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut name = vec![b'%'];
        loop {
            name.push(DIGITS[(n % 62) as usize]);
            n /= 62;
            if n == 0 {
                break;
            }
        }
        name
    }
}

impl Drop for ExecStage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn serve(call: &Call<'_>, nr: i64) -> Option<Outcome> {
    Some(match nr {
        libc::SYS_execve | libc::SYS_execveat => {
            // The image's mappings go with it: what it stored in home files is written there first.
            super::process::write_back_mappings(call, crate::shared_maps::Which::Process(call.tgid())).await;
            if nr == libc::SYS_execve {
                exec(call, libc::AT_FDCWD, 0, 0).await
            } else {
                exec(call, call.arg_i32(0), 1, call.arg_i32(4)).await
            }
        }
        _ => return None,
    })
}

async fn exec(call: &Call<'_>, dirfd: i32, path_arg: usize, at: i32) -> Outcome {
    call.sup.exec_started(call.tgid());
    let path = call.path(path_arg)?;
    if path.is_empty() && at & libc::AT_EMPTY_PATH != 0 {
        // fexecve of a home file: the placeholder gets the content and the kernel executes it.
        if let Some(h) = call.fd_handle(call.tid, dirfd as u32 as u64) {
            fill_placeholder(call, &h).await?;
        }
        return Ok(Action::Continue);
    }
    let dir = match call.route(dirfd, &path) {
        Route::Local => return Ok(Action::Continue),
        Route::Home(dir) => dir,
    };
    if path.first() == Some(&b'/') && is_local_file(&path) {
        // The same file as home's (home on this machine): descriptors the job wrote it through and closed
        // would still hold it open for writing there (`ETXTBSY`) until collected.
        if let Ok(meta) = std::fs::metadata(std::ffi::OsStr::from_bytes(&path)) {
            use std::os::unix::fs::MetadataExt;
            if call.sup.fds.writers_of((meta.dev(), meta.ino())) {
                call.sup.collect_file((meta.dev(), meta.ino())).await;
            }
        }
        return Ok(Action::Continue);
    }
    // A name home said is not there (and has not reported a change to since): the same answer, at once.
    let key = call.lookup_key(&dir, &path, at & libc::AT_SYMLINK_NOFOLLOW == 0, 0);
    if let Some(k) = &key {
        call.sup.flush_pumps().await;
        if let Some(Cached::Missing(e)) = call.sup.link.attrs.get(k) {
            if is_absence(e) {
                return Err(e);
            }
        }
    }
    if dirfd != libc::AT_FDCWD && path.first() != Some(&b'/') {
        // Relative to a home directory descriptor: stage under a short name.
        return stage_and_continue(call, dir, &path, key, at, true).await;
    }
    let plain_relative = path.first() != Some(&b'/') && !path.split(|&b| b == b'/').any(|c| c == b"..");
    stage_and_continue(call, dir, &path, key, at, !plain_relative).await
}

/// The lookup errnos that say a name is not there as a file: the same for `stat`, `open` and exec of the
/// same path, and leased by home.
fn is_absence(e: Errno) -> bool {
    e == Errno::ENOENT || e == Errno(libc::ENOTDIR as u16)
}

fn is_local_file(path: &[u8]) -> bool {
    std::fs::metadata(OsStr::from_bytes(path)).map(|m| m.is_file()).unwrap_or(false)
}

async fn stage_and_continue(
    call: &Call<'_>,
    dir: pb::Dir,
    path: &[u8],
    key: Option<Key>,
    at: i32,
    short: bool,
) -> Outcome {
    let nofollow = at & libc::AT_SYMLINK_NOFOLLOW != 0;
    let (content, mode) = fetch(call, dir, path, key, nofollow).await?;
    let stage = &call.sup.exec;
    let (local, rewrite) = if short {
        let name = stage.next_short_name();
        if name.len() > path.len() {
            return Err(Errno::ENAMETOOLONG);
        }
        (stage.dir.join(OsStr::from_bytes(&name)), Some(name))
    } else {
        (stage.dir.join(OsStr::from_bytes(path)), None)
    };
    write_program(&local, &content, mode).map_err(|e| Errno::from_io(&e))?;
    if let Some(name) = rewrite {
        stage.short_names.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone());
        let mut bytes = name;
        bytes.push(0);
        crate::sys::tracee::poke_mem(
            call.tid,
            call.arg(if call.nr == libc::SYS_execveat { 1 } else { 0 }),
            &bytes,
        )
        .map_err(|_| Errno::EFAULT)?;
    }
    Ok(Action::Continue)
}

/// Fetches a home program: its bytes and permission bits, with exec's errors (`EACCES` for a directory, a
/// non-regular file or a file without execute permission at home). The open asks for a lease on the lookup
/// when `key` says it can be cached: a name not there is then kept under `key`.
async fn fetch(
    call: &Call<'_>,
    dir: pb::Dir,
    path: &[u8],
    key: Option<Key>,
    nofollow: bool,
) -> Result<(Vec<u8>, u32), Errno> {
    let access = pb::Access {
        dir: Some(dir),
        path: path.to_vec().into(),
        mode: libc::X_OK as u32,
        at_flags: flags::at_to_wire(if nofollow { libc::AT_SYMLINK_NOFOLLOW } else { 0 }, false),
        lease: false,
    };
    let mut oflags = libc::O_RDONLY | libc::O_CLOEXEC;
    if nofollow {
        oflags |= libc::O_NOFOLLOW;
    }
    let open = pb::Open {
        dir: Some(dir),
        path: path.to_vec().into(),
        flags: flags::open_to_wire(oflags),
        mode: 0,
        resolve: 0,
        content_max: 0,
        lease: key.is_some(),
    };
    let attrs = &call.sup.link.attrs;
    let ticket = attrs.ticket();
    let reply = call.home(Op::Open(open)).await?;
    let outcome = super::outcome(&reply);
    if let (Some(key), Err(e)) = (key, outcome) {
        if is_absence(e) {
            // (Relative to a directory or the cwd, it also depends on the lookup of that one.)
            call.put_leased(&dir, path, key, Cached::Missing(e), ticket, &reply);
        }
    }
    let handle = super::handle_id(outcome?)?;
    let result = async {
        let stat = reply.stat.unwrap_or_default();
        if stat.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno(libc::EACCES as u16));
        }
        if stat.size > MAX_PROGRAM {
            return Err(Errno(libc::E2BIG as u16));
        }
        call.home_value(Op::Access(access)).await?;
        let mut content = Vec::with_capacity(stat.size.max(0) as usize);
        loop {
            let op =
                Op::Read(pb::Read { handle, len: memory::MAX_IO as u64, offset: Some(content.len() as i64) });
            let (n, r) = call.home_value(op).await?;
            // A count without its data (a hostile or corrupted reply) must not loop here forever.
            let data = super::read_data(n, &r, memory::MAX_IO)?;
            if data.is_empty() || content.len() as i64 > MAX_PROGRAM {
                break;
            }
            content.extend_from_slice(data);
        }
        Ok((content, stat.mode & 0o777))
    }
    .await;
    let _ = call.home(Op::Close(pb::Close { handle, more: vec![] })).await;
    result
}

/// Writes the staged program (through a temporary name, so a running copy is never rewritten in place).
fn write_program(local: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    if let Some(parent) = local.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = local.with_extension(format!("hw-tmp-{:x}", crate::fdtable::random_u64()));
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode | 0o500))?;
    std::fs::rename(&tmp, local)
}
