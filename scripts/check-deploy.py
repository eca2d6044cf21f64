#!/usr/bin/env python3
"""Checks deploy/: the Terraform parses as HCL2 (python-hcl2), every variable it uses is
declared and every declared variable without a default is an input or comes from
fleet.auto.tfvars.json; the systemd units carry the hardening every fleet unit must have; every
Kubernetes overlay (and the loadsim Job) builds with `kubectl kustomize` and validates
(kubernetes-validate, strict) against the schemas of the oldest and newest Kubernetes versions
supported; the Grafana dashboard is well formed; checkov finds no
failed check in the Terraform, the built manifests and the Containerfile (the skipped ones are
listed with their reasons). Whether the manifests agree with the code (labels, ports, probe
paths, flags, drain deadline) is k8s/tests/manifests.rs's job.

Run by scripts/test.sh with the deploy virtual environment (checkov, python-hcl2, kubectl,
kubernetes-validate):
    .venv-deploy/bin/python scripts/check-deploy.py
Exit status 0 when all holds, 1 with the reasons otherwise.
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import hcl2

ROOT = pathlib.Path(__file__).resolve().parent.parent
TF = ROOT / "deploy" / "terraform"
UNITS = ROOT / "deploy" / "systemd"
K8S = ROOT / "deploy" / "kubernetes"
CONTAINER = ROOT / "deploy" / "container" / "Containerfile"
GRAFANA = ROOT / "deploy" / "grafana"
BIN = pathlib.Path(sys.executable).parent
# The oldest Kubernetes the manifests support (kube's k8s-openapi feature v1_33) and the newest
# kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
# Inputs an operator gives per region (no default on purpose).
INPUTS = {"region", "cluster", "vpc_id", "ami_id", "controller_cidrs", "api_client_cidrs"}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
    "User": "fleet",
}

problems = []


def check_terraform():
    files = sorted(TF.glob("*.tf"))
    if not files:
        problems.append("no Terraform files in deploy/terraform")
        return
    declared = {}
    used = set()
    for f in files:
        text = f.read_text()
        try:
            doc = hcl2.loads(text)
        except Exception as e:  # the parser's own error says where
            problems.append(f"{f.name}: not valid HCL2: {e}")
            continue
        for block in doc.get("variable", []):
            for name, body in block.items():
                declared[name.strip('"')] = body
        used.update(re.findall(r"\bvar\.([a-z_][a-z0-9_]*)", text))
    for name in sorted(used - declared.keys()):
        problems.append(f"var.{name} is used but not declared")
    tfvars = json.loads((TF / "fleet.auto.tfvars.json").read_text())
    for name in sorted(tfvars.keys() - declared.keys()):
        problems.append(f"fleet.auto.tfvars.json sets {name}, which no variable declares")
    for name, body in sorted(declared.items()):
        if "default" not in body and name not in INPUTS and name not in tfvars:
            problems.append(f"variable {name} has no default, is no input and is not generated")
        if "description" not in body:
            problems.append(f"variable {name} has no description")
    print(f"terraform: {len(files)} files parse; {len(declared)} variables, {len(used)} used")


def checkov(what, args):
    """Runs checkov with `args`; a failed check is a problem, skipped ones are listed."""
    out = subprocess.run(
        [str(BIN / "checkov"), *args, "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
    )
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        problems.append(
            f"checkov ({what}) gave no report (exit {out.returncode}): {out.stderr[-2000:]}"
        )
        return
    # One framework gives a report, several a list of them.
    reports = report if isinstance(report, list) else [report]
    passed = failed = skipped = 0
    for r in reports:
        results = r.get("results", {})
        summary = r.get("summary", {})
        passed += summary.get("passed", 0)
        failed += summary.get("failed", 0)
        skipped += summary.get("skipped", 0)
        for check in results.get("failed_checks", []):
            problems.append(
                f"checkov {check['check_id']} ({check['check_name']}) failed for "
                f"{check['resource']} in {what}"
            )
        for check in results.get("skipped_checks", []):
            reason = (check.get("check_result") or {}).get("suppress_comment", "")
            print(f"checkov skipped {check['check_id']} for {check['resource']}: {reason}")
    print(f"checkov ({what}): {passed} passed, {failed} failed, {skipped} skipped")
    if passed == 0:
        problems.append(f"checkov passed no check in {what}: did it scan anything?")


def check_checkov():
    checkov("terraform", ["-d", str(TF), "--framework", "terraform"])


def check_kubernetes(out_dir):
    overlays = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    if len(overlays) < 3:
        problems.append("expected one overlay per region in deploy/kubernetes/overlays")
    for overlay in overlays:
        check_kustomization(overlay, f"overlay {overlay.name}", out_dir)
    check_kustomization(K8S / "loadsim", "loadsim Job", out_dir)


def check_kustomization(directory, name, out_dir):
    """Builds one kustomization, validates it against each supported Kubernetes version and
    runs checkov on it."""
    built = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(directory)], capture_output=True, text=True
    )
    if built.returncode != 0:
        problems.append(f"kubectl kustomize {name}: {built.stderr.strip()}")
        return
    path = out_dir / f"{directory.name}.yaml"
    path.write_text(built.stdout)
    kinds = re.findall(r"^kind: (\S+)", built.stdout, re.M)
    print(f"kustomize {name}: {len(kinds)} objects")
    for version in KUBERNETES_VERSIONS:
        valid = subprocess.run(
            [str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", version, str(path)],
            capture_output=True,
            text=True,
        )
        if valid.returncode != 0:
            problems.append(
                f"{name} is not valid Kubernetes {version}: "
                f"{(valid.stdout + valid.stderr).strip()[-2000:]}"
            )
    print(f"kubernetes-validate {name}: checked against {', '.join(KUBERNETES_VERSIONS)}")
    checkov(f"kubernetes {name}", ["-f", str(path), "--framework", "kubernetes"])


def check_containerfile(out_dir):
    # checkov knows Dockerfiles by name: the same file under that name.
    copy = out_dir / "Dockerfile"
    shutil.copyfile(CONTAINER, copy)
    text = CONTAINER.read_text()
    if not re.search(r"^USER (?!0\b|root\b)\S+", text, re.M):
        problems.append("Containerfile: the image must run as a non-root USER")
    if len(re.findall(r"^FROM ", text, re.M)) < 2:
        problems.append("Containerfile: expected a build stage and a run stage")
    checkov("Containerfile", ["-f", str(copy), "--framework", "dockerfile"])


def check_units():
    units = sorted(UNITS.glob("*.service"))
    if len(units) < 3:
        problems.append("expected the boot-env, media and TURN units in deploy/systemd")
    for unit in units:
        keys = {}
        for line in unit.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "[")) and "=" in line:
                key, value = line.split("=", 1)
                keys.setdefault(key, value)
        for key, want in HARDENING.items():
            if keys.get(key) != want:
                problems.append(f"{unit.name}: {key}={want} missing (has {keys.get(key)!r})")
        if not keys.get("ExecStart", "").startswith("/usr/local/bin/fleet "):
            problems.append(f"{unit.name}: ExecStart does not run the fleet binary")
    print(f"systemd: {len(units)} units checked")


def check_grafana():
    """The dashboard is JSON Grafana imports: a uid and title, the Prometheus datasource as a
    variable, each panel with a unique id, a place on the grid that overlaps no other, and
    PromQL targets that name fleet metrics (whether the controller exports them is
    tests/tests/ops_cli.rs's job)."""
    path = GRAFANA / "fleet-dashboard.json"
    try:
        dash = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problems.append(f"{path.name}: {e}")
        return
    for key in ("uid", "title", "panels", "templating"):
        if key not in dash:
            problems.append(f"{path.name}: no {key!r}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("query") != "prometheus":
        problems.append(f"{path.name}: no `datasource` variable of type prometheus")
    ids, cells = set(), {}
    for panel in dash.get("panels", []):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            problems.append(f"{path.name}: panel id {panel.get('id')} used twice")
        ids.add(panel.get("id"))
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{path.name}: panel {title!r} does not use the datasource variable")
        g = panel.get("gridPos", {})
        for x in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0)):
            for y in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0)):
                if (x, y) in cells:
                    problems.append(f"{path.name}: {title!r} overlaps {cells[(x, y)]!r}")
                    break
                cells[(x, y)] = title
            else:
                continue
            break
        targets = panel.get("targets", [])
        if not targets or not all(re.search(r"\bfleet_[a-z_]+", t.get("expr", "")) for t in targets):
            problems.append(f"{path.name}: panel {title!r} has a target without a fleet metric")
    print(f"grafana: {len(ids)} panels checked")


check_terraform()
check_checkov()
check_units()
check_grafana()
with tempfile.TemporaryDirectory() as tmp:
    check_kubernetes(pathlib.Path(tmp))
    check_containerfile(pathlib.Path(tmp))
if problems:
    print("deploy/ check failed:", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    sys.exit(1)
print("deploy/ check passed")
