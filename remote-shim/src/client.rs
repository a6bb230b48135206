//! The RPC client: one session at home, one bidirectional call stream, replies matched to callers by `seq`.
//!
//! When the link to home is gone, a call that cannot get an answer fails with [`LinkError::Lost`]. The
//! supervisor then applies its home-loss policy: the job is ended with a clear message, and the program's
//! pending call is never answered (so it cannot act on an error that is not its own).

use homeward_proto::pb::{self, home_client::HomeClient, CallReply, CallRequest, HelloRequest};
use homeward_proto::{AUTH_METADATA, SESSION_METADATA};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub use crate::transport::LinkConfig;

/// How long connecting to home may take before remote-shim gives up (the promise to users is "within 10 s").
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

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
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<CallReply>>>>;

/// A connected session at home.
pub struct HomeLink {
    addr: String,
    session: u64,
    home_host: String,
    tx: mpsc::Sender<CallRequest>,
    pending: Pending,
    seq: AtomicU64,
    lost: Arc<AtomicBool>,
    lost_notify: Arc<Notify>,
    lost_cause: Arc<Mutex<String>>,
    events: Mutex<Option<mpsc::UnboundedReceiver<pb::Event>>>,
    /// Leased lookup answers; flushed by home's events and the job's own changes.
    pub attrs: Arc<crate::attrcache::AttrCache>,
}

impl HomeLink {
    /// Connects, authenticates, opens a session and its call stream; all within [`CONNECT_TIMEOUT`], so a home
    /// that accepts the connection but never answers is reported as unreachable too.
    pub async fn connect(link: &LinkConfig, hello: HelloRequest) -> Result<HomeLink, LinkError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Self::open(link, hello)).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Unreachable {
                addr: link.addr.clone(),
                cause: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            }),
        }
    }

    async fn open(link: &LinkConfig, hello: HelloRequest) -> Result<HomeLink, LinkError> {
        let (addr, token) = (link.addr.as_str(), link.token.as_deref());
        let unreachable = |cause: String| LinkError::Unreachable { addr: addr.to_string(), cause };
        let endpoint = link
            .endpoint()?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20);
        let channel: Channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(|e| link_error(link, &e, false).unwrap_or_else(|| unreachable(source_chain(&e))))?;
        let mut client = HomeClient::new(channel).max_decoding_message_size(64 << 20);
        let auth = token.map(|t| format!("Bearer {t}"));

        let mut req = tonic::Request::new(hello);
        add_auth(&mut req, auth.as_deref(), addr)?;
        // With TLS 1.3 a refused client certificate shows only here, after the handshake.
        let reply = client
            .hello(req)
            .await
            .map_err(|s| link_error(link, &s, true).unwrap_or_else(|| status_error(addr, s)))?
            .into_inner();

        let (tx, rx) = mpsc::channel::<CallRequest>(1024);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        add_auth(&mut req, auth.as_deref(), addr)?;
        req.metadata_mut().insert(SESSION_METADATA, MetadataValue::from(reply.session));
        let mut replies = client.calls(req).await.map_err(|s| status_error(addr, s))?.into_inner();

        let pending: Pending = Arc::default();
        let attrs: Arc<crate::attrcache::AttrCache> = Arc::default();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let lost = Arc::new(AtomicBool::new(false));
        let lost_notify = Arc::new(Notify::new());
        let lost_cause = Arc::new(Mutex::new(String::new()));
        {
            let (pending, lost, lost_notify, lost_cause, attrs) =
                (pending.clone(), lost.clone(), lost_notify.clone(), lost_cause.clone(), attrs.clone());
            tokio::spawn(async move {
                let cause = loop {
                    match replies.message().await {
                        Ok(Some(reply)) if reply.seq == 0 => match reply.event {
                            // Applied here, before any later reply is handed out: a reply sent after the
                            // flush never meets an entry the flush removed.
                            Some(event) if event.flush_epoch != 0 => attrs.flush(),
                            Some(event) if !event.changed.is_empty() => {
                                attrs.changed(event.seq, &event.changed)
                            }
                            Some(event) => {
                                let _ = events_tx.send(event);
                            }
                            None => tracing::warn!("unsolicited message from home without an event"),
                        },
                        Ok(Some(reply)) => {
                            let waiter = lock(&pending).remove(&reply.seq);
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(reply);
                            } else {
                                tracing::warn!(seq = reply.seq, "reply for no pending call");
                            }
                        }
                        Ok(None) => break "home closed the call stream".to_string(),
                        Err(status) => break format!("{}: {}", status.code(), status.message()),
                    }
                };
                *lock(&lost_cause) = cause;
                lost.store(true, Ordering::SeqCst);
                // Dropping the waiters fails every call in flight.
                lock(&pending).clear();
                lost_notify.notify_waiters();
            });
        }
        Ok(HomeLink {
            addr: addr.to_string(),
            session: reply.session,
            home_host: reply.home_host,
            tx,
            pending,
            seq: AtomicU64::new(1),
            lost,
            lost_notify,
            lost_cause,
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

    pub fn home_host(&self) -> &str {
        &self.home_host
    }

    /// Sends one call and waits for its reply.
    pub async fn call(&self, proc: pb::Proc, op: pb::call_request::Op) -> Result<CallReply, LinkError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        lock(&self.pending).insert(seq, reply_tx);
        if self.lost.load(Ordering::SeqCst) {
            lock(&self.pending).remove(&seq);
            return Err(self.lost_error());
        }
        self.attrs.before_call(proc.id, &op);
        let changed = crate::attrcache::changed_handle(&op);
        let req = CallRequest { seq, proc: Some(proc), op: Some(op) };
        if self.tx.send(req).await.is_err() {
            lock(&self.pending).remove(&seq);
            return Err(self.lost_error());
        }
        let reply = reply_rx.await.map_err(|_| self.lost_error());
        self.attrs.after_call(changed);
        reply
    }

    /// Resolves when the link is lost.
    pub async fn lost(&self) -> LinkError {
        loop {
            let notified = self.lost_notify.notified();
            if self.lost.load(Ordering::SeqCst) {
                return self.lost_error();
            }
            notified.await;
        }
    }

    fn lost_error(&self) -> LinkError {
        LinkError::Lost { addr: self.addr.clone(), cause: lock(&self.lost_cause).clone() }
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

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
