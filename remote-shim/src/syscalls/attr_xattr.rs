//! Extended attributes: get/set/list/remove on paths (following or not) and on descriptors.

use super::{Action, Call, Outcome, Route};
use crate::memory;
use homeward_proto::pb::{self, call_request::Op, XattrOp};
use homeward_proto::Errno;

/// Longest attribute name and value the kernel takes (XATTR_NAME_MAX + 1, XATTR_SIZE_MAX).
const NAME_MAX: usize = 256;
const SIZE_MAX: usize = 65536;

pub async fn serve(call: &Call<'_>, nr: i64) -> Option<Outcome> {
    use XattrOp::*;
    // (operation, target: path following / path not following / descriptor)
    let (op, target) = match nr {
        libc::SYS_getxattr => (Get, Target::Path(false)),
        libc::SYS_lgetxattr => (Get, Target::Path(true)),
        libc::SYS_fgetxattr => (Get, Target::Fd),
        libc::SYS_setxattr => (Set, Target::Path(false)),
        libc::SYS_lsetxattr => (Set, Target::Path(true)),
        libc::SYS_fsetxattr => (Set, Target::Fd),
        libc::SYS_listxattr => (List, Target::Path(false)),
        libc::SYS_llistxattr => (List, Target::Path(true)),
        libc::SYS_flistxattr => (List, Target::Fd),
        libc::SYS_removexattr => (Remove, Target::Path(false)),
        libc::SYS_lremovexattr => (Remove, Target::Path(true)),
        libc::SYS_fremovexattr => (Remove, Target::Fd),
        _ => return None,
    };
    Some(xattr(call, op, target).await)
}

#[derive(Clone, Copy)]
enum Target {
    Path(bool),
    Fd,
}

async fn xattr(call: &Call<'_>, op: XattrOp, target: Target) -> Outcome {
    let (dir, path, nofollow) = match target {
        Target::Fd => match call.handle(0) {
            Some(h) => {
                if matches!(op, XattrOp::Set | XattrOp::Remove) {
                    super::attr::forget_removable_if_dir(call, &h);
                }
                (pb::Dir { handle: h.id }, Vec::new(), false)
            }
            None => return Ok(Action::Continue),
        },
        Target::Path(nofollow) => {
            let path = call.path(0)?;
            match call.route(libc::AT_FDCWD, &path) {
                Route::Home(dir) => (dir, path, nofollow),
                Route::Local => return Ok(Action::Continue),
            }
        }
    };
    let name = match op {
        XattrOp::List => Vec::new(),
        _ => memory::read_cstr(call.tid, call.arg(1), NAME_MAX).map_err(|e| {
            if e == Errno::ERANGE {
                Errno::ERANGE
            } else {
                e
            }
        })?,
    };
    let mut req = pb::Xattr {
        op: op as i32,
        dir: Some(dir),
        path: path.into(),
        nofollow,
        name: name.into(),
        ..Default::default()
    };
    // Argument positions: get(path, name, value, size), set(path, name, value, size, flags),
    // list(path, list, size), remove(path, name).
    match op {
        XattrOp::Get => req.size = call.arg(3).min(SIZE_MAX as u64),
        XattrOp::Set => {
            let size = call.arg(3) as usize;
            if size > SIZE_MAX {
                return Err(Errno(libc::E2BIG as u16));
            }
            req.value = memory::read_bytes(call.tid, call.arg(2), size)?.into();
            req.flags = call.arg(4) as u32;
        }
        XattrOp::List => req.size = call.arg(2).min(SIZE_MAX as u64),
        XattrOp::Remove => {}
    }
    let (value, reply) = call.home_value(Op::Xattr(req)).await?;
    let (buf, size) = match op {
        XattrOp::Get => (call.arg(2), call.arg(3)),
        XattrOp::List => (call.arg(1), call.arg(2)),
        _ => return Ok(Action::Value(value)),
    };
    if size > 0 {
        // With a buffer, the value counts the bytes home put in it (at most the buffer).
        let data = super::read_data(value, &reply, usize::try_from(size).unwrap_or(usize::MAX))?;
        memory::write_bytes(call.tid, buf, data)?;
    }
    Ok(Action::Value(value))
}
