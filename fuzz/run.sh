#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each (default 30), starting from the committed seed corpus
# (fuzz/corpus/<target>/). New inputs go to a scratch corpus under fuzz/target/ (not committed); a crash
# leaves its input in fuzz/artifacts/<target>/ and fails the script. Installs cargo-fuzz if missing.
#
# Stable Rust: cargo-fuzz's coverage instrumentation (`-Cpasses=sancov-module`, `-Cllvm-args=...`) is
# stable, and `-s none` (no sanitizer) avoids the one unstable flag, `-Zsanitizer`; so no nightly is needed.
# The executors' `unsafe` code is confined to `home-agent/src/sys`, so AddressSanitizer adds little; to try
# it anyway, HOMEWARD_FUZZ_SANITIZER=address sets RUSTC_BOOTSTRAP=1, which lets a stable rustc accept
# `-Zsanitizer` (cargo tracks that variable: switching rebuilds everything).
# `-a` (debug assertions) turns on integer overflow checks, so an overflow is a crash too.
#
# Needs a C++ compiler (libfuzzer-sys builds libFuzzer): `apt-get install g++`.
set -euo pipefail

seconds="${1:-30}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
sanitizer="${HOMEWARD_FUZZ_SANITIZER:-none}"
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if ! command -v c++ >/dev/null; then
    echo "fuzz/run.sh: no C++ compiler (c++): install g++ (libFuzzer is C++)" >&2
    exit 1
fi

# Scratch sessions on tmpfs when there is one: fsync is free there and nothing is written to a disk.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi

targets=$(cargo fuzz list)
for target in $targets; do
    cargo fuzz build -s "$sanitizer" -a "$target"
done
for target in $targets; do
    scratch="fuzz/target/corpus/$target"
    mkdir -p "$scratch" "fuzz/artifacts/$target"
    echo "== $target: ${seconds} s"
    # The scratch corpus comes first: libFuzzer writes new inputs into the first directory only.
    cargo fuzz run -s "$sanitizer" -a "$target" "$scratch" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
done
