"""The rooms keep their import direction (docs/architecture.md): checked by import-linter's
contracts in pyproject.toml, so a change that breaks one fails the suite, not only CI's lint."""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    exit_code = lint_imports(
        config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True
    )
    assert exit_code == 0, "an import crosses a room's boundary; `lint-imports` names it"
