//! `remote-shim --home [https://]ADDR:PORT [--token-file FILE] [--tls-ca FILE [--tls-domain NAME]
//! [--tls-cert FILE --tls-key FILE]] [--local PREFIX]... [--on-home-loss kill|eio|wait:S] -- PROGRAM [ARGS...]`

use clap::Parser;
use std::ffi::OsString;
use std::path::PathBuf;

/// Runs PROGRAM here while its files, directories and descriptors are home's.
#[derive(Parser, Debug)]
#[command(name = "remote-shim", version, about)]
struct Args {
    /// home-agent's ADDR:PORT (`https://ADDR:PORT` or --tls-ca for TLS); `local` for an agent inside this
    /// process (on loopback); `none` to run every call on this machine's kernel through the same
    /// interception (a baseline trace).
    #[arg(long, value_name = "ADDR:PORT|local")]
    home: String,
    /// File holding the token home-agent expects (default: $HOMEWARD_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Connect over TLS and accept only a home certificate signed by this CA (PEM); no system roots.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The name home's certificate must hold (default: the host of --home).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_domain: Option<String>,
    /// This client's certificate (PEM), for a home-agent started with --tls-client-ca.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Path prefix served by this machine's kernel instead of home (repeatable); /proc, /sys, /dev always are.
    #[arg(long = "local", value_name = "PREFIX")]
    local: Vec<String>,
    /// Write every intercepted call to FILE as a JSON line.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// At exit, print a table of intercepted calls (by call: home/local, errors, wait on home, bytes).
    #[arg(long)]
    stats: bool,
    /// When home is lost: `kill` ends the job (exit 125), `eio` fails its calls to home with EIO, `wait:S`
    /// keeps trying to reach home for S seconds, then ends the job. A link that breaks is reconnected
    /// meanwhile; a home that stays silent is lost after 60 s (kill, eio) or S seconds (wait:S).
    #[arg(long, value_name = "kill|eio|wait:SECONDS", default_value = "kill", value_parser = remote_shim::client::HomeLoss::parse)]
    on_home_loss: remote_shim::client::HomeLoss,
    /// Where versions of home's files (64 KiB to 64 MiB) are kept across jobs, so a later job reads a
    /// library or program home has not changed from this machine's disk; `none`: nowhere (default:
    /// $XDG_CACHE_HOME/homeward, else ~/.cache/homeward).
    #[arg(long, value_name = "DIR|none")]
    cache: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM")]
    program: Vec<OsString>,
}

fn main() {
    // A deputy of the in-process agent (`--home local`) is this executable: it never gets past this line.
    home_agent::deputy::run_if_deputy();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (token, tls) = match read_token(args.token_file.as_deref()).and_then(|t| Ok((t, read_tls(&args)?))) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("remote-shim: {e:#}");
            std::process::exit(remote_shim::launch::EXIT_SHIM_FAILURE);
        }
    };
    let code = remote_shim::run(remote_shim::Config {
        home: args.home,
        token,
        tls,
        local: args.local,
        program: args.program,
        trace: args.trace,
        stats: args.stats,
        on_home_loss: args.on_home_loss,
        cache: cache_dir(args.cache),
    });
    std::process::exit(code);
}

/// The directory of `--cache` (`none`: none; default: under $XDG_CACHE_HOME or ~/.cache).
fn cache_dir(arg: Option<PathBuf>) -> Option<PathBuf> {
    match arg {
        Some(dir) if dir.as_os_str() == "none" => None,
        Some(dir) => Some(dir),
        None => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .filter(|p| p.is_absolute())?;
            Some(base.join("homeward"))
        }
    }
}

fn read_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    use anyhow::Context;
    if let Some(f) = file {
        let t =
            std::fs::read_to_string(f).with_context(|| format!("reading the token file {}", f.display()))?;
        let t = t.trim_end().to_string();
        anyhow::ensure!(!t.is_empty(), "the token file {} is empty", f.display());
        return Ok(Some(t));
    }
    Ok(std::env::var("HOMEWARD_TOKEN").ok().filter(|t| !t.is_empty()))
}

fn read_tls(args: &Args) -> anyhow::Result<Option<remote_shim::transport::ClientTls>> {
    let Some(ca) = &args.tls_ca else { return Ok(None) };
    let identity = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
    Ok(Some(remote_shim::transport::ClientTls::from_files(ca, args.tls_domain.clone(), identity)?))
}
