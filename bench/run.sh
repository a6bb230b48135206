#!/usr/bin/env bash
# Runs homeward's benchmarks on this machine: installs what the sshfs comparison needs (openssh-server,
# sshfs; as root, on Debian), builds the release binaries and runs homeward-bench, which prints the table
# and writes it to bench/last-run.md. Arguments go to homeward-bench (--runs R, --iterations N,
# --no-workloads, --no-sshfs, --only TEXT: only the workloads whose name holds TEXT, --cold: no content cache on disk). For the criterion micro-benchmarks: cargo bench -p remote-shim --bench forwarded
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    for package in openssh-server openssh-client sshfs fuse3 sqlite3 git gcc make python3 tar; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
fi
cargo build --release --workspace
exec target/release/homeward-bench --markdown bench/last-run.md "$@"
