//! remote-shim: runs a program on this machine while its file, directory and descriptor system calls are
//! executed at home by home-agent, so the program sees home's files as if it ran there.
//!
//! # Layout
//! - [`launch`]: fork, install the filter in the child, pass the listener up, exec the program.
//! - [`filter`]: the seccomp BPF filter (path calls always, descriptor calls by number range).
//! - [`supervisor`]: the notification loop; one task per notification; the descriptor collector.
//! - [`syscalls`]: one module per family (`open`, `stat`, `dir`, `attr`, `io`, `fd`, `exec`, `rlimit`, ...).
//! - [`memory`]: the traced program's memory (arguments in, results out, `EFAULT`).
//! - [`fdtable`]: forwarded descriptors as placeholders in a reserved range; handle lookup and collection;
//!   the state of a file's content copy in its placeholder.
//! - [`fill`]: readahead of large files into their placeholders.
//! - [`native`]: small complete copies in the upper half of the range, whose reads are the kernel's, kept
//!   in step with the job's changes.
//! - [`shared_maps`]: stores into writable shared mappings of home files, written home.
//! - [`readers`]: descriptors recently read through copies, recognised without `/proc`.
//! - [`lazy`]: read-only opens answered without home (leased attributes, cached content); their home handle
//!   is opened when a call needs it.
//! - [`attrcache`]: leased lookup answers (attributes, missing names, links, access checks, cwd paths).
//! - [`cwds`]: each process's cwd path (getcwd's answer), kept while home's lease on it holds.
//! - [`pump`]: home files moved below the range (`dup2(fd, 1)`) served through pumped pipes.
//! - [`paths`]: which paths are local (`/proc`, `/sys`, `/dev`, `--local`).
//! - [`limits`]: each process's virtual `RLIMIT_NOFILE` (the kernel's stays above the reserved range).
//! - [`procs`]: the job's processes and their home identities (cwd and umask live at home per process).
//! - [`content`]: home files' content cached by version across the job's processes (libraries, reopens).
//! - [`clock`]: home's clock offsets (Cristian's algorithm) and the job's time namespace.
//! - [`client`]: the gRPC session and call stream to home.
//! - [`behind`]: write-behind: writes and unlocks sent without waiting, and the errors they owe.
//! - [`transport`]: how home is reached: address, token, TLS; what a failed handshake means.
//! - [`trace`]: `--trace` JSON lines, `--stats` table, and `trace-diff`'s comparison.
//! - [`vdso`]: wall-clock reads routed through the supervisor when home's wall clock differs.
//! - [`sys`]: the only unsafe code: seccomp ioctls, tracee memory, descriptor passing.
#![deny(unsafe_code)]

pub mod attrcache;
pub mod behind;
pub mod client;
pub mod clock;
pub mod content;
pub mod cwds;
pub mod fdtable;
pub mod fill;
pub mod filter;
pub mod jobinit;
pub mod launch;
pub mod lazy;
pub mod limits;
pub mod memory;
pub mod native;
pub mod paths;
pub mod procs;
pub mod pump;
pub mod readers;
pub mod shared_maps;
pub mod spares;
pub mod supervisor;
pub mod sys;
pub mod syscalls;
pub mod trace;
pub mod transport;
pub mod vdso;

use anyhow::Context;
use filter::FdRange;
use homeward_proto::pb::{self, HelloRequest};
use launch::EXIT_SHIM_FAILURE;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

/// What the user asked for on the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// `ADDR:PORT` of home-agent, or `local` for an agent inside this process.
    pub home: String,
    pub token: Option<String>,
    /// TLS to home (`--tls-ca`, `--tls-domain`, `--tls-cert`, `--tls-key`); `None`: plaintext.
    pub tls: Option<transport::ClientTls>,
    /// Extra path prefixes served by the local kernel.
    pub local: Vec<String>,
    /// The program and its arguments.
    pub program: Vec<OsString>,
    /// `--trace FILE`: every intercepted call as a JSON line.
    pub trace: Option<std::path::PathBuf>,
    /// `--stats`: a table of intercepted calls at exit.
    pub stats: bool,
    /// `--on-home-loss`: what happens to the job when home is lost.
    pub on_home_loss: client::HomeLoss,
    /// `--cache DIR`: where versions of home files are kept across jobs (`None`: nowhere).
    pub cache: Option<std::path::PathBuf>,
}

impl Config {
    /// Home is this machine: an agent in this process (`--home local`), or its kernel (`none`).
    fn home_is_here(&self) -> bool {
        self.home == "local" || self.home == "none"
    }
}

/// Runs the job and returns remote-shim's exit status: the program's, 128+N if signal N killed it, 125
/// when remote-shim itself failed.
pub fn run(config: Config) -> i32 {
    match run_job(config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("remote-shim: {e:#}");
            EXIT_SHIM_FAILURE
        }
    }
}

/// Chooses the reserved descriptor range: 4096 numbers from 4096 when the hard limit allows, else the upper
/// half of what it allows.
fn choose_range() -> anyhow::Result<FdRange> {
    let hard = sys::hard_nofile().context("reading RLIMIT_NOFILE")?;
    if hard >= 8192 {
        Ok(FdRange { base: 4096, span: 4096 })
    } else if hard >= 256 {
        let half = (hard / 2) as u32;
        Ok(FdRange { base: half, span: hard as u32 - half })
    } else {
        anyhow::bail!("the descriptor hard limit ({hard}) is too low to reserve a range for home files")
    }
}

fn run_job(config: Config) -> anyhow::Result<i32> {
    sys::seccomp::check_notif_sizes()
        .context("this kernel does not offer seccomp user notification (Linux 5.9 or later is needed)")?;
    // The program's limit on open files is what it would have had natively: remote-shim's, before anything
    // raised it (the program's process raises the kernel's to cover the range; see `limits`).
    let (soft, hard) = sys::nofile(0).context("reading RLIMIT_NOFILE")?;
    let initial_nofile = limits::Nofile { soft, hard };
    let range = choose_range()?;
    let filters = (
        filter::build(range, false).context("building the seccomp filter")?,
        filter::build(range, true).context("building the seccomp filter")?,
    );
    let stage = syscalls::exec::ExecStage::new().context("creating the local staging directory")?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let umask = sys::current_umask();
    let tracer = if config.trace.is_some() || config.stats {
        Some(trace::Tracer::new(config.trace.as_deref(), config.stats).context("creating the trace file")?)
    } else {
        None
    };
    // Should the job's init die, its orphans stay remote-shim's to end.
    sys::set_child_subreaper().context("becoming the job's subreaper")?;

    // Fork while single-threaded; init waits for the go message before it starts the program.
    let pending = launch::spawn(&config.program, range, (&filters.0, &filters.1), stage.dir())?;
    for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTTOU, libc::SIGTTIN] {
        // The terminal delivers these to the whole foreground group, program included.
        sys::ignore_signal(sig);
    }

    // One worker: every hop of a forwarded call (handler, gRPC connection, an in-process agent) then runs
    // on one thread. Measured on the development VM, a wake-up that crosses to an idle vCPU costs ~35 µs;
    // with two workers a forwarded stat took ~77 µs, with one ~20 µs (`--home local`). Calls that block at
    // home block there, not here, so one thread keeps up with many processes.
    // Its worker polls the link's socket a while before it sleeps (`home_agent::idle`).
    let rt = home_agent::idle::install(&mut tokio::runtime::Builder::new_multi_thread())
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    home_agent::idle::attach(rt.handle().clone());
    let result = rt.block_on(async move {
        let home = match start_home(&config).await {
            Ok(x) => x,
            Err(e) => {
                pending.abandon();
                return Err(e);
            }
        };
        let hello = HelloRequest {
            version: homeward_proto::PROTOCOL_VERSION,
            cwd: cwd.as_os_str().as_bytes().to_vec().into(),
            umask,
            description: describe(&config.program),
            resume_seconds: 0,
        };
        let link = match client::HomeLink::connect(&home, hello, config.on_home_loss).await {
            Ok(l) => l,
            Err(e) => {
                pending.abandon();
                return Err(e.into());
            }
        };
        tracing::debug!(session = link.session(), home = link.home_host(), "session open");
        let offsets = clock::estimate(&link).await;
        let timens = offsets.as_ref().and_then(clock::namespace_offsets);
        if let Some((mono, boot)) = timens {
            tracing::debug!(mono, boot, "the job runs in a time namespace that continues home's clocks");
        }
        // In a pid namespace the program takes its deputy's pid: the deputy is started first.
        let root_proc = pb::Proc { id: 1, parent: 0 };
        let root_home = if pending.in_pid_ns {
            match link.call(root_proc, pb::call_request::Op::Identity(pb::Identity::default())).await {
                Ok(reply) => syscalls::process::started_deputy(&reply).ok(),
                Err(e) => {
                    pending.abandon();
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        let init = pending.init;
        let launched = match pending.start(jobinit::Go { timens, pid: root_home.map(|h| h.0) }) {
            Ok(l) => l,
            Err(e) => {
                let _ = sys::kill(init, libc::SIGKILL);
                return Err(e);
            }
        };
        let (child, child_nspid, events) = (launched.child, launched.child_nspid, launched.events);
        // Answers wake the program on the answering CPU (Linux 6.6): a shorter round trip per notification.
        if let Err(e) = sys::seccomp::set_sync_wakeup(launched.listener.as_fd()) {
            tracing::debug!(cause = %e, "no synchronous wake-up for notifications");
        }
        let sup = supervisor::Supervisor::new(
            launched.listener,
            link,
            fdtable::FdTable::new(range),
            limits::Limits::new(initial_nofile, range),
            paths::PathPolicy::new(&config.local),
            stage,
            tracer,
            config.home == "none",
            launched.init,
        );
        if let Some(home) = root_home {
            sup.procs.announce(child_nspid as u32, root_proc.id, root_proc.parent, home);
        }
        if let Some(dir) = config.cache.as_ref().filter(|_| !config.home_is_here()) {
            sup.content.use_disk(dir, sup.link.home_id());
        }
        if let Some(o) = &offsets {
            sup.set_wall_clock_offset(o);
        }
        let rt_handle = tokio::runtime::Handle::current();
        let receiver = {
            let sup = sup.clone();
            std::thread::Builder::new()
                .name("notify-recv".into())
                .spawn(move || sup.receive_loop(rt_handle))
                .context("starting the notification thread")?
        };
        tokio::spawn(sup.clone().collector(Duration::from_millis(500)));
        tokio::spawn(sup.clone().deliver_events());
        {
            let sup = sup.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(clock::REFRESH).await;
                    if let Some(o) = clock::estimate(&sup.link).await {
                        sup.set_wall_clock_offset(&o);
                    }
                }
            });
        }
        let code = supervise(&sup, Job { init, child, child_nspid, events }).await;
        sup.init.finish();
        sup.stop();
        sup.pumps.drain().await;
        // Every process has ended: home closes what they held and ends their deputies as they ended.
        sup.collect(&[]).await;
        sup.link.close().await;
        {
            let sup = sup.clone();
            let _ =
                tokio::task::spawn_blocking(move || sup.content.finish_writes(Duration::from_secs(2))).await;
        }
        if let Some(t) = &sup.tracer {
            t.finish();
            if let Some(table) = t.report() {
                eprint!("{table}");
            }
        }
        let _ = receiver.join();
        Ok(code)
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// How to reach home: the given address, token and TLS, or an agent started in this process for `--home
/// local` (plaintext on loopback, a fresh token).
async fn start_home(config: &Config) -> anyhow::Result<client::LinkConfig> {
    // `none`: every call is executed by this machine's kernel, through the same interception (a baseline
    // for `trace-diff`); it is the in-process agent, whose home is this machine.
    if !config.home_is_here() {
        return Ok(client::LinkConfig::new(&config.home, config.token.clone(), config.tls.clone())?);
    }
    if config.tls.is_some() {
        anyhow::bail!("--home {} runs home in this process: the --tls-* options do not apply", config.home);
    }
    let token = format!("{:016x}{:016x}", fdtable::random_u64(), fdtable::random_u64());
    let listen = "127.0.0.1:0".parse().expect("a valid address");
    let agent = home_agent::BoundAgent::bind(home_agent::AgentConfig::new(listen, Some(token.clone())))
        .await
        .context("starting the in-process home agent")?;
    let addr = agent.local_addr().to_string();
    home_agent::warm_up();
    tokio::spawn(async move {
        if let Err(e) = agent.serve().await {
            tracing::error!(cause = %e, "in-process home agent failed");
        }
    });
    Ok(client::LinkConfig { addr, token: Some(token), tls: None })
}

fn describe(program: &[OsString]) -> String {
    program.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ").chars().take(200).collect()
}

/// The running job as `supervise` watches it.
struct Job {
    init: libc::pid_t,
    /// The program (this machine's pid, and the job's).
    child: libc::pid_t,
    child_nspid: i32,
    events: std::os::fd::OwnedFd,
}

/// Waits for the job: the root program's status once every process of the job has ended. Forwards SIGTERM
/// and SIGHUP sent to remote-shim to the program. If home is lost, ends the job with a message.
async fn supervise(sup: &Arc<supervisor::Supervisor>, job: Job) -> i32 {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let events = job.events;
    std::thread::spawn(move || {
        while let Some(ev) = jobinit::next_event(events.as_fd()) {
            if tx.send(ev).is_err() {
                break;
            }
        }
        // Init is gone: the channel closes.
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut status: Option<i32> = None;
    let mut home_lost = false;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some((nspid, st)) => {
                    if let Some(end) = procs::End::from_wait_status(st) {
                        sup.procs.set_end_nspid(nspid as u32, end);
                    }
                    if nspid == job.child_nspid && status.is_none() {
                        status = Some(exit_code(st));
                    }
                    // The job is over once its first process and every descendant have ended.
                    if let Some(code) = status {
                        if launch::job_pids(job.init).is_empty() {
                            return code;
                        }
                    }
                }
                None => {
                    // Init died before the job ended (killed from outside): so does the job.
                    for pid in launch::orphans() {
                        let _ = sys::kill(pid as i32, libc::SIGKILL);
                    }
                    return status.unwrap_or(EXIT_SHIM_FAILURE);
                }
            },
            msg = sup.wait_link_failure(), if !home_lost => {
                home_lost = true;
                if sup.link.policy() == client::HomeLoss::Eio {
                    eprintln!("remote-shim: {msg}; the job's calls to home fail with EIO from now on");
                    continue;
                }
                eprintln!("remote-shim: {msg}; ending the job");
                for pid in launch::job_pids(job.init) {
                    let _ = sys::kill(pid as i32, libc::SIGKILL);
                }
                while !launch::job_pids(job.init).is_empty() {
                    let _ = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await;
                }
                return EXIT_SHIM_FAILURE;
            }
            Some(_) = recv_signal(&mut term) => signal_program(sup, (job.child, job.child_nspid), libc::SIGTERM),
            Some(_) = recv_signal(&mut hup) => signal_program(sup, (job.child, job.child_nspid), libc::SIGHUP),
        }
    }
}

/// Sends `sig` to the job's first process (by its pid in the job's namespace when it has one).
fn signal_program(sup: &supervisor::Supervisor, (pid, nspid): (libc::pid_t, i32), sig: i32) {
    let sent = if sup.init.in_pid_ns { sup.init.signal(nspid, sig) } else { sys::kill(pid, sig) };
    if let Err(e) = sent {
        tracing::debug!(cause = %e, sig, "forwarding a signal to the program failed");
    }
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// A wait status as a shell reports it.
fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        EXIT_SHIM_FAILURE
    }
}
