//! The only place with `unsafe`: thin, safe wrappers over the raw system calls the supervisor needs.
//!
//! Every function here takes borrowed or owned descriptors and returns `io::Result`, so the rest of the crate
//! never touches a raw pointer or a bare `RawFd` it does not own.
#![allow(unsafe_code)]

pub mod ns;
pub mod seccomp;
pub mod tracee;

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Converts a libc return value into an `io::Result`.
pub(crate) fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A new anonymous memory file (`memfd_create`), close-on-exec in the supervisor.
pub fn memfd(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string that the kernel copies during the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    check(fd as libc::c_long)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A connected pair of unix stream sockets, both close-on-exec.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a writable array of two ints, as socketpair(2) requires.
    let ret = unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    };
    check(ret as libc::c_long)?;
    // SAFETY: both descriptors were just created by the kernel and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A message header over one iovec and a control buffer (room for one int in a control message; the u64
/// array keeps cmsghdr alignment). The header points into both: they must outlive its use.
fn one_byte_msg(iov: &mut libc::iovec, cbuf: &mut [u64; 4]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zero is a valid initial state for every field.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(cbuf);
    msg
}

/// Sends one descriptor over a unix socket (SCM_RIGHTS) with a one-byte payload.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u64; 4];
    let mut msg = one_byte_msg(&mut iov, &mut cbuf);
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    // SAFETY: msg_control points to `cbuf`, which is at least CMSG_SPACE(sizeof(int)) bytes and aligned for
    // cmsghdr, so CMSG_FIRSTHDR returns a pointer inside it and CMSG_DATA has room for one int.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
    }
    // SAFETY: `msg` and everything it points to live until the call returns.
    let ret = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    check(ret as libc::c_long).map(drop)
}

/// Receives one descriptor sent by [`send_fd`].
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u64; 4];
    let mut msg = one_byte_msg(&mut iov, &mut cbuf);
    // SAFETY: `msg` points to buffers that live until the call returns; MSG_CMSG_CLOEXEC marks the new fd.
    let ret = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if check(ret as libc::c_long)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed before sending a descriptor"));
    }
    // SAFETY: the kernel filled `msg`; CMSG_FIRSTHDR returns null or a header inside `cbuf`.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: a non-null header lies within `cbuf` as written by the kernel.
    if cmsg.is_null() || unsafe { (*cmsg).cmsg_type } != libc::SCM_RIGHTS {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "no descriptor in the message"));
    }
    // SAFETY: an SCM_RIGHTS message carries at least one int in its data area.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>()) };
    // SAFETY: the kernel installed this descriptor in our table for us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`: orphaned descendants are re-parented to us, not to init.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } as libc::c_long).map(drop)
}

/// Raises the soft `RLIMIT_NOFILE` of process `pid` (0: this process) to at least `want`, up to the hard limit.
/// Returns the soft limit in force afterwards.
pub fn raise_nofile(pid: libc::pid_t, want: u64) -> io::Result<u64> {
    let mut old = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `old` is a valid out-pointer; a null new-limit pointer only queries.
    check(unsafe { libc::prlimit64(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) } as libc::c_long)?;
    if old.rlim_cur >= want {
        return Ok(old.rlim_cur);
    }
    let new = libc::rlimit64 { rlim_cur: want.min(old.rlim_max), rlim_max: old.rlim_max };
    // SAFETY: `new` is a valid in-pointer and the old-limit pointer is null.
    check(unsafe { libc::prlimit64(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) } as libc::c_long)?;
    Ok(new.rlim_cur)
}

/// The `RLIMIT_NOFILE` (soft, hard) of process `pid` (0: this process).
pub fn nofile(pid: libc::pid_t) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid out-pointer; a null new-limit pointer only queries.
    check(unsafe { libc::prlimit64(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) } as libc::c_long)?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets the `RLIMIT_NOFILE` of process `pid` to (soft, hard).
pub fn set_nofile(pid: libc::pid_t, (soft, hard): (u64, u64)) -> io::Result<()> {
    let lim = libc::rlimit64 { rlim_cur: soft, rlim_max: hard };
    // SAFETY: `lim` is a valid in-pointer the kernel copies during the call; the old-limit pointer is null.
    check(unsafe { libc::prlimit64(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) } as libc::c_long)
        .map(drop)
}

/// The current umask (read by setting and restoring it).
pub fn current_umask() -> u32 {
    // SAFETY: umask cannot fail and touches no memory.
    let old = unsafe { libc::umask(0o022) };
    // SAFETY: as above; this restores the value we found.
    unsafe { libc::umask(old) };
    old
}

/// `kill(pid, sig)`.
pub fn kill(pid: libc::pid_t, sig: i32) -> io::Result<()> {
    // SAFETY: kill touches no memory of ours.
    check(unsafe { libc::kill(pid, sig) } as libc::c_long).map(drop)
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe2(2) requires.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: both descriptors were just created by the kernel and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Ends the sending direction of a socket (`shutdown(SHUT_WR)`): the peer reads end of file.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: shutdown takes integers only.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) } as libc::c_long).map(drop)
}

/// Bytes waiting to be read on a pipe or socket (`FIONREAD`).
pub fn bytes_readable(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer we pass.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } as libc::c_long)?;
    Ok(n.max(0) as usize)
}

/// Sets or clears O_NONBLOCK on one of our descriptors.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL take and return integers only.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) } as libc::c_long)?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags as i32 | libc::O_NONBLOCK) }
        as libc::c_long)
    .map(drop)
}

/// `poll` on one descriptor with a timeout in milliseconds; the number of ready descriptors.
pub fn poll_one(pfd: &mut libc::pollfd, timeout_ms: i32) -> io::Result<i32> {
    // SAFETY: `pfd` points to one valid pollfd for the call's duration.
    check(unsafe { libc::poll(pfd, 1, timeout_ms) } as libc::c_long).map(|n| n as i32)
}

/// `lseek(2)`: moves (or with `SEEK_CUR` and 0, reads) the offset of `fd`'s open file description.
pub fn lseek(fd: std::os::fd::BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek takes a descriptor and two integers; no memory is involved.
    check(unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) })
}

/// Gives file `fd` (a placeholder memfd) the permission bits, and times of a home file (and its owner,
/// when this process is root), so `fstat` of a descriptor read by the kernel shows them. The owner may
/// still read it (placeholders are opened again through `/proc/self/fd`); set-id bits are not copied.
pub fn mirror_attributes(fd: BorrowedFd<'_>, st: &homeward_proto::pb::FileStat) {
    let times = [
        libc::timespec { tv_sec: st.atime_sec, tv_nsec: st.atime_nsec },
        libc::timespec { tv_sec: st.mtime_sec, tv_nsec: st.mtime_nsec },
    ];
    // SAFETY: plain calls on an open descriptor; `times` is two valid timespecs that outlive the call.
    unsafe {
        if libc::geteuid() == 0 {
            libc::fchown(fd.as_raw_fd(), st.uid, st.gid);
        }
        libc::fchmod(fd.as_raw_fd(), (st.mode & 0o777 | 0o400) as libc::mode_t);
        libc::futimens(fd.as_raw_fd(), times.as_ptr());
    }
}

/// `fork()`. The caller must be single-threaded: the child may allocate.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: the caller guarantees this process has one thread, so the child starts with consistent locks
    // and allocator state.
    check(unsafe { libc::fork() } as libc::c_long).map(|p| p as libc::pid_t)
}

/// `_exit(code)`: leaves the forked child without running the parent's destructors or atexit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// `prctl(PR_SET_PDEATHSIG, sig)`.
pub fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    // SAFETY: the prctl takes integers only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) } as libc::c_long)
        .map(drop)
}

/// `chdir(path)`.
pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    check(unsafe { libc::chdir(path.as_ptr()) } as libc::c_long).map(drop)
}

/// `execvp(file, argv)`: only returns on failure, with the error.
pub fn execvp(file: &CStr, argv: &[std::ffi::CString]) -> io::Error {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: `file` and every argument are NUL-terminated strings that outlive the call, and the pointer
    // array is terminated by a null pointer as execvp requires.
    unsafe { libc::execvp(file.as_ptr(), ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// Restores the default action of `sig` (exec keeps ignored signals ignored).
pub fn default_signal(sig: i32) {
    // SAFETY: installing SIG_DFL involves no handler code and no memory of ours.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// Ignores `sig` in this process (not inherited: set after fork).
pub fn ignore_signal(sig: i32) {
    // SAFETY: installing SIG_IGN involves no handler code and no memory of ours.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

/// The hard `RLIMIT_NOFILE` of this process.
pub fn hard_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid out-pointer; a null new-limit pointer only queries.
    check(unsafe { libc::prlimit64(0, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) } as libc::c_long)?;
    Ok(lim.rlim_max)
}

/// Registers a nonblocking file we own with the tokio reactor.
pub fn async_file(file: std::fs::File) -> io::Result<tokio::io::unix::AsyncFd<std::fs::File>> {
    // SAFETY: the `File` owns its descriptor and moves into the `AsyncFd`, so the descriptor stays open and
    // is not reused for as long as the registration exists; it is deregistered before the `File` closes it.
    unsafe { tokio::io::unix::AsyncFd::register(file) }.map_err(|e| e.into_parts().1)
}

/// Copies `len` bytes from offset 0 of `src` to offset 0 of `dst` inside the kernel (`copy_file_range` with
/// explicit offsets, so neither descriptor's file offset moves).
pub fn copy_all(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let (mut off_in, mut off_out): (i64, i64) = (0, 0);
    while (off_in as u64) < len {
        let want = (len - off_in as u64).min(1 << 30) as usize;
        // SAFETY: both offsets are valid, exclusively borrowed i64s for the call's duration; the descriptors
        // are open (borrowed).
        let n = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, want, 0)
        };
        if check(n as libc::c_long)? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
    }
    Ok(())
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// `tgkill(tgid, tid, sig)`.
pub fn tgkill(tgid: libc::pid_t, tid: libc::pid_t, sig: i32) -> io::Result<()> {
    // SAFETY: tgkill takes integers only.
    check(unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) }).map(drop)
}

/// `clock_gettime(clock)` in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration; the clock ids we pass exist, so
    // the call cannot fail (and a zero reading would only make the estimate bad, not unsafe).
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec.saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec)
}

/// `unshare(CLONE_NEWTIME)`: this process's children (and this process after exec) get a new time
/// namespace, whose offsets may be written until a process enters it.
pub fn unshare_time() -> io::Result<()> {
    // SAFETY: unshare takes a flag word only.
    check(unsafe { libc::unshare(libc::CLONE_NEWTIME) } as libc::c_long).map(drop)
}

/// Reads exactly `buf.len()` bytes from a blocking descriptor; false on end of file or error.
pub fn read_exact(fd: BorrowedFd<'_>, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which is writable.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n <= 0 {
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        got += n as usize;
    }
    true
}

/// Writes all of `data` to a blocking descriptor.
pub fn write_all(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: the pointer and length describe the unwritten tail of `data`.
        let n = unsafe { libc::write(fd.as_raw_fd(), data[done..].as_ptr().cast(), data.len() - done) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

/// `bind` or `connect` of a unix socket we hold to a filesystem `path`.
pub fn unix_address_call(sock: BorrowedFd<'_>, path: &std::path::Path, connect: bool) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all-zero is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    let ptr = (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>();
    // SAFETY: `ptr` points to `addr`, a valid sockaddr_un of at least `len` bytes, alive for the call.
    let ret = unsafe {
        if connect {
            libc::connect(sock.as_raw_fd(), ptr, len)
        } else {
            libc::bind(sock.as_raw_fd(), ptr, len)
        }
    };
    check(ret as libc::c_long).map(drop)
}
