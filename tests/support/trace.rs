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

/// Where each call `call` whose first absolute path argument is `path` ran (`home`, `local`), in the order
/// of the calls.
pub fn trace_wheres(trace: &Path, call: &str, path: &Path) -> Vec<String> {
    let path = path.to_str().expect("a UTF-8 path");
    trace_lines(trace)
        .iter()
        .filter(|l| l["call"] == call)
        .filter(|l| {
            let args = l["args"].as_array();
            args.and_then(|a| a.iter().filter_map(|v| v.as_str()).find(|s| s.starts_with('/'))) == Some(path)
        })
        .map(|l| l["where"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The descriptor the first successful `openat` of `name` returned (the path is `name` or ends in
/// `/name`), with open flags `flags` when given, as the trace spells them (`O_RDONLY|O_CLOEXEC`).
pub fn trace_opened(lines: &[serde_json::Value], name: &str, flags: Option<&str>) -> i64 {
    let names = |p: &str| p == name || p.ends_with(&format!("/{name}"));
    lines
        .iter()
        .filter(|l| l["call"] == "openat" && l["args"][1].as_str().is_some_and(names))
        .filter(|l| flags.is_none_or(|f| l["args"][2] == f))
        .find_map(|l| l["result"].as_i64().filter(|&fd| fd >= 0))
        .unwrap_or_else(|| panic!("no open of {name} in the trace"))
}
