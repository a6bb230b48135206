//! Readiness without waiting: the idle poll's look at its sockets, and giving way to other threads.

use std::os::fd::RawFd;

/// What [`poll_now`] found of one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Idle,
    Readable,
    /// Closed here (`POLLNVAL`), or hung up or failed: it will never be worth polling again.
    Gone,
}

/// Polls `fds` for input without waiting; one answer per descriptor, in order. An error of `poll` itself
/// (only `ENOMEM` or `EINTR` here) is reported as nothing ready.
pub fn poll_now(fds: &[RawFd], out: &mut Vec<Readiness>) {
    out.clear();
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures, which poll only reads and writes.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 0) };
    out.extend(pfds.iter().map(|p| {
        if n <= 0 {
            Readiness::Idle
        } else if p.revents & libc::POLLIN != 0 {
            Readiness::Readable
        } else if p.revents & (libc::POLLNVAL | libc::POLLHUP | libc::POLLERR) != 0 {
            Readiness::Gone
        } else {
            Readiness::Idle
        }
    }));
}

/// Lets another runnable thread of this CPU run (`sched_yield(2)`, which cannot fail on Linux).
pub fn yield_cpu() {
    // SAFETY: sched_yield takes no arguments and touches no memory of ours.
    unsafe { libc::sched_yield() };
}
