//! Criterion micro-benchmarks of forwarded calls: each operation natively, and under `remote-shim --home
//! local` (the agent in the shim's process, on loopback). The forwarded loop runs inside the traced
//! program (`homeward-bench --workload OP N`), which times itself, so process start-up is not measured.
//! `cargo bench -p remote-shim --bench forwarded` (release build; results in target/criterion).

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const OPS: &[&str] = &[
    "stat",
    "stat, new name",
    "stat, missing name",
    "open+close",
    "read 4 KiB",
    "write 4 KiB",
    "getpid",
    "own pipe",
];

/// Files "stat, new name" looks up, one per iteration of a sample (`names/0` ...).
const NAMES: u32 = 20_000;

fn data_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("homeward-criterion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    std::fs::write(dir.join("data"), vec![7u8; 1 << 20]).expect("data file");
    std::fs::create_dir_all(dir.join("names")).expect("names directory");
    for i in 0..NAMES {
        std::fs::write(dir.join(format!("names/{i}")), "").expect("a file to look up");
    }
    dir
}

/// Runs `iters` operations in a workload process (natively or under remote-shim); the time it measured.
fn timed(dir: &PathBuf, op: &str, iters: u64, forwarded: bool) -> Duration {
    let bench = env!("CARGO_BIN_EXE_homeward-bench");
    let n = iters.clamp(1, u64::from(u32::MAX)).to_string();
    let mut cmd = if forwarded {
        let mut c = Command::new(env!("CARGO_BIN_EXE_remote-shim"));
        c.args(["--home", "local", "--"]).arg(bench);
        c
    } else {
        Command::new(bench)
    };
    let out = cmd.args(["--workload", op, &n]).current_dir(dir).output().expect("running the workload");
    assert!(out.status.success(), "{op}: {}", String::from_utf8_lossy(&out.stderr));
    let us_per_op: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("µs per operation");
    Duration::from_secs_f64(us_per_op * 1e-6 * iters as f64)
}

fn forwarded_calls(c: &mut Criterion) {
    let dir = data_dir();
    for op in OPS {
        let mut group = c.benchmark_group(*op);
        group.sample_size(10).measurement_time(Duration::from_secs(3));
        group.bench_function("native", |b| b.iter_custom(|iters| timed(&dir, op, iters, false)));
        group.bench_function("forwarded", |b| b.iter_custom(|iters| timed(&dir, op, iters, true)));
        group.finish();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, forwarded_calls);
criterion_main!(benches);
