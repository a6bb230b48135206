//! `--trace FILE` and `--stats`: every intercepted call as a JSON line, and a summary table at exit.
//!
//! A trace line: `{"seq": order of interception (lines of concurrent calls may be written out of order; a
//! thread's calls have increasing seq), "t": seconds since start, "pid", "tid" (local), "home_pid" (the deputy's, once known),
//! "call", "args" (decoded: paths, flags by name, sizes), "result" (value, or null when the local kernel
//! ran the call), "errno" (name or null), "where" ("home" or "local"), "us" (duration), "rtt" (round trips
//! to home it cost)}.

pub mod decode;
pub mod diff;

use crate::syscalls::Cost;
use homeward_proto::Errno;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a call ended, as the trace shows it.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    Value(i64),
    Errno(Errno),
    /// Left to the local kernel (its result is not seen by the supervisor).
    Local,
}

#[derive(Default)]
struct CallStats {
    count: u64,
    home: u64,
    local: u64,
    errors: u64,
    round_trips: u64,
    /// Calls sent home without waiting (write-behind).
    behind: u64,
    bytes: u64,
    /// Time waiting on home per forwarded call, in µs.
    waits: Vec<u64>,
}

pub struct Tracer {
    start: Instant,
    out: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
    stats: Option<Mutex<BTreeMap<String, CallStats>>>,
    unhandled: Mutex<BTreeMap<String, u64>>,
    /// Round trips and bytes of work no call waited for (background fills).
    background: Mutex<(u64, u64)>,
}

/// Identity of the calling thread for a trace line.
pub struct Who {
    pub pid: u32,
    pub tid: u32,
    pub home_pid: Option<i32>,
}

impl Tracer {
    pub fn new(trace: Option<&std::path::Path>, stats: bool) -> std::io::Result<Tracer> {
        let out = match trace {
            Some(p) => Some(Mutex::new(std::io::BufWriter::new(std::fs::File::create(p)?))),
            None => None,
        };
        Ok(Tracer {
            start: Instant::now(),
            out,
            stats: stats.then(Mutex::default),
            unhandled: Mutex::default(),
            background: Mutex::default(),
        })
    }

    /// Whether a trace file is written (arguments are decoded only then).
    pub fn traces(&self) -> bool {
        self.out.is_some()
    }

    /// Counts round trips made for no call in particular (a background fill).
    pub fn background(&self, round_trips: u64, bytes: u64) {
        let mut b = self.background.lock().unwrap_or_else(|p| p.into_inner());
        b.0 += round_trips;
        b.1 += bytes;
    }

    pub fn unhandled(&self, nr: i64) {
        *self.unhandled.lock().unwrap_or_else(|p| p.into_inner()).entry(decode::name(nr)).or_default() += 1;
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        order: u64,
        who: Who,
        nr: i64,
        args: Value,
        ending: Ending,
        took: Duration,
        cost: Cost,
    ) {
        let name = decode::name(nr);
        let home = cost.round_trips > 0 || cost.behind > 0;
        if let Some(stats) = &self.stats {
            let mut stats = stats.lock().unwrap_or_else(|p| p.into_inner());
            let s = stats.entry(name.clone()).or_default();
            s.count += 1;
            if home {
                s.home += 1;
                s.waits.push(cost.wait_ns / 1000);
            } else {
                s.local += 1;
            }
            if matches!(ending, Ending::Errno(_)) {
                s.errors += 1;
            }
            s.round_trips += u64::from(cost.round_trips);
            s.behind += u64::from(cost.behind);
            s.bytes += cost.bytes;
        }
        if let Some(out) = &self.out {
            let (result, errno) = match ending {
                Ending::Value(v) => (json!(v), Value::Null),
                Ending::Errno(e) => (json!(-1), json!(e.name())),
                Ending::Local => (Value::Null, Value::Null),
            };
            let line = json!({
                "seq": order,
                "t": (self.start.elapsed().as_secs_f64() * 1e6).round() / 1e6,
                "pid": who.pid,
                "tid": who.tid,
                "home_pid": who.home_pid,
                "call": name,
                "args": args,
                "result": result,
                "errno": errno,
                "where": if home { "home" } else { "local" },
                "us": took.as_micros() as u64,
                "rtt": cost.round_trips,
                "behind": cost.behind,
            });
            let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(out, "{line}");
        }
    }

    /// Flushes the trace file.
    pub fn finish(&self) {
        if let Some(out) = &self.out {
            let _ = out.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
    }

    /// The `--stats` table, like `strace -c`.
    pub fn report(&self) -> Option<String> {
        let stats = self.stats.as_ref()?.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<(&String, &CallStats)> = stats.iter().collect();
        rows.sort_by_key(|(_, s)| std::cmp::Reverse(s.waits.iter().sum::<u64>()));
        let mut out = String::new();
        out.push_str("remote-shim --stats: intercepted calls\n");
        out.push_str(&format!(
            "{:<18} {:>8} {:>8} {:>8} {:>7} {:>10} {:>8} {:>8} {:>12}\n",
            "call", "calls", "home", "local", "errors", "wait ms", "p50 us", "p99 us", "bytes"
        ));
        let (mut t_calls, mut t_home, mut t_local, mut t_err, mut t_wait, mut t_bytes, mut t_rtt) =
            (0, 0, 0, 0, 0u64, 0, 0);
        let mut t_behind = 0;
        for (name, s) in rows {
            let mut w = s.waits.clone();
            w.sort_unstable();
            let pct = |p: f64| if w.is_empty() { 0 } else { w[((w.len() - 1) as f64 * p).round() as usize] };
            let wait: u64 = w.iter().sum();
            out.push_str(&format!(
                "{:<18} {:>8} {:>8} {:>8} {:>7} {:>10.1} {:>8} {:>8} {:>12}\n",
                name,
                s.count,
                s.home,
                s.local,
                s.errors,
                wait as f64 / 1000.0,
                pct(0.5),
                pct(0.99),
                s.bytes
            ));
            t_calls += s.count;
            t_home += s.home;
            t_local += s.local;
            t_err += s.errors;
            t_wait += wait;
            t_bytes += s.bytes;
            t_rtt += s.round_trips;
            t_behind += s.behind;
        }
        out.push_str(&format!(
            "{:<18} {:>8} {:>8} {:>8} {:>7} {:>10.1} {:>8} {:>8} {:>12}\n",
            "total",
            t_calls,
            t_home,
            t_local,
            t_err,
            t_wait as f64 / 1000.0,
            "",
            "",
            t_bytes
        ));
        let (bg_rtt, bg_bytes) = *self.background.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str(&format!("round trips to home: {}\n", t_rtt + bg_rtt));
        if bg_rtt > 0 {
            out.push_str(&format!("  of which by readahead: {bg_rtt} ({bg_bytes} bytes)\n"));
        }
        if t_behind > 0 {
            out.push_str(&format!("calls sent behind (no wait): {t_behind}\n"));
        }
        let mut families: BTreeMap<&str, (u64, u64, u64, u64, u64)> = BTreeMap::new();
        for (name, s) in stats.iter() {
            let f = families.entry(decode::family(name)).or_default();
            f.0 += s.count;
            f.1 += s.home;
            f.2 += s.local;
            f.3 += s.waits.iter().sum::<u64>();
            f.4 += s.bytes;
        }
        out.push_str(&format!(
            "{:<18} {:>8} {:>8} {:>8} {:>10} {:>12}\n",
            "by family", "calls", "home", "local", "wait ms", "bytes"
        ));
        for (family, (calls, home, local, wait, bytes)) in families {
            out.push_str(&format!(
                "{:<18} {:>8} {:>8} {:>8} {:>10.1} {:>12}\n",
                family,
                calls,
                home,
                local,
                wait as f64 / 1000.0,
                bytes
            ));
        }
        let unhandled = self.unhandled.lock().unwrap_or_else(|p| p.into_inner());
        if unhandled.is_empty() {
            out.push_str("intercepted calls not handled: none\n");
        } else {
            out.push_str("intercepted calls not handled (left to the local kernel):\n");
            for (name, n) in unhandled.iter() {
                out.push_str(&format!("  {name}: {n}\n"));
            }
        }
        Some(out)
    }
}
