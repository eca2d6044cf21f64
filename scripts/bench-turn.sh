#!/usr/bin/env bash
# Benchmark: turn-node against coturn's turnserver (Debian package `coturn`, 4.6) under the same
# load from coturn's own client, in one invocation, on the same loopback port, relay port range,
# realm, REST secret and quotas.
#
# Load: turnutils_uclient client-to-client (-y) over UDP with the REST secret (-W), -m CLIENTS
# clients (uclient makes about one relay session per client, 52 for -m 50), -n MESSAGES messages
# of LENGTH bytes per session, one every INTERVAL_MS ms (-z). Each server is started fresh for
# every run; each of REPEATS rounds runs every server once, in turn.
#
# Per run: relayed messages received by the clients per second of the uclient run (its set-up of
# several seconds included, the same for both) and per second of uclient's own "transmit time",
# loss (uclient's "Total lost packets … (P%)"), and the server process's CPU seconds,
# utime+stime from /proc/<pid>/stat read just before stopping it (start-up and the sessions'
# set-up included: with -n 10, about 0.05 s for coturn and 0.09 s for turn-node, which weighs
# on short runs; -n 5000 makes it small). Prints medians and the turn-node/coturn ratios of CPU per relayed message and
# of loss.
#
# turn-node reports to a controller: a release `fleet serve` with a small config runs alongside
# (it does not touch the data plane). Everything runs on one machine, so the client's own CPU
# competes with the server's; compare the two servers, not absolute numbers across machines.
#
# Usage: scripts/bench-turn.sh [clients=50] [messages=2000] [length=1000] [interval_ms=5] [repeats=3]
#        BENCH_SERVERS="coturn turn-node" to leave out turn-node-crate
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS="${1:-50}"
MESSAGES="${2:-2000}"
LENGTH="${3:-1000}"
INTERVAL_MS="${4:-5}"
REPEATS="${5:-3}"
# Servers compared, in the order each round runs them (coturn and turn-node are required for the
# ratios; turn-node-crate is turn-node with --data-path crate).
SERVERS="${BENCH_SERVERS:-coturn turn-node turn-node-crate}"
for tool in turnserver turnutils_uclient; do
  command -v "$tool" >/dev/null || { echo "$tool missing: run scripts/test.sh (installs coturn)" >&2; exit 1; }
done
cargo build --release --workspace --bins --quiet
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
set +m

free_port() {
  python3 -c 'import socket
for _ in range(100):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0)); p = u.getsockname()[1]
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p)); print(p); break
    except OSError: pass'
}
TURN_PORT=$(free_port)
LINK_PORT=$(free_port)
RELAY_MIN=49152
RELAY_MAX=65535
REALM=fleet
SECRET=bench-turn-secret-0123456789
USER_QUOTA=10000 # one user opens every allocation of a run: lift the per-user limit on both
TOTAL_QUOTA=10000
CLUSTER_SECRET=bench-cluster-secret-0123456789
TICK=$(getconf CLK_TCK)

cat > "$WORK/fleet.toml" <<TOML
[api]
listen = "127.0.0.1:0"
[link]
listen = "127.0.0.1:$LINK_PORT"
cert_file = "$WORK/cert.pem"
key_file = "$WORK/key.pem"
cluster_secret = "$CLUSTER_SECRET"
[auth]
admin_token = "bench-admin-token-0123456789"
[[auth.api_keys]]
kid = "bench"
secret = "bench-api-secret-0123456789"
[media]
join_secret = "bench-join-secret-0123456789"
[turn]
secret = "$SECRET"
[registry]
warmup_ms = 500
TOML
RUST_LOG=warn "$BIN/fleet" serve --config "$WORK/fleet.toml" > "$WORK/fleet.out" 2> "$WORK/fleet.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q FLEET_API= "$WORK/fleet.out" 2>/dev/null && break; sleep 0.1; done
grep -q FLEET_API= "$WORK/fleet.out" || { cat "$WORK/fleet.err"; exit 1; }

# Waits until something listens on UDP 127.0.0.1:$TURN_PORT (or the process died).
wait_bound() {
  local pid=$1 hex
  hex=$(printf '0100007F:%04X' "$TURN_PORT")
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || return 1
    grep -qi " $hex " /proc/net/udp && return 0
    sleep 0.05
  done
  return 1
}

start_coturn() {
  turnserver -n --use-auth-secret --static-auth-secret="$SECRET" --realm="$REALM" \
    --listening-ip=127.0.0.1 --listening-port="$TURN_PORT" --relay-ip=127.0.0.1 \
    --min-port="$RELAY_MIN" --max-port="$RELAY_MAX" --user-quota="$USER_QUOTA" \
    --total-quota="$TOTAL_QUOTA" --allow-loopback-peers --no-tls --no-dtls --no-cli \
    --pidfile="$WORK/turnserver.pid" --log-file=stdout > "$WORK/coturn.log" 2>&1 &
  SERVER_PID=$!
}

start_turn_node() {
  TURN_NODE_CLUSTER_SECRET=$CLUSTER_SECRET TURN_NODE_AUTH_SECRET=$SECRET RUST_LOG=warn \
    "$BIN/turn-node" --node-id bench-turn --region eu-west-1 \
    --controller "127.0.0.1:$LINK_PORT" --controller-cert "$WORK/cert.pem" \
    --listen-ip 127.0.0.1 --relay-ip 127.0.0.1 --turn-port "$TURN_PORT" \
    --relay-min-port "$RELAY_MIN" --relay-max-port "$RELAY_MAX" --realm "$REALM" \
    --user-quota "$USER_QUOTA" --total-quota "$TOTAL_QUOTA" --allow-peer 127.0.0.0/8 \
    --data-path "${DATA_PATH:-fast}" > "$WORK/turn-node.out" 2> "$WORK/turn-node.err" &
  SERVER_PID=$!
}

# turn-node with the `turn` crate relaying every packet (the data path before the fast one).
start_turn_node_crate() {
  DATA_PATH=crate start_turn_node
}

# One run against $1 (coturn | turn-node | turn-node-crate); appends "server msgs_per_s loss_pct cpu_s us_per_msg".
run_one() {
  local server=$1 out="$WORK/uclient.$1.$2.out"
  "start_${server//-/_}"
  PIDS+=("$SERVER_PID")
  wait_bound "$SERVER_PID" || { echo "$server did not start"; cat "$WORK"/coturn.log "$WORK"/turn-node.err 2>/dev/null | tail -20; exit 1; }
  sleep 0.5
  local perf_pid=""
  if [ -n "${BENCH_PERF:-}" ]; then # BENCH_PERF=dir: a perf profile of each server run there
    mkdir -p "$BENCH_PERF"
    perf record -F 1999 -g -p "$SERVER_PID" -o "$BENCH_PERF/$server.$2.data" > /dev/null 2>&1 &
    perf_pid=$!
  fi
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  timeout 300 turnutils_uclient -y -X -W "$SECRET" -u bench -m "$CLIENTS" -n "$MESSAGES" \
    -l "$LENGTH" -z "$INTERVAL_MS" -p "$TURN_PORT" 127.0.0.1 > "$out" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
  local ticks
  ticks=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  if [ "$rc" != 0 ] || ! grep -q 'Total lost packets' "$out"; then
    echo "turnutils_uclient against $server failed (exit $rc):" >&2; tail -5 "$out" >&2; exit 1
  fi
  local recv sent loss
  recv=$(grep 'start_mclient: tot_send_msgs=' "$out" | tail -1 | sed 's/.*tot_recv_msgs=\([0-9]*\).*/\1/')
  sent=$(grep 'start_mclient: tot_send_msgs=' "$out" | tail -1 | sed 's/.*tot_send_msgs=\([0-9]*\).*/\1/')
  # A run that relayed nothing (allocations refused, credentials wrong) is a failure, not a figure.
  if [ "${recv:-0}" = 0 ] || [ "${sent:-0}" = 0 ]; then
    echo "FAIL: $server relayed nothing (sent ${sent:-0}, received ${recv:-0}):" >&2; tail -5 "$out" >&2; exit 1
  fi
  loss=$(grep 'Total lost packets' "$out" | tail -1 | sed 's/.*Total lost packets [0-9]* (\([0-9.]*\)%).*/\1/')
  # uclient's own sending time (whole seconds): the rate while the messages flow.
  local transmit
  transmit=$(grep 'Total transmit time is' "$out" | tail -1 | sed 's/.*Total transmit time is \([0-9]*\).*/\1/')
  awk -v s="$server" -v r="$recv" -v snd="$sent" -v l="$loss" -v t="$ticks" -v hz="$TICK" \
      -v a="$t0" -v b="$t1" -v i="$2" -v tx="${transmit:-0}" 'BEGIN {
    cpu = t / hz; rate = r / (b - a); per = (r > 0 ? cpu / r * 1e6 : 0)
    flow = (tx > 0 ? r / tx : 0)
    printf "%-15s run %d: sent %d, received %d in %.1f s = %.0f msg/s (%.0f msg/s over uclient'"'"'s %d s of sending), loss %.4f%%, server CPU %.2f s = %.1f us/msg\n", s, i, snd, r, b - a, rate, flow, tx, l, cpu, per > "/dev/stderr"
    printf "%s %.1f %.6f %.3f %.3f %.1f\n", s, rate, l, cpu, per, flow
  }' >> "$WORK/results"
}

echo "load: turnutils_uclient -y -m $CLIENTS -n $MESSAGES -l $LENGTH -z $INTERVAL_MS over UDP, port $TURN_PORT, relay ports $RELAY_MIN-$RELAY_MAX, $REPEATS runs each"
echo "coturn: $(turnserver --version 2>/dev/null | head -1); turn-node: $("$BIN/turn-node" --version)"
: > "$WORK/results"
for i in $(seq "$REPEATS"); do
  for server in $SERVERS; do run_one "$server" "$i"; done
done

median() { # median of column $2 for server $1
  awk -v s="$1" -v c="$2" '$1 == s { print $c }' "$WORK/results" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo
printf '%-16s %12s %14s %10s %10s %12s\n' server "msg/s" "sending msg/s" "loss %" "CPU s" "CPU us/msg"
for s in $SERVERS; do
  printf '%-16s %12.0f %14.0f %10.4f %10.2f %12.2f\n' "$s" "$(median "$s" 2)" "$(median "$s" 6)" "$(median "$s" 3)" "$(median "$s" 4)" "$(median "$s" 5)"
done
echo "(medians of $REPEATS runs)"
[[ " $SERVERS " == *" coturn "* && " $SERVERS " == *" turn-node "* ]] &&
awk -v tc="$(median turn-node 5)" -v cc="$(median coturn 5)" -v tl="$(median turn-node 3)" -v cl="$(median coturn 3)" 'BEGIN {
  printf "turn-node/coturn CPU per relayed message: %.2f\n", tc / cc
  if (cl > 0) printf "turn-node/coturn loss: %.2f\n", tl / cl
  else if (tl == 0) printf "turn-node/coturn loss: both 0%%\n"
  else printf "turn-node/coturn loss: coturn 0%%, turn-node %.4f%%\n", tl
}'
if [[ " $SERVERS " == *" turn-node-crate "* && " $SERVERS " == *" coturn "* ]]; then
  awk -v tc="$(median turn-node 5)" -v kc="$(median turn-node-crate 5)" -v cc="$(median coturn 5)" 'BEGIN {
    printf "turn-node-crate/coturn CPU per relayed message: %.2f\n", kc / cc
    printf "turn-node/turn-node-crate CPU per relayed message: %.2f\n", tc / kc
  }'
fi
