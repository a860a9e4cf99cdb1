"""The allowed import directions (pyproject.toml [tool.importlinter], docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)


def test_import_contracts_are_kept() -> None:
    result = _lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Layers of microservices.shared.database KEPT" in result.stdout
    assert "Layers of microservices.shared.database.django_support KEPT" in result.stdout
    assert "verify reads the catalog without the code that changes it KEPT" in result.stdout
    assert "0 broken" in result.stdout


def test_a_broken_contract_is_reported(tmp_path: Path) -> None:
    # The contracts above only mean something if lint-imports sees the real import graph:
    # a contract that the code does break (provisioning imports the shared model) must fail.
    config = tmp_path / "importlinter.ini"
    config.write_text(
        "[importlinter]\n"
        "root_package = microservices.shared.database\n\n"
        "[importlinter:contract:probe]\n"
        "name = probe\n"
        "type = forbidden\n"
        "source_modules = microservices.shared.database.privileges.provisioning\n"
        "forbidden_modules = microservices.shared.database.privileges.model\n")
    result = _lint_imports("--config", str(config))
    assert result.returncode != 0, result.stdout
    assert "probe BROKEN" in result.stdout
