//! Helpers shared by the deputy tests.

/// Whether process `pid` blocks some signal: a deputy does once set up, and before that a signal would kill
/// it rather than be forwarded.
pub fn blocks_signals(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let blocked = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).unwrap().trim();
    u64::from_str_radix(blocked, 16).unwrap() != 0
}
