#!/usr/bin/env python3
"""Checks deploy/: the Terraform parses as HCL2 (python-hcl2), every variable it uses is
declared and every declared variable without a default is an input or comes from
fleet.auto.tfvars.json; checkov finds no failed check (the skipped ones are listed with their
reasons); the systemd units carry the hardening every fleet unit must have.

Run by scripts/test.sh with the deploy virtual environment (checkov, python-hcl2):
    .venv-deploy/bin/python scripts/check-deploy.py
Exit status 0 when all holds, 1 with the reasons otherwise.
"""

import json
import pathlib
import re
import subprocess
import sys

import hcl2

ROOT = pathlib.Path(__file__).resolve().parent.parent
TF = ROOT / "deploy" / "terraform"
UNITS = ROOT / "deploy" / "systemd"
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


def check_checkov():
    out = subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "checkov"),
            "-d", str(TF),
            "--framework", "terraform",
            "--skip-download",
            "--output", "json",
        ],
        capture_output=True,
        text=True,
    )
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        problems.append(f"checkov gave no report (exit {out.returncode}): {out.stderr[-2000:]}")
        return
    results = report.get("results", {}) if isinstance(report, dict) else {}
    summary = report.get("summary", {}) if isinstance(report, dict) else {}
    for check in results.get("failed_checks", []):
        problems.append(
            f"checkov {check['check_id']} ({check['check_name']}) failed for "
            f"{check['resource']} in {check['file_path']}"
        )
    for check in results.get("skipped_checks", []):
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        print(f"checkov skipped {check['check_id']} for {check['resource']}: {reason}")
    print(
        f"checkov: {summary.get('passed', 0)} passed, {summary.get('failed', 0)} failed, "
        f"{summary.get('skipped', 0)} skipped"
    )
    if summary.get("passed", 0) == 0:
        problems.append("checkov passed no check: did it scan the Terraform?")


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


check_terraform()
check_checkov()
check_units()
if problems:
    print("deploy/ check failed:", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    sys.exit(1)
print("deploy/ check passed")
