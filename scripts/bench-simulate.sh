#!/usr/bin/env bash
# Benchmark: `fleet simulate` speed and quality on generated weeks (fixed seeds and sizes).
#
# - Speed: a 1,000,000-session week over the 16 catalog regions, `ours` and `hpa` each replayed
#   once; prints wall seconds, sessions per second of simulation and peak memory (goal: ≤ 60 s
#   per policy, ≤ 1 GB).
# - Quality: 200,000-session `week` and `surge` traces with boot 90 s (+ up to 30 s jitter);
#   prints refused, dropped and node-hours over the oracle's per policy (goal: `ours` refuses 0,
#   drops 0, ≤ 1.10 × the oracle, and beats `hpa` on refusals and node-hours).
#
# Config: media nodes of 400 units (50 video calls), TURN nodes of 200 allocations, pools 1..500
# with the default policy otherwise, the placement's `pack` strategy. Fails (exit 1) when a run
# fails or its report is not the documented JSON; goals are reported, not asserted.
#
# Usage: scripts/bench-simulate.sh [sessions_for_speed] [sessions_for_quality]
set -euo pipefail
cd "$(dirname "$0")/.."
BIG="${1:-1000000}"
SMALL="${2:-200000}"
cargo build --release --workspace --bins --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/fleet"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/bench.toml" <<'TOML'
[placement]
strategy = "pack"

[sim]
media_capacity = 400
turn_capacity = 200
boot_secs = 90
boot_jitter_secs = 30

[pool_defaults]
min = 1
max = 500
TOML

summary() { # report.json label
  python3 - "$1" "$2" <<'PY'
import json, sys
report, label = json.load(open(sys.argv[1])), sys.argv[2]
need = {"policy", "sessions", "refused", "spilled", "dropped", "p95_worse_rtt_ms", "node_hours",
        "node_hours_by_pool", "cost", "actions", "ratio_to_oracle"}
for p in report["policies"]:
    missing = need - p.keys()
    if missing:
        sys.exit(f"{label}: {p.get('policy')} lacks {sorted(missing)}")
    r = p["ratio_to_oracle"]
    sps = p.get("sessions_per_sec")
    print(f"{label:<14} {p['policy']:<7} sessions {p['sessions']:>8}  refused {p['refused']:>6}  "
          f"dropped {p['dropped']:>5}  media n-h {p['node_hours']['media']:>9.1f} "
          f"(x{r['media']:.3f} oracle)  TURN n-h {p['node_hours']['turn']:>7.1f} (x{r['turn']:.3f})"
          + (f"  {sps:,.0f} sessions/s" if sps else ""))
PY
}

for kind in week surge; do
  "$BIN" simulate generate --kind "$kind" --sessions "$SMALL" --seed 1 --out "$WORK/$kind.csv" >/dev/null
  "$BIN" simulate --trace "$WORK/$kind.csv" --config "$WORK/bench.toml" \
    --policy ours,hpa,oracle --json "$WORK/$kind.json"
  summary "$WORK/$kind.json" "quality/$kind"
done

"$BIN" simulate generate --kind week --sessions "$BIG" --seed 1 --out "$WORK/big.csv" >/dev/null
for policy in ours hpa; do
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$BIN" simulate --trace "$WORK/big.csv" \
    --config "$WORK/bench.toml" --policy "$policy" --json "$WORK/big-$policy.json"
  read -r secs kb < "$WORK/time"
  summary "$WORK/big-$policy.json" "speed/$policy"
  echo "speed/$policy  wall ${secs} s (parse + oracle + one replay), peak memory $((kb / 1024)) MB"
done
