//! open, openat, openat2, creat: a home file becomes a placeholder in the program's reserved range.

use super::{Action, Call, Outcome, Route};
use crate::attrcache::Cached;
use crate::memory;
use crate::shared_maps::Which;
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::{flags, Errno};

pub async fn serve(call: &Call<'_>, nr: i64) -> Option<Outcome> {
    Some(match nr {
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open => open(call, libc::AT_FDCWD, 0, call.arg_i32(1), call.arg(2) as u32, 0).await,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_creat => {
            let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;
            open(call, libc::AT_FDCWD, 0, flags, call.arg(1) as u32, 0).await
        }
        libc::SYS_openat => open(call, call.arg_i32(0), 1, call.arg_i32(2), call.arg(3) as u32, 0).await,
        libc::SYS_openat2 => openat2(call).await,
        _ => return None,
    })
}

async fn openat2(call: &Call<'_>) -> Outcome {
    let size = call.arg(3) as usize;
    if size < std::mem::size_of::<libc::open_how>() {
        return Err(Errno::EINVAL);
    }
    let how: libc::open_how = memory::read_pod(call.tid, call.arg(2))?;
    if size > std::mem::size_of::<libc::open_how>() {
        // Trailing bytes of a larger struct must be zero, as the kernel demands.
        let extra = size - std::mem::size_of::<libc::open_how>();
        if extra > 4096 {
            return Err(Errno(libc::E2BIG as u16));
        }
        let tail =
            memory::read_bytes(call.tid, call.arg(2) + std::mem::size_of::<libc::open_how>() as u64, extra)?;
        if tail.iter().any(|&b| b != 0) {
            return Err(Errno(libc::E2BIG as u16));
        }
    }
    let flags = i32::try_from(how.flags).map_err(|_| Errno::EINVAL)?;
    if flags::open_unknown(flags) != 0 {
        return Err(Errno::EINVAL);
    }
    // A mode only with a creating open, and only permission bits (checked before any lookup).
    let creates = flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE;
    if (creates && how.mode & !0o7777 != 0) || (!creates && how.mode != 0) {
        return Err(Errno::EINVAL);
    }
    open(call, call.arg_i32(0), 1, flags, how.mode as u32, how.resolve).await
}

async fn open(call: &Call<'_>, dirfd: i32, path_arg: usize, oflags: i32, mode: u32, resolve: u64) -> Outcome {
    if !call.sup.shared_maps.is_empty() {
        // What the job stored in small mapped files is in them for this open, as the page cache would
        // have it (larger ones when the mapping process ends, or asks with msync); and every mapped
        // file's stores before an open that may truncate one (they would be lost natively, not written
        // over what comes after).
        let which = if oflags & libc::O_TRUNC != 0 { Which::All } else { Which::Small };
        super::process::write_back_mappings(call, which).await;
    }
    let path = call.path(path_arg)?;
    // The kernel takes the descriptor's number before it looks the path up.
    super::rlimit::room(call, 0)?;
    let nofollow = if oflags & libc::O_NOFOLLOW != 0 { libc::AT_SYMLINK_NOFOLLOW } else { 0 };
    let t = call.target(dirfd, path, nofollow);
    let (Route::Home(dir), path) = (t.route, t.path) else { return Ok(Action::Continue) };
    // A lookup that creates nothing may be answered by, and feed, the attribute cache.
    let attrs = &call.sup.link.attrs;
    let creates = oflags & libc::O_CREAT != 0 || oflags & libc::O_TMPFILE == libc::O_TMPFILE;
    let follow = oflags & libc::O_NOFOLLOW == 0;
    let key = if creates || resolve != 0 { None } else { call.lookup_key(&dir, &path, follow, 0) };
    if let Some(k) = &key {
        call.sup.flush_pumps().await;
        if let Some(Cached::Missing(e)) = attrs.get(k) {
            return Err(e);
        }
        if let Some(answered) = crate::lazy::try_open(call, k, oflags).await {
            return answered;
        }
        if crate::lazy::plain_read(oflags) {
            call.sup.prefetch.opened_home(k);
        }
    }
    // (An `O_TMPFILE` open names the directory, not a file.)
    let tmpfile = oflags & libc::O_TMPFILE == libc::O_TMPFILE;
    let created =
        if creates && !tmpfile && resolve == 0 { call.lookup_key(&dir, &path, follow, 0) } else { None };
    let (base, looked_up) = (dir, path.clone());
    let ticket = attrs.ticket();
    // An open that empties the file also forgets its inode's cached attributes once answered (below).
    let created_ticket = attrs.ticket_past_own_changes(if oflags & libc::O_TRUNC != 0 { 2 } else { 1 });
    let mark = attrs.change_mark();
    let op = Op::Open(pb::Open {
        dir: Some(dir),
        lease: key.is_some() || created.is_some(),
        path: path.into(),
        flags: flags::open_to_wire(oflags),
        mode: if creates { mode & 0o7777 } else { 0 },
        resolve,
        content_max: if reads_only(oflags) { INLINE_CONTENT_MAX } else { 0 },
    });
    let mut reply = call.home(op.clone()).await?;
    if matches!(super::outcome(&reply), Err(Errno::EMFILE | Errno::ENFILE)) {
        // Home may be holding files the job closed and the collector has not closed there yet.
        call.sup.collect_now().await;
        reply = call.home(op).await?;
    }
    let outcome = super::outcome(&reply);
    if let (Some(key), Err(e)) = (&key, &outcome) {
        if *e == Errno::ENOENT {
            call.put_leased(&base, &looked_up, key.clone(), Cached::Missing(*e), ticket, &reply);
        }
    }
    let handle_id = super::handle_id(outcome?)?;
    let stat = reply.stat.unwrap_or_default();
    if stat.mode & libc::S_IFMT == libc::S_IFDIR && crate::lazy::plain_dir_read(oflags) {
        call.sup.dir_opens.opened(&stat);
        // Opening it again is leased apart from its content (entries made in it do not void that).
        if let Some(key) = key.as_ref().filter(|_| reply.reopen_lease != 0) {
            let reopen = crate::attrcache::Key { mask: crate::attrcache::DIR_OPEN, ..key.clone() };
            let lease = pb::CallReply {
                lease: reply.reopen_lease,
                deps: reply.reopen_deps.clone(),
                ..Default::default()
            };
            call.put_leased(&base, &looked_up, reopen, Cached::Opens(stat), ticket, &lease);
        }
    }
    attrs.opened(handle_id, (stat.dev, stat.ino));
    if oflags & libc::O_ACCMODE != libc::O_RDONLY {
        attrs.opened_for_writing(handle_id);
    }
    if reply.via_link {
        // A file created or emptied where a symbolic link points: under any name.
        attrs.forget_all();
    } else if oflags & libc::O_TRUNC != 0 {
        attrs.forget_inode((stat.dev, stat.ino));
    }
    let origin = match key.filter(|_| reply.lease != 0) {
        Some(key) => {
            call.put_leased(&base, &looked_up, key.clone(), Cached::Found(stat), ticket, &reply);
            Some(crate::fdtable::Origin { key })
        }
        // A file created or opened to write is not leased, but a later lookup of its name may find it:
        // `fstat` is then answered from that lookup while it finds this very inode (`stat::fstat_cached`).
        // A created file's lease comes from a lookup home made after the creation.
        None if stat.mode & libc::S_IFMT == libc::S_IFREG && !reply.via_link => created.map(|key| {
            if reply.lease != 0 {
                call.put_leased(&base, &looked_up, key.clone(), Cached::Found(stat), created_ticket, &reply);
            }
            // The name, not following a last link, is the file itself: `readlink` of it is `EINVAL` until
            // the name changes (what the file holds does not matter: depends on names alone). The job may
            // remove it; with no other name (when created), its removal changes no other cached answer's
            // link count.
            if let Some(deps) = call.lease_deps(&base, &looked_up, &key, &reply) {
                let entry = |mask| crate::attrcache::Key { follow: false, mask, ..key.clone() };
                let not_link = Cached::Missing(Errno::EINVAL);
                let readlink = entry(crate::attrcache::READLINK);
                attrs.put_with(readlink, not_link, created_ticket, reply.lease, deps.clone(), true);
                if reply.removable && stat.nlink == 1 {
                    let removable = entry(crate::attrcache::REMOVABLE);
                    attrs.put_with(removable, Cached::Removable, created_ticket, reply.lease, deps, true);
                }
            }
            crate::fdtable::Origin { key }
        }),
        None => None,
    };
    let inode = (stat.dev, stat.ino);
    if !reads_only(oflags) && stat.mode & libc::S_IFMT == libc::S_IFREG {
        call.sup.link.attrs.wrote(inode);
    }
    // Whole content that is not the size opened (a corrupted reply) is no copy: the fill reads it instead.
    let content = (reply.whole && i64::try_from(reply.data.len()) == Ok(stat.size)).then_some(reply.data);
    let room = reply.room;
    install_with(call, handle_id, oflags, stat, oflags & libc::O_CLOEXEC != 0, 0, |h| {
        if !reads_only(oflags) {
            crate::behind::set_room(h.stat.dev, room);
            // A new description's offset is 0; followed on a local disk at home (`room` is reported only
            // there), where a regular file's offset moves as plain arithmetic says.
            let plain =
                h.stat.mode & libc::S_IFMT == libc::S_IFREG && oflags & (libc::O_APPEND | libc::O_PATH) == 0;
            if plain && room != 0 {
                h.behind.follow_pos();
                // Emptied here (or made empty: a creating open that found nothing in it) and readable: what
                // it holds is what this description writes (`behind`; sqlite's journal).
                let emptied =
                    oflags & libc::O_TRUNC != 0 || (oflags & libc::O_CREAT != 0 && h.stat.size == 0);
                if oflags & libc::O_ACCMODE == libc::O_RDWR && emptied {
                    h.behind.start_shadow(call.sup.link.attrs.foreign_mark((h.stat.dev, h.stat.ino), h.id));
                }
            }
        }
        if let Some(origin) = origin {
            h.set_origin(origin);
        }
        h.set_copied_at(mark);
        keep_copy(call, h, content.as_deref())
    })
    .await
}

/// Files up to this size come with their open (one round trip instead of open, read, read at end of file).
const INLINE_CONTENT_MAX: u64 = 64 << 10;

/// Whether an open can only read data (so a copy of the content serves it).
fn reads_only(oflags: i32) -> bool {
    oflags & libc::O_ACCMODE == libc::O_RDONLY && oflags & (libc::O_PATH | libc::O_TRUNC) == 0
}

/// Keeps the content of a read-only regular file in its placeholder: sent with the open, or already in the
/// content cache under the version just opened. A file the job has open for writing gets no copy.
fn keep_copy(call: &Call<'_>, h: &std::sync::Arc<crate::fdtable::Handle>, content: Option<&[u8]>) {
    if !reads_only(h.flags)
        || h.stat.mode & libc::S_IFMT != libc::S_IFREG
        || h.stat.size > crate::fill::MAX_FILL
        || !h.charge(h.stat.size.max(0))
    {
        return;
    }
    let version = crate::content::Key::of(&h.stat);
    let kept = match content {
        Some(bytes) => {
            let kept = h.keep_content(bytes).is_ok();
            // Read at home right after the open and checked against a second fstat: this version's content.
            if let Some(version) = version.filter(|_| kept) {
                call.sup.content.insert(version, &h.memfd);
            }
            kept
        }
        None => {
            let cached = version.is_some_and(|key| {
                let in_memory = call.sup.content.copy_into(&key, &h.memfd);
                let on_disk = !in_memory && call.sup.content.copy_from_disk(&key, &h.memfd);
                if on_disk {
                    h.keep_below();
                }
                if in_memory || on_disk {
                    h.mark_filled();
                }
                in_memory || on_disk
            });
            cached
                || (h.stat.size <= crate::fill::MAX_FILL && h.start_fill().is_ok() && {
                    crate::fill::start(&call.sup.self_arc(), h);
                    true
                })
        }
    };
    tracing::trace!(handle = h.id, kept, "content copy");
}

/// Makes a placeholder for a new home handle and answers the call with its number. If the program cannot
/// receive it (gone, or its table full) the handle is closed at home again, so nothing leaks.
/// `prepare` runs on the handle before the program can use it.
async fn install_with(
    call: &Call<'_>,
    handle_id: u64,
    oflags: i32,
    stat: pb::FileStat,
    cloexec: bool,
    min: u32,
    prepare: impl FnOnce(&std::sync::Arc<crate::fdtable::Handle>),
) -> Outcome {
    let installed =
        call.sup.fds.new_handle(handle_id, oflags, stat).map_err(|e| Errno::from_io(&e)).and_then(|h| {
            call.sup.handle_made();
            prepare(&h);
            call.install(&h, cloexec, min)
        });
    match installed {
        Ok(fd) => Ok(Action::Answered(i64::from(fd))),
        Err(e) => {
            let _ = call.home(Op::Close(pb::Close { handle: handle_id, more: vec![] })).await;
            Err(e)
        }
    }
}
