"""``edulink-db lint``: every problem in every migration file, without a database.

- contract breaks (errors, :mod:`.contracts`): a column or table another service reads is
  dropped, renamed, retyped or moved;
- edulink's own hazards (errors, :mod:`.hazards`): psql meta-commands, session settings
  that undo the runner's (pg_dump's ``SET statement_timeout = 0``), SECURITY DEFINER
  functions without ``SET search_path``; and files the runner would refuse (bad name,
  not UTF-8, transaction control);
- lock hazards (warnings, :mod:`.squawk`).

A warning or a hazard is silenced for one statement by a comment on or just above it
(:mod:`.markers`)::

    -- edulink-db: ignore squawk/adding-field-with-default the table has 40 rows

The reason is mandatory, and contract findings cannot be ignored.  Every rule has an
anchor in docs/lint-rules.md (:func:`.findings.rule_url`).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

from ..core.errors import ContractViolationError, MigrationFileError, MigrationLintError
from ..topology import Service, Topology
from .contracts import ContractIndex, analyse_migration
from .files import MigrationFile, ParsedSql, check_sql, parse_file, scan_statements
from .findings import ERROR, WARNING, Finding
from .hazards import RUNNER_BYPASS_RULES, scan_file
from .markers import Suppression, read_markers
from .squawk import SQUAWK_EXCLUDED, squawk_binary, squawk_findings

__all__ = ["FILE_PROBLEM", "SQUAWK_EXCLUDED", "UNUSED_SUPPRESSION", "check_pending",
           "collect_directory", "lint", "squawk_binary"]

UNUSED_SUPPRESSION = "lint/unused-suppression"
FILE_PROBLEM = "lint/migration-file"


def collect_directory(directory: Path) -> tuple[list[MigrationFile], list[Finding]]:
    """The migration files of *directory*, and a finding for each file the runner would
    refuse to load (unlike :func:`.files.load_directory`, which stops at the first)."""
    files: list[MigrationFile] = []
    problems: list[Finding] = []
    for path in sorted(directory.iterdir()):
        if not (path.is_file() and path.suffix == ".sql"):
            continue
        try:
            files.append(parse_file(path))
        except MigrationFileError as exc:
            problems.append(Finding(str(path), 1, FILE_PROBLEM, ERROR,
                                    str(exc).removeprefix(f"{path}: ")))
    versioned = sorted((f for f in files if f.version is not None), key=lambda f: f.version
                       or ())
    for a, b in pairwise(versioned):
        if a.version == b.version:
            problems.append(Finding(str(b.path), 1, FILE_PROBLEM, ERROR,
                                    f"{a.path.name} has the same version {a.version_text}; "
                                    "give one of them a new version."))
    return files, problems


def _apply_suppressions(findings: list[Finding], suppressions: list[Suppression],
                        spans: list[tuple[int, int]], path: str) -> list[Finding]:
    kept = list(findings)
    for sup in suppressions:
        span = next((s for s in spans if s[0] <= sup.line <= s[1]), None) or next(
            (s for s in spans if s[0] > sup.line), (sup.line, sup.line + 1))
        hits = [f for f in kept if f.rule == sup.rule and span[0] <= f.line <= span[1]]
        if not hits:
            kept.append(Finding(path, sup.line, UNUSED_SUPPRESSION, WARNING,
                                f"the ignore marker for {sup.rule} matches no finding in the "
                                "statement it precedes; remove it."))
        kept = [f for f in kept if f not in hits]
    return kept


def _parsed(file: MigrationFile, sql: str) -> tuple[ParsedSql, list[Finding]]:
    """The runner's view of the file (transactional or not), and each of its refusals."""
    parsed, problems = check_sql(sql, scan_statements(sql))
    return parsed, [Finding(str(file.path), max(line, 1), FILE_PROBLEM, ERROR, message)
                    for line, message in problems]


def _with_columns(findings: list[Finding], text: str) -> list[Finding]:
    """Findings that know only their line point at the line's first character."""
    lines = text.split("\n")
    out = []
    for f in findings:
        if f.column == 1 and 1 <= f.line <= len(lines):
            line = lines[f.line - 1]
            column = len(line) - len(line.lstrip()) + 1
            f = Finding(f.file, f.line, f.rule, f.severity, f.message, column)
        out.append(f)
    return out


def lint(topology: Topology, items: Iterable[tuple[Service, MigrationFile]], *,
         squawk: bool = True, hazards: bool = True) -> list[Finding]:
    """Every finding for the given (service, file) pairs, sorted by file and line."""
    items = list(items)
    index = ContractIndex(topology)
    scans = {str(f.path): scan_file(str(f.path), f.text) for _, f in items}
    parsed = {str(f.path): _parsed(f, scans[str(f.path)].sql) for _, f in items}
    by_file: dict[str, list[Finding]] = {}
    if squawk:
        for finding in squawk_findings((f, scans[str(f.path)], parsed[str(f.path)][0])
                                       for _, f in items):
            by_file.setdefault(finding.file, []).append(finding)
    out: list[Finding] = []
    for service, file in items:
        path = str(file.path)
        scan = scans[path]
        markers = read_markers(path, file.text)
        contract, spans = analyse_migration(topology, service, path, scan.sql, index, markers)
        own = (scan.findings + parsed[path][1]) if hazards else [
            f for f in scan.findings if f.rule in RUNNER_BYPASS_RULES]
        found = _apply_suppressions(contract + own + by_file.get(path, []),
                                    markers.suppressions, spans, path)
        out += _with_columns(found, file.text)
    return sorted(out, key=lambda f: (f.file, f.line, f.column, f.rule))


def check_pending(topology: Topology, items: Iterable[tuple[Service, MigrationFile]], *,
                  strict: bool = False) -> None:
    """What ``migrate`` calls before it runs anything: raise ContractViolationError on
    any contract error (and MigrationLintError on any other finding when *strict*)."""
    items = list(items)
    if not items:
        return
    findings = lint(topology, items, squawk=strict, hazards=strict)
    errors = [f for f in findings if f.severity == ERROR and not strict]
    if errors:
        raise ContractViolationError(
            f"Refused: {len(errors)} problem(s) in pending migrations; nothing was run.\n  "
            + "\n  ".join(map(str, errors)), errors)
    if strict and findings:
        contract = [f for f in findings if f.rule.startswith("contract/")]
        if contract:
            raise ContractViolationError(
                f"Refused: {len(contract)} problem(s) in pending migrations; nothing was "
                "run.\n  " + "\n  ".join(map(str, contract)), contract)
        raise MigrationLintError(
            f"Refused (--strict): {len(findings)} lint finding(s) in pending migrations; "
            "nothing was run. Fix them or add '-- edulink-db: ignore <rule> <reason>'.\n  "
            + "\n  ".join(map(str, findings)), findings)
