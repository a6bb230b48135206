//! Kernel tests of the filter: installed only in a forked child, never in the test harness process.
//! They check that the routing decisions happen in the kernel: a call on the program's own pipe is never
//! notified, a path call and a call on a descriptor in the reserved range are.

use remote_shim::filter::{self, FdRange};
use remote_shim::sys::{self, seccomp};
use std::os::fd::{AsFd, AsRawFd};

const RANGE: FdRange = FdRange { base: 4096, span: 4096 };

#[test]
fn routing_happens_in_the_kernel() {
    if seccomp::check_notif_sizes().is_err() {
        eprintln!("skipping: this kernel has no seccomp user notification");
        return;
    }
    let program = filter::build(RANGE, false).expect("filter builds");
    let (parent_sock, child_sock) = sys::socketpair().expect("socketpair");
    let (pipe_r, pipe_w) = sys::pipe().expect("pipe");
    let path = c"/nonexistent-homeward-test";
    // Everything the child needs is prepared before fork: the child only makes raw calls.
    let child = sys::fork().expect("fork");
    if child == 0 {
        let ok = seccomp::set_no_new_privs().is_ok();
        let listener = match seccomp::install_filter(&program) {
            Ok(l) if ok => l,
            _ => sys::exit_now(10),
        };
        if sys::send_fd(child_sock.as_fd(), listener.as_fd()).is_err() {
            sys::exit_now(11);
        }
        // Not notified: a write on our own pipe. Would block forever if the filter sent it to a supervisor
        // that never answers it.
        if probe::write(pipe_w.as_raw_fd(), b"x") != 1 {
            sys::exit_now(12);
        }
        // Notified (answered with ENOENT-like value by the test): an open of a path.
        let r = probe::open(path.as_ptr());
        // Notified: fstat on a descriptor in the range (answered with 77).
        let f = probe::fstat(RANGE.base as i32 + 5);
        sys::exit_now(if r == -2 && f == 77 { 0 } else { 13 });
    }
    drop(child_sock);
    let listener = sys::recv_fd(parent_sock.as_fd()).expect("listener");
    let mut buf = [0u8; 1];
    assert_eq!(probe::read(pipe_r.as_raw_fd(), &mut buf), 1, "the pipe write reached the kernel directly");

    let n = seccomp::recv(listener.as_fd()).expect("open is notified");
    assert!(n.data.nr as i64 == libc::SYS_openat || n.data.nr as i64 == libc::SYS_open);
    seccomp::respond(listener.as_fd(), n.id, seccomp::Reply::Errno(libc::ENOENT)).expect("respond");

    let n = seccomp::recv(listener.as_fd()).expect("fstat in range is notified");
    assert_eq!(n.data.args[0] as i32, RANGE.base as i32 + 5);
    seccomp::respond(listener.as_fd(), n.id, seccomp::Reply::Value(77)).expect("respond");

    // Anything else the child does on its way out (exit_group is notified) runs as the kernel would.
    loop {
        let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        if sys::poll_one(&mut pfd, 100).unwrap_or(0) > 0 && pfd.revents & libc::POLLIN != 0 {
            if let Ok(n) = seccomp::recv(listener.as_fd()) {
                let _ = seccomp::respond(listener.as_fd(), n.id, seccomp::Reply::Continue);
            }
        }
        if pfd.revents & libc::POLLHUP != 0 {
            break;
        }
    }
    let (pid, status) = sys::ns::reap(-1, true).expect("wait").expect("child");
    assert_eq!(pid, child);
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "child saw wrong results (see exit code)");
}

/// Raw calls for the child, without libc wrappers that might call something else first.
mod probe {
    #![allow(unsafe_code)]
    pub fn write(fd: i32, b: &[u8]) -> i64 {
        // SAFETY: `b` is valid for reads of its length.
        unsafe { libc::syscall(libc::SYS_write, fd, b.as_ptr(), b.len()) }
    }
    pub fn read(fd: i32, b: &mut [u8]) -> i64 {
        // SAFETY: `b` is valid for writes of its length.
        unsafe { libc::syscall(libc::SYS_read, fd, b.as_mut_ptr(), b.len()) }
    }
    pub fn open(path: *const libc::c_char) -> i64 {
        // SAFETY: `path` is a NUL-terminated static string.
        let r = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path, libc::O_RDONLY) };
        if r < 0 {
            // SAFETY: reads this thread's errno.
            -i64::from(unsafe { *libc::__errno_location() })
        } else {
            r
        }
    }
    pub fn fstat(fd: i32) -> i64 {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `st` is writable for one `struct stat`; the supervisor answers without writing it.
        unsafe { libc::syscall(libc::SYS_fstat, fd, st.as_mut_ptr()) }
    }
}
