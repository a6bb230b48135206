//! `home-agent --listen ADDR:PORT [--token-file FILE] [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
//! [--allow DIR]... [--workers N]`: serves home's files to remote-shim.

use anyhow::{bail, Context};
use clap::Parser;
use home_agent::{AgentConfig, AllowError, BindError, BoundAgent, TlsConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Environment variable that may hold the token (never the command line, which other users can read).
const TOKEN_ENV: &str = "HOMEWARD_TOKEN";

#[derive(Parser)]
#[command(version, about = "Serves home's files to programs running under remote-shim")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:7070 (port 0 picks a free one).
    #[arg(long)]
    listen: SocketAddr,
    /// File holding the token clients must present (else $HOMEWARD_TOKEN; none is allowed on loopback only).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve over TLS with this certificate (PEM; the chain, the agent's own certificate first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM); it authenticates the client like a token does.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Confine every session to this directory (repeatable): a path outside every allowed directory, or
    /// reaching out of one by `..` or a symbolic link, fails with EACCES. Absolute, existing directories.
    #[arg(long = "allow", value_name = "DIR")]
    allow: Vec<PathBuf>,
    /// Threads that serve calls. One, the default, is quickest for a call: it reads every connection and
    /// polls them a while before it sleeps, so a call arriving then is read without a wake-up. Calls that
    /// may block run on threads of their own whatever this is; raise it for many jobs whose calls keep
    /// more than one CPU busy.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: u16,
}

fn read_token(args: &Args) -> anyhow::Result<Option<String>> {
    if let Some(file) = &args.token_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the token file {}", file.display()))?;
        let token = text.trim_end();
        if token.is_empty() {
            bail!("the token file {} is empty", file.display());
        }
        return Ok(Some(token.to_string()));
    }
    match std::env::var(TOKEN_ENV) {
        Ok(token) if token.trim_end().is_empty() => bail!("{TOKEN_ENV} is set but empty"),
        Ok(token) => Ok(Some(token.trim_end().to_string())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{TOKEN_ENV} is not valid UTF-8"),
    }
}

fn read_tls(args: &Args) -> anyhow::Result<Option<TlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else { return Ok(None) };
    Ok(Some(TlsConfig::from_files(cert, key, args.tls_client_ca.as_deref())?))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let token = read_token(&args)?;
    let tls = read_tls(&args)?;
    let config = AgentConfig { listen: args.listen, token, tls, allow: args.allow.clone() };
    let loopback = args.listen.ip().to_canonical().is_loopback();
    if !config.authenticates() && loopback {
        eprintln!(
            "home-agent: warning: no token: any local user can reach {} with your rights \
             (pass --token-file to require one)",
            args.listen
        );
    }
    if config.tls.is_none() && !loopback {
        eprintln!(
            "home-agent: warning: no TLS: the token and home's files cross the network in the clear \
             (pass --tls-cert and --tls-key, or listen on 127.0.0.1 and carry the link over ssh)"
        );
    }
    match home_agent::raise_open_file_limit() {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(err) => tracing::warn!("{err:#}"),
    }
    let agent = BoundAgent::bind(config).await?;
    home_agent::warm_up();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "home-agent: listening on {}", agent.local_addr()).context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")?;
    drop(stdout);
    agent.serve().await
}

fn main() -> ExitCode {
    home_agent::deputy::run_if_deputy();
    // tonic reports a refused TLS handshake (a client without the certificate home requires, or trusting
    // another CA) at debug level, from this module only: show those by default too.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tonic::transport::server::io_stream=debug"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let args = Args::parse();
    let runtime = match home_agent::idle::install(&mut tokio::runtime::Builder::new_multi_thread())
        .worker_threads(usize::from(args.workers))
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            home_agent::idle::attach(runtime.handle().clone());
            runtime
        }
        Err(err) => {
            eprintln!("home-agent: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err)
            if err.downcast_ref::<BindError>().is_some() || err.downcast_ref::<AllowError>().is_some() =>
        {
            eprintln!("home-agent: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("home-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
