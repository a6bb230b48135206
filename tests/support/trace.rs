//! Reading remote-shim's `--trace` files.

use std::path::Path;

/// The JSON lines of a `--trace` file, in the order the calls were intercepted (`seq`).
pub fn trace_lines(trace: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(trace).unwrap_or_else(|e| panic!("reading {}: {e}", trace.display()));
    let mut lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("a JSON trace line")).collect();
    lines.sort_by_key(|l| l["seq"].as_u64());
    lines
}
