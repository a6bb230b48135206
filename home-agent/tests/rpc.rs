//! The agent over real gRPC on 127.0.0.1: sessions, the call stream, the token.

use home_agent::{AgentConfig, BoundAgent};
use homeward_proto::pb::call_request::Op;
use homeward_proto::pb::home_client::HomeClient;
use homeward_proto::pb::{self, CallReply, CallRequest, Dir, HelloRequest, Proc};
use homeward_proto::{
    flags, Errno, AUTH_METADATA, PROTOCOL_VERSION, RESUME_KEY_METADATA, RESUME_METADATA, SESSION_METADATA,
};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

const TOKEN: &str = "test-token-0123456789";

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("home-agent-rpc-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(token: Option<&str>) -> SocketAddr {
    // Every process of a session gets a deputy: the agent's binary, not this test harness.
    home_agent::deputy::set_program(env!("CARGO_BIN_EXE_home-agent"));
    let config = AgentConfig::new("127.0.0.1:0".parse().unwrap(), token.map(str::to_string));
    let agent = BoundAgent::bind(config).await.unwrap();
    let addr = agent.local_addr();
    assert_ne!(addr.port(), 0);
    tokio::spawn(agent.serve());
    addr
}

async fn client(addr: SocketAddr) -> HomeClient<Channel> {
    HomeClient::connect(format!("http://{addr}")).await.unwrap()
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(AUTH_METADATA, format!("Bearer {token}").parse().unwrap());
    request
}

fn hello(cwd: &std::path::Path) -> HelloRequest {
    HelloRequest {
        version: PROTOCOL_VERSION,
        cwd: cwd.as_os_str().as_bytes().to_vec().into(),
        umask: 0o022,
        description: "rpc test".into(),
        resume_seconds: 0,
    }
}

/// A session's open call stream.
struct Calls {
    session: u64,
    /// What a resuming stream presents.
    key: u64,
    tx: mpsc::Sender<CallRequest>,
    replies: Streaming<CallReply>,
    /// Sent as every request's `ack`.
    ack: u64,
}

impl Calls {
    async fn open(client: &mut HomeClient<Channel>, cwd: &std::path::Path) -> Calls {
        let reply = client.hello(authed(hello(cwd), TOKEN)).await.unwrap().into_inner();
        Calls::attach(client, (reply.session, reply.resume_key), None).await.unwrap()
    }

    /// A call stream for (session, resume key); `resume`: after a break, having received every message up
    /// to it.
    async fn attach(
        client: &mut HomeClient<Channel>,
        (session, key): (u64, u64),
        resume: Option<u64>,
    ) -> Result<Calls, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let mut request = authed(ReceiverStream::new(rx), TOKEN);
        request.metadata_mut().insert(SESSION_METADATA, session.to_string().parse().unwrap());
        if let Some(ack) = resume {
            request.metadata_mut().insert(RESUME_METADATA, ack.to_string().parse().unwrap());
            request.metadata_mut().insert(RESUME_KEY_METADATA, format!("{key:016x}").parse().unwrap());
        }
        let replies = client.calls(request).await?.into_inner();
        Ok(Calls { session, key, tx, replies, ack: resume.unwrap_or(0) })
    }

    async fn send(&self, seq: u64, op: Op) {
        self.send_as(seq, op, false).await;
    }

    /// Sends a request; `ordered`: to run before any later one (write-behind).
    async fn send_as(&self, seq: u64, op: Op, ordered: bool) {
        let proc = Some(Proc { id: 1, parent: 0 });
        let request = CallRequest { seq, proc, op: Some(op), ack: self.ack, ordered };
        self.tx.send(request).await.unwrap();
    }

    async fn reply(&mut self) -> CallReply {
        tokio::time::timeout(Duration::from_secs(10), self.replies.message()).await.unwrap().unwrap().unwrap()
    }

    async fn call(&mut self, seq: u64, op: Op) -> Result<i64, Errno> {
        self.send(seq, op).await;
        let reply = self.reply().await;
        assert_eq!(reply.seq, seq);
        reply.outcome.unwrap().to_result()
    }
}

fn mkfifo(path: &str) -> Op {
    Op::Mknod(pb::Mknod {
        dir: Some(Dir { handle: 0 }),
        path: path.to_string().into(),
        mode: libc::S_IFIFO | 0o600,
        dev: 0,
    })
}

fn open(path: &str, flags: i32) -> Op {
    open_with_content(path, flags, 0)
}

fn open_with_content(path: &str, flags: i32, content_max: u64) -> Op {
    let (dir, path) = (Some(Dir { handle: 0 }), path.to_string().into());
    Op::Open(pb::Open {
        dir,
        path,
        flags: flags::open_to_wire(flags),
        mode: 0o644,
        resolve: 0,
        content_max,
        lease: false,
    })
}

/// Writes sent `ordered` without waiting, each followed at once by a read of the file through another
/// handle: every read sees every write before it. Home says how much room the file system has.
#[tokio::test]
async fn ordered_writes_run_before_any_later_request() {
    let dir = TempDir::new();
    let mut client = client(start(Some(TOKEN)).await).await;
    let mut calls = Calls::open(&mut client, &dir.0).await;
    calls.send(1, open("log", libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)).await;
    let opened = calls.reply().await;
    assert!(opened.room > 0, "a local disk reports its room");
    let writer = opened.outcome.unwrap().to_result().unwrap() as u64;
    let reader = calls.call(2, open("log", libc::O_RDONLY)).await.unwrap() as u64;
    let mut seq = 3;
    for round in 0..200u64 {
        let data = format!("{round:08}");
        let write =
            pb::Write { handle: writer, data: data.clone().into_bytes().into(), offset: None, rwf: 0 };
        calls.send_as(seq, Op::Write(write), true).await;
        let read = pb::Read { handle: reader, len: 64, offset: Some(round as i64 * 8) };
        calls.send(seq + 1, Op::Read(read)).await;
        let mut got = std::collections::HashMap::new();
        for _ in 0..2 {
            let reply = calls.reply().await;
            got.insert(reply.seq, reply);
        }
        assert_eq!(got[&seq].outcome.unwrap().to_result(), Ok(8));
        assert!(got[&seq].room > 0);
        assert_eq!(
            &got[&(seq + 1)].data[..],
            data.as_bytes(),
            "round {round}: the read ran before the write"
        );
        seq += 2;
    }
}

#[tokio::test]
async fn read_only_opens_bring_small_files_whole() {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("small.txt"), b"small content").unwrap();
    let mut client = client(start(Some(TOKEN)).await).await;
    let mut calls = Calls::open(&mut client, &dir.0).await;
    let cases = [
        (libc::O_RDONLY, 1024, Some(&b"small content"[..])),
        (libc::O_RDONLY, 13, Some(&b"small content"[..])),
        (libc::O_RDONLY, 12, None),
        (libc::O_RDONLY, 0, None),
        (libc::O_RDWR, 1024, None),
        (libc::O_RDONLY | libc::O_PATH, 1024, None),
    ];
    for (seq, (flags, max, want)) in cases.into_iter().enumerate() {
        calls.send(seq as u64 + 1, open_with_content("small.txt", flags, max)).await;
        let reply = calls.reply().await;
        assert!(reply.outcome.unwrap().to_result().is_ok(), "flags {flags:o}");
        assert_eq!(reply.whole, want.is_some(), "flags {flags:o}, max {max}");
        assert_eq!(&reply.data[..], want.unwrap_or_default(), "flags {flags:o}, max {max}");
        assert_eq!(reply.stat.unwrap().size, 13);
    }
}

#[tokio::test]
async fn opening_a_fifo_waits_for_its_peer_without_holding_up_others() {
    let dir = TempDir::new();
    let mut client = client(start(Some(TOKEN)).await).await;
    let mut calls = Calls::open(&mut client, &dir.0).await;
    assert_eq!(calls.call(1, mkfifo("p")).await, Ok(0));
    // No writer yet: this open waits at home, as the kernel's would.
    calls.send(2, open_with_content("p", libc::O_RDONLY, 1024)).await;
    let here =
        pb::Stat { dir: Some(Dir { handle: 0 }), path: ".".into(), at_flags: 0, mask: 0, lease: false };
    assert_eq!(calls.call(3, Op::Stat(here)).await, Ok(0));
    calls.send(4, open("p", libc::O_WRONLY)).await;
    let mut got = [calls.reply().await, calls.reply().await];
    got.sort_by_key(|r| r.seq);
    assert_eq!(
        got.map(|r| (r.seq, r.outcome.unwrap().to_result().is_ok(), r.whole)),
        [(2, true, false), (4, true, false)]
    );
    // A fifo opened non-blocking by the program stays non-blocking: no reader, no writer.
    let flags = libc::O_WRONLY | libc::O_NONBLOCK;
    assert_eq!(calls.call(5, mkfifo("q")).await, Ok(0));
    assert_eq!(calls.call(6, open("q", flags)).await, Err(Errno(libc::ENXIO as u16)));
}

#[tokio::test]
async fn open_write_close_reaches_home() {
    let dir = TempDir::new();
    let mut client = client(start(Some(TOKEN)).await).await;
    let mut calls = Calls::open(&mut client, &dir.0).await;
    let handle =
        calls.call(1, open("out.txt", libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)).await.unwrap() as u64;
    let write = pb::Write { handle, data: b"hello home".to_vec().into(), offset: None, rwf: 0 };
    assert_eq!(calls.call(2, Op::Write(write)).await, Ok(10));
    assert_eq!(calls.call(3, Op::Close(pb::Close { handle, more: vec![] })).await, Ok(0));
    assert_eq!(std::fs::read(dir.0.join("out.txt")).unwrap(), b"hello home");
    let missing =
        pb::Stat { dir: Some(Dir { handle: 0 }), path: "nope".into(), at_flags: 0, mask: 0, lease: false };
    assert_eq!(calls.call(4, Op::Stat(missing)).await, Err(Errno::ENOENT));
    // The client says goodbye: home closes the session and ends the stream at once.
    calls.tx.send(CallRequest { seq: 0, ..Default::default() }).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(2), calls.replies.message()).await;
    assert!(end.expect("the stream ends at once").unwrap().is_none());
}

#[tokio::test]
async fn wrong_or_missing_token_is_refused_before_anything_happens() {
    let dir = TempDir::new();
    let mut client = client(start(Some(TOKEN)).await).await;
    let status = client.hello(authed(hello(&dir.0), "wrong")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client.hello(Request::new(hello(&dir.0))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let (tx, rx) = mpsc::channel(4);
    let create = CallRequest {
        seq: 1,
        proc: None,
        op: Some(open("evil", libc::O_WRONLY | libc::O_CREAT)),
        ack: 0,
        ordered: false,
    };
    tx.send(create).await.unwrap();
    let mut request = authed(ReceiverStream::new(rx), "wrong");
    request.metadata_mut().insert(SESSION_METADATA, "1".parse().unwrap());
    let status = client.calls(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0, "nothing was created");
}

#[tokio::test]
async fn sessions_need_hello_and_an_existing_cwd() {
    let dir = TempDir::new();
    let mut client = client(start(None).await).await;
    let status = client.hello(Request::new(hello(&dir.0.join("missing")))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("does not exist at home"), "{}", status.message());

    let (_tx, rx) = mpsc::channel::<CallRequest>(1);
    let mut request = Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(SESSION_METADATA, "12345".parse().unwrap());
    assert_eq!(client.calls(request).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn a_blocked_call_does_not_hold_up_others() {
    let dir = TempDir::new();
    let mut client = client(start(Some(TOKEN)).await).await;
    let mut calls = Calls::open(&mut client, &dir.0).await;
    assert_eq!(calls.call(1, mkfifo("p")).await, Ok(0));
    let handle = calls.call(2, open("p", libc::O_RDWR)).await.unwrap() as u64;
    // Nothing in the fifo yet: this read blocks at home.
    calls.send(3, Op::Read(pb::Read { handle, len: 100, offset: None })).await;
    let here =
        pb::Stat { dir: Some(Dir { handle: 0 }), path: ".".into(), at_flags: 0, mask: 0, lease: false };
    assert_eq!(calls.call(4, Op::Stat(here)).await, Ok(0));
    let write = pb::Write { handle, data: b"ping".to_vec().into(), offset: None, rwf: 0 };
    calls.send(5, Op::Write(write)).await;
    let mut got = [calls.reply().await, calls.reply().await];
    got.sort_by_key(|r| r.seq);
    assert_eq!(got[0].seq, 3);
    assert_eq!(&got[0].data[..], b"ping");
    assert_eq!(got[1].outcome.unwrap().to_result(), Ok(4));
}

#[tokio::test]
async fn a_gone_client_releases_its_locks() {
    let dir = TempDir::new();
    let addr = start(Some(TOKEN)).await;
    let lock = |handle| {
        let range = pb::LockRange { kind: pb::LockType::Write as i32, whence: 0, start: 0, len: 0, pid: 0 };
        Op::Lock(pb::Lock { handle, cmd: pb::LockCmd::Set as i32, ofd: false, range: Some(range) })
    };
    let mut first_client = client(addr).await;
    let mut first = Calls::open(&mut first_client, &dir.0).await;
    let a = first.call(1, open("f", libc::O_RDWR | libc::O_CREAT)).await.unwrap() as u64;
    assert_eq!(first.call(2, lock(a)).await, Ok(0));

    let mut second_client = client(addr).await;
    let mut second = Calls::open(&mut second_client, &dir.0).await;
    let b = second.call(1, open("f", libc::O_RDWR)).await.unwrap() as u64;
    assert_eq!(second.call(2, lock(b)).await, Err(Errno(libc::EAGAIN as u16)));

    drop(first);
    drop(first_client);
    let mut seq = 3;
    loop {
        match second.call(seq, lock(b)).await {
            Ok(0) => break,
            r => assert_eq!(r, Err(Errno(libc::EAGAIN as u16))),
        }
        assert!(seq < 500, "the lock was never released");
        seq += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn refuses_a_public_address_without_a_token() {
    let config = AgentConfig::new("0.0.0.0:0".parse().unwrap(), None);
    let err = BoundAgent::bind(config).await.err().expect("bind must refuse");
    assert!(err.to_string().contains("refusing to listen on 0.0.0.0:0 without a token"), "{err}");
}

/// A TCP relay in front of the agent whose connections can be cut, both ends closed at once: a link that
/// breaks.
struct Relay {
    addr: SocketAddr,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let added = links.clone();
        tokio::spawn(async move {
            while let Ok((mut near, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    let mut far = tokio::net::TcpStream::connect(to).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut near, &mut far).await;
                });
                added.lock().unwrap().push(link.abort_handle());
            }
        });
        Relay { addr, links }
    }

    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

#[tokio::test]
async fn a_resumed_stream_runs_nothing_twice_and_loses_no_reply() {
    let dir = TempDir::new();
    let relay = Relay::start(start(Some(TOKEN)).await).await;
    let mut client1 = client(relay.addr).await;
    let mut calls = Calls::open(&mut client1, &dir.0).await;
    // A second stream for an attached session must say it resumes it.
    let status = Calls::attach(&mut client1, (calls.session, calls.key), None).await.err().unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");

    let log =
        calls.call(1, open("log", libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND)).await.unwrap() as u64;
    assert_eq!(calls.call(2, mkfifo("fifo")).await, Ok(0));
    let fifo = calls.call(3, open("fifo", libc::O_RDWR)).await.unwrap() as u64;
    let once = Op::Write(pb::Write { handle: log, data: b"once\n".to_vec().into(), offset: None, rwf: 0 });
    let read = Op::Read(pb::Read { handle: fifo, len: 100, offset: None });
    // The write is answered, but the answer is not acknowledged; the read waits at home. Then the link breaks.
    calls.send(4, once.clone()).await;
    let reply = calls.reply().await;
    assert_eq!((reply.seq, reply.index), (4, 4));
    calls.send(5, read.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let session = (calls.session, calls.key);
    relay.cut();
    drop((calls, client1));

    // Resumed, having received messages 1 to 3: the rest comes again, after an event voiding every lease.
    let mut client2 = client(relay.addr).await;
    let status = Calls::attach(&mut client2, (0x5eed, session.1), Some(3)).await.err().unwrap();
    assert_eq!(status.code(), Code::NotFound, "{status}");
    // The session id alone (home's logs show it) does not let another client take the session over.
    let status = Calls::attach(&mut client2, (session.0, session.1 ^ 1), Some(3)).await.err().unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    let mut calls = Calls::attach(&mut client2, session, Some(3)).await.unwrap();
    let forget = calls.reply().await;
    assert!(forget.event.as_ref().is_some_and(|e| e.forget), "{forget:?}");
    let again = calls.reply().await;
    assert_eq!((again.seq, again.index, again.outcome.unwrap().to_result()), (4, 4, Ok(5)));
    // Sent again, as the shim sends every call it had no answer for at the break: neither runs twice.
    calls.send(4, once).await;
    calls.send(5, read).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::OpenOptions::new().write(true).open(dir.0.join("fifo")).unwrap().write_all(b"ping").unwrap();
    let read = calls.reply().await;
    assert_eq!((read.seq, read.outcome.unwrap().to_result(), &read.data[..]), (5, Ok(4), &b"ping"[..]));
    calls.ack = read.index;
    assert_eq!(calls.call(6, Op::Close(pb::Close { handle: log, more: vec![] })).await, Ok(0));
    assert_eq!(std::fs::read(dir.0.join("log")).unwrap(), b"once\n");
    let extra = tokio::time::timeout(Duration::from_millis(300), calls.replies.message()).await;
    assert!(extra.is_err(), "a reply too many: {extra:?}");
}

#[tokio::test]
async fn hostile_hellos_get_short_answers() {
    let dir = TempDir::new();
    let mut client = client(start(Some(TOKEN)).await).await;
    let mut long_cwd = b"/".to_vec();
    long_cwd.extend(std::iter::repeat_n(b'a', 1 << 20));
    let huge = HelloRequest { cwd: long_cwd.into(), ..hello(&dir.0) };
    let status = client.hello(authed(huge, TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().len() < 1024,
        "the refusal does not echo a megabyte: {}",
        status.message().len()
    );
    let chatty = HelloRequest { description: "x".repeat(1 << 20), ..hello(&dir.0) };
    assert!(client.hello(authed(chatty, TOKEN)).await.is_ok(), "a long description is cut, not refused");
}

#[tokio::test]
async fn one_agent_holds_a_bounded_number_of_sessions() {
    let dir = TempDir::new();
    let mut client = client(start(Some(TOKEN)).await).await;
    let mut opened = 0;
    let refused = loop {
        match client.hello(authed(hello(&dir.0), TOKEN)).await {
            Ok(_) => opened += 1,
            Err(status) => break status,
        }
        assert!(opened <= 100_000, "no limit on sessions");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("sessions already"), "{refused}");
    assert!(opened >= 1000, "only {opened} sessions");
}
