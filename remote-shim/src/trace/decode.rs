//! Names and decoded arguments of intercepted calls, for `--trace` and `--stats`.

use crate::memory;
use serde_json::{json, Value};

/// How an argument is shown.
#[derive(Clone, Copy)]
pub enum Kind {
    Fd,
    DirFd,
    Path,
    OpenFlags,
    AtFlags,
    Mode,
    Size,
    Offset,
    Int,
    Signal,
    Whence,
    Ptr,
}

use Kind::*;

/// (number, name, argument kinds) of every call the filter may notify.
fn table() -> &'static [(i64, &'static str, &'static [Kind])] {
    &[
        (libc::SYS_openat, "openat", &[DirFd, Path, OpenFlags, Mode]),
        (libc::SYS_openat2, "openat2", &[DirFd, Path, Ptr, Size]),
        (libc::SYS_newfstatat, "newfstatat", &[DirFd, Path, Ptr, AtFlags]),
        (libc::SYS_statx, "statx", &[DirFd, Path, AtFlags, Int, Ptr]),
        (libc::SYS_statfs, "statfs", &[Path, Ptr]),
        (libc::SYS_fstatfs, "fstatfs", &[Fd, Ptr]),
        (libc::SYS_faccessat, "faccessat", &[DirFd, Path, Int]),
        (libc::SYS_faccessat2, "faccessat2", &[DirFd, Path, Int, AtFlags]),
        (libc::SYS_readlinkat, "readlinkat", &[DirFd, Path, Ptr, Size]),
        (libc::SYS_mkdirat, "mkdirat", &[DirFd, Path, Mode]),
        (libc::SYS_mknodat, "mknodat", &[DirFd, Path, Mode, Int]),
        (libc::SYS_unlinkat, "unlinkat", &[DirFd, Path, AtFlags]),
        (libc::SYS_renameat, "renameat", &[DirFd, Path, DirFd, Path]),
        (libc::SYS_renameat2, "renameat2", &[DirFd, Path, DirFd, Path, Int]),
        (libc::SYS_linkat, "linkat", &[DirFd, Path, DirFd, Path, AtFlags]),
        (libc::SYS_symlinkat, "symlinkat", &[Path, DirFd, Path]),
        (libc::SYS_fchmodat, "fchmodat", &[DirFd, Path, Mode]),
        (libc::SYS_fchownat, "fchownat", &[DirFd, Path, Int, Int, AtFlags]),
        (libc::SYS_truncate, "truncate", &[Path, Offset]),
        (libc::SYS_utimensat, "utimensat", &[DirFd, Path, Ptr, AtFlags]),
        (libc::SYS_chdir, "chdir", &[Path]),
        (libc::SYS_fchdir, "fchdir", &[Fd]),
        (libc::SYS_getcwd, "getcwd", &[Ptr, Size]),
        (libc::SYS_setxattr, "setxattr", &[Path, Path, Ptr, Size, Int]),
        (libc::SYS_lsetxattr, "lsetxattr", &[Path, Path, Ptr, Size, Int]),
        (libc::SYS_getxattr, "getxattr", &[Path, Path, Ptr, Size]),
        (libc::SYS_lgetxattr, "lgetxattr", &[Path, Path, Ptr, Size]),
        (libc::SYS_listxattr, "listxattr", &[Path, Ptr, Size]),
        (libc::SYS_llistxattr, "llistxattr", &[Path, Ptr, Size]),
        (libc::SYS_removexattr, "removexattr", &[Path, Path]),
        (libc::SYS_lremovexattr, "lremovexattr", &[Path, Path]),
        (libc::SYS_fgetxattr, "fgetxattr", &[Fd, Path, Ptr, Size]),
        (libc::SYS_fsetxattr, "fsetxattr", &[Fd, Path, Ptr, Size, Int]),
        (libc::SYS_flistxattr, "flistxattr", &[Fd, Ptr, Size]),
        (libc::SYS_fremovexattr, "fremovexattr", &[Fd, Path]),
        (libc::SYS_execve, "execve", &[Path, Ptr, Ptr]),
        (libc::SYS_execveat, "execveat", &[DirFd, Path, Ptr, Ptr, AtFlags]),
        (libc::SYS_umask, "umask", &[Mode]),
        (crate::filter::SYS_FCHMODAT2, "fchmodat2", &[DirFd, Path, Mode, AtFlags]),
        (libc::SYS_read, "read", &[Fd, Ptr, Size]),
        (libc::SYS_write, "write", &[Fd, Ptr, Size]),
        (libc::SYS_pread64, "pread64", &[Fd, Ptr, Size, Offset]),
        (libc::SYS_pwrite64, "pwrite64", &[Fd, Ptr, Size, Offset]),
        (libc::SYS_readv, "readv", &[Fd, Ptr, Int]),
        (libc::SYS_writev, "writev", &[Fd, Ptr, Int]),
        (libc::SYS_preadv, "preadv", &[Fd, Ptr, Int, Offset]),
        (libc::SYS_pwritev, "pwritev", &[Fd, Ptr, Int, Offset]),
        (libc::SYS_preadv2, "preadv2", &[Fd, Ptr, Int, Offset]),
        (libc::SYS_pwritev2, "pwritev2", &[Fd, Ptr, Int, Offset]),
        (libc::SYS_lseek, "lseek", &[Fd, Offset, Whence]),
        (libc::SYS_fstat, "fstat", &[Fd, Ptr]),
        (libc::SYS_ftruncate, "ftruncate", &[Fd, Offset]),
        (libc::SYS_fallocate, "fallocate", &[Fd, Int, Offset, Size]),
        (libc::SYS_fsync, "fsync", &[Fd]),
        (libc::SYS_fdatasync, "fdatasync", &[Fd]),
        (libc::SYS_syncfs, "syncfs", &[Fd]),
        (libc::SYS_sync_file_range, "sync_file_range", &[Fd, Offset, Size, Int]),
        (libc::SYS_readahead, "readahead", &[Fd, Offset, Size]),
        (libc::SYS_getdents64, "getdents64", &[Fd, Ptr, Size]),
        (libc::SYS_fchmod, "fchmod", &[Fd, Mode]),
        (libc::SYS_fchown, "fchown", &[Fd, Int, Int]),
        (libc::SYS_fcntl, "fcntl", &[Fd, Int, Int]),
        (libc::SYS_flock, "flock", &[Fd, Int]),
        (libc::SYS_dup, "dup", &[Fd]),
        (libc::SYS_dup3, "dup3", &[Fd, Fd, OpenFlags]),
        (libc::SYS_ioctl, "ioctl", &[Fd, Int, Ptr]),
        (libc::SYS_copy_file_range, "copy_file_range", &[Fd, Ptr, Fd, Ptr, Size, Int]),
        (libc::SYS_sendfile, "sendfile", &[Fd, Fd, Ptr, Size]),
        (libc::SYS_splice, "splice", &[Fd, Ptr, Fd, Ptr, Size, Int]),
        (libc::SYS_mmap, "mmap", &[Ptr, Size, Int, Int, Fd, Offset]),
        (libc::SYS_msync, "msync", &[Ptr, Size, Int]),
        (libc::SYS_getpid, "getpid", &[]),
        (libc::SYS_getppid, "getppid", &[]),
        (libc::SYS_gettid, "gettid", &[]),
        (libc::SYS_exit_group, "exit_group", &[Int]),
        (libc::SYS_clone, "clone", &[Int, Ptr, Ptr, Ptr, Ptr]),
        (libc::SYS_clone3, "clone3", &[Ptr, Size]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_fork, "fork", &[]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_vfork, "vfork", &[]),
        (libc::SYS_kill, "kill", &[Int, Signal]),
        (libc::SYS_tkill, "tkill", &[Int, Signal]),
        (libc::SYS_tgkill, "tgkill", &[Int, Int, Signal]),
        (libc::SYS_rt_sigqueueinfo, "rt_sigqueueinfo", &[Int, Signal, Ptr]),
        (libc::SYS_rt_tgsigqueueinfo, "rt_tgsigqueueinfo", &[Int, Int, Signal, Ptr]),
        (libc::SYS_clock_settime, "clock_settime", &[Int, Ptr]),
        (libc::SYS_settimeofday, "settimeofday", &[Ptr, Ptr]),
        (libc::SYS_adjtimex, "adjtimex", &[Ptr]),
        (libc::SYS_clock_adjtime, "clock_adjtime", &[Int, Ptr]),
        (libc::SYS_bind, "bind", &[Fd, Ptr, Size]),
        (libc::SYS_clock_gettime, "clock_gettime", &[Int, Ptr]),
        (libc::SYS_connect, "connect", &[Fd, Ptr, Size]),
        (libc::SYS_prlimit64, "prlimit64", &[Int, Int, Ptr, Ptr]),
        (libc::SYS_getrlimit, "getrlimit", &[Int, Ptr]),
        (libc::SYS_setrlimit, "setrlimit", &[Int, Ptr]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_open, "open", &[Path, OpenFlags, Mode]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_creat, "creat", &[Path, Mode]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_stat, "stat", &[Path, Ptr]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_lstat, "lstat", &[Path, Ptr]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_access, "access", &[Path, Int]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_readlink, "readlink", &[Path, Ptr, Size]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_mkdir, "mkdir", &[Path, Mode]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_mknod, "mknod", &[Path, Mode, Int]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_rmdir, "rmdir", &[Path]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_unlink, "unlink", &[Path]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_rename, "rename", &[Path, Path]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_link, "link", &[Path, Path]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_symlink, "symlink", &[Path, Path]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_chmod, "chmod", &[Path, Mode]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_chown, "chown", &[Path, Int, Int]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_lchown, "lchown", &[Path, Int, Int]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_utimes, "utimes", &[Path, Ptr]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_utime, "utime", &[Path, Ptr]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_futimesat, "futimesat", &[DirFd, Path, Ptr]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_getdents, "getdents", &[Fd, Ptr, Size]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_dup2, "dup2", &[Fd, Fd]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_fadvise64, "fadvise64", &[Fd, Offset, Size, Int]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_gettimeofday, "gettimeofday", &[Ptr, Ptr]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_time, "time", &[Ptr]),
    ]
}

/// The syscall family a call belongs to (the module of `syscalls` that serves it).
pub fn family(name: &str) -> &'static str {
    match name {
        "open" | "openat" | "openat2" | "creat" => "open",
        "stat" | "lstat" | "newfstatat" | "statx" | "fstat" | "statfs" | "fstatfs" | "access"
        | "faccessat" | "faccessat2" | "readlink" | "readlinkat" => "stat",
        "mkdir" | "mkdirat" | "mknod" | "mknodat" | "rmdir" | "unlink" | "unlinkat" | "rename"
        | "renameat" | "renameat2" | "link" | "linkat" | "symlink" | "symlinkat" | "getdents"
        | "getdents64" | "chdir" | "fchdir" | "getcwd" => "dir",
        "fcntl" | "flock" | "dup" | "dup2" | "dup3" => "fd",
        "execve" | "execveat" => "exec",
        "getpid" | "getppid" | "gettid" | "exit_group" | "msync" | "kill" | "tkill" | "tgkill"
        | "rt_sigqueueinfo" | "rt_tgsigqueueinfo" | "clone" | "clone3" | "fork" | "vfork" => "process",
        "clock_gettime" | "gettimeofday" | "time" | "clock_settime" | "settimeofday" | "adjtimex"
        | "clock_adjtime" => "clock",
        "bind" | "connect" => "socket",
        "prlimit64" | "getrlimit" | "setrlimit" => "rlimit",
        n if n.contains("xattr")
            || n.contains("chmod")
            || n.contains("chown")
            || n.contains("utime")
            || n.contains("truncate")
            || n == "umask" =>
        {
            "attr"
        }
        _ => "io",
    }
}

/// The call's name (`"syscall_N"` for one this build does not name).
pub fn name(nr: i64) -> String {
    table()
        .iter()
        .find(|(n, _, _)| *n == nr)
        .map(|(_, s, _)| s.to_string())
        .unwrap_or_else(|| format!("syscall_{nr}"))
}

/// The decoded arguments of a notified call, read from the (stopped) program.
pub fn args(tid: u32, nr: i64, raw: &[u64; 6]) -> Value {
    let kinds: &[Kind] = table().iter().find(|(n, _, _)| *n == nr).map(|(_, _, k)| *k).unwrap_or(&[]);
    Value::Array(kinds.iter().zip(raw).map(|(k, &v)| arg(tid, *k, v)).collect())
}

fn arg(tid: u32, kind: Kind, v: u64) -> Value {
    match kind {
        Fd => json!(v as u32 as i32),
        DirFd if v as u32 as i32 == libc::AT_FDCWD => json!("AT_FDCWD"),
        DirFd => json!(v as u32 as i32),
        Path => match memory::read_path(tid, v) {
            Ok(p) => json!(String::from_utf8_lossy(&p)),
            Err(e) => json!(format!("<{}>", e.name())),
        },
        OpenFlags => json!(open_flags(v as u32 as i32)),
        AtFlags => json!(at_flags(v as u32 as i32)),
        Mode => json!(format!("0{:o}", v as u32)),
        Size | Offset | Int => json!(v as i64),
        Signal => json!(signal_name(v as u32 as i32)),
        Whence => json!(match v as u32 as i32 {
            libc::SEEK_SET => "SEEK_SET".to_string(),
            libc::SEEK_CUR => "SEEK_CUR".to_string(),
            libc::SEEK_END => "SEEK_END".to_string(),
            other => other.to_string(),
        }),
        Ptr => json!(if v == 0 { "NULL".to_string() } else { "ptr".to_string() }),
    }
}

/// `O_WRONLY|O_CREAT|O_CLOEXEC`.
pub fn open_flags(f: i32) -> String {
    let mut parts = vec![match f & libc::O_ACCMODE {
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        _ => "O_RDONLY",
    }
    .to_string()];
    let named = [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_NOCTTY, "O_NOCTTY"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_CLOEXEC, "O_CLOEXEC"),
        (libc::O_PATH, "O_PATH"),
        (libc::O_TMPFILE & !libc::O_DIRECTORY, "O_TMPFILE"),
        (libc::O_NOATIME, "O_NOATIME"),
        (libc::O_DIRECT, "O_DIRECT"),
    ];
    for (bit, n) in named {
        if f & bit == bit {
            parts.push(n.to_string());
        }
    }
    parts.join("|")
}

fn at_flags(f: i32) -> String {
    let named = [
        (libc::AT_SYMLINK_NOFOLLOW, "AT_SYMLINK_NOFOLLOW"),
        (libc::AT_EMPTY_PATH, "AT_EMPTY_PATH"),
        (libc::AT_REMOVEDIR, "AT_REMOVEDIR"),
        (libc::AT_SYMLINK_FOLLOW, "AT_SYMLINK_FOLLOW"),
        (libc::AT_NO_AUTOMOUNT, "AT_NO_AUTOMOUNT"),
    ];
    let parts: Vec<&str> = named.iter().filter(|(b, _)| f & b == *b).map(|(_, n)| *n).collect();
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join("|")
    }
}

fn signal_name(sig: i32) -> String {
    const NAMES: [&str; 32] = [
        "0",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    NAMES.get(sig as usize).map(|s| s.to_string()).unwrap_or_else(|| format!("SIGRT{sig}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_flags() {
        assert_eq!(name(libc::SYS_openat), "openat");
        assert_eq!(
            open_flags(libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC),
            "O_WRONLY|O_CREAT|O_CLOEXEC"
        );
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(family(&name(libc::SYS_prlimit64)), "rlimit");
    }
}
