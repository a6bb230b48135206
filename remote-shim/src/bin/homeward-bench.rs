//! `homeward-bench [--iterations N] [--markdown FILE]`: micro-benchmarks of forwarded calls against native,
//! measured in the same run (the machines are noisy: compare ratios), with the round trips each costs.
//!
//! Each operation runs natively in this process, then under `remote-shim --home local --stats` (an agent
//! on loopback in the shim's process), by re-executing this binary as the workload (`--workload OP N`). The
//! raw TCP loopback round trip is measured between two threads. Prints a table and optionally writes it as
//! markdown. Part of the performance issue's suite; the workloads W1-W7 and sshfs comparisons are not here yet.

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
    let mut markdown = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iterations" => n = it.next().and_then(|s| s.parse().ok()).unwrap_or(n),
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
        let stats = String::from_utf8_lossy(&out.stderr);
        let trips: u64 = stats
            .lines()
            .find_map(|l| l.strip_prefix("round trips to home: "))
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        rows.push((op.to_string(), native, forwarded, trips));
    }
    let tcp = tcp_ping_pong(n);
    let _ = std::fs::remove_dir_all(&dir);
    let mut table = String::from("| operation | native µs | forwarded µs | ratio | round trips (whole run) |\n|---|---:|---:|---:|---:|\n");
    for (op, native, fwd, trips) in &rows {
        table.push_str(&format!("| {op} | {native:.2} | {fwd:.2} | {:.1}× | {trips} |\n", fwd / native));
    }
    table.push_str(&format!("| TCP loopback round trip (32 B) | {tcp:.2} | | | |\n"));
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
