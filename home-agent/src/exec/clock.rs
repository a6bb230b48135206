//! ClockRead, SetClock, Adjtime: home's clocks for the job.

use super::{done, Res};
use crate::sys;
use homeward_proto::pb::{self, ClockReading};
use homeward_proto::Errno;

pub fn read() -> Res {
    let clock = ClockReading {
        realtime_ns: sys::clock_ns(libc::CLOCK_REALTIME)?,
        monotonic_ns: sys::clock_ns(libc::CLOCK_MONOTONIC)?,
        boottime_ns: sys::clock_ns(libc::CLOCK_BOOTTIME)?,
    };
    Ok(pb::CallReply { clock: Some(clock), ..super::value(0) })
}

pub fn set(o: &pb::SetClock) -> Res {
    if !(0..1_000_000_000).contains(&o.nsec) {
        return Err(Errno::EINVAL);
    }
    done(sys::clock_settime(o.clock, o.sec, o.nsec)?)
}

pub fn adjtime(o: &pb::Adjtime) -> Res {
    let mut tx = sys::zeroed_timex();
    tx.modes = o.modes;
    tx.offset = o.offset;
    tx.freq = o.freq;
    tx.maxerror = o.maxerror;
    tx.esterror = o.esterror;
    tx.status = o.status;
    tx.constant = o.constant;
    tx.tick = o.tick;
    tx.time.tv_sec = o.time_sec;
    tx.time.tv_usec = o.time_usec;
    done(sys::clock_adjtime(o.clock, &mut tx)?)
}
