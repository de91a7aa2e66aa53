"""The operator's guide keeps up with what it documents: a runbook for every alert, and only
files of deploy/ that exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "operations-guide.md").read_text()


def test_every_alert_has_a_runbook_and_every_runbook_an_alert() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "tracker-rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    runbooks = set(re.findall(r"^### (Tracker\w+)$", GUIDE, re.MULTILINE))
    assert alerts, "the rules define no alert"
    assert alerts == runbooks, (
        f"alerts without a runbook: {sorted(alerts - runbooks)}; "
        f"runbooks without an alert: {sorted(runbooks - alerts)}"
    )


def test_the_guide_names_only_deploy_files_that_exist() -> None:
    named = set(re.findall(r"`(deploy/[\w./-]+)`", GUIDE))
    assert "deploy/Dockerfile" in named
    missing = sorted(n for n in named if not (ROOT / n.rstrip("/")).exists())
    assert not missing, missing
