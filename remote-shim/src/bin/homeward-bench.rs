//! `homeward-bench [--iterations N] [--runs R] [--markdown FILE] [--no-workloads]`: benchmarks of forwarded
//! calls and of whole workloads against native, measured in the same run (the machines are noisy: compare
//! ratios), with the round trips each costs (the deterministic figure).
//!
//! Micro-benchmarks: each operation runs natively in this process, then under `remote-shim --home local
//! --stats` (an agent on loopback in the shim's process), by re-executing this binary as the workload
//! (`--workload OP N`). The raw TCP loopback round trip is measured between two threads.
//!
//! Workloads (the performance issue's W1-W7) run on a data set generated in a temporary directory, natively
//! and under `remote-shim --home local`; each is timed R times (median). Not here yet: runs over a 1 ms
//! link and the sshfs comparison.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Instant;

const OPS: &[&str] =
    &["stat", "open+close", "read 4 KiB", "write 4 KiB", "getpid", "clock_gettime", "own pipe"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--workload") {
        let op = args.get(2).cloned().unwrap_or_default();
        let n: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
        let dir = std::env::current_dir().expect("cwd");
        println!("{}", run_op(&op, n, &dir));
        return;
    }
    let mut n: u32 = 2000;
    let mut runs: usize = 3;
    let mut workloads = true;
    let mut markdown = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iterations" => n = it.next().and_then(|s| s.parse().ok()).unwrap_or(n),
            "--runs" => runs = it.next().and_then(|s| s.parse().ok()).unwrap_or(runs).max(1),
            "--no-workloads" => workloads = false,
            "--markdown" => markdown = it.next().cloned(),
            other => {
                eprintln!("homeward-bench: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let shim = std::env::current_exe().expect("exe").with_file_name("remote-shim");
    let dir = std::env::temp_dir().join(format!("homeward-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    std::fs::write(dir.join("data"), vec![7u8; 1 << 20]).expect("data file");
    let mut rows = Vec::new();
    for op in OPS {
        let native = run_op(op, n, &dir);
        let out = Command::new(&shim)
            .args(["--home", "local", "--stats", "--"])
            .arg(std::env::current_exe().expect("exe"))
            .args(["--workload", op, &n.to_string()])
            .current_dir(&dir)
            .output()
            .expect("running remote-shim");
        let forwarded: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(f64::NAN);
        let trips = round_trips(&String::from_utf8_lossy(&out.stderr));
        rows.push((op.to_string(), native, forwarded, trips));
    }
    let tcp = tcp_ping_pong(n);
    let mut table = String::from("| operation | native µs | forwarded µs | ratio | round trips (whole run) |\n|---|---:|---:|---:|---:|\n");
    for (op, native, fwd, trips) in &rows {
        table.push_str(&format!("| {op} | {native:.2} | {fwd:.2} | {:.1}× | {trips} |\n", fwd / native));
    }
    table.push_str(&format!("| TCP loopback round trip (32 B) | {tcp:.2} | | | |\n"));
    if workloads {
        table.push('\n');
        table.push_str(&workload_table(&shim, &dir.join("workloads"), runs));
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("homeward-bench: {n} iterations per operation, --home local (agent on loopback)\n");
    print!("{table}");
    if let Some(path) = markdown {
        std::fs::write(&path, &table).expect("writing the markdown table");
    }
}

/// Runs `op` `n` times in `dir` and returns µs per operation.
fn run_op(op: &str, n: u32, dir: &std::path::Path) -> f64 {
    let data = dir.join("data");
    let start = Instant::now();
    match op {
        "stat" => {
            for _ in 0..n {
                std::fs::metadata(&data).expect("stat");
            }
        }
        "open+close" => {
            for _ in 0..n {
                drop(std::fs::File::open(&data).expect("open"));
            }
        }
        "read 4 KiB" => {
            let f = std::fs::File::open(&data).expect("open");
            let mut buf = [0u8; 4096];
            let t = Instant::now();
            for i in 0..n {
                f.read_at(&mut buf, u64::from(i % 200) * 4096).expect("read");
            }
            return t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        }
        "write 4 KiB" => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.join("out"))
                .expect("open");
            let buf = [1u8; 4096];
            let t = Instant::now();
            for i in 0..n {
                f.write_at(&buf, u64::from(i % 200) * 4096).expect("write");
            }
            return t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        }
        "getpid" => {
            for _ in 0..n {
                std::hint::black_box(std::process::id());
            }
        }
        "clock_gettime" => {
            for _ in 0..n {
                std::hint::black_box(std::time::SystemTime::now());
            }
        }
        "own pipe" => {
            let (mut r, mut w) = std::io::pipe().expect("pipe");
            let mut b = [0u8; 64];
            let t = Instant::now();
            for _ in 0..n {
                w.write_all(&b).expect("write");
                r.read_exact(&mut b).expect("read");
            }
            return t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        }
        _ => return f64::NAN,
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

/// µs per 32-byte ping-pong between two threads over loopback TCP.
fn tcp_ping_pong(n: u32) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).ok();
        let mut b = [0u8; 32];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).ok();
    let mut b = [0u8; 32];
    let t = Instant::now();
    for _ in 0..n {
        c.write_all(&b).expect("write");
        c.read_exact(&mut b).expect("read");
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    drop(c);
    let _ = server.join();
    us
}

/// The performance issue's workloads: (name, shell command run in the data set's directory).
const WORKLOADS: &[(&str, &str)] = &[
    ("W1 python walks 5,000 files", "python3 walk.py"),
    ("W2 sha256sum 256 MiB", "sha256sum big.bin"),
    ("W3 sqlite3 300 transactions", "rm -f w3.db; sqlite3 w3.db < inserts.sql"),
    ("W4 make -j2, 20 C files", "make -s -C cproj clean >/dev/null; make -s -j2 -C cproj"),
    ("W5 tar cf - tree, piped to wc -c", "tar cf - tree | wc -c"),
    ("W6 git status, 2,000 files", "git -C repo status --porcelain | wc -l"),
    ("W7 compute only", "python3 -c 'print(sum(i * i for i in range(4_000_000)))'"),
];

/// Generates the workloads' data set in `dir`.
fn make_data_set(dir: &std::path::Path) {
    let script = r#"
set -e
mkdir -p tree cproj repo
for d in $(seq 0 99); do
  mkdir -p tree/d$d
  for f in $(seq 0 49); do printf 'file %s %s\n' $d $f > tree/d$d/f$f.txt; done
done
cat > walk.py <<'PY'
import os
n = total = 0
for root, dirs, files in os.walk("tree"):
    for f in files:
        p = os.path.join(root, f)
        os.stat(p)
        with open(p, "rb") as fh:
            total += len(fh.read())
        n += 1
print(n, total)
PY
head -c 268435456 /dev/zero | tr '\0' 'x' > big.bin
{ echo "create table t(id integer primary key, v text);"
  for i in $(seq 1 300); do echo "begin; insert into t(v) values('row $i'); commit;"; done; } > inserts.sql
for i in $(seq 1 20); do printf 'int f%s(int x) { return x * %s; }\n' $i $i > cproj/f$i.c; done
printf 'int main(void) { return 0; }\n' > cproj/main.c
{ printf 'OBJS = main.o'; for i in $(seq 1 20); do printf ' f%s.o' $i; done; printf '\n'
  printf 'prog: $(OBJS)\n\tcc -o prog $(OBJS)\n%%.o: %%.c\n\tcc -O1 -c $< -o $@\nclean:\n\trm -f prog *.o\n'; } > cproj/Makefile
for d in $(seq 0 39); do
  mkdir -p repo/d$d
  for f in $(seq 0 49); do echo "$d $f" > repo/d$d/f$f; done
done
cd repo && git init -q && git add -A && git -c user.name=b -c user.email=b@b commit -qm init
"#;
    std::fs::create_dir_all(dir).expect("workload dir");
    let ok = Command::new("sh").args(["-c", script]).current_dir(dir).status().expect("sh");
    assert!(ok.success(), "generating the workloads' data set failed");
}

/// Runs each workload natively and forwarded `runs` times; a markdown table of medians and round trips.
fn workload_table(shim: &std::path::Path, dir: &std::path::Path, runs: usize) -> String {
    make_data_set(dir);
    let mut table = String::from(
        "| workload | native s | forwarded s | ratio | round trips |\n|---|---:|---:|---:|---:|\n",
    );
    for (name, command) in WORKLOADS {
        let timed = |forwarded: bool| -> (f64, u64) {
            let mut cmd = if forwarded {
                let mut c = Command::new(shim);
                c.args(["--home", "local", "--stats", "--", "sh", "-c", command]);
                c
            } else {
                let mut c = Command::new("sh");
                c.args(["-c", command]);
                c
            };
            let start = Instant::now();
            let out = cmd.current_dir(dir).output().expect("running a workload");
            let secs = start.elapsed().as_secs_f64();
            if !out.status.success() {
                eprintln!(
                    "homeward-bench: {name} failed ({}):\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            (secs, round_trips(&String::from_utf8_lossy(&out.stderr)))
        };
        let mut native = Vec::new();
        let mut forwarded = Vec::new();
        let mut trips = 0;
        for _ in 0..runs {
            native.push(timed(false).0);
            let (secs, t) = timed(true);
            forwarded.push(secs);
            trips = t;
        }
        let (native, forwarded) = (median(native), median(forwarded));
        table.push_str(&format!(
            "| {name} | {native:.3} | {forwarded:.3} | {:.2}× | {trips} |\n",
            forwarded / native
        ));
    }
    table
}

fn round_trips(stats: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix("round trips to home: "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
