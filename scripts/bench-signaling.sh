#!/usr/bin/env bash
# Benchmark: POST /v1/sessions requests per second and latency on loopback.
# Fixed load: wrk, 1 thread, 32 connections, 15 s, three kinds of 1:1 sessions (Europe,
# Americas, Asia) with a valid client JWT, against a release `fleet serve` with 4 media nodes
# and 1 TURN node in each of 3 regions (real processes reporting over QUIC; they end each session
# after 2 s idle, so the fleet churns as a real one does). Prints wrk's summary: requests/s and
# the latency distribution (p50/p75/p90/p99).
#
# Fails (exit 1, with the reason) when the fleet is not serving all 15 nodes, or when any request
# of the warm-up or the measured run failed (non-2xx status or socket error): a throughput
# measured over refusals is not a throughput. The failure counts are always printed.
#
# Usage: scripts/bench-signaling.sh [duration_secs] [connections]
# A/B runs: FLEET_BIN=DIR takes the binaries from DIR (no build); BENCH_EXTRA_TOML is appended
# to the controller's config (e.g. $'[demand]\nrecord = false').
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-15}"
CONNS="${2:-32}"
command -v wrk >/dev/null || { echo "wrk missing: apt-get install wrk" >&2; exit 1; }
if [ -n "${FLEET_BIN:-}" ]; then
  BIN="$FLEET_BIN"
else
  cargo build --release --workspace --bins --quiet
  BIN="${CARGO_TARGET_DIR:-target}/release"
fi
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
# Nodes killed at the end are expected; keep the shell quiet about them.
set +m

LINK_PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SECRET=bench-cluster-secret-0123456789
API_SECRET=bench-api-secret-0123456789
cat > "$WORK/fleet.toml" <<TOML
[api]
listen = "127.0.0.1:0"
[link]
listen = "127.0.0.1:$LINK_PORT"
cert_file = "$WORK/cert.pem"
key_file = "$WORK/key.pem"
cluster_secret = "$SECRET"
[auth]
admin_token = "bench-admin-token-0123456789"
[[auth.api_keys]]
kid = "bench"
secret = "$API_SECRET"
[media]
join_secret = "bench-join-secret-0123456789"
[turn]
secret = "bench-turn-secret-0123456789"
[registry]
warmup_ms = 500
TOML
printf '%s\n' "${BENCH_EXTRA_TOML:-}" >> "$WORK/fleet.toml"
RUST_LOG=warn "$BIN/fleet" serve --config "$WORK/fleet.toml" > "$WORK/fleet.out" 2> "$WORK/fleet.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q FLEET_API= "$WORK/fleet.out" 2>/dev/null && break; sleep 0.1; done
API=$(sed -n 's/^FLEET_API=//p' "$WORK/fleet.out")
[ -n "$API" ] || { cat "$WORK/fleet.err"; exit 1; }
for region in eu-west-1 us-east-1 ap-south-1; do
  for i in 1 2 3 4; do
    MEDIA_NODE_CLUSTER_SECRET=$SECRET MEDIA_NODE_JOIN_SECRET=bench-join-secret-0123456789 RUST_LOG=warn "$BIN/media-node" --node-id "m-$region-$i" --region "$region" \
      --controller "127.0.0.1:$LINK_PORT" --controller-cert "$WORK/cert.pem" --capacity 1000000000 \
      --session-idle-secs 2 > /dev/null 2>> "$WORK/nodes.err" &
    PIDS+=($!)
  done
  TURN_NODE_CLUSTER_SECRET=$SECRET TURN_NODE_AUTH_SECRET=bench-turn-secret-0123456789 RUST_LOG=warn "$BIN/turn-node" --node-id "t-$region" --region "$region" --turn-port 0 \
    --controller "127.0.0.1:$LINK_PORT" --controller-cert "$WORK/cert.pem" > /dev/null 2>> "$WORK/nodes.err" &
  PIDS+=($!)
done
# Ready means warmed up (the controller's start-up grace for reconnecting nodes is over).
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$API/readyz")" = 200 ] && break; sleep 0.1
done
TOKEN=$("$BIN/fleet" token --config "$WORK/fleet.toml" --ttl-secs 3600)
ADMIN=bench-admin-token-0123456789
for _ in $(seq 100); do
  n=$(curl -s -H "Authorization: Bearer $ADMIN" "$API/v1/nodes" | grep -o '"state":"serving"' | wc -l)
  [ "$n" -ge 15 ] && break; sleep 0.2
done
echo "fleet: $n serving nodes; controller at $API"
if [ "$n" -lt 15 ]; then
  echo "FAIL: only $n of 15 nodes are serving; node errors:" >&2
  tail -n 20 "$WORK/nodes.err" >&2
  exit 1
fi
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
local bodies = {
  '{"participants":[{"id":"t","location":{"lat":51.5,"lon":-0.1}},{"id":"c","location":{"lat":0.35,"lon":32.58}}]}',
  '{"participants":[{"id":"t","location":{"lat":40.7,"lon":-74.0}},{"id":"c","location":{"lat":41.9,"lon":-87.6}}]}',
  '{"participants":[{"id":"t","location":{"lat":19.1,"lon":72.9}},{"id":"c","location":{"lat":28.6,"lon":77.2}}]}'
}
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, "/v1/sessions", nil, bodies[(i % 3) + 1])
end
-- Each thread counts its failed responses by status and keeps one body as a sample.
failed = {}
sample = ""
response = function(status, headers, body)
  if status >= 300 then
    failed[status] = (failed[status] or 0) + 1
    if sample == "" then sample = body end
  end
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d rps=%.0f p50_ms=%.2f p99_ms=%.2f\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
  io.write(string.format("RESULT non_2xx=%d socket_errors=%d\n", summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("failed")) do
      io.write(string.format("FAILED status=%d count=%d\n", status, n))
    end
    local s = t:get("sample")
    if s ~= "" then io.write("FAILED sample: " .. s .. "\n") end
  end
end
LUA
# Fails the bench when a wrk run met any failed request.
check_failures() {
  local what=$1 out=$2 non2xx errs
  non2xx=$(sed -n 's/^RESULT non_2xx=\([0-9]*\).*/\1/p' "$out")
  errs=$(sed -n 's/^RESULT .*socket_errors=\([0-9]*\).*/\1/p' "$out")
  echo "RESULT $what failures: non_2xx=${non2xx:-?} socket_errors=${errs:-?}"
  if [ "${non2xx:-1}" != 0 ] || [ "${errs:-1}" != 0 ]; then
    echo "FAIL: $what had failed requests:" >&2
    grep '^FAILED' "$out" >&2 || true
    exit 1
  fi
}
# Warm up, then the measured run.
wrk -t1 -c"$CONNS" -d3s -s "$WORK/post.lua" "$API" > "$WORK/warmup.out"
check_failures warm-up "$WORK/warmup.out"
if [ -n "${PERF_OUT:-}" ]; then
  # Optional profile of the controller during the measured run (perf from linux-perf).
  perf record -F 999 -g -p "${PIDS[0]}" -o "$PERF_OUT" -- sleep $((DURATION - 2)) > /dev/null 2>&1 &
  PERF_PID=$!
fi
# CPU (user + system ticks) of the controller, of all nodes, and of wrk (this shell's reaped
# children) over the measured run: the three share the machine's cores.
cpu_of() { cat "${@/#//proc/}" 2>/dev/null | awk '{s += $14 + $15} END {print s + 0}'; }
NODE_STATS=("${PIDS[@]:1}"); NODE_STATS=("${NODE_STATS[@]/%//stat}")
CPU0=$(cpu_of "${PIDS[0]}/stat"); NODES0=$(cpu_of "${NODE_STATS[@]}")
WRK0=$(awk '{print $16 + $17}' /proc/$$/stat)
wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$WORK/post.lua" "$API" | tee "$WORK/wrk.out"
CPU1=$(cpu_of "${PIDS[0]}/stat"); NODES1=$(cpu_of "${NODE_STATS[@]}")
WRK1=$(awk '{print $16 + $17}' /proc/$$/stat)
[ -n "${PERF_PID:-}" ] && wait "$PERF_PID"
check_failures "measured run" "$WORK/wrk.out"
REQS=$(sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p' "$WORK/wrk.out")
awk -v a="$CPU0" -v b="$CPU1" -v n="$REQS" 'BEGIN { printf "RESULT controller_cpu_s=%.2f cpu_us_per_request=%.1f\n", (b-a)/100, (b-a)*1e4/n }'
# Where the machine's CPU went: the controller, the 15 nodes handling its commands and
# reporting, and the load generator (ticks are 1/100 s).
awk -v c="$((CPU1 - CPU0))" -v nd="$((NODES1 - NODES0))" -v w="$((WRK1 - WRK0))" -v n="$REQS" -v d="$DURATION" 'BEGIN {
  printf "RESULT cpu_us_per_request controller=%.1f nodes=%.1f wrk=%.1f total=%.1f (cores busy: %.2f of %d)\n",
    c*1e4/n, nd*1e4/n, w*1e4/n, (c+nd+w)*1e4/n, (c+nd+w)/100/d, '"$(nproc)"' }'

