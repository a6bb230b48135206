//! The RPC client: one session at home, one bidirectional call stream at a time, replies matched to callers
//! by `seq`.
//!
//! **Breaks.** When the stream breaks (home's connection reset, keep-alive pings unanswered), the client
//! reconnects and resumes the session with a new stream, for up to [`HomeLoss::window`]. Calls waiting for
//! an answer are sent again with their `seq`; home runs each at most once and sends again the replies the
//! break swallowed (it keeps every reply until a request's `ack` covers it). Each request is sent at most
//! once per stream (`Waiting::sent_in`, under the send gate), and numbered messages received twice are
//! dropped, so a signal is never delivered twice. Cached lookups are dropped at the break: home's change
//! reports may be lost with it.
//!
//! **Loss.** Home is lost when it refuses the session (unknown session: the agent restarted; a wrong
//! token), when its port refuses connections (the agent is gone; retried under `wait:S`), or when it stays
//! silent for the whole window. A call that cannot get an answer then fails with [`LinkError::Lost`], and
//! the supervisor applies the home-loss policy.

use homeward_proto::pb::{self, home_client::HomeClient, CallReply, CallRequest, HelloRequest};
use homeward_proto::{AUTH_METADATA, RESUME_KEY_METADATA, RESUME_METADATA, SESSION_METADATA};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Streaming;

pub use crate::transport::LinkConfig;

/// How long connecting to home may take before remote-shim gives up (the promise to users is "within 10 s").
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a silent home is waited for under the `kill` and `eio` policies: a link cut of 30 s is survived.
pub const SILENT_WINDOW: Duration = Duration::from_secs(60);
/// One reconnection attempt's limit, and the pause between attempts.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Keep-alive pings on the link: a silent link is noticed within their sum.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(4);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);

/// What remote-shim does when home is lost (`--on-home-loss`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HomeLoss {
    /// End the job with a message (exit status 125). The default.
    Kill,
    /// Answer every forwarded call `EIO` from then on; the job goes on.
    Eio,
    /// Keep trying to reach home for this long (a refused port included), then end the job.
    Wait(Duration),
}

impl HomeLoss {
    /// Parses `kill`, `eio` or `wait:SECONDS`.
    pub fn parse(text: &str) -> Result<HomeLoss, String> {
        match text {
            "kill" => Ok(HomeLoss::Kill),
            "eio" => Ok(HomeLoss::Eio),
            _ => match text.strip_prefix("wait:").map(str::parse::<u32>) {
                Some(Ok(seconds)) => Ok(HomeLoss::Wait(Duration::from_secs(seconds.into()))),
                _ => Err(format!("{text:?} is not a home-loss policy: use kill, eio or wait:SECONDS")),
            },
        }
    }

    /// How long a home that does not answer is waited for.
    pub fn window(self) -> Duration {
        match self {
            HomeLoss::Wait(window) => window,
            HomeLoss::Kill | HomeLoss::Eio => SILENT_WINDOW,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot reach home at {addr}: {cause} (is home-agent running and listening there?)")]
    Unreachable { addr: String, cause: String },
    /// TLS failed, or one side has it and the other not: the cause, and what to do about it.
    #[error("cannot reach home at {addr}: {cause}{}", hint_suffix(.hint))]
    Tls { addr: String, cause: String, hint: String },
    #[error("home at {addr} refused the token: {0}", .message)]
    Unauthenticated { addr: String, message: String },
    #[error("home at {addr} refused the session: {message}")]
    Refused { addr: String, message: String },
    #[error("the link to home at {addr} is lost: {cause}")]
    Lost { addr: String, cause: String },
    /// The thread that made the call is gone (killed while its call waited at home): home was asked to
    /// interrupt it, and its reply is not waited for. Home is not lost.
    #[error("the calling thread is gone")]
    Abandoned,
}

/// A call waiting for its reply.
struct Waiting {
    request: CallRequest,
    reply: oneshot::Sender<CallReply>,
    /// The stream it was last sent on (0: none yet).
    sent_in: u64,
}

/// The current stream's sending side; calls send under this gate, so a resumption's resending and their
/// own sending never both send one request on one stream.
#[derive(Default)]
struct Gate {
    tx: Option<mpsc::Sender<CallRequest>>,
    generation: u64,
}

/// The numbered messages received: all up to `prefix`, and those above it (they may arrive out of order).
#[derive(Default)]
struct Received {
    prefix: u64,
    above: BTreeSet<u64>,
}

impl Received {
    /// Notes message `index`; false when it arrived before.
    fn note(&mut self, index: u64) -> bool {
        if index <= self.prefix || !self.above.insert(index) {
            return false;
        }
        while self.above.remove(&(self.prefix + 1)) {
            self.prefix += 1;
        }
        true
    }
}

/// How to reach home again.
struct Dial {
    link: LinkConfig,
    /// `Bearer <token>`.
    auth: Option<String>,
}

/// What the link's callers and its reader share.
struct Shared {
    dial: Dial,
    session: u64,
    /// What a resuming stream presents (`HelloReply.resume_key`).
    resume_key: u64,
    policy: HomeLoss,
    gate: tokio::sync::Mutex<Gate>,
    pending: Mutex<HashMap<u64, Waiting>>,
    /// Calls whose thread went away before their reply came ([`LinkError::Abandoned`]): a reply for one
    /// of them is expected, and dropped.
    abandoned: Mutex<std::collections::HashSet<u64>>,
    received: Mutex<Received>,
    lost: AtomicBool,
    lost_notify: Notify,
    lost_cause: Mutex<String>,
    /// The job is over and the session is being closed: a break is not mended.
    closing: AtomicBool,
    attrs: Arc<crate::attrcache::AttrCache>,
    events: mpsc::UnboundedSender<pb::Event>,
}

/// Why a stream or an attempt to resume it ended.
enum Break {
    /// Worth another attempt.
    Transient(String),
    /// Home is gone for good (it closed the session, does not know it, refused the token).
    Final(String),
    /// Home's port refused the connection: final unless the policy is to wait.
    Refused(String),
}

/// A connected session at home.
pub struct HomeLink {
    session: u64,
    home_host: String,
    home_id: String,
    /// The agent may change any file's owner (`HelloReply.chowns`).
    chowns: bool,
    shared: Arc<Shared>,
    seq: AtomicU64,
    events: Mutex<Option<mpsc::UnboundedReceiver<pb::Event>>>,
    /// Leased lookup answers; flushed by home's events and the job's own changes.
    pub attrs: Arc<crate::attrcache::AttrCache>,
}

impl HomeLink {
    /// Connects, authenticates, opens a session and its call stream; all within [`CONNECT_TIMEOUT`], so a home
    /// that accepts the connection but never answers is reported as unreachable too.
    pub async fn connect(
        link: &LinkConfig,
        hello: HelloRequest,
        policy: HomeLoss,
    ) -> Result<HomeLink, LinkError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Self::open(link, hello, policy)).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Unreachable {
                addr: link.addr.clone(),
                cause: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            }),
        }
    }

    async fn open(
        link: &LinkConfig,
        mut hello: HelloRequest,
        policy: HomeLoss,
    ) -> Result<HomeLink, LinkError> {
        let dial = Dial { link: link.clone(), auth: link.token.as_ref().map(|t| format!("Bearer {t}")) };
        let addr = link.addr.as_str();
        let mut client = dial.client(CONNECT_TIMEOUT).await?;
        hello.resume_seconds = u32::try_from(policy.window().as_secs()).unwrap_or(u32::MAX);
        let mut req = tonic::Request::new(hello);
        add_auth(&mut req, dial.auth.as_deref(), addr)?;
        // With TLS 1.3 a refused client certificate shows only here, after the handshake.
        let reply = client
            .hello(req)
            .await
            .map_err(|s| link_error(link, &s, true).unwrap_or_else(|| status_error(addr, s)))?
            .into_inner();

        let attrs: Arc<crate::attrcache::AttrCache> = Arc::default();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            dial,
            session: reply.session,
            resume_key: reply.resume_key,
            policy,
            gate: tokio::sync::Mutex::default(),
            pending: Mutex::default(),
            abandoned: Mutex::default(),
            received: Mutex::default(),
            lost: AtomicBool::new(false),
            lost_notify: Notify::new(),
            lost_cause: Mutex::default(),
            closing: AtomicBool::new(false),
            attrs: attrs.clone(),
            events: events_tx,
        });
        let replies = shared.open_stream(&mut client, None).await.map_err(|e| match e {
            Break::Transient(cause) | Break::Refused(cause) => shared.dial.unreachable(cause),
            Break::Final(message) => LinkError::Refused { addr: addr.to_string(), message },
        })?;
        tokio::spawn(shared.clone().keep(replies));
        Ok(HomeLink {
            session: reply.session,
            home_host: reply.home_host,
            home_id: reply.home_id,
            chowns: reply.chowns,
            shared,
            seq: AtomicU64::new(1),
            events: Mutex::new(Some(events_rx)),
            attrs,
        })
    }

    /// The stream of events from home (signals for the job's processes); taken once.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<pb::Event>> {
        lock(&self.events).take()
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    /// Whether the agent may change any file's owner and group (`HelloReply.chowns`).
    pub fn chowns(&self) -> bool {
        self.chowns
    }

    pub fn home_host(&self) -> &str {
        &self.home_host
    }

    /// Home's installation (`HelloReply.home_id`; empty: unknown).
    pub fn home_id(&self) -> &str {
        &self.home_id
    }

    /// What remote-shim does when home is lost.
    pub fn policy(&self) -> HomeLoss {
        self.shared.policy
    }

    /// Sends one call and waits for its reply (across breaks of the link, until home is lost).
    pub async fn call(&self, proc: pb::Proc, op: pb::call_request::Op) -> Result<CallReply, LinkError> {
        self.start(proc, op, false).await?.await
    }

    /// Sends one call to run before any call sent after it (`CallRequest.ordered`), without waiting: the
    /// returned future waits for its reply. Meant for calls that run at home without waiting (a write to a
    /// regular file, an unlock, a seek): home's reader waits for each before it reads on.
    pub async fn send_ordered(
        &self,
        proc: pb::Proc,
        op: pb::call_request::Op,
    ) -> Result<impl std::future::Future<Output = Result<CallReply, LinkError>> + Send + 'static, LinkError>
    {
        self.start(proc, op, true).await
    }

    /// [`HomeLink::call`] for a call the program's thread waits on: after `every` and then at each such
    /// interval, `signalled` says whether that thread has a signal to take; if so home is asked to
    /// interrupt the call (`Interrupt`; again at each interval while it still waits). The reply, and
    /// whether an interrupt was asked for.
    pub async fn call_interruptible(
        &self,
        proc: pb::Proc,
        op: pb::call_request::Op,
        every: Duration,
        mut signalled: impl FnMut() -> bool,
        mut gone: impl FnMut() -> bool,
    ) -> Result<(CallReply, bool), LinkError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let reply = self.start_as(seq, proc, op, false).await?;
        tokio::pin!(reply);
        let mut interrupted = false;
        loop {
            tokio::select! {
                reply = &mut reply => return reply.map(|r| (r, interrupted)),
                () = tokio::time::sleep(every) => {
                    if gone() {
                        // Nobody waits for the answer any more (a lock at home might never come): home is
                        // asked to stop, briefly, and the call forgotten here.
                        let root = pb::Proc { id: 0, parent: 0 };
                        let interrupt = pb::call_request::Op::Interrupt(pb::Interrupt { seq });
                        let asked = tokio::time::timeout(Duration::from_secs(1), self.start(root, interrupt, false));
                        drop(asked.await);
                        if lock(&self.shared.pending).remove(&seq).is_some() {
                            lock(&self.shared.abandoned).insert(seq);
                        }
                        return Err(LinkError::Abandoned);
                    }
                    if signalled() {
                        interrupted = true;
                        let root = pb::Proc { id: 0, parent: 0 };
                        let interrupt = pb::call_request::Op::Interrupt(pb::Interrupt { seq });
                        // Its own reply says only whether the call was running: not waited for.
                        drop(self.start(root, interrupt, false).await?);
                    }
                }
            }
        }
    }

    /// Sends one call; the returned future waits for its reply.
    async fn start(
        &self,
        proc: pb::Proc,
        op: pb::call_request::Op,
        ordered: bool,
    ) -> Result<impl std::future::Future<Output = Result<CallReply, LinkError>> + Send + 'static, LinkError>
    {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.start_as(seq, proc, op, ordered).await
    }

    /// [`HomeLink::start`] for a call numbered `seq` (taken from `self.seq`).
    async fn start_as(
        &self,
        seq: u64,
        proc: pb::Proc,
        op: pb::call_request::Op,
        ordered: bool,
    ) -> Result<impl std::future::Future<Output = Result<CallReply, LinkError>> + Send + 'static, LinkError>
    {
        let shared = &self.shared;
        if shared.lost.load(Ordering::SeqCst) {
            return Err(shared.lost_error());
        }
        self.attrs.before_call(proc.id, &op);
        let changed = crate::attrcache::changed_handle(&op);
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = CallRequest { seq, proc: Some(proc), op: Some(op), ack: 0, ordered };
        lock(&shared.pending).insert(seq, Waiting { request, reply: reply_tx, sent_in: 0 });
        // Losing home clears `pending` after setting `lost`: seen here, or the waiter is dropped.
        if shared.lost.load(Ordering::SeqCst) {
            lock(&shared.pending).remove(&seq);
            return Err(shared.lost_error());
        }
        shared.send(seq).await;
        let shared = shared.clone();
        let attrs = self.attrs.clone();
        Ok(async move {
            let reply = reply_rx.await.map_err(|_| shared.lost_error());
            attrs.after_call(changed);
            reply
        })
    }

    /// Ends the session: home answers the calls still running, then closes the session (its handles,
    /// locks and deputies go at once, where a link that merely broke would be waited for).
    pub async fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // Goodbye (seq 0), then the end of the request stream: a stream that just ends is a break to home.
        let tx = self.shared.gate.lock().await.tx.take();
        if let Some(tx) = tx {
            let _ = tx.send(CallRequest { seq: 0, ..Default::default() }).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.lost()).await;
    }

    /// Resolves when home is lost.
    pub async fn lost(&self) -> LinkError {
        loop {
            let notified = self.shared.lost_notify.notified();
            if self.shared.lost.load(Ordering::SeqCst) {
                return self.shared.lost_error();
            }
            notified.await;
        }
    }
}

impl Dial {
    fn unreachable(&self, cause: String) -> LinkError {
        LinkError::Unreachable { addr: self.link.addr.clone(), cause }
    }

    /// A connected client, or why not.
    async fn client(&self, timeout: Duration) -> Result<HomeClient<Channel>, LinkError> {
        let endpoint = self
            .link
            .endpoint()?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            // Home's replies of file content (2 MiB chunks) in few frames, not 16 KiB ones.
            .max_frame_size(1 << 20);
        // tonic's own connector, with the socket handed to the idle poll (`home_agent::idle`): replies
        // arriving while the runtime's worker polls are read without waking it.
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let connector = tower::ServiceBuilder::new()
            .map_response(|io: TokioIo<tokio::net::TcpStream>| {
                TokioIo::new(home_agent::idle::Watched::new(io.into_inner()))
            })
            .service(http);
        let channel: Channel = tokio::time::timeout(timeout, endpoint.connect_with_connector(connector))
            .await
            .map_err(|_| self.unreachable(format!("no answer within {} s", timeout.as_secs())))?
            .map_err(|e| {
                link_error(&self.link, &e, false)
                    .unwrap_or_else(|| self.unreachable(homeward_proto::text::error_chain(&e)))
            })?;
        Ok(HomeClient::new(channel).max_decoding_message_size(64 << 20))
    }
}

impl Shared {
    /// Opens a call stream for the session (`resume`: after a break) and sends it every call still waiting.
    async fn open_stream(
        &self,
        client: &mut HomeClient<Channel>,
        resume: Option<u64>,
    ) -> Result<Streaming<CallReply>, Break> {
        let addr = &self.dial.link.addr;
        // Room for every waiting call (one per blocked thread of the job): sending them again never waits for
        // home to read, so a resumption cannot deadlock with home sending its kept replies.
        let (tx, rx) = mpsc::channel::<CallRequest>(16384);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        add_auth(&mut req, self.dial.auth.as_deref(), addr).map_err(|e| Break::Final(e.to_string()))?;
        req.metadata_mut().insert(SESSION_METADATA, MetadataValue::from(self.session));
        if let Some(ack) = resume {
            req.metadata_mut().insert(RESUME_METADATA, MetadataValue::from(ack));
            let key = format!("{:016x}", self.resume_key);
            req.metadata_mut()
                .insert(RESUME_KEY_METADATA, key.parse().map_err(|_| Break::Final("bad key".into()))?);
        }
        let replies = client
            .calls(req)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded => {
                    Break::Transient(status.message().to_string())
                }
                _ => Break::Final(status_error(addr, status).to_string()),
            })?
            .into_inner();
        let mut gate = self.gate.lock().await;
        if self.closing.load(Ordering::SeqCst) {
            return Err(Break::Final("the session is closed".into()));
        }
        gate.generation += 1;
        gate.tx = Some(tx.clone());
        let generation = gate.generation;
        let again: Vec<CallRequest> = {
            let ack = self.ack();
            let mut pending = lock(&self.pending);
            let mut again: Vec<&mut Waiting> =
                pending.values_mut().filter(|w| w.sent_in < generation).collect();
            again.sort_by_key(|w| w.request.seq);
            again
                .into_iter()
                .map(|w| {
                    w.sent_in = generation;
                    CallRequest { ack, ..w.request.clone() }
                })
                .collect()
        };
        if !again.is_empty() {
            tracing::debug!(calls = again.len(), "sending the calls still waiting again");
        }
        for request in again {
            if tx.send(request).await.is_err() {
                break;
            }
        }
        Ok(replies)
    }

    /// Sends waiting call `seq` on the current stream, unless it was sent on it already or there is none
    /// (the next stream gets it).
    async fn send(&self, seq: u64) {
        let gate = self.gate.lock().await;
        let Some(tx) = &gate.tx else { return };
        let request = {
            let mut pending = lock(&self.pending);
            let Some(waiting) = pending.get_mut(&seq) else { return };
            if waiting.sent_in >= gate.generation {
                return;
            }
            waiting.sent_in = gate.generation;
            CallRequest { ack: self.ack(), ..waiting.request.clone() }
        };
        // A closed stream: the reader is resuming, and the resumed stream gets the call.
        let _ = tx.send(request).await;
    }

    /// Every numbered message up to this one has arrived.
    fn ack(&self) -> u64 {
        lock(&self.received).prefix
    }

    /// Reads replies and events, resuming the session after each break, until home is lost.
    async fn keep(self: Arc<Self>, mut replies: Streaming<CallReply>) {
        loop {
            let cause = match self.read(&mut replies).await {
                _ if self.closing.load(Ordering::SeqCst) => return self.lose("the session is closed".into()),
                Break::Transient(cause) => cause,
                Break::Final(cause) | Break::Refused(cause) => return self.lose(cause),
            };
            drop(replies);
            self.gate.lock().await.tx = None;
            // Home's reports of changes may be lost with the stream: no cached lookup is trusted from here.
            self.attrs.forget(0);
            let window = self.policy.window();
            eprintln!(
                "remote-shim: the link to home at {} broke ({cause}); reconnecting for up to {} s",
                self.dial.link.addr,
                window.as_secs()
            );
            let started = Instant::now();
            replies = loop {
                if self.closing.load(Ordering::SeqCst) {
                    return self.lose("the session is closed".into());
                }
                let last = match self.resume().await {
                    Ok(replies) => break replies,
                    Err(Break::Final(cause)) => return self.lose(cause),
                    Err(Break::Refused(cause)) if !matches!(self.policy, HomeLoss::Wait(_)) => {
                        return self.lose(cause)
                    }
                    Err(Break::Refused(cause) | Break::Transient(cause)) => cause,
                };
                if started.elapsed() >= window {
                    return self.lose(format!("no answer for {} s ({last})", window.as_secs()));
                }
                tokio::time::sleep(RETRY_EVERY).await;
            };
            eprintln!(
                "remote-shim: reconnected to home at {} after {:.1} s",
                self.dial.link.addr,
                started.elapsed().as_secs_f64()
            );
        }
    }

    /// One attempt to reconnect and resume the session.
    async fn resume(&self) -> Result<Streaming<CallReply>, Break> {
        let attempt = async {
            let mut client = self.dial.client(ATTEMPT_TIMEOUT).await.map_err(|e| match e {
                LinkError::Unreachable { cause, .. } if cause.contains("Connection refused") => {
                    Break::Refused(cause)
                }
                LinkError::Unreachable { cause, .. } => Break::Transient(cause),
                other => Break::Final(other.to_string()),
            })?;
            self.open_stream(&mut client, Some(self.ack())).await
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Break::Transient(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()))),
        }
    }

    /// Hands out replies and applies events until the stream ends.
    async fn read(&self, replies: &mut Streaming<CallReply>) -> Break {
        loop {
            let reply = match replies.message().await {
                Ok(Some(reply)) => reply,
                Ok(None) => return Break::Final("home closed the session".to_string()),
                Err(status) => return Break::Transient(format!("{}: {}", status.code(), status.message())),
            };
            if reply.index != 0 && !lock(&self.received).note(reply.index) {
                tracing::debug!(index = reply.index, "message received twice (sent again after a break)");
                continue;
            }
            if reply.seq != 0 {
                let waiting = lock(&self.pending).remove(&reply.seq);
                match waiting {
                    Some(waiting) => {
                        // A close's reply ends the time in which home's reports of closes are the job's
                        // own (`AttrCache::closed`): before any later report is applied.
                        if let Some(pb::call_request::Op::Close(c)) = &waiting.request.op {
                            let handles: Vec<u64> =
                                std::iter::once(c.handle).chain(c.more.iter().copied()).collect();
                            self.attrs.closed(&handles);
                        }
                        let _ = waiting.reply.send(reply);
                    }
                    None if lock(&self.abandoned).remove(&reply.seq) => {}
                    None => tracing::warn!(seq = reply.seq, "reply for no pending call"),
                }
                continue;
            }
            match reply.event {
                // Applied here, before any later reply is handed out: a reply sent after the flush never
                // meets an entry the flush removed.
                Some(event) if event.flush_epoch != 0 => self.attrs.flush(),
                Some(event) if event.forget => self.attrs.forget(event.seq),
                Some(event)
                    if !event.changed.is_empty() || !event.written.is_empty() || !event.closed.is_empty() =>
                {
                    self.attrs.changed(event.seq, &event.changed, &event.written, &event.closed)
                }
                Some(event) => {
                    let _ = self.events.send(event);
                }
                None => tracing::warn!("unsolicited message from home without an event"),
            }
        }
    }

    /// Home is lost: every waiting call fails.
    fn lose(&self, cause: String) {
        *lock(&self.lost_cause) = cause;
        self.lost.store(true, Ordering::SeqCst);
        // Dropping the waiters fails every call in flight.
        lock(&self.pending).clear();
        self.attrs.forget_closing();
        self.lost_notify.notify_waiters();
    }

    fn lost_error(&self) -> LinkError {
        LinkError::Lost { addr: self.dial.link.addr.clone(), cause: lock(&self.lost_cause).clone() }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn add_auth<T>(req: &mut tonic::Request<T>, auth: Option<&str>, addr: &str) -> Result<(), LinkError> {
    if let Some(auth) = auth {
        let value = auth.parse().map_err(|_| LinkError::Unauthenticated {
            addr: addr.to_string(),
            message: "the token contains characters that cannot travel in a header".into(),
        })?;
        req.metadata_mut().insert(AUTH_METADATA, value);
    }
    Ok(())
}

fn status_error(addr: &str, status: tonic::Status) -> LinkError {
    let addr = addr.to_string();
    match status.code() {
        tonic::Code::Unauthenticated => LinkError::Unauthenticated { addr, message: status.message().into() },
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            LinkError::Unreachable { addr, cause: status.message().to_string() }
        }
        _ => LinkError::Refused { addr, message: status.message().to_string() },
    }
}

/// A failure to connect that TLS (or its absence) explains, as a [`LinkError::Tls`].
fn link_error(
    link: &LinkConfig,
    err: &(dyn std::error::Error + 'static),
    first_call: bool,
) -> Option<LinkError> {
    let (cause, hint) = link.tls_failure(err, first_call)?;
    Some(LinkError::Tls { addr: link.addr.clone(), cause, hint })
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    }
}
