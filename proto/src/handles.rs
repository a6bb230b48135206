//! The handles an operation names: every `Dir` and handle field of a request, for a shim that rewrites them
//! (a placeholder opened without home gets its home handle only when a call needs one).

use crate::pb::{self, call_request::Op};

/// Every handle field of `op` (a `Dir`'s handle 0, the cwd, included), so a caller can read or replace them.
/// The match is exhaustive: a new operation must say which handles it names.
pub fn handles_mut(op: &mut Op) -> Vec<&mut u64> {
    fn dir(d: &mut Option<pb::Dir>) -> Vec<&mut u64> {
        d.as_mut().map(|d| &mut d.handle).into_iter().collect()
    }
    match op {
        Op::Open(o) => dir(&mut o.dir),
        Op::Stat(o) => dir(&mut o.dir),
        Op::Statfs(o) => dir(&mut o.dir),
        Op::Access(o) => dir(&mut o.dir),
        Op::Readlink(o) => dir(&mut o.dir),
        Op::Mkdir(o) => dir(&mut o.dir),
        Op::Mknod(o) => dir(&mut o.dir),
        Op::Unlink(o) => dir(&mut o.dir),
        Op::Rename(o) => {
            let mut v = dir(&mut o.old_dir);
            v.extend(dir(&mut o.new_dir));
            v
        }
        Op::Link(o) => {
            let mut v = dir(&mut o.old_dir);
            v.extend(dir(&mut o.new_dir));
            v
        }
        Op::Symlink(o) => dir(&mut o.dir),
        Op::Chmod(o) => dir(&mut o.dir),
        Op::Chown(o) => dir(&mut o.dir),
        Op::Truncate(o) => dir(&mut o.dir),
        Op::Utimens(o) => dir(&mut o.dir),
        Op::Chdir(o) => dir(&mut o.dir),
        Op::Xattr(o) => dir(&mut o.dir),
        Op::Read(o) => vec![&mut o.handle],
        Op::Write(o) => vec![&mut o.handle],
        Op::Seek(o) => vec![&mut o.handle],
        Op::Fsync(o) => vec![&mut o.handle],
        Op::Fallocate(o) => vec![&mut o.handle],
        Op::Getdents(o) => vec![&mut o.handle],
        Op::GetFlags(o) => vec![&mut o.handle],
        Op::SetFlags(o) => vec![&mut o.handle],
        Op::Lock(o) => vec![&mut o.handle],
        Op::Flock(o) => vec![&mut o.handle],
        Op::Ioctl(o) => vec![&mut o.handle],
        Op::Close(o) => std::iter::once(&mut o.handle).chain(o.more.iter_mut()).collect(),
        Op::CopyRange(o) => vec![&mut o.in_handle, &mut o.out_handle],
        Op::Getcwd(_)
        | Op::Umask(_)
        | Op::ForgetProc(_)
        | Op::Identity(_)
        | Op::Kill(_)
        | Op::ClockRead(_)
        | Op::Interrupt(_)
        | Op::SetClock(_)
        | Op::Adjtime(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handle_of_a_request_is_listed() {
        let mut op = Op::CopyRange(pb::CopyRange { in_handle: 3, out_handle: 4, ..Default::default() });
        for h in handles_mut(&mut op) {
            *h += 10;
        }
        assert!(matches!(op, Op::CopyRange(c) if (c.in_handle, c.out_handle) == (13, 14)));
        let mut op = Op::Stat(pb::Stat { dir: Some(pb::Dir { handle: 7 }), ..Default::default() });
        assert_eq!(handles_mut(&mut op).into_iter().map(|h| *h).collect::<Vec<_>>(), vec![7]);
        let mut op = Op::Close(pb::Close { handle: 1, more: vec![2, 3] });
        assert_eq!(handles_mut(&mut op).len(), 3);
        assert!(handles_mut(&mut Op::Umask(pb::Umask { mask: 0 })).is_empty());
    }
}
