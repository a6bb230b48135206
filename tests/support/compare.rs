//! Comparing a native run with a remote run: status and stdout by default, stderr on request, with an
//! optional normalization; a mismatch panics with the command, both runs in full and a diff.

use crate::process::Run;

/// Rewrites an output (as text) before comparison.
type Normalizer<'a> = Box<dyn Fn(&str) -> String + 'a>;

/// What [`compare_with`] compares. The default: exit status (shell convention) and stdout, byte for byte.
pub struct Compare<'a> {
    stdout: bool,
    stderr: bool,
    normalize: Option<Normalizer<'a>>,
}

impl Default for Compare<'_> {
    fn default() -> Self {
        Compare { stdout: true, stderr: false, normalize: None }
    }
}

impl<'a> Compare<'a> {
    /// Status and stdout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also compare stderr (error messages carry `strerror(errno)`, so this checks errno too).
    pub fn stderr(mut self) -> Self {
        self.stderr = true;
        self
    }

    /// Do not compare stdout (status only, plus stderr if asked).
    pub fn ignore_stdout(mut self) -> Self {
        self.stdout = false;
        self
    }

    /// Rewrite both outputs (as text) before comparing them.
    pub fn normalize(mut self, f: impl Fn(&str) -> String + 'a) -> Self {
        self.normalize = Some(Box::new(f));
        self
    }

    /// Compare the outputs' lines as sets with repetition: for tools whose output order is the directory's
    /// readdir order (find, du), which is a property of each file system, not of forwarding.
    pub fn sorted_lines(self) -> Self {
        self.normalize(sort_lines)
    }

    fn prepare(&self, data: &[u8]) -> Vec<u8> {
        match &self.normalize {
            Some(f) => f(&String::from_utf8_lossy(data)).into_bytes(),
            None => data.to_vec(),
        }
    }
}

/// The lines of `text`, sorted (each keeps its newline).
pub fn sort_lines(text: &str) -> String {
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    lines.sort_unstable();
    lines.concat()
}

/// Panics with a full report unless `native` and `remote` have the same status and stdout.
#[track_caller]
pub fn compare(native: &Run, remote: &Run) {
    compare_with(native, remote, &Compare::default());
}

/// Panics with a full report unless `native` and `remote` agree in what `how` compares.
#[track_caller]
pub fn compare_with(native: &Run, remote: &Run, how: &Compare<'_>) {
    if let Some(report) = differences(native, remote, how) {
        panic!("{report}");
    }
}

/// `None` when the runs agree, else a report: what differs, a diff per stream, and both runs in full.
pub fn differences(native: &Run, remote: &Run, how: &Compare<'_>) -> Option<String> {
    let mut what = Vec::new();
    let mut details = String::new();
    if native.timed_out || remote.timed_out || native.code() != remote.code() {
        what.push("status");
        details += &format!("status: native {}, remote {}\n", native.status_text(), remote.status_text());
    }
    let mut streams = Vec::new();
    if how.stdout {
        streams.push(("stdout", &native.stdout, &remote.stdout));
    }
    if how.stderr {
        streams.push(("stderr", &native.stderr, &remote.stderr));
    }
    for (name, a, b) in streams {
        let (a, b) = (how.prepare(a), how.prepare(b));
        if a != b {
            what.push(name);
            let normalized = if how.normalize.is_some() { ", after normalization" } else { "" };
            details += &format!("{name} differs{normalized} (-native +remote):\n{}", bytes_diff(&a, &b));
        }
    }
    if what.is_empty() {
        return None;
    }
    Some(format!(
        "native and remote runs differ in {}\n{details}\n=== native run ===\n{native}\n=== remote run ===\n{remote}",
        what.join(", ")
    ))
}

/// A readable difference between two byte strings: a line diff for text, the first differing offset for
/// binary data.
fn bytes_diff(a: &[u8], b: &[u8]) -> String {
    match (std::str::from_utf8(a), std::str::from_utf8(b)) {
        (Ok(a), Ok(b)) => text_diff(a, b),
        _ => {
            let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
            let around = |d: &[u8]| {
                let end = (at + 16).min(d.len());
                d[at.min(end)..end].iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
            };
            format!(
                "  binary: {} vs {} bytes, first difference at offset {at}: native [{}] remote [{}]\n",
                a.len(),
                b.len(),
                around(a),
                around(b)
            )
        }
    }
}

/// At most this many lines of a diff are shown.
const DIFF_LINES: usize = 120;

/// A unified line diff of two texts (`-` first, `+` second), with up to 3 lines of context, cut after
/// [`DIFF_LINES`] lines.
pub fn text_diff(a: &str, b: &str) -> String {
    let diff = similar::TextDiff::from_lines(a, b);
    let mut full = String::new();
    for hunk in diff.unified_diff().context_radius(3).iter_hunks() {
        full += &format!("{hunk}");
    }
    let total = full.lines().count();
    let mut out: String = full.lines().take(DIFF_LINES).map(|l| format!("{l}\n")).collect();
    if total > DIFF_LINES {
        out += &format!("... ({} more diff lines)\n", total - DIFF_LINES);
    }
    let unterminated = |t: &str| !t.is_empty() && !t.ends_with('\n');
    if unterminated(a) || unterminated(b) {
        out += "(one side does not end with a newline)\n";
    }
    out
}
