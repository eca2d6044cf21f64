#!/usr/bin/env bash
# Benchmark: media-node forwarding. N concurrent 1:1 sessions of synthetic webrtc-crate peers
# (1.44 Mbit/s video + 40 kbit/s audio each way, 200 packets/s per peer) through one release
# media node placed by a release controller; for each N, a 10 s window after a 2 s warm-up.
# Prints forwarded packets/s, media-node CPU per forwarded packet (utime+stime from
# /proc/<pid>/stat over the window), media-node cores, loss, and the peers' own CPU (they run
# in the bench process on the same cores). See tests/benches/forwarding.rs.
#
# Usage: scripts/bench-forwarding.sh [N ...]   (default 4 8 16 24)
#        SECS=20 scripts/bench-forwarding.sh 8
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --quiet
# Build first, so compiler errors reach the terminal and only the run's logs go to $LOG.
cargo bench --workspace --bench forwarding --no-run --quiet
LOG="${LOG:-$(mktemp --suffix=.forwarding.log)}"
echo "logs: $LOG" >&2
cargo bench --workspace --bench forwarding --quiet -- --secs "${SECS:-10}" "$@" 2>"$LOG"
