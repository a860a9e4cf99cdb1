"""The linter against real migration files (tests/data/lint_corpus, README.md there):
no finding at all on the safe corpus, every hazard flagged at its line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from microservices.shared.database.migrations.lint import collect_directory, lint
from microservices.shared.database.topology import default_topology

CORPUS = Path(__file__).parent / "data" / "lint_corpus"
SAFE, HAZARD = CORPUS / "safe", CORPUS / "hazard"
TOPOLOGY = default_topology()
CLI = [sys.executable, "-m", "microservices.shared.database"]
_EXPECT = re.compile(r"^-- expect: (?P<rule>\S+) line (?P<line>[0-9]+)$", re.MULTILINE)
HAZARDS = sorted(HAZARD.glob("*/*.sql"))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run([*CLI, "lint", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_corpus_shape_and_readme() -> None:
    safe = sorted(SAFE.glob("*/*.sql"))
    assert len(HAZARDS) >= 30 and len(safe) >= 8
    readme = (CORPUS / "README.md").read_text()
    for path in safe + HAZARDS:
        assert str(path.relative_to(path.parents[1])) in readme, path
        assert path.parent.name in TOPOLOGY.service_names()
    for path in HAZARDS:
        text = path.read_text()
        assert text.startswith("-- hazard: ") and _EXPECT.search(text), path


def test_safe_corpus_has_no_finding_at_all() -> None:
    items, problems = [], []
    for folder in sorted(SAFE.iterdir()):
        files, bad = collect_directory(folder)
        items += [(TOPOLOGY.service(folder.name), f) for f in files]
        problems += bad
    assert problems == []
    assert [str(f) for f in lint(TOPOLOGY, items)] == []


@pytest.mark.parametrize("path", HAZARDS, ids=[f"{p.parent.name}/{p.stem}" for p in HAZARDS])
def test_every_hazard_is_flagged_at_its_line(path: Path) -> None:
    files, _problems = collect_directory(path.parent)
    [file] = [f for f in files if f.path == path]
    found = {(f.rule, f.line) for f in lint(TOPOLOGY, [(TOPOLOGY.service(path.parent.name),
                                                         file)])}
    expected = {(m["rule"], int(m["line"])) for m in _EXPECT.finditer(path.read_text())}
    assert expected <= found, f"missing {sorted(expected - found)}; found {sorted(found)}"


def test_cli_exit_codes_on_the_corpora(tmp_path: Path) -> None:
    result = cli("--dir", str(SAFE), "--strict", cwd=tmp_path)
    assert (result.returncode, result.stdout.strip().splitlines()[-1]) == (
        0, "lint: 8 file(s), 0 error(s), 0 warning(s)"), result.stdout + result.stderr
    result = cli("--dir", str(HAZARD), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    # Every hazard file is reported, not only the first bad one.
    reported = {line.split(":")[0] for line in result.stdout.splitlines()[:-1]}
    assert reported == {str(p) for p in HAZARDS}
    # A file with warnings only: 0 without --strict, non-zero with it.
    warnings_only = tmp_path / "m" / "auth"
    warnings_only.mkdir(parents=True)
    shutil.copy(HAZARD / "auth" / "V1__index_without_concurrently.sql", warnings_only)
    assert cli("--dir", str(tmp_path / "m"), cwd=tmp_path).returncode == 0
    assert cli("--dir", str(tmp_path / "m"), "--strict", cwd=tmp_path).returncode == 1
