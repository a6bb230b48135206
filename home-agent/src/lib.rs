//! The home side of homeward: executes the file system calls that remote-shim forwards, against home's
//! files, and answers each with the exact value or errno home's kernel gives.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use home_agent::{AgentConfig, BoundAgent};
//! let agent = BoundAgent::bind(AgentConfig::new("127.0.0.1:0".parse()?, None)).await?;
//! println!("listening on {}", agent.local_addr());
//! agent.serve().await
//! # }
//! ```
//!
//! # Layout
//! - `service`: the gRPC `Home` service: sessions (`Hello`) and their call streams (`Calls`).
//! - `auth`: the bearer-token check (constant-time compare), run before anything at home is touched.
//! - [`tls`]: the listener's TLS: certificate, key, and the CA of required client certificates.
//! - `session`: a session's handle table and per-process cwd and umask.
//! - `outbox`: what a session sends, kept until acknowledged, and the calls it runs: a stream that breaks
//!   is resumed by a new one losing nothing and running nothing twice.
//! - `confine`: `--allow`: keeps every path a session resolves beneath the allowed directories.
//! - [`deputy`]: the deputy process that stands at home for each process of a job (its home pid, the
//!   target of signals sent at home); `deputies`: a session's deputies and the events they report.
//! - `exec`: the executors, one file per syscall family (`open`, `stat`, `dir`, `attr`, `io`, `fd`,
//!   `process`).
//! - [`idle`]: polling before a runtime worker sleeps (both binaries' runtimes; remote-shim's too).
//! - `sys`: thin safe wrappers over libc; the only module with `unsafe` code.
//! - `fuzzing` (feature `fuzzing`, hidden): the entry points of the fuzz targets in `fuzz/`.
//!
//! Clients must allow messages of [`MAX_MESSAGE_BYTES`] (tonic's default is 4 MiB), since a read or a
//! write carries up to 16 MiB.
#![deny(unsafe_code)]

mod auth;
mod confine;
mod deputies;
pub mod deputy;
mod exec;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod idle;
mod leases;
mod outbox;
mod service;
mod session;
mod sys;
pub mod tls;

use anyhow::Context;
use homeward_proto::pb::home_server::HomeServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

pub use tls::TlsConfig;

/// Largest gRPC message the agent accepts or sends: a 16 MiB read or write plus framing.
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// How often the agent pings an idle client, and how long it waits for the answer before dropping it.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Starts, on a thread of its own, what the first job would otherwise wait for: the deputies' starter
/// ([`deputy`]) and the watches of `/` and `/tmp` (whose first watch walks every name the kernel has cached
/// there). Call it once the agent is bound, after [`deputy::set_program`] if the deputies' program is set.
pub fn warm_up() {
    std::thread::spawn(|| {
        deputy::start_starter();
        leases::warm_up();
    });
}

/// Raises the process's soft limit on open files to its hard limit (every session's handles are files
/// of this one process); returns the new limit. For the `home-agent` binary only: a process that embeds
/// the agent and starts programs would pass the raised limit on to them.
pub fn raise_open_file_limit() -> anyhow::Result<u64> {
    sys::raise_nofile_limit().context("cannot raise the limit on open files (RLIMIT_NOFILE)")
}

/// How the agent listens, and what it serves.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// The bearer token clients must present; `None` accepts everyone, so it is allowed on loopback only
    /// (or when TLS requires client certificates).
    pub token: Option<String>,
    /// TLS on the listener; `None`: plaintext HTTP/2.
    pub tls: Option<TlsConfig>,
    /// `--allow`: the directories every session's paths must stay beneath (absolute paths of existing
    /// directories); empty: no confinement.
    pub allow: Vec<PathBuf>,
}

impl Default for AgentConfig {
    /// Loopback, a port chosen by the kernel, no token, no TLS, no confinement.
    fn default() -> AgentConfig {
        AgentConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), None)
    }
}

impl AgentConfig {
    /// Whether clients must prove who they are: a token, or a client certificate signed by the client CA.
    pub fn authenticates(&self) -> bool {
        self.token.is_some() || self.tls.as_ref().is_some_and(TlsConfig::requires_client_certs)
    }
}

impl AgentConfig {
    /// An unconfined agent listening on `listen`, without TLS.
    pub fn new(listen: SocketAddr, token: Option<String>) -> AgentConfig {
        AgentConfig { listen, token, tls: None, allow: Vec::new() }
    }
}

pub use confine::AllowError;

/// Why the agent refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "refusing to listen on {0} without a token: pass --token-file, require client certificates \
         (--tls-client-ca), or listen on 127.0.0.1"
    )]
    NoToken(SocketAddr),
    #[error("the token is empty: an empty token would let anyone in")]
    EmptyToken,
}

/// An agent whose listener is bound (so its address is known) but which does not serve yet.
pub struct BoundAgent {
    listener: TcpListener,
    local_addr: SocketAddr,
    token: Option<String>,
    /// The server builder, TLS already set (so a bad certificate or key fails `bind`, not `serve`).
    server: Server,
    allow: Option<Arc<confine::Allow>>,
}

impl BoundAgent {
    /// Opens the allowed directories and binds the listener; refuses a non-loopback address when clients
    /// need not authenticate (neither a token nor client certificates), and a missing allowed directory
    /// ([`AllowError`]).
    pub async fn bind(config: AgentConfig) -> anyhow::Result<BoundAgent> {
        if config.token.as_ref().is_some_and(String::is_empty) {
            return Err(BindError::EmptyToken.into());
        }
        if !config.authenticates() && !config.listen.ip().to_canonical().is_loopback() {
            return Err(BindError::NoToken(config.listen).into());
        }
        let mut server = Server::builder();
        if let Some(tls) = &config.tls {
            server = server
                .tls_config(tls.server_config())
                .map_err(|e| anyhow::anyhow!("{}", homeward_proto::text::error_chain(&e)))
                .context("the TLS certificate, key or client CA is not usable")?;
        }
        let allow = confine::Allow::new(&config.allow)?;
        sys::install_interrupt_handler();
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr().context("cannot read the listening address")?;
        Ok(BoundAgent { listener, local_addr, token: config.token, server, allow })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until the future is dropped or the listener fails.
    pub async fn serve(self) -> anyhow::Result<()> {
        let home = HomeServer::new(service::HomeService::new(self.allow))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let home = InterceptedService::new(home, auth::TokenCheck::new(self.token.as_deref()));
        // Calls are small and latency-bound: never wait for Nagle.
        let incoming = TcpListenerStream::new(self.listener).map(|conn| {
            conn.map(|stream| {
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(cause = %err, "TCP_NODELAY failed");
                }
                idle::Watched::new(stream)
            })
        });
        self.server
            // A write carries up to 16 MiB: let it flow without waiting for window updates.
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            // Writes of up to 16 MiB in few frames, not 16 KiB ones.
            .max_frame_size(1 << 20)
            // A client that vanished without closing is noticed, so its session closes and its locks go.
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(home)
            .serve_with_incoming(incoming)
            .await
            .with_context(|| format!("serving on {} failed", self.local_addr))
    }
}
