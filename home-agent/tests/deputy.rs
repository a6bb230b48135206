//! Deputies through the agent over real gRPC on 127.0.0.1: home pids, signals sent at home arriving as
//! events, the program's kills executed at home, and deputies ending with their processes and sessions.

mod common;

use home_agent::{AgentConfig, BoundAgent};
use homeward_proto::pb::call_request::Op;
use homeward_proto::pb::home_client::HomeClient;
use homeward_proto::pb::{self, forget_proc, CallReply, CallRequest, Event, HelloRequest, Proc};
use homeward_proto::{Errno, PROTOCOL_VERSION, SESSION_METADATA};
use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Streaming};

const ESRCH: Errno = Errno(libc::ESRCH as u16);

async fn client() -> HomeClient<Channel> {
    client_allowing(&[]).await
}

/// A client of an agent confined to `allow` (none: unconfined).
async fn client_allowing(allow: &[&str]) -> HomeClient<Channel> {
    // In a test the agent's own executable is this test harness: deputies must be the real binary.
    home_agent::deputy::set_program(env!("CARGO_BIN_EXE_home-agent"));
    let config = AgentConfig {
        allow: allow.iter().map(Into::into).collect(),
        ..AgentConfig::new("127.0.0.1:0".parse().unwrap(), None)
    };
    let agent = BoundAgent::bind(config).await.unwrap();
    let addr = agent.local_addr();
    tokio::spawn(agent.serve());
    HomeClient::connect(format!("http://{addr}")).await.unwrap()
}

/// A session's call stream, keeping events that arrive while a reply is awaited.
struct Calls {
    tx: mpsc::Sender<CallRequest>,
    replies: Streaming<CallReply>,
    events: VecDeque<Event>,
    seq: u64,
}

impl Calls {
    async fn open(client: &mut HomeClient<Channel>) -> Calls {
        let hello = HelloRequest {
            version: PROTOCOL_VERSION,
            cwd: "/".into(),
            umask: 0o022,
            description: "deputy test\nwith a newline".into(),
            resume_seconds: 0,
        };
        let session = client.hello(hello).await.unwrap().into_inner().session;
        let (tx, rx) = mpsc::channel(16);
        let mut request = Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert(SESSION_METADATA, session.to_string().parse().unwrap());
        let replies = client.calls(request).await.unwrap().into_inner();
        Calls { tx, replies, events: VecDeque::new(), seq: 0 }
    }

    /// Ends the session: goodbye (seq 0), then home ends the stream.
    async fn goodbye(mut self) {
        self.tx.send(CallRequest { seq: 0, ..Default::default() }).await.unwrap();
        while let Ok(Some(_)) = self.replies.message().await {}
    }

    async fn next(&mut self) -> CallReply {
        let next = tokio::time::timeout(Duration::from_secs(10), self.replies.message());
        next.await.expect("nothing came from home within 10 s").unwrap().unwrap()
    }

    async fn reply(&mut self, proc: Proc, op: Op) -> CallReply {
        self.seq += 1;
        let seq = self.seq;
        self.tx
            .send(CallRequest { seq, proc: Some(proc), op: Some(op), ..Default::default() })
            .await
            .unwrap();
        loop {
            let reply = self.next().await;
            if reply.seq == 0 {
                self.events.push_back(reply.event.expect("a seq 0 message carries an event"));
            } else {
                assert_eq!(reply.seq, seq);
                assert!(reply.event.is_none());
                return reply;
            }
        }
    }

    async fn call(&mut self, proc: Proc, op: Op) -> Result<i64, Errno> {
        self.reply(proc, op).await.outcome.unwrap().to_result()
    }

    async fn kill(&mut self, pid: i32, signal: i32, tid: i32) -> Result<i64, Errno> {
        self.call(proc(1, 0), Op::Kill(pb::Kill { pid, signal, tid })).await
    }

    /// (pid, ppid) of `proc` at home.
    async fn identity(&mut self, proc: Proc) -> (i32, i32) {
        let reply = self.reply(proc, Op::Identity(pb::Identity::default())).await;
        (reply.outcome.unwrap().to_result().unwrap() as i32, reply.ppid)
    }

    /// Starts a spare deputy for proc `id`: its pid.
    async fn spare(&mut self, id: u64) -> Result<i32, Errno> {
        self.call(proc(id, 0), Op::Identity(pb::Identity { spare: true })).await.map(|pid| pid as i32)
    }

    async fn event(&mut self) -> Event {
        if let Some(event) = self.events.pop_front() {
            return event;
        }
        let reply = self.next().await;
        assert_eq!(reply.seq, 0, "expected an event, got a reply");
        reply.event.unwrap()
    }

    async fn forget(&mut self, id: u64, end: Option<forget_proc::End>) {
        assert_eq!(self.call(proc(0, 0), Op::ForgetProc(pb::ForgetProc { id, end })).await, Ok(0));
    }
}

fn proc(id: u64, parent: u64) -> Proc {
    Proc { id, parent }
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

async fn wait_gone(pids: &[i32], within: Duration) {
    let start = Instant::now();
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(start.elapsed() < within, "deputies {pids:?} still there (or not reaped) after {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the deputy has blocked its signals: before that, a signal would kill it.
async fn wait_ready(pid: i32) {
    let start = Instant::now();
    loop {
        if common::blocks_signals(pid as u32) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "deputy {pid} never blocked its signals");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn home_kill(pid: i32, sig: i32) {
    // SAFETY: kill takes integers only.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

#[tokio::test]
async fn a_deputy_is_the_home_pid_and_signals_at_home_become_events() {
    let mut client = client().await;
    let mut calls = Calls::open(&mut client).await;
    let (p, ppid) = calls.identity(proc(1, 0)).await;
    assert_eq!(ppid, std::process::id() as i32, "the first process's parent is the agent");
    // Its command line is there once its exec is complete.
    wait_ready(p).await;
    let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"homeward-deputy[1]: deputy test with a newline\0"), "{cmdline:?}");
    assert_eq!(calls.identity(proc(1, 0)).await, (p, ppid), "one deputy per proc");
    let (child, child_ppid) = calls.identity(proc(2, 1)).await;
    assert_eq!(child_ppid, p, "a child's parent is its parent's deputy");
    assert_ne!(child, p);

    home_kill(p, libc::SIGUSR1);
    assert_eq!(calls.event().await, Event { proc: 1, signal: libc::SIGUSR1, ..Default::default() });

    // The session's own kill of its deputy: delivered as an event, the deputy untouched.
    assert_eq!(calls.kill(p, libc::SIGTERM, 0).await, Ok(0));
    assert_eq!(calls.event().await, Event { proc: 1, signal: libc::SIGTERM, ..Default::default() });
    assert_eq!(calls.kill(child, libc::SIGUSR2, child).await, Ok(0), "tgkill");
    assert_eq!(calls.event().await, Event { proc: 2, signal: libc::SIGUSR2, ..Default::default() });
    assert_eq!(calls.kill(p, 0, 0).await, Ok(0), "signal 0 only checks");
    assert!(alive(p) && alive(child));

    // SIGSTOP and SIGKILL cannot be caught: the agent sees them by waiting.
    wait_ready(child).await;
    home_kill(child, libc::SIGSTOP);
    assert_eq!(calls.event().await, Event { proc: 2, signal: libc::SIGSTOP, ..Default::default() });
    home_kill(child, libc::SIGCONT);
    assert_eq!(calls.event().await, Event { proc: 2, signal: libc::SIGCONT, ..Default::default() });
    let (third, _) = calls.identity(proc(3, 1)).await;
    home_kill(third, libc::SIGKILL);
    assert_eq!(calls.event().await, Event { proc: 3, signal: libc::SIGKILL, ..Default::default() });
    wait_gone(&[third], Duration::from_secs(5)).await;

    // Deputies end with their processes.
    calls.forget(1, Some(forget_proc::End::ExitCode(7))).await;
    calls.forget(2, Some(forget_proc::End::KilledBy(libc::SIGTERM))).await;
    wait_gone(&[p, child], Duration::from_secs(5)).await;
    assert!(calls.events.is_empty(), "no events for ordered ends: {:?}", calls.events);
}

/// A spare deputy is started for a proc id with no state yet; the proc's first call, as a child of
/// another, adopts it (same pid, parent's deputy as parent, parent's cwd copied then); a signal sent to it
/// before is an event for its proc; spares nobody adopted end with the session.
#[tokio::test]
async fn a_spare_deputy_is_adopted_by_its_procs_first_call() {
    let mut client = client().await;
    let mut calls = Calls::open(&mut client).await;
    let (parent, _) = calls.identity(proc(1, 0)).await;
    let adopted = calls.spare(2).await.expect("a spare");
    let unused = calls.spare(3).await.expect("another spare");
    assert_eq!(calls.spare(2).await, Err(Errno::EINVAL), "proc 2 has one");
    assert_eq!(calls.spare(1).await, Err(Errno::EINVAL), "proc 1 has a deputy");
    wait_ready(adopted).await;
    let cmdline = std::fs::read(format!("/proc/{adopted}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"homeward-deputy[2]: "), "{cmdline:?}");
    home_kill(adopted, libc::SIGUSR1);
    assert_eq!(calls.event().await, Event { proc: 2, signal: libc::SIGUSR1, ..Default::default() });
    // The parent moves before its child's first call: the child starts where the parent is then.
    let dir = std::env::temp_dir();
    let chdir = Op::Chdir(pb::Chdir {
        dir: Some(pb::Dir { handle: 0 }),
        path: dir.to_str().unwrap().as_bytes().to_vec().into(),
    });
    assert_eq!(calls.call(proc(1, 0), chdir).await, Ok(0));
    assert_eq!(calls.identity(proc(2, 1)).await, (adopted, parent), "adopted as proc 1's child");
    let getcwd = calls.reply(proc(2, 1), Op::Getcwd(pb::Getcwd { size: 4096, lease: false })).await;
    assert_eq!(getcwd.data, dir.to_str().unwrap().as_bytes(), "{getcwd:?}");
    assert!(alive(unused));
    calls.goodbye().await;
    wait_gone(&[parent, adopted, unused], Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_programs_kills_run_at_home_with_homes_errno() {
    let mut client = client().await;
    let mut calls = Calls::open(&mut client).await;
    let mut sleep = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    assert_eq!(calls.kill(sleep.id() as i32, libc::SIGTERM, 0).await, Ok(0));
    assert_eq!(sleep.wait().unwrap().signal(), Some(libc::SIGTERM));
    assert_eq!(calls.kill(0x3fff_ffff, libc::SIGTERM, 0).await, Err(ESRCH));
    assert_eq!(calls.kill(0x3fff_ffff, libc::SIGTERM, 0x3fff_ffff).await, Err(ESRCH));
    assert_eq!(calls.kill(-1, libc::SIGTERM, 0).await, Err(Errno::EPERM), "kill everything");
    assert_eq!(calls.kill(0, libc::SIGTERM, 0).await, Err(Errno::EPERM), "the agent's group");
    let agent = std::process::id() as i32;
    assert_eq!(calls.kill(agent, libc::SIGTERM, 0).await, Err(Errno::EPERM), "the agent itself");
    assert_eq!(calls.kill(agent, libc::SIGTERM, agent).await, Err(Errno::EPERM), "the agent's thread");
    assert_eq!(calls.kill(1, 65, 0).await, Err(Errno::EINVAL));
    assert_eq!(calls.kill(1, -1, 0).await, Err(Errno::EINVAL));
    assert!(calls.events.is_empty());
}

#[tokio::test]
async fn another_sessions_deputy_is_just_a_home_process() {
    let mut client = client().await;
    let mut first = Calls::open(&mut client).await;
    let mut second = Calls::open(&mut client).await;
    let (theirs, _) = first.identity(proc(1, 0)).await;
    wait_ready(theirs).await;
    assert_eq!(second.kill(theirs, libc::SIGUSR2, 0).await, Ok(0));
    // The signal landed on the deputy, which forwarded it to its own job.
    assert_eq!(first.event().await, Event { proc: 1, signal: libc::SIGUSR2, ..Default::default() });
    assert!(second.events.is_empty());
    assert!(alive(theirs));
}

#[tokio::test]
async fn a_confined_session_cannot_name_another_sessions_deputies() {
    let mut client = client_allowing(&["/"]).await;
    let mut first = Calls::open(&mut client).await;
    let mut second = Calls::open(&mut client).await;
    let (theirs, _) = first.identity(proc(1, 0)).await;
    let (mine, _) = second.identity(proc(1, 0)).await;
    wait_ready(theirs).await;
    assert_eq!(second.kill(theirs, libc::SIGUSR2, 0).await, Err(ESRCH));
    assert_eq!(second.kill(theirs, 0, 0).await, Err(ESRCH), "not even its existence");
    assert_eq!(second.kill(-theirs, libc::SIGUSR2, 0).await, Err(ESRCH), "its process group");
    assert_eq!(second.kill(theirs, libc::SIGUSR2, theirs).await, Err(ESRCH), "tgkill");
    // Its own deputies and ordinary home processes are as unconfined.
    assert_eq!(second.kill(mine, libc::SIGUSR1, 0).await, Ok(0));
    assert_eq!(second.event().await, Event { proc: 1, signal: libc::SIGUSR1, ..Default::default() });
    let mut sleep = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    assert_eq!(second.kill(sleep.id() as i32, libc::SIGTERM, 0).await, Ok(0));
    assert_eq!(sleep.wait().unwrap().signal(), Some(libc::SIGTERM));
    assert!(first.events.is_empty() && alive(theirs));
}

#[tokio::test]
async fn deputies_go_when_the_stream_ends() {
    let mut client = client().await;
    let mut calls = Calls::open(&mut client).await;
    let mut pids = Vec::new();
    for id in 1..=4 {
        pids.push(calls.identity(proc(id, 1)).await.0);
    }
    // A stopped deputy cannot read end of file: it must go all the same.
    wait_ready(pids[3]).await;
    home_kill(pids[3], libc::SIGSTOP);
    assert_eq!(calls.event().await, Event { proc: 4, signal: libc::SIGSTOP, ..Default::default() });
    assert!(pids.iter().all(|&pid| alive(pid)));
    calls.goodbye().await;
    wait_gone(&pids, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn deputies_go_within_seconds_when_the_stream_breaks() {
    let mut client = client().await;
    let mut calls = Calls::open(&mut client).await;
    let pid = calls.identity(proc(1, 0)).await.0;
    // No goodbye: home waits a few seconds for a stream that resumes the session, then closes it.
    drop(calls);
    drop(client);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(alive(pid), "a broken stream is waited for");
    wait_gone(&[pid], Duration::from_secs(10)).await;
}

#[tokio::test]
async fn housekeeping_proc_zero_has_no_deputy() {
    let mut client = client().await;
    let mut calls = Calls::open(&mut client).await;
    let reply = calls.reply(proc(0, 0), Op::Identity(pb::Identity::default())).await;
    assert_eq!(reply.outcome.unwrap().to_result(), Err(ESRCH));
    // Forgetting a proc that never called is fine.
    calls.forget(9, None).await;
}

/// The agent's children whose `comm` is `name`.
fn children_named(name: &str) -> Vec<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let comm = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map(|(c, _)| c);
            let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1));
            comm == Some(name) && ppid == Some(&me)
        })
        .collect()
}

#[tokio::test]
async fn deputies_come_from_the_starter_and_by_exec_once_it_is_gone() {
    let mut client = client().await;
    let mut calls = Calls::open(&mut client).await;
    let (first, _) = calls.identity(proc(1, 0)).await;
    wait_ready(first).await;
    // The deputy is the agent's child (cloned with CLONE_PARENT by the starter, another child).
    assert!(children_named("homeward-deputy").contains(&first));
    let starters = children_named("homeward-starts");
    assert!(!starters.is_empty(), "no deputy starter among the agent's children");
    for starter in starters {
        home_kill(starter, libc::SIGKILL);
    }
    // The next deputy is started by exec, and is a deputy in every way.
    let (second, ppid) = calls.identity(proc(2, 1)).await;
    assert_eq!(ppid, first);
    wait_ready(second).await;
    let cmdline = std::fs::read(format!("/proc/{second}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"homeward-deputy[2]: deputy test with a newline\0"), "{cmdline:?}");
    home_kill(second, libc::SIGUSR1);
    assert_eq!(calls.event().await, Event { proc: 2, signal: libc::SIGUSR1, ..Default::default() });
    home_kill(first, libc::SIGUSR2);
    assert_eq!(calls.event().await, Event { proc: 1, signal: libc::SIGUSR2, ..Default::default() });
    calls.goodbye().await;
    wait_gone(&[first, second], Duration::from_secs(5)).await;
}
