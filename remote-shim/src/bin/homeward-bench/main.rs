//! `homeward-bench [--iterations N] [--runs R] [--markdown FILE] [--no-workloads] [--no-sshfs] [--only TEXT]
//! [--cold]`:
//! benchmarks
//! of forwarded calls and of whole workloads against native, measured in the same run (the machines are
//! noisy: compare ratios), with the round trips each costs (the deterministic figure).
//!
//! Micro-benchmarks: each operation runs natively in this process, then (by re-executing this binary as
//! the workload, `--workload OP N`) under `remote-shim --home local` (an agent in the shim's process), under
//! `remote-shim` with a `home-agent` process on loopback, and with that agent behind a proxy that adds 1 ms
//! to each round trip ([`proxy`]). The raw TCP loopback round trip is measured between two threads on one
//! CPU and on two.
//!
//! Workloads (the performance issue's W1-W7) run on a data set generated in a temporary directory: natively,
//! under `remote-shim` with the agent process at 0 and 1 ms, and natively on the data set mounted through
//! sshfs at 0 and 1 ms ([`sshfs`]; skipped with a note when sshd, sshfs or root are missing). Each is timed
//! R times (median). remote-shim keeps versions of home files on disk across jobs (`--cache`): the bench
//! gives it an empty cache directory, so of a workload's runs the first is cold and the others find what
//! it read; `--cold` runs every job with `--cache none`.

mod proxy;
mod sshfs;

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// "stat" repeats one lookup (cached after the first); "stat, new name" looks up a different file each
/// time, so each is a round trip; "stat, missing name" a different missing name in one directory, which the
/// listing the first lookup brings answers.
const OPS: &[&str] = &[
    "stat",
    "stat, new name",
    "stat, missing name",
    "open+close",
    "read 4 KiB",
    "write 4 KiB",
    "getpid",
    "clock_gettime",
    "own pipe",
];

struct Options {
    n: u32,
    runs: usize,
    workloads: bool,
    sshfs: bool,
    /// `--cold`: no content cache on disk (`remote-shim --cache none`).
    cold: bool,
    markdown: Option<String>,
    /// Only the workloads whose name contains this text, and no micro-benchmarks.
    only: Option<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--workload") {
        let op = args.get(2).cloned().unwrap_or_default();
        let n: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
        let dir = std::env::current_dir().expect("cwd");
        println!("{}", run_op(&op, n, &dir));
        return;
    }
    let mut o =
        Options { n: 2000, runs: 3, workloads: true, sshfs: true, cold: false, markdown: None, only: None };
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iterations" => o.n = it.next().and_then(|s| s.parse().ok()).unwrap_or(o.n),
            "--runs" => o.runs = it.next().and_then(|s| s.parse().ok()).unwrap_or(o.runs).max(1),
            "--no-workloads" => o.workloads = false,
            "--no-sshfs" => o.sshfs = false,
            "--cold" => o.cold = true,
            "--markdown" => o.markdown = it.next().cloned(),
            "--only" => o.only = it.next().cloned(),
            other => {
                eprintln!("homeward-bench: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let bins = std::env::current_exe().expect("exe");
    let dir = std::env::temp_dir().join(format!("homeward-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let agent = Agent::start(&bins.with_file_name("home-agent"), &dir);
    let slow = proxy::DelayProxy::start(agent.addr, Duration::from_millis(1));
    let homes = [
        Home { label: "--home local", addr: None },
        Home { label: "agent, loopback", addr: Some(agent.addr) },
        Home { label: "agent, 1 ms", addr: Some(slow.addr) },
    ];
    let cache = if o.cold { "none".into() } else { dir.join("cache") };
    let shim = Shim { bin: bins.with_file_name("remote-shim"), token_file: agent.token_file.clone(), cache };
    let mut table = if o.only.is_none() { micro_table(&shim, &homes, &dir, o.n) } else { String::new() };
    if o.workloads {
        table.push('\n');
        table.push_str(&workload_table(&shim, &homes[1..], &dir.join("workloads"), &o));
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "homeward-bench: {} iterations per operation, workloads median of {} runs, {} CPUs\n",
        o.n,
        o.runs,
        online_cpus()
    );
    print!("{table}");
    if let Some(path) = o.markdown {
        std::fs::write(&path, &table).expect("writing the markdown table");
    }
}

/// Where remote-shim finds home for one column.
struct Home {
    label: &'static str,
    addr: Option<SocketAddr>,
}

struct Shim {
    bin: PathBuf,
    token_file: PathBuf,
    /// `--cache`: a directory of this run's (empty at first), or `none`.
    cache: PathBuf,
}

impl Shim {
    /// `remote-shim --stats` to `home` with `extra` arguments, ready for the program and its arguments.
    fn command(&self, home: &Home, extra: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        match home.addr {
            None => c.args(["--home", "local"]),
            Some(addr) => c.arg("--home").arg(addr.to_string()).arg("--token-file").arg(&self.token_file),
        };
        c.arg("--cache").arg(&self.cache).args(extra).args(["--stats", "--"]);
        c
    }
}

/// A `home-agent` process on a loopback port, with a token.
struct Agent {
    addr: SocketAddr,
    token_file: PathBuf,
    child: Child,
}

impl Agent {
    fn start(bin: &Path, dir: &Path) -> Agent {
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("bench-{:x}\n", std::process::id())).expect("token");
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--token-file"])
            .arg(&token_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting home-agent");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("agent");
        let addr = line.trim().rsplit(' ').next().and_then(|a| a.parse().ok()).expect("agent address");
        Agent { addr, token_file, child }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each operation natively and under each home; µs per operation and the round trips of each run.
fn micro_table(shim: &Shim, homes: &[Home], dir: &Path, n: u32) -> String {
    std::fs::write(dir.join("data"), vec![7u8; 1 << 20]).expect("data file");
    std::fs::create_dir_all(dir.join("names")).expect("names directory");
    for i in 0..n {
        std::fs::write(dir.join(format!("names/{i}")), "").expect("a file to look up");
    }
    let mut table = String::from("| operation | native µs |");
    for h in homes {
        table.push_str(&format!(" {} µs (ratio) |", h.label));
    }
    table.push_str(" round trips (whole run) |\n|---|---:|");
    table.push_str(&"---:|".repeat(homes.len() + 1));
    table.push('\n');
    for op in OPS {
        let native = run_op(op, n, dir);
        table.push_str(&format!("| {op} | {native:.2} |"));
        let mut trips = 0;
        for home in homes {
            let out = shim
                .command(home, &[])
                .arg(std::env::current_exe().expect("exe"))
                .args(["--workload", op, &n.to_string()])
                .current_dir(dir)
                .output()
                .expect("running remote-shim");
            let us: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(f64::NAN);
            trips = round_trips(&String::from_utf8_lossy(&out.stderr));
            table.push_str(&format!(" {us:.2} ({:.0}×) |", us / native));
        }
        table.push_str(&format!(" {trips} |\n"));
    }
    let (same, cross) = (tcp_ping_pong(n, Some((0, 0))), tcp_ping_pong(n, Some((0, 1))));
    table.push_str(&format!(
        "| TCP loopback round trip, 32 B, one CPU | {same:.2} |{}\n",
        " |".repeat(homes.len() + 1)
    ));
    table.push_str(&format!(
        "| TCP loopback round trip, 32 B, two CPUs | {cross:.2} |{}\n",
        " |".repeat(homes.len() + 1)
    ));
    table
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
        "stat, new name" | "stat, missing name" => {
            let name = |i| match op {
                "stat, new name" => dir.join(format!("names/{i}")),
                _ => dir.join(format!("missing-{i}")),
            };
            let names: Vec<_> = (0..n).map(name).collect();
            let t = Instant::now();
            for name in &names {
                std::hint::black_box(std::fs::metadata(name).is_err());
            }
            return t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
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

/// µs per 32-byte ping-pong between two threads over loopback TCP, pinned to CPUs `cpus` when given.
fn tcp_ping_pong(n: u32, cpus: Option<(usize, usize)>) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        if let Some((_, cpu)) = cpus {
            pin_to(cpu);
        }
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).ok();
        let mut b = [0u8; 32];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    if let Some((cpu, _)) = cpus {
        pin_to(cpu);
    }
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
    unpin();
    us
}

/// CPUs online (not the calling thread's affinity, which pinning narrows).
fn online_cpus() -> usize {
    // SAFETY: sysconf reads a system setting; no memory is involved.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1).max(1)
}

/// Pins the calling thread to `cpu` (when the machine has it).
fn pin_to(cpu: usize) {
    let cpus = online_cpus();
    // SAFETY: the set is a plain bit mask on the stack; sched_setaffinity(0) reads it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Lets the calling thread run on every CPU again.
fn unpin() {
    let cpus = online_cpus();
    // SAFETY: as in `pin_to`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The performance issue's workloads: (name, shell command run in the data set's directory, remote-shim's
/// extra arguments).
const WORKLOADS: &[(&str, &str, &[&str])] = &[
    ("W1 python walks 5,000 files", "python3 walk.py", &[]),
    ("W2 sha256sum 256 MiB", "sha256sum big.bin", &[]),
    ("W3 sqlite3 300 transactions", "rm -f w3.db; sqlite3 w3.db < inserts.sql", &[]),
    ("W4 make -j2, 20 C files", W4, &[]),
    (
        "W4 with the toolchain local (--local /usr /lib /etc /tmp)",
        W4,
        &["--local", "/usr", "--local", "/lib", "--local", "/lib64", "--local", "/etc", "--local", "/tmp"],
    ),
    ("W5 tar cf - tree, piped to wc -c", "tar cf - tree | wc -c", &[]),
    ("W6 git status, 2,000 files", "git -C repo status --porcelain | wc -l", &[]),
    ("W7 compute only (C, no I/O)", "./compute", &[]),
];

const W4: &str = "make -s -C cproj clean >/dev/null; make -s -j2 -C cproj";

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
cat > compute.c <<'C'
#include <stdio.h>
int main(void) {
    unsigned long long s = 0;
    for (unsigned long long i = 0; i < 3600000000ULL; i++) s += (i * i) ^ (s >> 3);
    printf("%llu\n", s);
    return 0;
}
C
cc -O2 -o compute compute.c
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

/// How one column runs a workload: natively in a directory, or under remote-shim.
enum Runner<'a> {
    Native(PathBuf),
    Shim(&'a Shim, &'a Home, PathBuf),
}

impl Runner<'_> {
    /// Seconds, and round trips to home (remote-shim's `--stats`).
    fn time(&self, name: &str, command: &str, shim_args: &[&str]) -> (f64, u64) {
        let mut cmd = match self {
            Runner::Native(dir) => {
                let mut c = Command::new("sh");
                c.current_dir(dir);
                c
            }
            Runner::Shim(shim, home, dir) => {
                let mut c = shim.command(home, shim_args);
                c.arg("sh").current_dir(dir);
                c
            }
        };
        let start = Instant::now();
        let out = cmd.args(["-c", command]).output().expect("running a workload");
        let secs = start.elapsed().as_secs_f64();
        if !out.status.success() {
            eprintln!(
                "homeward-bench: {name} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (secs, round_trips(&String::from_utf8_lossy(&out.stderr)))
    }
}

/// Each workload in each configuration `runs` times; a markdown table of medians, ratios to native (same
/// run) and round trips to home.
fn workload_table(shim: &Shim, homes: &[Home], dir: &Path, o: &Options) -> String {
    make_data_set(dir);
    let mut columns: Vec<(String, Runner<'_>)> = vec![("native".into(), Runner::Native(dir.to_path_buf()))];
    for home in homes {
        columns.push((format!("homeward, {}", home.label), Runner::Shim(shim, home, dir.to_path_buf())));
    }
    // Declared before the mounts, so they are unmounted before sshd and its proxy go.
    let mut ssh = None;
    let mut mounts = Vec::new();
    let mut note = String::new();
    if o.sshfs {
        match sshfs_columns(dir) {
            Ok((sshd, proxy, list)) => {
                for (label, mount) in list {
                    columns.push((label, Runner::Native(mount.at.clone())));
                    mounts.push(mount);
                }
                ssh = Some((sshd, proxy));
            }
            Err(why) => note = format!("\n(sshfs columns skipped: {why})\n"),
        }
    }
    let mut table = String::from("| workload |");
    for (label, _) in &columns {
        table.push_str(&format!(" {label} s |"));
    }
    table.push_str(" round trips |\n|---|");
    table.push_str(&"---:|".repeat(columns.len() + 1));
    table.push('\n');
    for (name, command, shim_args) in WORKLOADS {
        if o.only.as_ref().is_some_and(|only| !name.contains(only.as_str())) {
            continue;
        }
        let mut times = vec![Vec::new(); columns.len()];
        let mut trips = 0;
        for _ in 0..o.runs {
            for (i, (_, runner)) in columns.iter().enumerate() {
                let (secs, t) = runner.time(name, command, shim_args);
                times[i].push(secs);
                if i == 1 {
                    trips = t;
                }
            }
        }
        let medians: Vec<f64> = times.into_iter().map(median).collect();
        eprintln!("homeward-bench: {name}: {medians:.3?} s, {trips} round trips");
        table.push_str(&format!("| {name} | {:.3} |", medians[0]));
        for m in &medians[1..] {
            table.push_str(&format!(" {m:.3} ({:.2}×) |", m / medians[0]));
        }
        table.push_str(&format!(" {trips} |\n"));
    }
    table.push_str(&note);
    drop(mounts);
    drop(ssh);
    table
}

/// Mounts the data set through sshfs directly and through a 1 ms proxy: (sshd, proxies, columns).
#[allow(clippy::type_complexity)]
fn sshfs_columns(
    dir: &Path,
) -> Result<(sshfs::Sshd, proxy::DelayProxy, Vec<(String, sshfs::Mount)>), String> {
    let base = dir.with_file_name("sshfs");
    let sshd = sshfs::Sshd::start(&base.join("sshd"))?;
    let slow = proxy::DelayProxy::start(sshd.addr, Duration::from_millis(1));
    let fast = sshd.mount(sshd.addr, dir, &base.join("mnt-0ms"))?;
    let delayed = sshd.mount(slow.addr, dir, &base.join("mnt-1ms"))?;
    Ok((sshd, slow, vec![("sshfs, loopback".into(), fast), ("sshfs, 1 ms".into(), delayed)]))
}

fn round_trips(stats: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix("round trips to home: "))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
