"""``edulink-db migrations lint``: contract breaks (errors) and lock hazards (warnings).

Errors come from :mod:`.contracts`.  Warnings come from squawk (the ``squawk-cli``
package's native binary), run once per batch of files with ``--reporter json``; its
0-based lines are converted to 1-based.  A few squawk rules are switched off because
edulink's migration runner already does what they ask for, or because they judge data
modelling rather than migration safety (see :data:`SQUAWK_EXCLUDED`).

A warning is silenced for one statement by a comment on or just above it::

    -- edulink:ignore squawk/adding-field-with-default reason: table has 40 rows

The reason is mandatory, and contract findings cannot be ignored.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from ..core.errors import ContractViolationError, LintToolError, MigrationLintError
from ..topology import Service, Topology
from .contracts import (
    ERROR,
    WARNING,
    ContractIndex,
    Finding,
    Suppression,
    analyse_migration,
    read_markers,
)
from .files import MigrationFile

UNUSED_SUPPRESSION = "lint/unused-suppression"

# Rule -> why edulink switches it off everywhere.
SQUAWK_EXCLUDED: dict[str, str] = {
    "require-statement-timeout": "the runner sets statement_timeout for every file",
    "prefer-bigint-over-int": "a data-modelling choice, not a migration hazard",
    "prefer-bigint-over-smallint": "a data-modelling choice, not a migration hazard",
    "ban-char-field": "a data-modelling choice, not a migration hazard",
}
# Rule -> why it is off for files the runner wraps in a transaction.
SQUAWK_EXCLUDED_IN_TRANSACTION: dict[str, str] = {
    "require-lock-timeout": "the runner sets lock_timeout in every transactional file",
    "prefer-robust-stmts": "a failed transactional file rolls back entirely",
}
_CONCURRENTLY = re.compile(r"\bCONCURRENTLY\b", re.IGNORECASE)
_SQUAWK_TIMEOUT_S = 120


def squawk_binary() -> str:
    """The squawk executable: next to this Python (the venv's bin), else on PATH."""
    for candidate in (Path(sys.executable).parent / "squawk",
                      Path(sys.executable).parent / "squawk.exe"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("squawk")
    if found is None:
        raise LintToolError(
            "squawk is not installed, so lock hazards cannot be checked. Install it with "
            "'pip install squawk-cli' (a dependency of edulink-db).")
    return found


def _run_squawk(paths: list[Path], in_transaction: bool) -> list[dict[str, object]]:
    if not paths:
        return []
    excluded = dict(SQUAWK_EXCLUDED)
    if in_transaction:
        excluded |= SQUAWK_EXCLUDED_IN_TRANSACTION
    argv = [squawk_binary(), "--reporter", "json", "--exclude", ",".join(sorted(excluded))]
    if in_transaction:
        argv.append("--assume-in-transaction")
    argv += [str(p) for p in paths]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_SQUAWK_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LintToolError(f"squawk could not run: {exc}") from None
    try:
        data = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        data = None
    if proc.returncode not in (0, 1) or not isinstance(data, list):
        raise LintToolError(f"squawk failed (exit {proc.returncode}): "
                            f"{(proc.stderr or proc.stdout).strip()[:500]}")
    return data


def squawk_findings(files: Iterable[MigrationFile]) -> list[Finding]:
    """squawk's findings for *files*, 1-based, as ``squawk/<rule>`` warnings."""
    files = list(files)
    by_path = {str(f.path): f for f in files}
    raw = (_run_squawk([f.path for f in files if f.transactional], True)
           + _run_squawk([f.path for f in files if not f.transactional], False))
    out: list[Finding] = []
    for item in raw:
        path, rule = str(item.get("file")), str(item.get("rule_name") or "unknown")
        line = int(str(item.get("line", 0))) + 1
        file = by_path.get(path)
        if (file is not None and not file.transactional and rule == "require-lock-timeout"
                and _concurrent_statement_at(file, line)):
            # The runner runs CONCURRENTLY statements with lock_timeout 0 on purpose: they
            # wait for older transactions and block no reads or writes meanwhile.
            continue
        help_text = item.get("help")
        message = str(item.get("message", "")) + (f" {help_text}" if help_text else "")
        out.append(Finding(path, line, f"squawk/{rule}", WARNING, message))
    return out


def _concurrent_statement_at(file: MigrationFile, line: int) -> bool:
    starts = [s for s in file.statements if s.line <= line]
    return bool(starts) and bool(_CONCURRENTLY.search(starts[-1].code))


def _apply_suppressions(findings: list[Finding], suppressions: list[Suppression],
                        spans: list[tuple[int, int]], path: str) -> list[Finding]:
    kept = list(findings)
    for sup in suppressions:
        span = next((s for s in spans if s[0] <= sup.line <= s[1]), None) or next(
            (s for s in spans if s[0] > sup.line), (sup.line, sup.line + 1))
        hits = [f for f in kept if f.rule == sup.rule and span[0] <= f.line <= span[1]]
        if not hits:
            kept.append(Finding(path, sup.line, UNUSED_SUPPRESSION, WARNING,
                                f"edulink:ignore {sup.rule} matches no finding in the "
                                "statement it precedes; remove it."))
        kept = [f for f in kept if f not in hits]
    return kept


def lint(topology: Topology, items: Iterable[tuple[Service, MigrationFile]], *,
         squawk: bool = True) -> list[Finding]:
    """Every finding for the given (service, file) pairs, sorted by file and line."""
    items = list(items)
    index = ContractIndex(topology)
    lock = squawk_findings(f for _, f in items) if squawk else []
    by_file: dict[str, list[Finding]] = {}
    for finding in lock:
        by_file.setdefault(finding.file, []).append(finding)
    out: list[Finding] = []
    for service, file in items:
        path = str(file.path)
        markers = read_markers(path, file.text)
        contract, spans = analyse_migration(topology, service, path, file.text, index, markers)
        out += _apply_suppressions(contract + by_file.get(path, []), markers.suppressions,
                                   spans, path)
    return sorted(out, key=lambda f: (f.file, f.line, f.rule))


def check_pending(topology: Topology, items: Iterable[tuple[Service, MigrationFile]], *,
                  strict: bool = False) -> None:
    """What ``migrate`` calls before it runs anything: raise ContractViolationError on
    any contract error (and MigrationLintError on lint warnings when *strict*)."""
    items = list(items)
    if not items:
        return
    findings = lint(topology, items, squawk=strict)
    errors = [f for f in findings if f.severity == ERROR]
    if errors:
        raise ContractViolationError(
            f"Refused: {len(errors)} problem(s) in pending migrations; nothing was run.\n  "
            + "\n  ".join(map(str, errors)), errors)
    if strict and findings:
        raise MigrationLintError(
            f"Refused (--strict): {len(findings)} lint warning(s) in pending migrations; "
            "nothing was run. Fix them or add '-- edulink:ignore <rule> reason: ...'.\n  "
            + "\n  ".join(map(str, findings)), findings)
