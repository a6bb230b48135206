//! The seccomp filter: which calls reach the supervisor.
//!
//! Path calls always notify (the decision needs the path). Calls on descriptors are routed by number: the
//! forwarded descriptors live in a reserved range `[base, base + span)`, so `read(3, ...)` on the program's own
//! pipe goes straight to the kernel and costs nothing, while `read(base + 7, ...)` is notified. `close` and
//! `close_range` are never notified: the descriptor table in the kernel is the truth, and home handles are
//! collected once no process of the job holds them (see `fdtable`).
//!
//! Rules are compiled with seccompiler, whose 0.5 release has no user-notification action: the rules match
//! with a `Trap` placeholder that [`build`] rewrites to `SECCOMP_RET_USER_NOTIF`.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// The reserved descriptor range of forwarded files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdRange {
    pub base: u32,
    pub span: u32,
}

impl FdRange {
    pub fn contains(&self, fd: u64) -> bool {
        let fd = fd as u32;
        fd >= self.base && fd - self.base < self.span
    }

    pub fn end(&self) -> u32 {
        self.base + self.span
    }

    /// Where the upper half starts: complete copies whose reads are the kernel's, not notified
    /// ([`crate::native`]).
    pub fn native_start(&self) -> u32 {
        self.base + self.span / 2
    }

    /// Whether `fd` is in the upper half ([`FdRange::native_start`]).
    pub fn is_native(&self, fd: u64) -> bool {
        self.contains(fd) && fd as u32 >= self.native_start()
    }
}

/// Calls that are always notified: they name a path, change per-process state kept at home, concern
/// process identity and signals, or ask for mapped stores to be written (`msync`).
fn path_calls() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_openat,
        libc::SYS_openat2,
        libc::SYS_statfs,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_readlinkat,
        libc::SYS_mkdirat,
        libc::SYS_mknodat,
        libc::SYS_unlinkat,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_linkat,
        libc::SYS_symlinkat,
        libc::SYS_fchmodat,
        libc::SYS_fchownat,
        libc::SYS_truncate,
        libc::SYS_utimensat,
        libc::SYS_chdir,
        libc::SYS_getcwd,
        libc::SYS_setxattr,
        libc::SYS_lsetxattr,
        libc::SYS_getxattr,
        libc::SYS_lgetxattr,
        libc::SYS_listxattr,
        libc::SYS_llistxattr,
        libc::SYS_removexattr,
        libc::SYS_lremovexattr,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_umask,
        SYS_FCHMODAT2,
        // Process identity and signals (see syscalls::process).
        libc::SYS_getppid,
        libc::SYS_exit_group,
        // Stores into writable shared mappings of home files are written home (see shared_maps).
        libc::SYS_msync,
        libc::SYS_kill,
        libc::SYS_tkill,
        libc::SYS_tgkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
        // Setting the clock happens at home (see syscalls::clock).
        libc::SYS_clock_settime,
        libc::SYS_settimeofday,
        libc::SYS_adjtimex,
        libc::SYS_clock_adjtime,
        // Unix socket names live in home's file system (see syscalls::socket).
        libc::SYS_bind,
        libc::SYS_connect,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_open,
        libc::SYS_creat,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_access,
        libc::SYS_readlink,
        libc::SYS_mkdir,
        libc::SYS_mknod,
        libc::SYS_rmdir,
        libc::SYS_unlink,
        libc::SYS_rename,
        libc::SYS_link,
        libc::SYS_symlink,
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
        libc::SYS_utimes,
        libc::SYS_utime,
        libc::SYS_futimesat,
    ]);
    v
}

/// `fchmodat2` (Linux 6.6); not in libc for every target yet. Same number on x86_64 and aarch64.
pub const SYS_FCHMODAT2: i64 = 452;

/// Calls on descriptors, with the argument positions that hold a descriptor.
fn fd_calls() -> Vec<(i64, &'static [u8])> {
    let mut v: Vec<(i64, &'static [u8])> = vec![
        (libc::SYS_read, &[0]),
        (libc::SYS_write, &[0]),
        (libc::SYS_pread64, &[0]),
        (libc::SYS_pwrite64, &[0]),
        (libc::SYS_readv, &[0]),
        (libc::SYS_writev, &[0]),
        (libc::SYS_preadv, &[0]),
        (libc::SYS_pwritev, &[0]),
        (libc::SYS_preadv2, &[0]),
        (libc::SYS_pwritev2, &[0]),
        (libc::SYS_lseek, &[0]),
        (libc::SYS_fstat, &[0]),
        (libc::SYS_fstatfs, &[0]),
        (libc::SYS_ftruncate, &[0]),
        (libc::SYS_fallocate, &[0]),
        (libc::SYS_fsync, &[0]),
        (libc::SYS_fdatasync, &[0]),
        (libc::SYS_getdents64, &[0]),
        (libc::SYS_fchmod, &[0]),
        (libc::SYS_fchown, &[0]),
        (libc::SYS_fcntl, &[0]),
        (libc::SYS_flock, &[0]),
        (libc::SYS_dup, &[0]),
        (libc::SYS_dup3, &[0, 1]),
        (libc::SYS_ioctl, &[0]),
        (libc::SYS_fchdir, &[0]),
        (libc::SYS_fgetxattr, &[0]),
        (libc::SYS_fsetxattr, &[0]),
        (libc::SYS_flistxattr, &[0]),
        (libc::SYS_fremovexattr, &[0]),
        (libc::SYS_readahead, &[0]),
        (libc::SYS_sync_file_range, &[0]),
        (libc::SYS_syncfs, &[0]),
        (libc::SYS_copy_file_range, &[0, 2]),
        (libc::SYS_sendfile, &[0, 1]),
        (libc::SYS_splice, &[0, 2]),
        (libc::SYS_mmap, &[4]),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        (libc::SYS_getdents, &[0][..]),
        (libc::SYS_dup2, &[0, 1][..]),
        (libc::SYS_fadvise64, &[0][..]),
    ]);
    v
}

/// Standard output and error: a home file there is a pumped pipe (`pump`), whose calls that a pipe cannot
/// answer as the file would are notified whatever the descriptor is.
pub const OUTPUTS: [u32; 2] = [1, 2];

/// Calls on descriptors 1 and 2 that are notified whatever they are ([`OUTPUTS`]), with the argument that
/// names them: all that ask about, move, resize or sync the file behind them, and positioned writes; not
/// reads, plain writes or `dup`s, which a pumped pipe serves as the file would.
fn output_calls() -> Vec<(i64, u8)> {
    vec![
        (libc::SYS_pwrite64, 0),
        (libc::SYS_pwritev, 0),
        (libc::SYS_pwritev2, 0),
        (libc::SYS_lseek, 0),
        (libc::SYS_fstat, 0),
        (libc::SYS_fstatfs, 0),
        (libc::SYS_ftruncate, 0),
        (libc::SYS_fallocate, 0),
        (libc::SYS_fsync, 0),
        (libc::SYS_fdatasync, 0),
        (libc::SYS_sync_file_range, 0),
        (libc::SYS_syncfs, 0),
        (libc::SYS_fchmod, 0),
        (libc::SYS_fchown, 0),
        (libc::SYS_fcntl, 0),
        (libc::SYS_flock, 0),
        (libc::SYS_fgetxattr, 0),
        (libc::SYS_fsetxattr, 0),
        (libc::SYS_flistxattr, 0),
        (libc::SYS_fremovexattr, 0),
    ]
}

/// Calls on descriptors that a complete copy in the upper half answers alone (see `native`): they read its
/// content or move its offset. (`mmap` stays notified: a copy's memfd may be writable where home's file is
/// not.)
fn native_reads() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_read,
        libc::SYS_pread64,
        libc::SYS_readv,
        libc::SYS_preadv,
        libc::SYS_preadv2,
        libc::SYS_lseek,
        libc::SYS_readahead,
        libc::SYS_ioctl,
    ];
    #[cfg(target_arch = "x86_64")]
    v.push(libc::SYS_fadvise64);
    v
}

/// Calls that make processes and threads: notified in the job's pid namespace, where each new process takes
/// its deputy's pid and every clone must be serialized with that (see `jobinit`).
fn clone_calls() -> Vec<i64> {
    let mut v = vec![libc::SYS_clone, libc::SYS_clone3];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_fork, libc::SYS_vfork]);
    v
}

/// Builds the filter for `range`; `with_clones` adds the calls that make processes and threads.
pub fn build(range: FdRange, with_clones: bool) -> Result<Vec<libc::sock_filter>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in path_calls() {
        rules.insert(nr, vec![]);
    }
    if with_clones {
        for nr in clone_calls() {
            rules.insert(nr, vec![]);
        }
    } else {
        // In the job's pid namespace (`with_clones`) each process has its deputy's pid: `getpid` and
        // `gettid` are the kernel's. (Notified, a call a signal interrupts before the supervisor has
        // received it fails with `EINTR`, which these can never do.)
        rules.insert(libc::SYS_getpid, vec![]);
        rules.insert(libc::SYS_gettid, vec![]);
    }
    // fstat through newfstatat/statx (glibc's fstat) on the program's own descriptors stays in the kernel:
    // notify unless the directory fd is below the range and AT_EMPTY_PATH is set.
    // (Standard output and error always: [`OUTPUTS`].)
    for (nr, flags_arg) in [(libc::SYS_newfstatat, 3u8), (libc::SYS_statx, 2u8)] {
        let mut chain = vec![
            SeccompRule::new(vec![Cond::new(0, Len::Dword, Op::Ge, u64::from(range.base))?])?,
            SeccompRule::new(vec![Cond::new(
                flags_arg,
                Len::Dword,
                Op::MaskedEq(libc::AT_EMPTY_PATH as u64),
                0,
            )?])?,
        ];
        for fd in OUTPUTS {
            chain.push(SeccompRule::new(vec![Cond::new(0, Len::Dword, Op::Eq, u64::from(fd))?])?);
        }
        rules.insert(nr, chain);
    }
    // Wall-clock reads: only made as system calls once `vdso` routed them (see there); the monotonic clocks
    // always go straight to the kernel.
    let wall = |id: i32| SeccompRule::new(vec![Cond::new(0, Len::Dword, Op::Eq, id as u64)?]);
    rules.insert(
        libc::SYS_clock_gettime,
        vec![wall(libc::CLOCK_REALTIME)?, wall(libc::CLOCK_REALTIME_COARSE)?, wall(libc::CLOCK_TAI)?],
    );
    #[cfg(target_arch = "x86_64")]
    {
        rules.insert(libc::SYS_gettimeofday, vec![]);
        rules.insert(libc::SYS_time, vec![]);
    }
    // The limit on open files is virtual (see `limits`): only RLIMIT_NOFILE is notified, every other
    // resource stays in the kernel.
    let nofile =
        |arg: u8| SeccompRule::new(vec![Cond::new(arg, Len::Dword, Op::Eq, u64::from(libc::RLIMIT_NOFILE))?]);
    rules.insert(libc::SYS_prlimit64, vec![nofile(1)?]);
    rules.insert(libc::SYS_getrlimit, vec![nofile(0)?]);
    rules.insert(libc::SYS_setrlimit, vec![nofile(0)?]);
    for (nr, args) in fd_calls() {
        // Reads of the upper half are the kernel's (`native`): only the lower half is notified, but for an
        // lseek to data or a hole (a copy has none) and an ioctl other than isatty's (`ENOTTY` for a
        // regular file as for its copy).
        let reads = native_reads().contains(&nr);
        let end = if reads { range.native_start() } else { range.end() };
        let mut chain = Vec::new();
        for &arg in args {
            chain.push(SeccompRule::new(vec![
                Cond::new(arg, Len::Dword, Op::Ge, u64::from(range.base))?,
                Cond::new(arg, Len::Dword, Op::Lt, u64::from(end))?,
            ])?);
        }
        let upper = |extra: Cond| -> Result<SeccompRule, seccompiler::BackendError> {
            SeccompRule::new(vec![
                Cond::new(0, Len::Dword, Op::Ge, u64::from(range.native_start()))?,
                Cond::new(0, Len::Dword, Op::Lt, u64::from(range.end()))?,
                extra,
            ])
        };
        match nr {
            libc::SYS_lseek => chain.push(upper(Cond::new(2, Len::Dword, Op::Gt, libc::SEEK_END as u64)?)?),
            libc::SYS_ioctl => chain.push(upper(Cond::new(1, Len::Dword, Op::Ne, libc::TCGETS)?)?),
            _ => {}
        }
        if let Some(&(_, arg)) = output_calls().iter().find(|(n, _)| *n == nr) {
            for fd in OUTPUTS {
                let mut conds = vec![Cond::new(arg, Len::Dword, Op::Eq, u64::from(fd))?];
                if nr == libc::SYS_fcntl {
                    // A duplicate of a pumped pipe is that pipe (writes through both stay in order), and
                    // close-on-exec is the program's own descriptor's: the kernel's.
                    for cmd in [libc::F_DUPFD, libc::F_DUPFD_CLOEXEC, libc::F_GETFD, libc::F_SETFD] {
                        conds.push(Cond::new(1, Len::Dword, Op::Ne, cmd as u64)?);
                    }
                }
                chain.push(SeccompRule::new(conds)?);
            }
        }
        rules.insert(nr, chain);
    }
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Trap, target_arch())?;
    let program: BpfProgram = filter.try_into()?;
    Ok(program
        .into_iter()
        .map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: to_user_notif(i.code, i.k) })
        .collect())
}

const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Rewrites the `Trap` placeholder return into `SECCOMP_RET_USER_NOTIF`.
fn to_user_notif(code: u16, k: u32) -> u32 {
    if code == BPF_RET_K && k & libc::SECCOMP_RET_ACTION_FULL == libc::SECCOMP_RET_TRAP {
        libc::SECCOMP_RET_USER_NOTIF
    } else {
        k
    }
}

fn target_arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    return TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: FdRange = FdRange { base: 4096, span: 4096 };

    #[test]
    fn placeholders_become_user_notif() {
        let prog = build(RANGE, true).expect("filter builds");
        let rets: Vec<u32> = prog.iter().filter(|i| i.code == BPF_RET_K).map(|i| i.k).collect();
        assert!(rets.contains(&libc::SECCOMP_RET_USER_NOTIF));
        assert!(rets.contains(&libc::SECCOMP_RET_ALLOW));
        assert!(!rets.iter().any(|k| k & libc::SECCOMP_RET_ACTION_FULL == libc::SECCOMP_RET_TRAP));
    }

    /// Runs the filter on one call as the kernel would (the classic BPF subset seccompiler emits) and
    /// returns the action.
    fn run(prog: &[libc::sock_filter], nr: i64, args: [u64; 6]) -> u32 {
        let arch = match target_arch() {
            TargetArch::x86_64 => 0xc000_003e_u32,
            TargetArch::aarch64 => 0xc000_00b7_u32,
            _ => unreachable!("no other target"),
        };
        let mut data = Vec::new();
        data.extend((nr as i32).to_ne_bytes());
        data.extend(arch.to_ne_bytes());
        data.extend(0u64.to_ne_bytes());
        for a in args {
            data.extend(a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            let k = i.k;
            match i.code as u32 {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    let at = k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().expect("4 bytes"));
                }
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => acc &= k,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += k as usize,
                c if c & 0x07 == libc::BPF_JMP => {
                    let taken = match c & 0xf0 {
                        libc::BPF_JEQ => acc == k,
                        libc::BPF_JGT => acc > k,
                        libc::BPF_JGE => acc >= k,
                        libc::BPF_JSET => acc & k != 0,
                        other => panic!("unexpected jump {other:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                c if c == libc::BPF_RET | libc::BPF_K => return k & libc::SECCOMP_RET_ACTION_FULL,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    #[test]
    fn only_the_descriptor_limit_is_notified() {
        let prog = build(RANGE, false).expect("filter builds");
        let notif = libc::SECCOMP_RET_USER_NOTIF;
        let allow = libc::SECCOMP_RET_ALLOW;
        let nofile = u64::from(libc::RLIMIT_NOFILE);
        let cpu = u64::from(libc::RLIMIT_CPU);
        assert_eq!(run(&prog, libc::SYS_prlimit64, [0, nofile, 0, 1, 0, 0]), notif);
        assert_eq!(run(&prog, libc::SYS_prlimit64, [0, cpu, 0, 1, 0, 0]), allow);
        assert_eq!(run(&prog, libc::SYS_getrlimit, [nofile, 1, 0, 0, 0, 0]), notif);
        assert_eq!(run(&prog, libc::SYS_getrlimit, [cpu, 1, 0, 0, 0, 0]), allow);
        assert_eq!(run(&prog, libc::SYS_setrlimit, [nofile, 1, 0, 0, 0, 0]), notif);
        assert_eq!(run(&prog, libc::SYS_setrlimit, [cpu, 1, 0, 0, 0, 0]), allow);
        // The interpreter agrees with the rest of the filter.
        assert_eq!(run(&prog, libc::SYS_read, [4100, 0, 0, 0, 0, 0]), notif);
        assert_eq!(run(&prog, libc::SYS_read, [3, 0, 0, 0, 0, 0]), allow);
    }

    #[test]
    fn reads_of_the_upper_half_are_the_kernels() {
        let prog = build(RANGE, false).expect("filter builds");
        let (notif, allow) = (libc::SECCOMP_RET_USER_NOTIF, libc::SECCOMP_RET_ALLOW);
        let (lower, upper) = (4100u64, 7000u64);
        assert!(RANGE.is_native(upper) && !RANGE.is_native(lower));
        for nr in [libc::SYS_read, libc::SYS_pread64, libc::SYS_readv, libc::SYS_preadv2] {
            assert_eq!(run(&prog, nr, [lower, 0, 10, 0, 0, 0]), notif, "{nr} below");
            assert_eq!(run(&prog, nr, [upper, 0, 10, 0, 0, 0]), allow, "{nr} above");
        }
        for nr in [libc::SYS_write, libc::SYS_fstat, libc::SYS_mmap, libc::SYS_fcntl, libc::SYS_ftruncate] {
            let fd_arg = if nr == libc::SYS_mmap { 4 } else { 0 };
            let mut args = [0, 0, 0, 0, 0, 0];
            args[fd_arg] = upper;
            assert_eq!(run(&prog, nr, args), notif, "{nr} above");
        }
        let seek = |fd, whence: i32| run(&prog, libc::SYS_lseek, [fd, 0, whence as u64, 0, 0, 0]);
        assert_eq!(seek(upper, libc::SEEK_SET), allow);
        assert_eq!(seek(upper, libc::SEEK_END), allow);
        assert_eq!(seek(upper, libc::SEEK_HOLE), notif, "a copy has no holes: home says");
        assert_eq!(seek(lower, libc::SEEK_SET), notif);
        let ioctl = |fd, cmd: u64| run(&prog, libc::SYS_ioctl, [fd, cmd, 0, 0, 0, 0]);
        assert_eq!(ioctl(upper, libc::TCGETS), allow);
        assert_eq!(ioctl(upper, libc::FIONREAD), notif);
        assert_eq!(ioctl(lower, libc::TCGETS), notif);
        assert_eq!(run(&prog, libc::SYS_read, [3, 0, 10, 0, 0, 0]), allow, "the program's own");
    }

    #[test]
    fn standard_output_and_error_are_notified_but_for_data() {
        let prog = build(RANGE, false).expect("filter builds");
        let (notif, allow) = (libc::SECCOMP_RET_USER_NOTIF, libc::SECCOMP_RET_ALLOW);
        for fd in [1u64, 2] {
            for nr in
                [libc::SYS_pwrite64, libc::SYS_lseek, libc::SYS_ftruncate, libc::SYS_fstatfs, libc::SYS_fsync]
            {
                assert_eq!(run(&prog, nr, [fd, 0, 0, 0, 0, 0]), notif, "{nr} on {fd}");
            }
            let fcntl = |cmd: i32| run(&prog, libc::SYS_fcntl, [fd, cmd as u64, 10, 0, 0, 0]);
            assert_eq!(fcntl(libc::F_GETFL), notif);
            assert_eq!(fcntl(libc::F_SETLK), notif);
            assert_eq!(fcntl(libc::F_DUPFD), allow, "a shell saving {fd}");
            assert_eq!(fcntl(libc::F_GETFD), allow);
            // What a pipe serves as the file would: the program's own pipelines cost nothing.
            for nr in [libc::SYS_read, libc::SYS_write, libc::SYS_writev, libc::SYS_dup, libc::SYS_dup3] {
                assert_eq!(run(&prog, nr, [fd, 0, 10, 0, 0, 0]), allow, "{nr} on {fd}");
            }
            assert_eq!(run(&prog, libc::SYS_ioctl, [fd, libc::TCGETS, 0, 0, 0, 0]), allow, "isatty({fd})");
            let empty = libc::AT_EMPTY_PATH as u64;
            assert_eq!(run(&prog, libc::SYS_newfstatat, [fd, 0, 0, empty, 0, 0]), notif, "fstat({fd})");
            assert_eq!(run(&prog, libc::SYS_sendfile, [fd, 5, 0, 10, 0, 0]), allow, "sendfile to {fd}");
        }
        // Other numbers below the range stay the kernel's.
        for fd in [0u64, 3, 4095] {
            assert_eq!(run(&prog, libc::SYS_lseek, [fd, 0, 0, 0, 0, 0]), allow, "lseek on {fd}");
            let empty = libc::AT_EMPTY_PATH as u64;
            assert_eq!(run(&prog, libc::SYS_newfstatat, [fd, 0, 0, empty, 0, 0]), allow, "fstat({fd})");
        }
    }

    #[test]
    fn range_membership() {
        assert!(RANGE.contains(4096));
        assert!(RANGE.contains(8191));
        assert!(!RANGE.contains(8192));
        assert!(!RANGE.contains(3));
        // AT_FDCWD (-100) as a 64-bit argument: the low 32 bits are far above the range.
        assert!(!RANGE.contains(libc::AT_FDCWD as i64 as u64));
        // Upper bits are ignored, as the kernel ignores them for an int argument.
        assert!(RANGE.contains((1u64 << 32) | 5000));
    }
}
