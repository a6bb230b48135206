//! The tonic `Home` service: `Hello` opens a session, `Calls` runs its call stream.
//!
//! A session lives in `sessions` from `Hello` until it closes. Its first `Calls` stream must come within
//! [`ATTACH_TIMEOUT`]. Each request runs on its own task (on a blocking thread when it may wait) and its
//! reply goes out through the session's outbox as soon as it is done (completion order); events (signals
//! sent at home to the processes' deputies, lease reports) go out on the same stream with `seq` 0.
//!
//! A stream that ends cleanly (the shim closed it) closes the session: its handles are dropped (releasing
//! their locks), its deputies are killed, and calls still blocked at home are interrupted. A stream that
//! breaks leaves the session waiting for a `Calls` stream that resumes it (metadata `homeward-resume`):
//! for [`VANISHED_GRACE`] when the client's connection closed (a killed remote-shim), for the time the shim
//! asked in `Hello` when the link went silent (a cut cable). Calls go on running meanwhile; their replies
//! wait in the outbox.

use crate::confine::{self, Allow};
use crate::exec;
use crate::outbox::{Admit, Stream};
use crate::session::Session;
use crate::sys;
use homeward_proto::pb::home_server::Home;
use homeward_proto::pb::{CallReply, CallRequest, HelloReply, HelloRequest, Outcome};
use homeward_proto::{Errno, PROTOCOL_VERSION, RESUME_KEY_METADATA, RESUME_METADATA, SESSION_METADATA};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info, instrument, warn};

/// Most sessions one agent holds at once (each holds descriptors, a deputy per process, an inotify
/// instance): one more `Hello` is refused.
pub const MAX_SESSIONS: usize = 1024;
/// How long a session waits for its first `Calls` stream after `Hello`.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a session whose client's connection closed waits to be resumed: a remote-shim that was killed
/// is cleaned up within seconds, one whose old connection closed as it reconnected has time to.
pub const VANISHED_GRACE: Duration = Duration::from_secs(5);
/// The longest a session whose link went silent waits to be resumed, whatever the shim asked for.
pub const MAX_RESUME_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Most characters of a session's description kept: it is free text for logs and deputies' names.
const MAX_DESCRIPTION: usize = 256;
/// Most bytes of a cwd shown in a refusal (the client sent it; no need to send a huge one back).
const MAX_SHOWN: usize = 256;

/// Replies queued for a slow client before calls wait to send theirs.
const REPLY_QUEUE: usize = 256;
/// How often calls still running in a closed session are interrupted again.
const INTERRUPT_EVERY: Duration = Duration::from_millis(10);

/// The sessions open at home, by id.
type Sessions = Arc<Mutex<HashMap<u64, Live>>>;

/// A session, how long it may wait for a resumed stream after its link went silent, and the key a
/// resuming stream must present.
#[derive(Clone)]
struct Live {
    session: Arc<Session>,
    resume_wait: Duration,
    resume_key: u64,
}

pub struct HomeService {
    sessions: Sessions,
    host: String,
    /// `--allow`: every session is confined to these directories.
    allow: Option<Arc<Allow>>,
}

fn lock(sessions: &Sessions) -> MutexGuard<'_, HashMap<u64, Live>> {
    sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HomeService {
    pub fn new(allow: Option<Arc<Allow>>) -> HomeService {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "home".to_string());
        let sessions: Sessions = Arc::default();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch_mounts(Arc::downgrade(&sessions)));
        }
        HomeService { sessions, host, allow }
    }
}

/// How many [`watch_mounts`] watch home's mounts: only then are access checks for writing leased, since a
/// file system remounted read-only changes them without any watch reporting it.
static MOUNT_WATCHERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether home's mounts are watched (see [`MOUNT_WATCHERS`]).
pub fn mounts_watched() -> bool {
    MOUNT_WATCHERS.load(std::sync::atomic::Ordering::SeqCst) > 0
}

/// Voids every session's leases whenever home's mount table changes (`/proc/self/mountinfo` polls as
/// priority data then): a mount over a directory, or a file system made read-only, changes lookups and
/// access checks without any watch reporting it.
async fn watch_mounts(sessions: std::sync::Weak<Mutex<HashMap<u64, Live>>>) {
    let Ok(file) = std::fs::File::open("/proc/self/mountinfo") else { return };
    let Ok(mounts) = crate::sys::async_fd_priority(file) else { return };
    MOUNT_WATCHERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    loop {
        let Ok(mut ready) = mounts.ready(tokio::io::Interest::PRIORITY).await else { break };
        ready.clear_ready();
        let Some(sessions) = sessions.upgrade() else { break };
        let live: Vec<Arc<Session>> = lock(&sessions).values().map(|l| l.session.clone()).collect();
        debug!(sessions = live.len(), "home's mounts changed: every lease is void");
        // Each on its own task: a session whose link is slow must not hold back the others' reports.
        for session in live {
            tokio::spawn(async move { session.leases.mounts_changed().await });
        }
    }
    MOUNT_WATCHERS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
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
        let allow = self.allow.clone();
        let confined = allow.is_some();
        let cwd = tokio::task::spawn_blocking(move || match &allow {
            Some(allow) => {
                sys::open(c"/", flags).and_then(|top| allow.open_dir(top.as_fd(), path.as_bytes()))
            }
            None => sys::open(&path, flags),
        })
        .await
        .map_err(|e| Status::internal(format!("opening the cwd failed: {e}")))?
        .map_err(|e| match e {
            Errno::ENOENT => Status::failed_precondition(format!(
                "the directory {shown} does not exist at home: create it at home or start elsewhere"
            )),
            Errno::ENOTDIR => Status::failed_precondition(format!("{shown} is not a directory at home")),
            confine::OUTSIDE if confined => Status::permission_denied(format!(
                "cannot use {shown} as the cwd at home: it is outside the directories this home-agent \
                     allows (--allow), or not searchable: start in an allowed directory"
            )),
            e => Status::failed_precondition(format!("cannot use {shown} as the cwd at home: {e}")),
        })?;

        let resume_wait =
            Duration::from_secs(hello.resume_seconds.into()).clamp(VANISHED_GRACE, MAX_RESUME_WAIT);
        let (id, session, resume_key) = {
            let mut sessions = lock(&self.sessions);
            if sessions.len() >= MAX_SESSIONS {
                warn!("refusing a session: {MAX_SESSIONS} are open");
                return Err(Status::resource_exhausted(format!(
                    "home-agent serves {MAX_SESSIONS} sessions already (each job is one): try again when some end"
                )));
            }
            let id = loop {
                let id = sys::random_u64().map_err(|e| Status::internal(format!("getrandom failed: {e}")))?;
                if id != 0 && !sessions.contains_key(&id) {
                    break id;
                }
            };
            let session = Arc::new(
                Session::new(id, cwd, hello.umask)
                    .with_allow(self.allow.clone())
                    .with_deputies(&hello.description, tokio::runtime::Handle::current()),
            );
            let resume_key =
                sys::random_u64().map_err(|e| Status::internal(format!("getrandom failed: {e}")))?;
            sessions.insert(id, Live { session: session.clone(), resume_wait, resume_key });
            (id, session, resume_key)
        };
        info!(session = %format_args!("{id:016x}"), cwd = %shown, "session opened");
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ATTACH_TIMEOUT).await;
            if session.outbox.generation() == 0 {
                info!(session = %format_args!("{id:016x}"), "session dropped: no call stream came");
                close(&sessions, &session, 0).await;
            }
        });
        Ok(Response::new(HelloReply {
            session: id,
            version: PROTOCOL_VERSION,
            home_host: self.host.clone(),
            resume_key,
            chowns: may_chown(),
            home_id: home_id(),
        }))
    }

    type CallsStream = ReceiverStream<Result<CallReply, Status>>;

    async fn calls(
        &self,
        request: Request<Streaming<CallRequest>>,
    ) -> Result<Response<Self::CallsStream>, Status> {
        let id = session_id(&request)?;
        let resume = match request.metadata().get(RESUME_METADATA) {
            None => None,
            Some(value) => {
                Some(value.to_str().ok().and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
                    Status::invalid_argument(format!("`{RESUME_METADATA}` is not a message number"))
                })?)
            }
        };
        let live = lock(&self.sessions).get(&id).cloned().ok_or_else(|| {
            Status::not_found(format!("unknown session {id:016x}: it was closed, or home-agent restarted"))
        })?;
        if resume.is_some() {
            let key = request.metadata().get(RESUME_KEY_METADATA).map(|v| v.as_bytes()).unwrap_or_default();
            let expected = format!("{:016x}", live.resume_key);
            if !crate::auth::constant_time_eq(key, expected.as_bytes()) {
                return Err(Status::permission_denied(format!(
                    "`{RESUME_KEY_METADATA}` does not match session {id:016x}'s: only its own shim resumes it"
                )));
            }
        }
        let session = live.session;
        if resume.is_none() && session.outbox.generation() != 0 {
            return Err(Status::failed_precondition(format!(
                "session {id:016x} has its call stream already (a stream that resumes it says `{RESUME_METADATA}`)"
            )));
        }
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        // In one step with the outbox's: leases report to the stream the outbox sends to.
        let mut forget = None;
        let generation = session
            .outbox
            .attach(tx.clone(), resume.unwrap_or(0), || match resume {
                Some(_) => forget = Some(session.leases.resume(tx.clone())),
                None => session.leases.attach(tx.clone()),
            })
            .ok_or_else(|| Status::not_found(format!("session {id:016x} is closed")))?;
        if resume.is_some() {
            info!(session = %format_args!("{id:016x}"), generation, "call stream resumed");
        }
        let sessions = self.sessions.clone();
        // Resent alongside the new requests: a shim that waits to send its requests until it has read
        // replies, or the reverse, never deadlocks with home.
        let outbox = session.outbox.clone();
        tokio::spawn(async move { outbox.resend(generation, forget).await });
        tokio::spawn(run_session(sessions, session, request.into_inner(), tx, generation, live.resume_wait));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// How a call stream ended.
enum Ended {
    /// The shim said goodbye: the job is over.
    Closed,
    /// The client's connection failed (a killed remote-shim, or an old connection of a shim that
    /// reconnected): resumed within seconds or never.
    Vanished(String),
    /// The stream ended without a goodbye (home's keep-alive pings went unanswered and the connection was
    /// shut down, or the shim gave up an attempt to resume): the shim may come back.
    Silent(String),
}

/// Runs one call stream of a session; when it is the session's last, closes the session or waits for a
/// stream that resumes it.
#[instrument(skip_all, fields(session = %format_args!("{:016x}", session.id), generation))]
async fn run_session(
    sessions: Sessions,
    session: Arc<Session>,
    mut inbound: Streaming<CallRequest>,
    tx: Stream,
    generation: u64,
    resume_wait: Duration,
) {
    let mut listening = true;
    let ended = loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = tx.closed(), if listening => {
                // The client stopped reading: what its request side says next tells why.
                listening = false;
                continue;
            }
        };
        match message {
            Ok(Some(request)) if request.seq == 0 => break Ended::Closed,
            Ok(Some(request)) => admit(&session, generation, request).await,
            Ok(None) => break Ended::Silent("the call stream ended without a goodbye".into()),
            Err(status) => break Ended::Vanished(status_text(&status)),
        }
    };
    let wait = match &ended {
        Ended::Closed => {
            // The job is over: answer what is running unless the client stopped listening too.
            tokio::select! {
                () = session.outbox.idle() => {}
                () = tx.closed() => {}
            }
            None
        }
        Ended::Vanished(cause) => Some((VANISHED_GRACE, cause)),
        Ended::Silent(cause) => Some((resume_wait, cause)),
    };
    if let Some((wait, cause)) = wait {
        if !session.outbox.detach(generation) {
            debug!("the call stream ended; a newer one took over");
            return;
        }
        info!(%cause, "call stream broke; waiting {} s for a stream to resume the session", wait.as_secs());
        tokio::time::sleep(wait).await;
        if session.outbox.generation() != generation {
            return;
        }
        info!("no stream resumed the session");
    }
    close(&sessions, &session, generation).await;
}

/// Runs one request of a stream, unless it is a duplicate, stale, or beyond the session's limits.
async fn admit(session: &Arc<Session>, generation: u64, request: CallRequest) {
    let (seq, ack, bytes) = (request.seq, request.ack, data_bytes(&request));
    match session.outbox.admit(generation, seq, ack, bytes, request.ordered) {
        // Written behind: the shim did not wait for it, so nothing read after it may run before it (the
        // shim sends behind only calls that do not wait; one that runs on a blocking thread, as a new
        // process's first call does, is waited for here all the same).
        Admit::Run if request.ordered => {
            let (reply, answer) = run(session.clone(), request).await;
            tokio::spawn(answer.send(reply));
        }
        // A call that cannot wait runs here, on the stream's reader, before the next request is read: no
        // task to start and wake (on the development VM each wake-up of another worker thread cost more than
        // the call). One that meets something that may wait after all (a fifo) goes on a blocking thread.
        Admit::Run if quick(&request) && !exec::may_block(session, &request) => {
            match run_here(session, request) {
                Ok((reply, answer)) => answer.send(reply).await,
                Err(request) => {
                    tokio::spawn(call(session.clone(), *request));
                }
            }
        }
        Admit::Run => {
            tokio::spawn(call(session.clone(), request));
        }
        Admit::Duplicate => debug!(seq = request.seq, "call sent again after a break: not run twice"),
        Admit::Stale => debug!(seq = request.seq, "call read late from a replaced stream: ignored"),
        Admit::Busy => {
            warn!(
                seq = request.seq,
                "the session runs {} calls, or calls holding {} MiB, or keeps {} MiB of replies: answering EAGAIN",
                crate::outbox::MAX_RUNNING,
                crate::outbox::MAX_RUNNING_BYTES >> 20,
                crate::outbox::MAX_KEPT_BYTES >> 20,
            );
            let errno = Outcome::errno(Errno(libc::EAGAIN as u16));
            let reply = CallReply { seq: request.seq, outcome: Some(errno), ..Default::default() };
            session.outbox.send(reply).await;
        }
    }
}

/// Whether a call is one the stream's reader runs itself (when it cannot wait): a lookup, a small read or
/// write, a change of names or attributes; not a transfer of more than 64 KiB or a listing, which run on
/// tasks of their own, so that the session's other calls go on meanwhile on the other workers.
fn quick(request: &CallRequest) -> bool {
    use homeward_proto::pb::call_request::Op;
    const SMALL: u64 = 64 << 10;
    match &request.op {
        Some(Op::Read(read)) => read.len <= SMALL,
        Some(Op::Write(write)) => write.data.len() as u64 <= SMALL,
        Some(Op::CopyRange(_) | Op::Getdents(_)) => false,
        _ => true,
    }
}

/// The bytes of data a request carries, or asks for (held while it runs).
fn data_bytes(request: &CallRequest) -> usize {
    use homeward_proto::pb::call_request::Op;
    let asked = |len: u64| usize::try_from(len).unwrap_or(usize::MAX).min(exec::MAX_BUF);
    match &request.op {
        Some(Op::Write(write)) => write.data.len(),
        Some(Op::Xattr(xattr)) => xattr.value.len(),
        Some(Op::Read(read)) => asked(read.len),
        _ => 0,
    }
}

/// Whether the agent may change any file's owner: `CAP_CHOWN` (capability 0 of `linux/capability.h`) in
/// the initial user namespace (in another one it covers only the files whose owners it maps).
fn may_chown() -> bool {
    let initial = std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|map| map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]);
    initial && crate::sys::has_capability(0)
}

/// Home's machine id (`/etc/machine-id`, made once per installation), read once; empty when there is none.
fn home_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
        let id = id.trim();
        if homeward_proto::is_machine_id(id) {
            id.to_string()
        } else {
            String::new()
        }
    })
    .clone()
}

/// A status and its innermost cause, for logs.
fn status_text(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if cause.source().is_none() {
            text.push_str(": ");
            text.push_str(&cause.to_string());
        }
        source = cause.source();
    }
    text
}

/// Closes a session for good and forgets it, unless a stream newer than `generation` (0: none) took over.
async fn close(sessions: &Sessions, session: &Arc<Session>, generation: u64) {
    if !session.outbox.close_if(generation) {
        return;
    }
    lock(sessions).remove(&session.id);
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
    info!(session = %format_args!("{:016x}", session.id), "session closed");
}

/// Runs one call (on a blocking thread when it may wait) and sends its reply.
async fn call(session: Arc<Session>, request: CallRequest) {
    let (reply, answer) = run(session, request).await;
    answer.send(reply).await;
}

/// Where a call's reply goes.
struct Answer {
    session: Arc<Session>,
    seq: u64,
}

impl Answer {
    /// Sends the reply (`None`: the session closed before the call ran, and nobody is listening). What
    /// changed at home before it (the call's own changes, and anyone else's: inotify queues them as they
    /// happen) goes out before it.
    async fn send(self, reply: Option<CallReply>) {
        let outbox = &self.session.outbox;
        let Some(reply) = reply else { return outbox.abandon(self.seq) };
        self.session.leases.report_queued(outbox).await;
        outbox.send(reply).await;
    }
}

/// Runs one call (on a blocking thread when it may wait); its reply, and where to send it.
async fn run(session: Arc<Session>, request: CallRequest) -> (Option<CallReply>, Answer) {
    if !exec::may_block(&session, &request) {
        match run_here(&session, request) {
            Ok(ran) => return ran,
            Err(request) => return run_blocking(session, *request).await,
        }
    }
    run_blocking(session, request).await
}

/// Runs a call that cannot wait on this thread; `Err` (the request back) when it met something that may
/// wait after all (`RETRY_BLOCKING`: an open that met a fifo), to be run on a blocking thread.
fn run_here(
    session: &Arc<Session>,
    request: CallRequest,
) -> Result<(Option<CallReply>, Answer), Box<CallRequest>> {
    // Caught like spawn_blocking catches it: an executor bug is answered, never left hanging.
    let inline = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        session.run(interruptible(&request), || exec::inline(|| exec::execute(session, &request)))
    }));
    let ran = match inline {
        Ok(Some(reply)) if reply.outcome.is_some_and(|o| o.to_result() == Err(exec::RETRY_BLOCKING)) => {
            return Err(Box::new(request));
        }
        Ok(reply) => Ok(reply),
        Err(_) => Err("the executor panicked".to_string()),
    };
    Ok(finish(session.clone(), request.seq, exec::op_name(request.op.as_ref()), ran))
}

/// Runs a call on a blocking thread.
async fn run_blocking(session: Arc<Session>, request: CallRequest) -> (Option<CallReply>, Answer) {
    let (seq, op, runner) = (request.seq, exec::op_name(request.op.as_ref()), session.clone());
    let ran = tokio::task::spawn_blocking(move || {
        runner.run(interruptible(&request), || exec::execute(&runner, &request))
    })
    .await
    .map_err(|e| e.to_string());
    finish(session, seq, op, ran)
}

/// The number under which `Interrupt` may reach a request: its seq if it may wait (`effects::may_wait`),
/// else 0 (none).
fn interruptible(request: &CallRequest) -> u64 {
    match &request.op {
        Some(op) if homeward_proto::effects::may_wait(op) => request.seq,
        _ => 0,
    }
}

/// A call's reply (`EIO` for an executor that failed), and where to send it.
fn finish(
    session: Arc<Session>,
    seq: u64,
    op: &'static str,
    ran: Result<Option<CallReply>, String>,
) -> (Option<CallReply>, Answer) {
    let answer = Answer { session, seq };
    let reply = match ran {
        Ok(Some(reply)) => reply,
        Ok(None) => return (None, answer),
        Err(err) => {
            // An executor bug: answer rather than leave the program's thread waiting forever.
            error!(seq, op, cause = %err, "executor failed; answering EIO");
            CallReply { seq, outcome: Some(Outcome::errno(Errno::EIO)), ..Default::default() }
        }
    };
    debug!(seq, op, outcome = ?reply.outcome.map(|o| o.to_result()), "call done");
    (Some(reply), answer)
}
