"""The shipped ``t.min.js`` is what ``npm run build:snippet`` makes of ``t.js`` today."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = "collectors/beacon/t.min.js"


def test_the_minified_snippet_is_built_from_the_current_source(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    if not npm:
        pytest.fail("npm is needed to build the snippet; install Node.js 18+")
    if not (ROOT / "node_modules" / "terser").exists():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"npm ci failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    script = json.loads((ROOT / "package.json").read_text())["scripts"]["build:snippet"]
    built = tmp_path / "t.min.js"
    command = [str(built) if part == SHIPPED else part for part in shlex.split(script)]
    assert str(built) in command, "build:snippet must write collectors/beacon/t.min.js"
    done = subprocess.run(
        [str(ROOT / "node_modules" / ".bin" / command[0]), *command[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert built.read_bytes() == (ROOT / SHIPPED).read_bytes(), (
        "collectors/beacon/t.min.js is stale: run `npm run build:snippet` and commit it"
    )
