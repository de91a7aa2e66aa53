"""The shipped Prometheus rules parse, and fire when and only when they should (promtool)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import debian_tool
from tracker import metrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = debian_tool("promtool", "prometheus")
    check = subprocess.run(
        [promtool, "check", "rules", "tracker-rules.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "tracker-rules.test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_rules_only_name_metrics_tracker_exports() -> None:
    exported = {
        m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")
    }
    named = set(
        re.findall(
            r"\b(tracker_[a-z_]+?)(?:_total|_bucket)?\b", (RULES / "tracker-rules.yml").read_text()
        )
    )
    unknown = {n for n in named if n not in exported and n.removesuffix("_total") not in exported}
    assert not unknown, f"rules name metrics Tracker does not export: {sorted(unknown)}"
