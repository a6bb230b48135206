//! `trace-diff`: compares two `--trace` files (typically a baseline taken with `--home none` and a forwarded
//! run) process by process, after normalizing what legitimately differs between two runs: descriptor
//! numbers, addresses, pids, timestamps, durations, where a call ran and what it cost, and randomized temp
//! names. Stat buffers are never decoded, so inode and device numbers do not appear.

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One process's normalized calls, keyed by what it ran and its rank among processes that ran the same.
pub type Processes = BTreeMap<String, Vec<String>>;

/// Reads a trace (JSON lines) into normalized calls per process.
pub fn load(text: &str) -> Result<Processes, String> {
    // pid → (program key, calls); program = the last successful execve's path.
    let mut order: Vec<u32> = Vec::new();
    let mut calls: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut program: BTreeMap<u32, String> = BTreeMap::new();
    let mut lines: Vec<Value> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        lines.push(serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    lines.sort_by_key(|v| v["seq"].as_u64().unwrap_or(0));
    let names = exclusive_names(&lines);
    for (n, v) in lines.iter().enumerate() {
        let pid = v["pid"].as_u64().ok_or_else(|| format!("line {}: no pid", n + 1))? as u32;
        if !calls.contains_key(&pid) {
            order.push(pid);
        }
        let call = v["call"].as_str().unwrap_or("?");
        if (call == "execve" || call == "execveat") && v["errno"].is_null() {
            if let Some(p) = v["args"].get(if call == "execve" { 0 } else { 1 }).and_then(Value::as_str) {
                program.insert(pid, p.rsplit('/').next().unwrap_or(p).to_string());
            }
        }
        calls.entry(pid).or_default().push(normalize(v, &names));
    }
    let mut rank: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Processes::new();
    for pid in order {
        let name = program.get(&pid).cloned().unwrap_or_else(|| "(no exec)".into());
        let r = rank.entry(name.clone()).or_default();
        out.insert(format!("{name}#{r}"), calls.remove(&pid).unwrap_or_default());
        *r += 1;
    }
    Ok(out)
}

/// Calls whose result is a descriptor number, an address or a pid.
fn result_kind(call: &str) -> Option<&'static str> {
    match call {
        "open" | "openat" | "openat2" | "creat" | "dup" | "dup2" | "dup3" => Some("fd"),
        "mmap" => Some("addr"),
        "getpid" | "getppid" | "gettid" => Some("pid"),
        _ => None,
    }
}

/// `call(args) = result [errno]`, with run-specific values replaced.
pub fn normalize(v: &Value, names: &TempNames) -> String {
    let call = v["call"].as_str().unwrap_or("?");
    let args: Vec<String> = v["args"]
        .as_array()
        .map(|a| a.iter().map(|x| norm_arg(call, x, names)).collect())
        .unwrap_or_default();
    let result = match (&v["errno"], &v["result"]) {
        (Value::String(e), _) => e.clone(),
        (_, Value::Null) => "(local)".into(),
        (_, r) => match (result_kind(call), r.as_i64()) {
            (Some(kind), Some(n)) if n >= 0 => kind.to_string(),
            (_, Some(n)) if call == "fcntl" && n >= 3 => "fd".to_string(),
            _ => r.to_string(),
        },
    };
    format!("{call}({}) = {result}", args.join(", "))
}

fn norm_arg(call: &str, a: &Value, names: &TempNames) -> String {
    match a {
        Value::String(s) if s.starts_with('/') || s.contains('/') || call_has_path(call) => {
            norm_path(s, names)
        }
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(0);
            // Descriptors of home files live at 4096 and above; pids in kill-like calls vary per run.
            if n >= 1 << 32 || n <= -(1 << 32) {
                // An address passed as an integer (fcntl's struct flock, ioctl's argument).
                "ptr".into()
            } else if n >= 3 && matches!(call, "kill" | "tkill" | "tgkill" | "rt_sigqueueinfo") {
                "pid".into()
            } else if (4096..1 << 20).contains(&n) {
                "fd".into()
            } else {
                n.to_string()
            }
        }
        other => other.to_string(),
    }
}

fn call_has_path(call: &str) -> bool {
    !matches!(call, "fcntl" | "ioctl")
}

/// Replaces randomized parts of path components (what mkstemp, mktemp and tempfile make) with `<rand>`:
/// each dot-separated token of six or more letters and digits that mixes digits with letters, or has an
/// upper-case letter after its first character as well as lower-case ones. Ordinary names (`Makefile`,
/// `README`, `cdtor`) stay; a false positive only hides detail, as both traces are normalized alike.
fn norm_path(p: &str, names: &TempNames) -> String {
    p.split('/')
        .map(|c| match names.get(c) {
            Some(token) => token.clone(),
            None => c.split('.').map(norm_token).collect::<Vec<_>>().join("."),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Names of files the traced programs created exclusively (`O_CREAT|O_EXCL`, as mkstemp and tempfile do),
/// numbered in order of creation: `<tmp1>`, `<tmp2>`, ... Two runs that create their temp files in the same
/// order get the same tokens, whatever random names they drew.
pub type TempNames = std::collections::HashMap<String, String>;

fn exclusive_names(lines: &[Value]) -> TempNames {
    let mut names = TempNames::new();
    for v in lines {
        let (call, args) = (v["call"].as_str().unwrap_or(""), &v["args"]);
        let (path, flags) = match call {
            "openat" | "openat2" => (args.get(1), args.get(2)),
            "open" => (args.get(0), args.get(1)),
            _ => continue,
        };
        let (Some(Value::String(path)), Some(Value::String(flags))) = (path, flags) else { continue };
        if flags.contains("O_CREAT") && flags.contains("O_EXCL") && v["errno"].is_null() {
            let name = path.rsplit('/').next().unwrap_or(path).to_string();
            let next = format!("<tmp{}>", names.len() + 1);
            names.entry(name).or_insert(next);
        }
    }
    names
}

fn norm_token(t: &str) -> String {
    let alnum = t.chars().all(|c| c.is_ascii_alphanumeric());
    let digits = t.chars().any(|c| c.is_ascii_digit());
    let letters = t.chars().any(|c| c.is_ascii_alphabetic());
    let inner_upper = t.chars().skip(1).any(|c| c.is_ascii_uppercase());
    let lower = t.chars().any(|c| c.is_ascii_lowercase());
    if t.len() >= 6 && alnum && ((digits && letters) || (inner_upper && lower)) {
        "<rand>".into()
    } else {
        t.to_string()
    }
}

#[cfg(test)]
mod path_tests {
    use super::{norm_path, TempNames};

    fn norm(p: &str) -> String {
        norm_path(p, &TempNames::new())
    }

    #[test]
    fn temp_names() {
        assert_eq!(norm("/tmp/cc0VIjz6.o"), "/tmp/<rand>.o");
        assert_eq!(norm("repo/.git/tGigrUj"), "repo/.git/<rand>");
        assert_eq!(norm("/tmp/tmp.a1B2c3"), "/tmp/tmp.<rand>");
        assert_eq!(norm("/tmp/cckdltHs.cdtor.c"), "/tmp/<rand>.cdtor.c");
        assert_eq!(norm("README"), "README");
        assert_eq!(norm("src/Makefile"), "src/Makefile");
        assert_eq!(norm("/usr/lib/libc.so.6"), "/usr/lib/libc.so.6");
    }
}

/// One process's divergences: the first `limit` differing hunks.
#[derive(Debug, Clone)]
pub struct Divergence {
    pub process: String,
    /// (line index in the left trace of this process, removed lines, added lines).
    pub hunks: Vec<(usize, Vec<String>, Vec<String>)>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub processes: usize,
    pub equal: usize,
    pub calls: (usize, usize),
    pub only_left: Vec<String>,
    pub only_right: Vec<String>,
    pub divergences: Vec<Divergence>,
}

impl Report {
    pub fn equivalent(&self) -> bool {
        self.only_left.is_empty() && self.only_right.is_empty() && self.divergences.is_empty()
    }
}

/// Compares two traces process by process.
pub fn compare(left: &Processes, right: &Processes, limit: usize) -> Report {
    let mut r = Report::default();
    for (key, l) in left {
        r.calls.0 += l.len();
        let Some(rt) = right.get(key) else {
            r.only_left.push(key.clone());
            continue;
        };
        r.processes += 1;
        let ops = similar::capture_diff_slices(similar::Algorithm::Myers, l, rt);
        let mut hunks = Vec::new();
        for op in ops {
            let (tag, old, new) = (op.tag(), op.old_range(), op.new_range());
            if tag == similar::DiffTag::Equal {
                continue;
            }
            hunks.push((old.start, l[old].to_vec(), rt[new].to_vec()));
            if hunks.len() >= limit {
                break;
            }
        }
        if hunks.is_empty() {
            r.equal += 1;
        } else {
            r.divergences.push(Divergence { process: key.clone(), hunks });
        }
    }
    for (key, rt) in right {
        r.calls.1 += rt.len();
        if !left.contains_key(key) {
            r.only_right.push(key.clone());
        }
    }
    r
}

/// The readable report.
pub fn text(r: &Report, left: &str, right: &str) -> String {
    let mut s = String::new();
    for d in &r.divergences {
        s.push_str(&format!("process {}: diverges\n", d.process));
        for (at, removed, added) in &d.hunks {
            s.push_str(&format!("  at call {}:\n", at + 1));
            for x in removed {
                s.push_str(&format!("    - {x}\n"));
            }
            for x in added {
                s.push_str(&format!("    + {x}\n"));
            }
        }
    }
    for k in &r.only_left {
        s.push_str(&format!("process {k}: only in {left}\n"));
    }
    for k in &r.only_right {
        s.push_str(&format!("process {k}: only in {right}\n"));
    }
    s.push_str(&format!(
        "summary: {} processes compared, {} equivalent, {} divergent, {} only in {left}, {} only in {right}; \
         {} calls in {left}, {} in {right}: {}\n",
        r.processes,
        r.equal,
        r.divergences.len(),
        r.only_left.len(),
        r.only_right.len(),
        r.calls.0,
        r.calls.1,
        if r.equivalent() { "EQUIVALENT" } else { "DIFFERENT" }
    ));
    s
}

/// The report for tools.
pub fn to_json(r: &Report) -> Value {
    json!({
        "equivalent": r.equivalent(),
        "processes": r.processes,
        "equal": r.equal,
        "calls": [r.calls.0, r.calls.1],
        "only_left": r.only_left,
        "only_right": r.only_right,
        "divergences": r.divergences.iter().map(|d| json!({
            "process": d.process,
            "hunks": d.hunks.iter().map(|(at, a, b)| json!({"at": at, "left": a, "right": b})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// A self-contained HTML page of the report.
pub fn html(r: &Report, left: &str, right: &str) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>trace-diff: {} vs {}</h1><p class=\"{}\">{}</p>",
        esc(left),
        esc(right),
        if r.equivalent() { "ok" } else { "bad" },
        esc(text(r, left, right).lines().last().unwrap_or(""))
    ));
    for d in &r.divergences {
        body.push_str(&format!("<h2>process {}</h2><table>", esc(&d.process)));
        for (at, a, b) in &d.hunks {
            body.push_str(&format!("<tr><th colspan=2>at call {}</th></tr>", at + 1));
            let rows = a.len().max(b.len());
            for i in 0..rows {
                body.push_str(&format!(
                    "<tr><td class=l>{}</td><td class=r>{}</td></tr>",
                    esc(a.get(i).map(String::as_str).unwrap_or("")),
                    esc(b.get(i).map(String::as_str).unwrap_or(""))
                ));
            }
        }
        body.push_str("</table>");
    }
    for k in &r.only_left {
        body.push_str(&format!("<p>process {} only in {}</p>", esc(k), esc(left)));
    }
    for k in &r.only_right {
        body.push_str(&format!("<p>process {} only in {}</p>", esc(k), esc(right)));
    }
    format!(
        "<!doctype html><meta charset=utf-8><title>trace-diff</title><style>body{{font-family:sans-serif}}\
         td{{font-family:monospace;padding:2px 8px}}.l{{background:#fee}}.r{{background:#efe}}\
         .ok{{color:green}}.bad{{color:#b00}}</style>{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(pid: u32, call: &str, args: Value, result: Value, errno: Value) -> String {
        json!({"pid": pid, "tid": pid, "call": call, "args": args, "result": result, "errno": errno,
               "t": 1.0, "us": 5, "rtt": 1, "where": "home", "home_pid": 77})
        .to_string()
    }

    #[test]
    fn run_specific_values_are_normalized() {
        let a = [
            line(10, "execve", json!(["/bin/cat", "ptr", "ptr"]), Value::Null, Value::Null),
            line(10, "openat", json!(["AT_FDCWD", "/tmp/tmp.a1B2c3", "O_RDONLY"]), json!(4100), Value::Null),
            line(10, "read", json!([4100, "ptr", 4096]), json!(12), Value::Null),
        ]
        .join("\n");
        let b = [
            line(55, "execve", json!(["/bin/cat", "ptr", "ptr"]), Value::Null, Value::Null),
            line(55, "openat", json!(["AT_FDCWD", "/tmp/tmp.Zz9y8X", "O_RDONLY"]), json!(4097), Value::Null),
            line(55, "read", json!([4097, "ptr", 4096]), json!(12), Value::Null),
        ]
        .join("\n");
        let r = compare(&load(&a).unwrap(), &load(&b).unwrap(), 5);
        assert!(r.equivalent(), "{}", text(&r, "a", "b"));
    }

    #[test]
    fn exclusively_created_names_match_in_order() {
        let run = |name: &str| {
            [
                line(
                    3,
                    "openat",
                    json!(["AT_FDCWD", format!("/tmp/{name}.s"), "O_RDWR|O_CREAT|O_EXCL", "0600"]),
                    json!(4096),
                    Value::Null,
                ),
                line(3, "unlink", json!([format!("/tmp/{name}.s")]), json!(0), Value::Null),
            ]
            .join("\n")
        };
        // All lower case: no heuristic can tell these are random; their O_EXCL creation does.
        let r = compare(&load(&run("ccemqiqw")).unwrap(), &load(&run("ccabcdef")).unwrap(), 5);
        assert!(r.equivalent(), "{}", text(&r, "a", "b"));
    }

    #[test]
    fn a_different_errno_is_a_divergence() {
        let a = line(1, "openat", json!(["AT_FDCWD", "x", "O_RDONLY"]), json!(-1), json!("ENOENT"));
        let b = line(1, "openat", json!(["AT_FDCWD", "x", "O_RDONLY"]), json!(-1), json!("EACCES"));
        let r = compare(&load(&a).unwrap(), &load(&b).unwrap(), 5);
        assert!(!r.equivalent());
        assert!(text(&r, "a", "b").contains("EACCES"));
        assert_eq!(to_json(&r)["equivalent"], json!(false));
        assert!(html(&r, "a", "b").contains("EACCES"));
    }
}
