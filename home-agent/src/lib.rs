//! The home side of homeward: executes the file system calls that remote-shim forwards, against home's
//! files, and answers each with the exact value or errno home's kernel gives.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use home_agent::{AgentConfig, BoundAgent};
//! let agent = BoundAgent::bind(AgentConfig { listen: "127.0.0.1:0".parse()?, token: None }).await?;
//! println!("listening on {}", agent.local_addr());
//! agent.serve().await
//! # }
//! ```
//!
//! # Layout
//! - `service`: the gRPC `Home` service: sessions (`Hello`) and their call streams (`Calls`).
//! - `auth`: the bearer-token check (constant-time compare), run before anything at home is touched.
//! - `session`: a session's handle table and per-process cwd and umask.
//! - [`deputy`]: the deputy process that stands at home for each process of a job (its home pid, the
//!   target of signals sent at home); `deputies`: a session's deputies and the events they report.
//! - `exec`: the executors, one file per syscall family (`open`, `stat`, `dir`, `attr`, `io`, `fd`,
//!   `process`).
//! - `sys`: thin safe wrappers over libc; the only module with `unsafe` code.
//! - `fuzzing` (feature `fuzzing`, hidden): the entry points of the fuzz targets in `fuzz/`.
//!
//! Clients must allow messages of [`MAX_MESSAGE_BYTES`] (tonic's default is 4 MiB), since a read or a
//! write carries up to 16 MiB.
#![deny(unsafe_code)]

mod auth;
mod deputies;
pub mod deputy;
mod exec;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod leases;
mod service;
mod session;
mod sys;

use anyhow::Context;
use homeward_proto::pb::home_server::HomeServer;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;

/// Largest gRPC message the agent accepts or sends: a 16 MiB read or write plus framing.
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// How often the agent pings an idle client, and how long it waits for the answer before dropping it.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Raises the process's soft limit on open files to its hard limit (every session's handles are files
/// of this one process); returns the new limit. For the `home-agent` binary only: a process that embeds
/// the agent and starts programs would pass the raised limit on to them.
pub fn raise_open_file_limit() -> anyhow::Result<u64> {
    sys::raise_nofile_limit().context("cannot raise the limit on open files (RLIMIT_NOFILE)")
}

/// How the agent listens.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// The bearer token clients must present; `None` accepts everyone, so it is allowed on loopback only.
    pub token: Option<String>,
}

/// Why the agent refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("refusing to listen on {0} without a token: pass --token-file or listen on 127.0.0.1")]
    NoToken(SocketAddr),
    #[error("the token is empty: an empty token would let anyone in")]
    EmptyToken,
}

/// An agent whose listener is bound (so its address is known) but which does not serve yet.
pub struct BoundAgent {
    listener: TcpListener,
    local_addr: SocketAddr,
    token: Option<String>,
}

impl BoundAgent {
    /// Binds the listener; refuses a non-loopback address when there is no token.
    pub async fn bind(config: AgentConfig) -> anyhow::Result<BoundAgent> {
        match &config.token {
            Some(token) if token.is_empty() => return Err(BindError::EmptyToken.into()),
            None if !config.listen.ip().to_canonical().is_loopback() => {
                return Err(BindError::NoToken(config.listen).into())
            }
            _ => {}
        }
        sys::install_interrupt_handler();
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr().context("cannot read the listening address")?;
        Ok(BoundAgent { listener, local_addr, token: config.token })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until the future is dropped or the listener fails.
    pub async fn serve(self) -> anyhow::Result<()> {
        let home = HomeServer::new(service::HomeService::default())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let home = InterceptedService::new(home, auth::TokenCheck::new(self.token.as_deref()));
        // Calls are small and latency-bound: never wait for Nagle.
        let incoming = TcpListenerStream::new(self.listener).map(|conn| {
            conn.inspect(|stream| {
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(cause = %err, "TCP_NODELAY failed");
                }
            })
        });
        tonic::transport::Server::builder()
            // A write carries up to 16 MiB: let it flow without waiting for window updates.
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            // A client that vanished without closing is noticed, so its session closes and its locks go.
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(home)
            .serve_with_incoming(incoming)
            .await
            .with_context(|| format!("serving on {} failed", self.local_addr))
    }
}
