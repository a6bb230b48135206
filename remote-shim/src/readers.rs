//! The receiving thread's memory of descriptors recently read through copies.
//!
//! Every read of a placeholder is notified (the filter routes by number), and the receiving thread answers
//! most of them itself (`Supervisor::serve_from_copy`): it must know which handle the descriptor is, and
//! for a copy still being filled, the description's offset. Read from `/proc` that costs a `readlink` of
//! `/proc/TID/fd/N` (~2 µs) and a read of `/proc/TID/fdinfo/N` (~5 µs) per call, on a notification whose
//! kernel part is ~7 µs. Here the program's open file description itself is kept (duplicated with
//! `pidfd_getfd`): `kcmp` tells whether descriptor N of the thread still is that description (~1 µs),
//! and its offset is ours to read (`lseek`, ~0.1 µs). A sequential reader (`sha256sum`, 8,192 reads of a
//! 256 MiB file) pays the `/proc` reads once.
//!
//! Holding a description keeps nothing alive that matters: a placeholder is a memfd, whose content its
//! handle holds anyway, and locks on home files live at home. The collector empties this memory at each
//! scan, so no handle outlives its last holder by more than one scan.

use crate::fdtable::Handle;
use std::collections::VecDeque;
use std::io::Seek;
use std::sync::{Arc, Mutex};

/// Descriptors remembered at most (the oldest goes first).
const MAX: usize = 16;

#[derive(Default)]
pub struct Readers(Mutex<VecDeque<Reader>>);

struct Reader {
    tid: u32,
    fd: u64,
    handle: Arc<Handle>,
    /// The program's open file description of descriptor `fd` (a duplicate).
    description: std::fs::File,
}

/// A descriptor of the job known to be one of the handles' placeholders, and its description's offset
/// (`None`: it cannot be told here).
pub type Known = (Arc<Handle>, Option<u64>);

/// The offset of `description`.
fn offset(mut description: &std::fs::File) -> Option<u64> {
    description.stream_position().ok()
}

impl Readers {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Reader>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The description remembered for descriptor `fd` of thread `tid`, when it still is that descriptor.
    pub fn get(&self, tid: u32, fd: u64) -> Option<Known> {
        let mut readers = self.lock();
        let i = readers.iter().position(|r| r.tid == tid && r.fd == fd)?;
        let r = &readers[i];
        let theirs = i32::try_from(fd).ok()?;
        match crate::sys::tracee::same_description(std::os::fd::AsFd::as_fd(&r.description), tid, theirs) {
            Ok(true) => Some((r.handle.clone(), offset(&r.description))),
            // Closed, replaced, or the thread is gone.
            _ => {
                readers.remove(i);
                None
            }
        }
    }

    /// Remembers descriptor `fd` of thread `tid` (of thread group `tgid`), found to be `handle`'s
    /// placeholder; returns what is known of it.
    pub fn remember(&self, tid: u32, tgid: u32, fd: u64, handle: Arc<Handle>) -> Known {
        let Some(description) = duplicate(tid, tgid, fd) else { return (handle, None) };
        let at = offset(&description);
        let mut readers = self.lock();
        readers.retain(|r| !(r.tid == tid && r.fd == fd));
        if readers.len() >= MAX {
            readers.pop_front();
        }
        readers.push_back(Reader { tid, fd, handle: handle.clone(), description });
        (handle, at)
    }

    /// Forgets every descriptor (the collector's scan: handles may go now).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// The program's description of descriptor `fd` of thread `tid`, checked to be that thread's (a thread
/// may have a descriptor table of its own).
fn duplicate(tid: u32, tgid: u32, fd: u64) -> Option<std::fs::File> {
    let theirs = i32::try_from(fd).ok()?;
    let pidfd = crate::sys::tracee::pidfd_open(tgid).ok()?;
    let description = crate::sys::tracee::pidfd_getfd(std::os::fd::AsFd::as_fd(&pidfd), theirs).ok()?;
    let same = crate::sys::tracee::same_description(std::os::fd::AsFd::as_fd(&description), tid, theirs);
    same.ok()?.then(|| std::fs::File::from(description))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdtable::FdTable;
    use crate::filter::FdRange;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_remembered_descriptor_is_known_while_it_is_that_description() {
        let fds = FdTable::new(FdRange { base: 4096, span: 4096 });
        let h = fds.new_handle(7, libc::O_RDONLY, Default::default()).expect("a placeholder");
        let me = std::process::id();
        let mut file = std::fs::File::from(h.memfd.try_clone().expect("dup"));
        file.write_all(b"0123456789").expect("write");
        let fd = file.as_raw_fd() as u64;
        let readers = Readers::default();
        assert!(readers.get(me, fd).is_none(), "nothing remembered yet");
        let (found, at) = readers.remember(me, me, fd, h.clone());
        assert!(Arc::ptr_eq(&found, &h));
        assert_eq!(at, Some(10));
        // The program moves its offset: the remembered description is its own, so it says where.
        file.seek(SeekFrom::Start(3)).expect("seek");
        let (again, at) = readers.get(me, fd).expect("still that description");
        assert!(Arc::ptr_eq(&again, &h));
        assert_eq!(at, Some(3));
        // Closed: forgotten (another file may take the number).
        drop(file);
        assert!(readers.get(me, fd).is_none(), "closed");
        assert!(readers.0.lock().expect("lock").is_empty(), "and forgotten");
    }
}
