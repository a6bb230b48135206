//! Unix sockets bound to home paths. A socket lives on this machine, but its name is in home's file system:
//! `bind` creates the socket node at home (so home sees a socket there, and EADDRINUSE comes from home) and
//! binds the program's socket to a private local name; `connect` to that home path is made to the local
//! name. `getsockname` shows the local name, and a `connect` to that name is the kernel's. Limits: sockets
//! bound at home by home processes cannot be reached from here (ECONNREFUSED). Other address families and abstract names are left to the kernel.

use super::{Action, Call, Outcome, Route};
use crate::memory;
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::Errno;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Mutex;

/// Home path (absolute, normalized) → local name, for sockets the job bound.
#[derive(Default)]
pub struct UnixNames {
    names: Mutex<HashMap<Vec<u8>, PathBuf>>,
    counter: std::sync::atomic::AtomicU64,
}

pub async fn serve(call: &Call<'_>, nr: i64) -> Option<Outcome> {
    Some(match nr {
        libc::SYS_bind => address(call, false).await,
        libc::SYS_connect => address(call, true).await,
        _ => return None,
    })
}

/// The filesystem path in a `sockaddr_un`, if the address is one.
fn unix_path(call: &Call<'_>) -> Result<Option<Vec<u8>>, Errno> {
    let len = call.arg(2) as usize;
    if len <= 2 || len > std::mem::size_of::<libc::sockaddr_un>() {
        return Ok(None);
    }
    let raw = memory::read_bytes(call.tid, call.arg(1), len)?;
    if i32::from(u16::from_ne_bytes([raw[0], raw[1]])) != libc::AF_UNIX || raw[2] == 0 {
        return Ok(None);
    }
    let path = &raw[2..];
    Ok(Some(path[..path.iter().position(|&b| b == 0).unwrap_or(path.len())].to_vec()))
}

async fn address(call: &Call<'_>, connect: bool) -> Outcome {
    let Some(path) = unix_path(call)? else { return Ok(Action::Continue) };
    let Route::Home(dir) = call.route(libc::AT_FDCWD, &path) else { return Ok(Action::Continue) };
    let key = absolute(call, &path).await?;
    let names = &call.sup.unix_names;
    if connect {
        let local = {
            let names = names.names.lock().unwrap_or_else(|p| p.into_inner());
            match names.get(&key) {
                Some(local) => Some(local.clone()),
                // The local name itself, as `getsockname` shows it (a server that hands out its own
                // address: Python's socketserver): the kernel connects to it.
                None if names.values().any(|l| l.as_os_str().as_encoded_bytes() == key.as_slice()) => {
                    return Ok(Action::Continue)
                }
                None => None,
            }
        };
        let Some(local) = local else { return Err(Errno(libc::ECONNREFUSED as u16)) };
        let sock = call.local_fd(call.arg_i32(0))?;
        return crate::sys::unix_address_call(sock.as_fd(), &local, true)
            .map(|_| Action::Value(0))
            .map_err(|e| Errno::from_io(&e));
    }
    let mknod = pb::Mknod { dir: Some(dir), path: path.clone().into(), mode: libc::S_IFSOCK | 0o777, dev: 0 };
    match call.home_value(Op::Mknod(mknod)).await {
        Err(e) if e.raw() == libc::EEXIST => return Err(Errno(libc::EADDRINUSE as u16)),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let n = names.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let local = call.sup.exec.dir().join(format!("sock-{n}"));
    let bound = call.local_fd(call.arg_i32(0)).and_then(|sock| {
        crate::sys::unix_address_call(sock.as_fd(), &local, false).map_err(|e| Errno::from_io(&e))
    });
    if let Err(e) = bound {
        let unlink = pb::Unlink { dir: Some(dir), path: path.into(), at_flags: 0, lease: false };
        let _ = call.home(Op::Unlink(unlink)).await;
        return Err(e);
    }
    names.names.lock().unwrap_or_else(|p| p.into_inner()).insert(key, local);
    Ok(Action::Value(0))
}

/// The home path as an absolute, normalized path (relative ones against the process's home cwd).
async fn absolute(call: &Call<'_>, path: &[u8]) -> Result<Vec<u8>, Errno> {
    if path.first() == Some(&b'/') {
        return Ok(crate::paths::normalize(path));
    }
    let (_, reply) = call.home_value(Op::Getcwd(pb::Getcwd { size: 4096, lease: false })).await?;
    let mut full = reply.data.to_vec();
    full.push(b'/');
    full.extend_from_slice(path);
    Ok(crate::paths::normalize(&full))
}
