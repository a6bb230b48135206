//! `trace-diff [--json] [--html FILE] [--limit N] LEFT RIGHT`: compares two `remote-shim --trace` files per
//! process. Exit status 0 when equivalent, 1 when not, 2 on bad input.

use clap::Parser;
use remote_shim::trace::diff;
use std::path::PathBuf;

/// Compares a baseline trace (`remote-shim --home none --trace`) with a forwarded one.
#[derive(Parser, Debug)]
#[command(name = "trace-diff", version, about)]
struct Args {
    /// Print the report as JSON (for tools) instead of text.
    #[arg(long)]
    json: bool,
    /// Also write an HTML report to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Divergent hunks shown per process.
    #[arg(long, default_value_t = 3)]
    limit: usize,
    left: PathBuf,
    right: PathBuf,
}

fn main() {
    let args = Args::parse();
    let load = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| e.to_string()).and_then(|t| diff::load(&t)).unwrap_or_else(
            |e| {
                eprintln!("trace-diff: {}: {e}", p.display());
                std::process::exit(2);
            },
        )
    };
    let (left, right) = (load(&args.left), load(&args.right));
    let report = diff::compare(&left, &right, args.limit.max(1));
    let (ln, rn) = (args.left.display().to_string(), args.right.display().to_string());
    if args.json {
        println!("{}", diff::to_json(&report));
    } else {
        print!("{}", diff::text(&report, &ln, &rn));
    }
    if let Some(path) = &args.html {
        if let Err(e) = std::fs::write(path, diff::html(&report, &ln, &rn)) {
            eprintln!("trace-diff: writing {}: {e}", path.display());
            std::process::exit(2);
        }
    }
    std::process::exit(if report.equivalent() { 0 } else { 1 });
}
