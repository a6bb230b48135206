//! Home's clocks: reading, setting and adjusting them for the job.

use homeward_proto::Errno;

fn ret(r: libc::c_int) -> Result<i64, Errno> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(i64::from(r))
    }
}

/// `clock_gettime(clock)` in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> Result<i64, Errno> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    ret(unsafe { libc::clock_gettime(clock, &mut ts) })?;
    Ok(ts.tv_sec.saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec))
}

/// `clock_settime(clock, {sec, nsec})`.
pub fn clock_settime(clock: libc::clockid_t, sec: i64, nsec: i64) -> Result<i64, Errno> {
    let ts = libc::timespec { tv_sec: sec, tv_nsec: nsec };
    // SAFETY: `ts` is a valid timespec that the kernel only reads.
    ret(unsafe { libc::clock_settime(clock, &ts) })
}

/// `clock_adjtime(clock, tx)`: returns the clock state (TIME_OK, ...) or the errno.
pub fn clock_adjtime(clock: libc::clockid_t, tx: &mut libc::timex) -> Result<i64, Errno> {
    // SAFETY: `tx` is a valid, writable timex for the call's duration.
    ret(unsafe { libc::clock_adjtime(clock, tx) })
}

/// An all-zero `timex` to fill in.
pub fn zeroed_timex() -> libc::timex {
    // SAFETY: `timex` is a C struct of integers (and padding); all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}
