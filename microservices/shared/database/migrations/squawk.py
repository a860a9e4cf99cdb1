"""Lock hazards from squawk (the ``squawk-cli`` package's native binary).

squawk runs once per batch of files with ``--reporter json``; its 0-based lines and
columns become 1-based.  Some rules are off because the runner already does what they
ask for, or because they judge style or data modelling rather than migration safety
(:data:`SQUAWK_EXCLUDED`).  A finding on a statement about an object the same file
created earlier (a table created and then renamed, indexed or constrained, a new
materialized view's index, a new domain) is dropped: no other session can be using that
object, so nothing can wait on its lock.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..core.errors import LintToolError
from .files import MigrationFile, ParsedSql
from .findings import WARNING, Finding
from .hazards import FileScan

# Rule -> why edulink switches it off everywhere.
SQUAWK_EXCLUDED: dict[str, str] = {
    "require-statement-timeout": "the runner sets statement_timeout for every file",
    "prefer-bigint-over-int": "a data-modelling choice, not a migration hazard",
    "prefer-bigint-over-smallint": "a data-modelling choice, not a migration hazard",
    "ban-char-field": "a data-modelling choice, not a migration hazard",
    "prefer-text-field": "a style preference (varchar(n) is a valid choice), not a hazard",
    "prefer-identity": "a style preference (serial still works), not a hazard",
    "ban-create-domain-with-constraint": "a new domain is used by no column yet: it locks "
                                         "nothing",
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


def squawk_findings(files: Iterable[tuple[MigrationFile, FileScan, ParsedSql]]
                    ) -> list[Finding]:
    """squawk's findings for (file, scan, parsed SQL) triples, as ``squawk/<rule>``
    warnings.  A file with psql meta-commands is checked as its scan's SQL (those lines
    blanked); an unparsable one is left out (the contract analysis reports it)."""
    chosen = [(f, s, t) for f, s, t in files if s.parsed]
    with contextlib.ExitStack() as stack:
        tmp: Path | None = None  # made only when needed: it costs as much as the rest
        by_path: dict[str, tuple[MigrationFile, FileScan, ParsedSql]] = {}
        for number, (file, scan, parsed) in enumerate(chosen):
            path = file.path
            if scan.sql != file.text:
                if tmp is None:
                    tmp = Path(stack.enter_context(
                        tempfile.TemporaryDirectory(prefix="edulink-lint-")))
                path = tmp / str(number) / file.path.name
                path.parent.mkdir()
                path.write_text(scan.sql, encoding="utf-8")
            by_path[str(path)] = (file, scan, parsed)
        inside = [Path(p) for p, v in by_path.items() if v[2].transactional]
        outside = [Path(p) for p, v in by_path.items() if not v[2].transactional]
        raw = _run_squawk(inside, True) + _run_squawk(outside, False)
    out: list[Finding] = []
    for item in raw:
        entry = by_path.get(str(item.get("file")))
        if entry is None:
            continue
        file, scan, parsed = entry
        rule = str(item.get("rule_name") or "unknown")
        line = int(str(item.get("line", 0))) + 1
        column = int(str(item.get("column", 0))) + 1
        if any(first <= line <= last for first, last in scan.fresh_spans):
            continue
        if (not parsed.transactional and rule == "require-lock-timeout"
                and _concurrent_statement_at(parsed, line)):
            # The runner runs CONCURRENTLY statements with lock_timeout 0 on purpose: they
            # wait for older transactions and block no reads or writes meanwhile.
            continue
        help_text = item.get("help")
        message = str(item.get("message", "")) + (f" {help_text}" if help_text else "")
        out.append(Finding(str(file.path), line, f"squawk/{rule}", WARNING, message,
                           column=column))
    return out


def _concurrent_statement_at(parsed: ParsedSql, line: int) -> bool:
    starts = [s for s in parsed.statements if s.line <= line]
    return bool(starts) and bool(_CONCURRENTLY.search(starts[-1].code))
