//! The job's limit on open files (`RLIMIT_NOFILE`) as each of its processes sees it.
//!
//! Placeholders are installed in the reserved range (see `fdtable`), and `SECCOMP_IOCTL_NOTIF_ADDFD` fails
//! beyond the soft limit, so the kernel's limits of every process of the job stay at or above the range's
//! end. The program sees a *virtual* limit instead (`syscalls::rlimit` answers and applies it): at first the
//! limits remote-shim itself was started with, then what the program sets. Like the kernel's, it belongs to a
//! process (its threads share it), is inherited at fork and kept across exec.
//!
//! A process takes its virtual limit when the supervisor first asks for it: its own once it set one, else
//! that of its nearest ancestor (by `/proc` parents) that has one, else the initial one. So that a process
//! forked before its parent changed the limit keeps the old one, a process that sets a limit, or ends
//! (`exit_group`), first gives its current one to its children that have none yet. Until some process sets
//! a limit every process has the initial one and nothing is looked up.
//!
//! While a process's virtual soft limit is below the range's end, a call that would give it a new
//! descriptor fails with `EMFILE` where the kernel would refuse it natively: when the lowest free number,
//! counting its home files at the lowest numbers they would have had natively, is at or above the soft
//! limit ([`Limits::has_room`]).

use crate::filter::FdRange;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// `RLIMIT_NOFILE`'s soft and hard values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nofile {
    pub soft: u64,
    pub hard: u64,
}

/// The virtual limits of the job's processes.
pub struct Limits {
    /// What the program would have had natively: remote-shim's own limits when it started.
    initial: Nofile,
    range: FdRange,
    /// Whether some process has set a limit (until then, every process has the initial one).
    any_set: AtomicBool,
    /// By thread group (this machine's pid): limits set, inherited from a process that set one, or looked
    /// up since some process set one.
    by_tgid: Mutex<HashMap<u32, Nofile>>,
}

impl Limits {
    pub fn new(initial: Nofile, range: FdRange) -> Limits {
        Limits { initial, range, any_set: AtomicBool::new(false), by_tgid: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Nofile>> {
        self.by_tgid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The virtual limit of thread group `tgid`.
    pub fn of(&self, tgid: u32) -> Nofile {
        if !self.any_set.load(Ordering::SeqCst) {
            return self.initial;
        }
        self.resolve(&mut self.lock(), tgid)
    }

    fn resolve(&self, map: &mut HashMap<u32, Nofile>, tgid: u32) -> Nofile {
        if let Some(v) = map.get(&tgid) {
            return *v;
        }
        let v = self.inherited(map, tgid);
        map.insert(tgid, v);
        v
    }

    /// The limit of the nearest ancestor of `tgid` that has one; the initial limit when none has (the
    /// search stops at the job's init or remote-shim).
    fn inherited(&self, map: &HashMap<u32, Nofile>, tgid: u32) -> Nofile {
        let me = std::process::id();
        let mut pid = tgid;
        for _ in 0..64 {
            match status_field(pid, "PPid:") {
                Some(ppid) if ppid > 1 && ppid != me => {
                    if let Some(v) = map.get(&ppid) {
                        return *v;
                    }
                    pid = ppid;
                }
                _ => break,
            }
        }
        self.initial
    }

    /// Thread group `tgid` sets its limit to `new` (already checked, and applied to the kernel).
    pub fn set(&self, tgid: u32, new: Nofile) {
        let mut map = self.lock();
        self.any_set.store(true, Ordering::SeqCst);
        let old = self.resolve(&mut map, tgid);
        for child in children(tgid) {
            map.entry(child).or_insert(old);
        }
        map.insert(tgid, new);
    }

    /// A process is ending (`exit_group` of its thread `tid`): its children that have no limit of their own
    /// yet keep its limit once they are orphans, and its number is forgotten (it may soon be another's).
    pub fn ending(&self, tid: u32) {
        if !self.any_set.load(Ordering::SeqCst) {
            return;
        }
        let Some(tgid) = status_field(tid, "Tgid:") else { return };
        let mut map = self.lock();
        let v = self.resolve(&mut map, tgid);
        if v != self.initial {
            for child in children(tgid) {
                map.entry(child).or_insert(v);
            }
        }
        map.remove(&tgid);
    }

    /// Forgets processes that no longer run.
    pub fn reap(&self) {
        if self.any_set.load(Ordering::SeqCst) {
            self.lock().retain(|tgid, _| crate::procs::alive(*tgid));
        }
    }

    /// The kernel's limits for virtual limits `v`: never below the end of the reserved range.
    pub fn kernel(&self, v: Nofile) -> Nofile {
        let end = u64::from(self.range.end());
        Nofile { soft: v.soft.max(end), hard: v.hard.max(end) }
    }

    /// Whether some process may have a soft limit below the range's end (only then are new descriptors
    /// counted).
    pub fn may_refuse(&self) -> bool {
        self.any_set.load(Ordering::SeqCst) || self.initial.soft < u64::from(self.range.end())
    }

    /// The virtual soft limit of thread group `tgid` when it is below the range's end.
    pub fn refusing_soft(&self, tgid: u32) -> Option<u64> {
        if !self.may_refuse() {
            return None;
        }
        Some(self.of(tgid).soft).filter(|soft| *soft < u64::from(self.range.end()))
    }

    /// Whether thread `tid` of thread group `tgid` could natively get a new descriptor numbered `min` or
    /// more under its virtual soft limit.
    pub fn has_room(&self, tid: u32, tgid: u32, min: u64) -> bool {
        let Some(soft) = self.refusing_soft(tgid) else { return true };
        // With `count` descriptors open, one of `min..=min + count` is free: most calls stop here, on one
        // stat (Linux 6.2 and later give the count as the size of `/proc/TID/fd`; earlier ones say 0).
        let count = std::fs::metadata(format!("/proc/{tid}/fd")).map_or(0, |m| m.len());
        if count > 0 && min.saturating_add(count) < soft {
            return true;
        }
        native_lowest_free(tid, self.range, min) < soft
    }
}

/// The lowest descriptor number ≥ `min` that thread `tid` would find free natively: its descriptors outside
/// the reserved range keep their numbers, those in it (home files) take the lowest free numbers, as they
/// would have taken natively.
pub fn native_lowest_free(tid: u32, range: FdRange, min: u64) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{tid}/fd")) else { return min };
    let mut fixed = Vec::new();
    let mut home = 0;
    for n in dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok()) {
        if range.contains(n) {
            home += 1;
        } else {
            fixed.push(n);
        }
    }
    fixed.sort_unstable();
    lowest_free(&fixed, home, min)
}

/// The lowest number ≥ `min` free in a table holding the numbers `fixed` (sorted) and `home` more at the
/// lowest numbers `fixed` leaves free.
fn lowest_free(fixed: &[u64], mut home: usize, min: u64) -> u64 {
    let mut fixed = fixed.iter().copied().peekable();
    let mut n = 0u64;
    loop {
        while fixed.next_if(|&f| f < n).is_some() {}
        let taken = fixed.peek() == Some(&n)
            || home > 0 && {
                home -= 1;
                true
            };
        if !taken && n >= min {
            return n;
        }
        n += 1;
    }
}

/// The children of every thread of process `tgid`.
fn children(tgid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{tgid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// A numeric field of `/proc/PID/status` (the first number on its line).
fn status_field(pid: u32, name: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(name))?.split_whitespace().next()?.parse().ok()
}

/// The thread group of task `tid` (this machine's ids).
pub fn tgid_of_task(tid: u32) -> Option<u32> {
    status_field(tid, "Tgid:")
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: FdRange = FdRange { base: 4096, span: 4096 };

    #[test]
    fn home_files_count_at_the_numbers_they_would_have_had() {
        // stdin, stdout, stderr and three home files: natively 3, 4, 5; the next is 6.
        assert_eq!(lowest_free(&[0, 1, 2], 3, 0), 6);
        // Holes are filled first, as the kernel fills them.
        assert_eq!(lowest_free(&[0, 2, 5], 2, 0), 4);
        assert_eq!(lowest_free(&[0, 2, 5], 0, 0), 1);
        // F_DUPFD's minimum.
        assert_eq!(lowest_free(&[0, 1, 2], 1, 10), 10);
        assert_eq!(lowest_free(&[0, 1, 2, 10, 11], 0, 10), 12);
        assert_eq!(lowest_free(&[], 0, 0), 0);
    }

    #[test]
    fn kernel_limits_never_drop_below_the_range() {
        let l = Limits::new(Nofile { soft: 1024, hard: 20000 }, RANGE);
        assert_eq!(l.kernel(Nofile { soft: 256, hard: 256 }), Nofile { soft: 8192, hard: 8192 });
        assert_eq!(l.kernel(Nofile { soft: 256, hard: 10000 }), Nofile { soft: 8192, hard: 10000 });
        assert_eq!(l.kernel(Nofile { soft: 9000, hard: 10000 }), Nofile { soft: 9000, hard: 10000 });
    }

    #[test]
    fn counting_starts_only_below_the_range_end() {
        let high = Limits::new(Nofile { soft: 20000, hard: 20000 }, RANGE);
        assert!(!high.may_refuse());
        assert_eq!(high.refusing_soft(1), None);
        let low = Limits::new(Nofile { soft: 1024, hard: 20000 }, RANGE);
        assert!(low.may_refuse());
        assert_eq!(low.refusing_soft(std::process::id()), Some(1024));
    }

    #[test]
    fn a_limit_set_is_kept_and_others_keep_the_initial_one() {
        let initial = Nofile { soft: 20000, hard: 20000 };
        let l = Limits::new(initial, RANGE);
        let me = std::process::id();
        // This test process is no child of another entry: unknown pids resolve to the initial limit.
        assert_eq!(l.of(me), initial);
        let low = Nofile { soft: 64, hard: 64 };
        l.set(me, low);
        assert_eq!(l.of(me), low);
        assert_eq!(l.refusing_soft(me), Some(64));
        assert_eq!(l.of(u32::MAX - 1), initial);
    }
}
