#!/usr/bin/env bash
# Check that your program behaves the same forwarded as it does locally.
#
#   examples/check_transparency.sh HOME_ADDR TOKEN_FILE -- your-program args...
#
# Runs the program twice from the current directory: once with every call executed by this machine's kernel
# (`--home none`, same interception) and once forwarded to home-agent at HOME_ADDR, each with `--trace`, then
# compares the traces with trace-diff. Exit status 0 when the two are equivalent. An HTML report is written
# to trace-report.html. Run it where the current directory holds the same data on both sides (for example
# on the home machine itself with HOME_ADDR=127.0.0.1:PORT), and mind that the program runs twice.
set -euo pipefail
[ $# -ge 4 ] && [ "$3" = "--" ] || { echo "usage: $0 HOME_ADDR TOKEN_FILE -- PROGRAM [ARGS...]" >&2; exit 2; }
home=$1 token=$2
shift 3
bin=${HOMEWARD_BIN:-$(dirname "$0")/../target/release}
out=$(mktemp -d)
"$bin/remote-shim" --home none --trace "$out/local.jsonl" -- "$@" > "$out/local.out"
"$bin/remote-shim" --home "$home" --token-file "$token" --trace "$out/forwarded.jsonl" --stats -- "$@" > "$out/forwarded.out"
if ! cmp -s "$out/local.out" "$out/forwarded.out"; then
    echo "outputs differ:"; diff "$out/local.out" "$out/forwarded.out" || true
fi
"$bin/trace-diff" --html trace-report.html "$out/local.jsonl" "$out/forwarded.jsonl"
