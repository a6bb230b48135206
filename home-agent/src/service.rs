//! The tonic `Home` service: `Hello` opens a session, `Calls` runs its call stream.
//!
//! A session waits in `pending` from `Hello` until its `Calls` stream takes it (or [`ATTACH_TIMEOUT`]
//! passes). The stream owns it from then on: each request runs on its own blocking thread and its reply
//! goes out as soon as it is done (completion order); events (signals sent at home to the processes'
//! deputies) go out on the same stream with `seq` 0. When the client is gone the session is closed: its
//! handles are dropped (releasing their locks), its deputies are killed, and calls still blocked at home
//! are interrupted.

use crate::deputies::Replies;
use crate::exec;
use crate::session::Session;
use crate::sys;
use homeward_proto::pb::home_server::Home;
use homeward_proto::pb::{CallReply, CallRequest, HelloReply, HelloRequest, Outcome};
use homeward_proto::{Errno, PROTOCOL_VERSION, SESSION_METADATA};
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info, instrument};

/// How long a session waits for its `Calls` stream after `Hello`.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// Most characters of a session's description kept: it is free text for logs and deputies' names.
const MAX_DESCRIPTION: usize = 256;
/// Most bytes of a cwd shown in a refusal (the client sent it; no need to send a huge one back).
const MAX_SHOWN: usize = 256;

/// Replies queued for a slow client before calls wait to send theirs.
const REPLY_QUEUE: usize = 256;
/// How often calls still running in a closed session are interrupted again.
const INTERRUPT_EVERY: Duration = Duration::from_millis(10);

type Pending = Arc<Mutex<HashMap<u64, Arc<Session>>>>;

pub struct HomeService {
    pending: Pending,
    host: String,
}

fn lock(pending: &Pending) -> MutexGuard<'_, HashMap<u64, Arc<Session>>> {
    pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Default for HomeService {
    fn default() -> HomeService {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "home".to_string());
        HomeService { pending: Arc::default(), host }
    }
}

/// The session id named by the `homeward-session` metadata (decimal, or hex with `0x`).
fn session_id<T>(request: &Request<T>) -> Result<u64, Status> {
    let value = request
        .metadata()
        .get(SESSION_METADATA)
        .ok_or_else(|| Status::invalid_argument(format!("missing `{SESSION_METADATA}` metadata")))?;
    let text = value.to_str().unwrap_or_default();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed
        .map_err(|_| Status::invalid_argument(format!("`{SESSION_METADATA}` is not a session id: {text:?}")))
}

#[tonic::async_trait]
impl Home for HomeService {
    #[instrument(skip_all, fields(description))]
    async fn hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let mut hello = request.into_inner();
        if let Some((cut, _)) = hello.description.char_indices().nth(MAX_DESCRIPTION) {
            hello.description.truncate(cut);
        }
        tracing::Span::current().record("description", hello.description.as_str());
        if hello.version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not supported: this home-agent speaks version {PROTOCOL_VERSION}",
                hello.version
            )));
        }
        let shown = String::from_utf8_lossy(&hello.cwd[..hello.cwd.len().min(MAX_SHOWN)]).into_owned();
        if hello.cwd.first() != Some(&b'/') {
            return Err(Status::invalid_argument(format!("the cwd {shown:?} is not an absolute path")));
        }
        if hello.cwd.len() >= libc::PATH_MAX as usize {
            return Err(Status::invalid_argument(format!(
                "the cwd {shown:?}... is longer than PATH_MAX ({}): start in a shorter path",
                libc::PATH_MAX
            )));
        }
        let path = CString::new(hello.cwd.to_vec())
            .map_err(|_| Status::invalid_argument("the cwd contains a NUL byte"))?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        let cwd = tokio::task::spawn_blocking(move || sys::open(&path, flags))
            .await
            .map_err(|e| Status::internal(format!("opening the cwd failed: {e}")))?
            .map_err(|e| match e {
                Errno::ENOENT => Status::failed_precondition(format!(
                    "the directory {shown} does not exist at home: create it at home or start elsewhere"
                )),
                Errno::ENOTDIR => Status::failed_precondition(format!("{shown} is not a directory at home")),
                e => Status::failed_precondition(format!("cannot use {shown} as the cwd at home: {e}")),
            })?;

        let id = {
            let mut pending = lock(&self.pending);
            let id = loop {
                let id = sys::random_u64().map_err(|e| Status::internal(format!("getrandom failed: {e}")))?;
                if id != 0 && !pending.contains_key(&id) {
                    break id;
                }
            };
            let session = Session::new(id, cwd, hello.umask)
                .with_deputies(&hello.description, tokio::runtime::Handle::current());
            pending.insert(id, Arc::new(session));
            id
        };
        info!(session = %format_args!("{id:016x}"), cwd = %shown, "session opened");
        let pending = self.pending.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ATTACH_TIMEOUT).await;
            if lock(&pending).remove(&id).is_some() {
                info!(session = %format_args!("{id:016x}"), "session dropped: no call stream came");
            }
        });
        Ok(Response::new(HelloReply { session: id, version: PROTOCOL_VERSION, home_host: self.host.clone() }))
    }

    type CallsStream = ReceiverStream<Result<CallReply, Status>>;

    async fn calls(
        &self,
        request: Request<Streaming<CallRequest>>,
    ) -> Result<Response<Self::CallsStream>, Status> {
        let id = session_id(&request)?;
        let session = lock(&self.pending).remove(&id).ok_or_else(|| {
            Status::not_found(format!(
                "unknown session {id}: call Hello first (a session takes exactly one Calls stream)"
            ))
        })?;
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        session.attach(tx.clone());
        tokio::spawn(run_session(session, request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Runs a session's stream to its end, then closes the session.
#[instrument(skip_all, fields(session = %format_args!("{:016x}", session.id)))]
async fn run_session(session: Arc<Session>, mut inbound: Streaming<CallRequest>, tx: Replies) {
    let mut calls = JoinSet::new();
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(request)) => {
                    calls.spawn(call(session.clone(), request, tx.clone()));
                }
                Ok(None) => break,
                Err(status) => {
                    debug!(%status, "call stream failed");
                    break;
                }
            },
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
            () = tx.closed() => break,
        }
    }
    // The client stopped sending: answer what is running unless it stopped listening too.
    tokio::select! {
        () = async { while calls.join_next().await.is_some() {} } => {}
        () = tx.closed() => {}
    }
    // Closing descriptors can block (a network file system flushing): not on an async worker.
    let closing = session.clone();
    match tokio::task::spawn_blocking(move || closing.close()).await {
        Err(err) if err.is_panic() => error!(cause = %err, "closing the session failed"),
        // The runtime is shutting down (an in-process agent whose remote-shim is exiting): the process's
        // exit closes every descriptor, and deputies end on their control socket's end of file.
        Err(err) => debug!(cause = %err, "closing the session was cut short"),
        Ok(()) => {}
    }
    while session.interrupt() > 0 {
        tokio::time::sleep(INTERRUPT_EVERY).await;
    }
    info!("session closed");
}

/// Runs one call (on a blocking thread when it may wait) and sends its reply.
async fn call(session: Arc<Session>, request: CallRequest, tx: Replies) {
    let leases = session.leases.clone();
    let changes_files = request.op.as_ref().is_some_and(|op| !homeward_proto::effects::changes_nothing(op));
    let seq = request.seq;
    let op = exec::op_name(request.op.as_ref());
    let ran = if exec::may_block(&session, &request) {
        tokio::task::spawn_blocking(move || session.run(|| exec::execute(&session, &request)))
            .await
            .map_err(|e| e.to_string())
    } else {
        // Caught like spawn_blocking catches it: an executor bug is answered, never left hanging.
        let inline = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            session.run(|| exec::inline(|| exec::execute(&session, &request)))
        }));
        match inline {
            Ok(Some(reply)) if reply.outcome.is_some_and(|o| o.to_result() == Err(exec::RETRY_BLOCKING)) => {
                tokio::task::spawn_blocking(move || session.run(|| exec::execute(&session, &request)))
                    .await
                    .map_err(|e| e.to_string())
            }
            Ok(reply) => Ok(reply),
            Err(_) => Err("the executor panicked".to_string()),
        }
    };
    let reply = match ran {
        Ok(Some(reply)) => reply,
        // The session closed before the call ran: nobody is listening.
        Ok(None) => return,
        Err(err) => {
            // An executor bug: answer rather than leave the program's thread waiting forever.
            error!(seq, op, cause = %err, "executor failed; answering EIO");
            CallReply { seq, outcome: Some(Outcome::errno(Errno::EIO)), ..Default::default() }
        }
    };
    debug!(seq, op, outcome = ?reply.outcome.map(|o| o.to_result()), "call done");
    // What the call changed at home (inotify reports it as it happens) goes out before its reply.
    if changes_files {
        if let Some(report) = leases.report_now() {
            let _ = tx.send(Ok(report)).await;
        }
    }
    let _ = tx.send(Ok(reply)).await;
}
