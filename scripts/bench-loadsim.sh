#!/usr/bin/env bash
# Benchmark: how many concurrent 1:1 video sessions of real WebRTC peers one `fleet up` on this
# machine carries with < 1 % loss, and how the CPU splits between the load generator and the
# fleet's nodes.
#
# Fixed load per step: a fresh release `fleet up` (3 regions, elastic pools), then
# `fleet loadsim --sessions N --participants 2 --profile video --relay-share 0.15
#  --ramp-secs 20 --hold-secs 30` with the admin token (the pools and the nodes' CPU sampled
# every second). Each step prints one RESULT line: sessions up of N, loss, setup and delay,
# cores used by loadsim, the media nodes and the TURN nodes over the run, and how many
# participants one core of loadsim drives. A step is sustained when every session came up,
# loss < 1 %, one-way delay p99 <= 400 ms (ITU-T G.114), and loadsim itself kept the media pace
# (< 1 % of the frames due unsent: past that, a saturated generator sends less and the fleet
# looks better than it is). The last line names the largest sustained N.
#
# Fails (exit 1, with the reason) when `fleet up` does not come up, when loadsim fails to run
# or write its summary, or when no step met the bar.
#
# Usage: scripts/bench-loadsim.sh [N ...]   (default: 50 100 150)
# FLEET_BIN=DIR takes the binaries from DIR (no build).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(50 100 150)
if [ -n "${FLEET_BIN:-}" ]; then
  BIN="$FLEET_BIN"
else
  cargo build --release --workspace --bins --quiet
  BIN="${CARGO_TARGET_DIR:-target}/release"
fi
WORK="$(mktemp -d)"
UP_PID=""
stop_up() {
  if [ -n "$UP_PID" ]; then
    kill -INT "$UP_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$UP_PID" 2>/dev/null || true
    UP_PID=""
  fi
}
cleanup() { stop_up; rm -rf "$WORK"; }
trap cleanup EXIT
set +m

BEST=0
for N in "${STEPS[@]}"; do
  STATE="$WORK/up-$N"
  mkdir -p "$STATE"
  RUST_LOG=warn FLEET__API__LISTEN=127.0.0.1:0 \
    FLEET__LINK__LISTEN="127.0.0.1:$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')" \
    "$BIN/fleet" up --state-dir "$STATE" > "$STATE/up.out" 2> "$STATE/up.err" &
  UP_PID=$!
  for _ in $(seq 300); do [ -s "$STATE/fleet-up.env" ] && break; sleep 0.1; done
  [ -s "$STATE/fleet-up.env" ] || { echo "fleet up did not come up:" >&2; tail -20 "$STATE/up.err" >&2; exit 1; }
  set -a; . "$STATE/fleet-up.env"; set +a
  # Every region serving before the load starts.
  for _ in $(seq 300); do
    SERVING=$(curl -sf -H "Authorization: Bearer $FLEET_ADMIN_TOKEN" "$FLEET_API/v1/nodes" \
      | python3 -c 'import json,sys; print(sum(n["state"]=="serving" for n in json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
    [ "$SERVING" -ge 6 ] && break
    sleep 0.2
  done
  [ "$SERVING" -ge 6 ] || { echo "fleet up: $SERVING of 6 nodes serving" >&2; exit 1; }
  JSON="$WORK/run-$N.json"
  # loadsim's own default log filter quiets the webrtc crates' per-peer warnings.
  if ! env -u RUST_LOG "$BIN/fleet" loadsim --sessions "$N" --participants 2 --profile video \
      --relay-share 0.15 --ramp-secs 20 --hold-secs 30 --json "$JSON" > "$WORK/table-$N.txt"; then
    echo "fleet loadsim failed at N=$N:" >&2; cat "$WORK/table-$N.txt" >&2; exit 1
  fi
  stop_up
  cat "$WORK/table-$N.txt"
  OK=$(python3 - "$JSON" "$N" <<'PY'
import json, sys
# One-way delay a call stays usable under (ITU-T G.114's upper bound for interactive speech).
DELAY_P99_MS = 400
s = json.load(open(sys.argv[1])); n = int(sys.argv[2])
t, d = s["totals"], s["derived"]
samples = s["series"]["samples"]
busy = [x for x in samples if x["participants_active"] > 0]
secs = max(len(busy), 1)
loadsim_cores = t["loadsim_cpu_s"] / max(t["wall_s"], 1e-9)
media = (d["media_nodes_cpu_s"] or 0) / secs
turn = (d["turn_nodes_cpu_s"] or 0) / secs
peak = max((x["participants_active"] for x in samples), default=0)
fmt = lambda v: "-" if v is None else f"{v:.1f}"
short = d.get("send_shortfall", 0.0)
delay99 = d["delay"]["p99_ms"]
why = []
if t["sessions_up"] != n: why.append(f"{n - t['sessions_up']} sessions not up")
if d["loss"] >= 0.01: why.append("loss >= 1 %")
if short >= 0.01: why.append("loadsim fell behind (>= 1 % of frames unsent): it measured itself")
if delay99 is None or delay99 > DELAY_P99_MS: why.append(f"delay p99 > {DELAY_P99_MS} ms")
ok = not why
print(f"RESULT sessions={n} up={t['sessions_up']} failures={sum(t['failures'].values())} "
      f"loss_pct={d['loss']*100:.3f} unsent_pct={short*100:.2f} "
      f"setup_p50_ms={fmt(d['setup']['p50_ms'])} "
      f"setup_p95_ms={fmt(d['setup']['p95_ms'])} delay_p99_ms={fmt(d['delay']['p99_ms'])} "
      f"peak_participants={peak} loadsim_cores={loadsim_cores:.2f} media_cores={media:.2f} "
      f"turn_cores={turn:.2f} participants_per_loadsim_core={fmt(d['participants_per_loadsim_core'])} "
      f"media_us_per_participant_s={fmt(d['media_nodes_cpu_us_per_participant_second'])} "
      f"loadsim_us_per_participant_s={fmt(d['loadsim_cpu_us_per_participant_second'])} "
      f"sustained={'yes' if ok else 'no (' + '; '.join(why) + ')'}", file=sys.stderr)
print("1" if ok else "0")
PY
)
  if [ "$OK" = 1 ] && [ "$N" -gt "$BEST" ]; then BEST=$N; fi
done
if [ "$BEST" -eq 0 ]; then
  echo "RESULT largest_sustained_sessions=none (no step was sustained: see each step's reasons)" >&2
  exit 1
fi
echo "RESULT largest_sustained_sessions=$BEST (of steps ${STEPS[*]})"
