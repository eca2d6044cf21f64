#!/usr/bin/env bash
# Benchmark: media-node forwarding against Janus 1.1's EchoTest (Debian `janus`), in one
# invocation. For each N: N concurrent 1:1 sessions through one release media node placed by a
# release controller, then 2N EchoTest handles on a fresh Janus (an echo is one receive and one
# send per packet, like a 1:1 forward), both driven by the same synthetic peers: str0m on one
# thread with batched UDP (tests/src/swarm.rs), each sending 200 packets/s (one 100-byte Opus
# and three 1,200-byte VP8 packets every 20 ms). For each run, a window of SECS s (default 10)
# after a 2 s warm-up: packets delivered to the peers per second, the server's CPU per
# delivered packet (utime+stime from /proc/<pid>/stat) and in cores, loss, and the peers' own
# CPU (they share the cores). Then media-node/Janus ratios and, per server, the most sessions
# measured with < 1% loss. A run whose peers do not all connect fails the bench.
#
# Usage: scripts/bench-forwarding.sh [N ...]          (default 25 50 100 150)
#        SECS=20 SERVERS=media-node,janus,media-node-1 scripts/bench-forwarding.sh 50
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ",${SERVERS:-media-node,janus}," == *",janus,"* ]] && ! command -v janus >/dev/null; then
  echo "janus missing: apt-get install janus (Debian's Janus 1.1)" >&2
  exit 1
fi
cargo build --release --workspace --bins --quiet
# Build first, so compiler errors reach the terminal and only the run's logs go to $LOG.
cargo bench --workspace --bench forwarding --no-run --quiet
LOG="${LOG:-$(mktemp --suffix=.forwarding.log)}"
echo "logs: $LOG" >&2
cargo bench --workspace --bench forwarding --quiet -- --secs "${SECS:-10}" \
  --servers "${SERVERS:-media-node,janus}" "$@" 2>"$LOG"
