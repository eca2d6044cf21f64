#!/usr/bin/env bash
# The OpenAPI description against the real thing: starts `fleet up` (a `fleet serve` controller
# with its local pools of real nodes, so sessions are placed and pools exist), fetches
# /openapi.json, validates it with openapi-spec-validator, then runs schemathesis from it
# against the running API: the signaling and booking operations with the client token, the ops,
# probe, demo and dashboard operations (but the dashboard's endless event stream) with the admin
# token, a bounded number of examples per operation
# and a fixed seed. Checks: no 5xx, every status documented, every content type and response
# body as described. Fails (exit 1) on any failure or error.
#
# Usage: scripts/check-openapi.sh   (test.sh runs it with its virtual environment)
# FLEET_BIN=DIR takes the fleet binary from DIR (default: the debug build).
# API_VENV=DIR holds openapi-spec-validator and schemathesis (default: .venv-api).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${FLEET_BIN:-${CARGO_TARGET_DIR:-target}/debug}"
VENV="${API_VENV:-.venv-api}"
EXAMPLES="${OPENAPI_EXAMPLES:-25}"
WORK="$(mktemp -d)"
UP_PID=""
cleanup() {
  if [ -n "$UP_PID" ]; then
    kill -INT "$UP_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$UP_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
set +m

LINK_PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
FLEET__API__LISTEN=127.0.0.1:0 FLEET__LINK__LISTEN="127.0.0.1:$LINK_PORT" \
  "$BIN/fleet" up --state-dir "$WORK/up" > "$WORK/up.out" 2> "$WORK/up.err" &
UP_PID=$!
for _ in $(seq 600); do [ -s "$WORK/up/fleet-up.env" ] && break; sleep 0.1; done
[ -s "$WORK/up/fleet-up.env" ] || { echo "fleet up did not come up:" >&2; tail -20 "$WORK/up.err" >&2; exit 1; }
set -a; . "$WORK/up/fleet-up.env"; set +a
curl -sf "$FLEET_API/openapi.json" > "$WORK/openapi.json"
"$VENV/bin/openapi-spec-validator" "$WORK/openapi.json"

VENV="$(cd "$VENV" && pwd)"
run() {
  local token="$1"; shift
  # From the work directory: schemathesis keeps a cache (.schemathesis/) where it runs.
  (cd "$WORK" && "$VENV/bin/schemathesis" run "$WORK/openapi.json" --url "$FLEET_API" \
    -H "Authorization: Bearer $token" "$@" \
    --max-examples "$EXAMPLES" --seed 1 --generation-database none --no-color \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    > "$WORK/schemathesis.out" 2>&1) || {
      cat "$WORK/schemathesis.out" >&2
      echo "schemathesis found problems ($*); the controller's log:" >&2
      tail -30 "$WORK/up/logs/controller.log" >&2 || true
      grep -A3 panicked "$WORK/up.err" >&2 || true
      exit 1
    }
  echo "schemathesis ($*): $(grep -E 'generated,' "$WORK/schemathesis.out" | tail -1 | sed 's/^ *//')"
}
run "$FLEET_CLIENT_TOKEN" --include-tag signaling --include-tag bookings
# The dashboard's event stream never ends by design: it is left out (the browser test reads it).
run "$FLEET_ADMIN_TOKEN" --include-tag ops --include-tag probes --include-tag demo \
  --include-tag dashboard --exclude-path /v1/dashboard/stream
if grep -q panicked "$WORK/up.err"; then
  echo "the controller panicked during the run:" >&2
  grep -A3 panicked "$WORK/up.err" >&2
  exit 1
fi
echo "openapi: $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["paths"]))' "$WORK/openapi.json") paths valid; schemathesis passed"
