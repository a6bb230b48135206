//! Setting the clock: clock_settime, settimeofday, adjtimex and clock_adjtime that change something are
//! executed at home, which fails them the way home does (EPERM without CAP_SYS_TIME there). Reading the
//! clocks never costs a notification (see `crate::clock`).

use super::{simple, Action, Call, Outcome};
use crate::memory;
use homeward_proto::pb::{self, call_request::Op};
use homeward_proto::Errno;

pub async fn serve(call: &Call<'_>, nr: i64) -> Option<Outcome> {
    Some(match nr {
        libc::SYS_clock_settime => {
            let ts: libc::timespec = match memory::read_pod(call.tid, call.arg(1)) {
                Ok(ts) => ts,
                Err(e) => return Some(Err(e)),
            };
            set(call, call.arg_i32(0), ts.tv_sec, ts.tv_nsec).await
        }
        libc::SYS_settimeofday => {
            if call.arg(0) == 0 {
                // Only the (obsolete) kernel timezone: this machine's business.
                return Some(Ok(Action::Continue));
            }
            let tv: libc::timeval = match memory::read_pod(call.tid, call.arg(0)) {
                Ok(tv) => tv,
                Err(e) => return Some(Err(e)),
            };
            if !(0..1_000_000).contains(&tv.tv_usec) {
                return Some(Err(Errno::EINVAL));
            }
            set(call, libc::CLOCK_REALTIME, tv.tv_sec, tv.tv_usec * 1000).await
        }
        libc::SYS_adjtimex => adjtime(call, libc::CLOCK_REALTIME, 0).await,
        libc::SYS_clock_gettime => read_wall_clock(call),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_gettimeofday => gettimeofday(call),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_time => time(call),
        libc::SYS_clock_adjtime => adjtime(call, call.arg_i32(0), 1).await,
        _ => return None,
    })
}

async fn set(call: &Call<'_>, clock: i32, sec: i64, nsec: i64) -> Outcome {
    simple(call, Op::SetClock(pb::SetClock { clock, sec, nsec })).await
}

async fn adjtime(call: &Call<'_>, clock: i32, tx_arg: usize) -> Outcome {
    let tx: libc::timex = memory::read_pod(call.tid, call.arg(tx_arg))?;
    if tx.modes == 0 {
        // A pure query of the clock's discipline state.
        return Ok(Action::Continue);
    }
    let op = pb::Adjtime {
        clock,
        modes: tx.modes,
        offset: tx.offset,
        freq: tx.freq,
        maxerror: tx.maxerror,
        esterror: tx.esterror,
        status: tx.status,
        constant: tx.constant,
        tick: tx.tick,
        time_sec: tx.time.tv_sec,
        time_usec: tx.time.tv_usec,
    };
    simple(call, Op::Adjtime(op)).await
}

/// This machine's `clock` plus home's offset, in ns; `None` when the clocks agree (the kernel answers).
fn home_wall_ns(call: &Call<'_>, clock: libc::clockid_t) -> Option<i64> {
    let offset = call.sup.wall_clock_offset();
    (offset != 0).then(|| crate::sys::clock_ns(clock).saturating_add(offset))
}

/// clock_gettime of a wall clock (the filter notifies only CLOCK_REALTIME, _COARSE and TAI).
fn read_wall_clock(call: &Call<'_>) -> Outcome {
    let Some(ns) = home_wall_ns(call, call.arg_i32(0)) else { return Ok(Action::Continue) };
    let ts = libc::timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) };
    memory::write_pod(call.tid, call.arg(1), &ts)?;
    Ok(Action::Value(0))
}

#[cfg(target_arch = "x86_64")]
fn gettimeofday(call: &Call<'_>) -> Outcome {
    let Some(ns) = home_wall_ns(call, libc::CLOCK_REALTIME) else { return Ok(Action::Continue) };
    if call.arg(0) != 0 {
        let tv = libc::timeval {
            tv_sec: ns.div_euclid(1_000_000_000),
            tv_usec: ns.rem_euclid(1_000_000_000) / 1000,
        };
        memory::write_pod(call.tid, call.arg(0), &tv)?;
    }
    if call.arg(1) != 0 {
        // The kernel's timezone is UTC on any system that keeps its clock in UTC (the norm).
        memory::write_bytes(call.tid, call.arg(1), &[0u8; 8])?;
    }
    Ok(Action::Value(0))
}

#[cfg(target_arch = "x86_64")]
fn time(call: &Call<'_>) -> Outcome {
    let Some(ns) = home_wall_ns(call, libc::CLOCK_REALTIME) else { return Ok(Action::Continue) };
    let secs = ns.div_euclid(1_000_000_000);
    if call.arg(0) != 0 {
        memory::write_pod(call.tid, call.arg(0), &secs)?;
    }
    Ok(Action::Value(secs))
}
