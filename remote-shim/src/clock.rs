//! Home's clocks as the job sees them.
//!
//! remote-shim estimates the offset between home's clocks and this machine's the way Cristian's algorithm
//! does: it reads its own clocks, asks home for its clocks, reads its own again, and takes home's reading to
//! be simultaneous with the midpoint. Of several samples the one with the shortest round trip wins, and half
//! that round trip is the error bound (shown at debug level). The estimate is refreshed periodically.
//!
//! CLOCK_MONOTONIC and CLOCK_BOOTTIME: when home's differ from this machine's by more than the error bound,
//! and remote-shim may create a time namespace (root), the job runs in a time namespace whose offsets make
//! both clocks continue home's, also through the vDSO, and absolute sleeps and timers agree with them.
//! CLOCK_REALTIME has no namespace: when home's wall clock differs from this machine's beyond the error bound
//! (or 50 ms), the job's wall-clock reads are routed through the supervisor (see `crate::vdso`) and answered
//! with this machine's clock plus the offset, which only changes by refreshes that never step it backwards
//! by more than the change of the estimate.

use crate::client::HomeLink;
use homeward_proto::pb::{self, call_request::Op};
use std::time::Duration;

/// Offsets (home minus this machine) of the three clocks, in nanoseconds, and the error bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offsets {
    pub realtime_ns: i64,
    pub monotonic_ns: i64,
    pub boottime_ns: i64,
    pub error_ns: i64,
}

/// Samples taken per estimate.
const SAMPLES: usize = 8;

/// How often the estimate is refreshed while the job runs.
pub const REFRESH: Duration = Duration::from_secs(30);

fn local_now() -> [i64; 3] {
    [
        crate::sys::clock_ns(libc::CLOCK_REALTIME),
        crate::sys::clock_ns(libc::CLOCK_MONOTONIC),
        crate::sys::clock_ns(libc::CLOCK_BOOTTIME),
    ]
}

/// Estimates the offsets over `link`; `None` if home did not answer.
pub async fn estimate(link: &HomeLink) -> Option<Offsets> {
    let housekeeping = pb::Proc { id: 0, parent: 0 };
    let mut best: Option<Offsets> = None;
    for _ in 0..SAMPLES {
        let before = local_now();
        let reply = link.call(housekeeping, Op::ClockRead(pb::ClockRead {})).await.ok()?;
        let after = local_now();
        let Some(sample) = sample(before, &reply.clock?, after) else {
            tracing::warn!("home's clock reading is out of range: ignored");
            continue;
        };
        if best.is_none_or(|b| sample.error_ns < b.error_ns) {
            best = Some(sample);
        }
    }
    if let Some(b) = best {
        tracing::debug!(
            realtime_offset_ns = b.realtime_ns,
            monotonic_offset_ns = b.monotonic_ns,
            boottime_offset_ns = b.boottime_ns,
            error_bound_ns = b.error_ns,
            "home clock offset estimated"
        );
    }
    best
}

/// One sample: home's reading taken as simultaneous with the midpoint of this machine's readings `before`
/// and `after`. `None` for a reading no clock gives (negative: a corrupted or hostile reply), which would
/// make the offsets overflow.
fn sample(before: [i64; 3], home: &pb::ClockReading, after: [i64; 3]) -> Option<Offsets> {
    let home = [home.realtime_ns, home.monotonic_ns, home.boottime_ns];
    if home.iter().chain(&before).chain(&after).any(|&ns| ns < 0) {
        return None;
    }
    // Non-negative values: differences and halves cannot overflow.
    let mid = |i: usize| before[i] + (after[i] - before[i]) / 2;
    Some(Offsets {
        realtime_ns: home[0] - mid(0),
        monotonic_ns: home[1] - mid(1),
        boottime_ns: home[2] - mid(2),
        error_ns: (after[1] - before[1]) / 2,
    })
}

/// The wall-clock offset to apply to the job's reads, or 0 when the clocks agree within the error bound (or
/// 50 ms). `HOMEWARD_TEST_HOME_CLOCK_SKEW_NS` adds a pretended skew of home's wall clock (a test hook: on one
/// machine, home's and the remote's wall clocks cannot really differ).
pub fn wall_clock_offset(o: &Offsets) -> i64 {
    let skew: i64 =
        std::env::var("HOMEWARD_TEST_HOME_CLOCK_SKEW_NS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let offset = o.realtime_ns.saturating_add(skew);
    if offset.unsigned_abs() <= o.error_ns.max(50_000_000).unsigned_abs() {
        0
    } else {
        offset
    }
}

/// The time namespace offsets (absolute, as `/proc/PID/timens_offsets` takes them) that make the job's
/// monotonic and boot clocks read home's; `None` when the clocks already agree within the error bound
/// (or a tenth of a second, whichever is larger).
pub fn namespace_offsets(o: &Offsets) -> Option<(i64, i64)> {
    let tolerance = o.error_ns.max(100_000_000);
    if o.monotonic_ns.unsigned_abs() <= tolerance.unsigned_abs()
        && o.boottime_ns.unsigned_abs() <= tolerance.unsigned_abs()
    {
        return None;
    }
    // We may ourselves be in a time namespace: offsets are relative to the host's clocks.
    let (own_mono, own_boot) = own_namespace_offsets();
    Some((o.monotonic_ns.saturating_add(own_mono), o.boottime_ns.saturating_add(own_boot)))
}

/// This process's own time namespace offsets (0, 0 in the initial namespace).
fn own_namespace_offsets() -> (i64, i64) {
    let text = std::fs::read_to_string("/proc/self/timens_offsets").unwrap_or_default();
    let get = |name: &str| {
        text.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                let first = f.next()?;
                if first != name && first != if name == "monotonic" { "1" } else { "7" } {
                    return None;
                }
                let sec: i64 = f.next()?.parse().ok()?;
                let nsec: i64 = f.next()?.parse().ok()?;
                sec.checked_mul(1_000_000_000)?.checked_add(nsec)
            })
            .unwrap_or(0)
    };
    (get("monotonic"), get("boottime"))
}

/// The text to write into `/proc/self/timens_offsets` for these offsets.
pub fn offsets_text(mono_ns: i64, boot_ns: i64) -> String {
    let split = |ns: i64| (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
    let (ms, mn) = split(mono_ns);
    let (bs, bn) = split(boot_ns);
    format!("monotonic {ms} {mn}\nboottime {bs} {bn}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_text_keeps_nanoseconds_positive() {
        assert_eq!(offsets_text(-1_500_000_000, 2_000_000_001), "monotonic -2 500000000\nboottime 2 1\n");
    }

    #[test]
    fn agreeing_clocks_need_no_namespace() {
        let o = Offsets { realtime_ns: 5, monotonic_ns: 1_000, boottime_ns: -1_000, error_ns: 20_000 };
        assert_eq!(namespace_offsets(&o), None);
    }

    #[test]
    fn out_of_range_readings_are_ignored_not_overflowed() {
        let reading = |ns: i64| pb::ClockReading { realtime_ns: ns, monotonic_ns: ns, boottime_ns: ns };
        let (before, after) = ([100; 3], [300; 3]);
        let s = sample(before, &reading(1_000), after).unwrap();
        assert_eq!((s.realtime_ns, s.monotonic_ns, s.error_ns), (800, 800, 100));
        assert_eq!(sample(before, &reading(i64::MIN), after), None);
        assert_eq!(sample(before, &reading(-1), after), None);
        let s = sample([0; 3], &reading(i64::MAX), [i64::MAX; 3]).unwrap();
        assert_eq!(s.realtime_ns, i64::MAX - i64::MAX / 2);
        let extreme =
            Offsets { realtime_ns: i64::MIN, monotonic_ns: i64::MIN, boottime_ns: i64::MAX, error_ns: 0 };
        assert_eq!(wall_clock_offset(&extreme), i64::MIN);
        assert!(namespace_offsets(&extreme).is_some());
    }
}
