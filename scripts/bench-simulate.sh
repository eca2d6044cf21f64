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
# with the default policy otherwise, the placement's `pack` strategy; quality at a media
# target_utilization of 0.7 (the default) and 0.9, speed at 0.9. Fails (exit 1) when a run
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
# One config per media target: the default 0.7 and 0.9 (the walk-in and booking signals keep
# the headroom a high target gives up); TURN pools at 0.5 in both (TURN has no unmet-demand
# signal, and its nodes are few).
config() { # media_target out
  cat > "$2" <<'TOML'
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
  for region in af-south-1 ap-east-1 ap-northeast-1 ap-south-1 ap-southeast-1 ap-southeast-2 \
      ca-central-1 eu-central-1 eu-north-1 eu-west-1 eu-west-2 me-central-1 sa-east-1 us-east-1 \
      us-east-2 us-west-2; do
    printf '[[pools]]\nregion = "%s"\nkind = "media"\nprovider = "local"\ntarget_utilization = %s\n' \
      "$region" "$1" >> "$2"
    printf '[[pools]]\nregion = "%s"\nkind = "turn"\nprovider = "local"\ntarget_utilization = 0.5\n' \
      "$region" >> "$2"
  done
}
config 0.7 "$WORK/t07.toml"
config 0.9 "$WORK/t09.toml"

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
  for target in t07 t09; do
    "$BIN" simulate --trace "$WORK/$kind.csv" --config "$WORK/$target.toml" \
      --policy ours,hpa,oracle --json "$WORK/$kind-$target.json"
    summary "$WORK/$kind-$target.json" "$kind/$target"
  done
done

"$BIN" simulate generate --kind week --sessions "$BIG" --seed 1 --out "$WORK/big.csv" >/dev/null
for policy in ours hpa; do
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$BIN" simulate --trace "$WORK/big.csv" \
    --config "$WORK/t09.toml" --policy "$policy" --json "$WORK/big-$policy.json"
  read -r secs kb < "$WORK/time"
  summary "$WORK/big-$policy.json" "speed/$policy"
  echo "speed/$policy  wall ${secs} s (parse + oracle + one replay), peak memory $((kb / 1024)) MB"
done
