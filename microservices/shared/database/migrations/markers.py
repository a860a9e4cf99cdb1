"""The linter's comment markers in migration files.

Two spellings, the same meaning::

    -- edulink-db: ignore squawk/adding-field-with-default the table has 40 rows
    -- edulink:ignore squawk/adding-field-with-default reason: the table has 40 rows

silence one rule for the statement the comment is on or just above, and
``-- edulink-db: allow-dynamic-sql <reason>`` (or ``-- edulink:allow-dynamic-sql
reason: ...``) lets a file ``EXECUTE`` SQL built at run time, and
``-- edulink-db: allow-reader-policy <reason>`` lets it add, change or drop a row-level
security policy that decides which rows of an exposed table the readers see (the
runner's guard refuses that otherwise).  Every marker must give a
reason; a marker without one, naming no rule, or naming a rule that cannot be silenced
(contract breaks: they are fixed in the topology) is itself an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from pglast import parser as pg

from .findings import ERROR, Finding

MARKER_REASON = "lint/marker-without-reason"
MARKER_INVALID = "lint/invalid-marker"
# Our own hazard rules that a reasoned marker may silence (contract/... never).
SUPPRESSIBLE_LINT_RULES = frozenset({
    "lint/security-definer-search-path", "lint/session-setting",
})

# allow-* marker -> what its reason must explain.
_ALLOW_MARKERS = {
    "allow-dynamic-sql": "why the built SQL cannot touch an exposed column",
    "allow-reader-policy": "which rows the readers may now see, and who agreed",
}

_MARKER = re.compile(r"(?:--|/\*)\s*edulink(?P<db>-db)?:\s*(?P<kind>[a-z-]+)"
                     r"(?P<rest>[^\n]*?)\s*(?:\*/)?$")
_REASON = re.compile(r"\breason:\s*(?P<reason>\S.*)$")


@dataclass(frozen=True)
class Suppression:
    """An ignore marker for *rule* on *line* (1-based)."""

    rule: str
    line: int
    reason: str


@dataclass
class Markers:
    """The edulink markers of a file, and the findings about malformed ones."""

    allow_dynamic_sql: str | None = None
    allow_reader_policy: str | None = None
    suppressions: list[Suppression] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def _reason(rest: str, new_form: bool) -> str:
    found = _REASON.search(rest)
    if found:
        return found.group("reason").strip()
    return rest.strip() if new_form else ""


def read_markers(path: str, text: str) -> Markers:
    """Parse the markers of *text* (only real comments count, not strings or bodies)."""
    out = Markers()
    if "edulink" not in text:
        return out
    for number, content in _comments(text):
        for m in _MARKER.finditer(content):
            new_form = m.group("db") is not None
            kind, rest = m.group("kind"), m.group("rest").strip()
            prefix = "-- edulink-db: " if new_form else "-- edulink:"
            if kind == "transaction" and new_form:
                out.findings.append(Finding(
                    path, number, MARKER_INVALID, ERROR,
                    "the runner reads only '-- edulink:transaction=on|off' (files.py); "
                    "write it in that spelling."))
                continue
            if kind == "transaction":
                continue  # the runner's own directive (files.py)
            if kind in _ALLOW_MARKERS:
                reason = _reason(rest, new_form)
                if not reason:
                    out.findings.append(Finding(
                        path, number, MARKER_REASON, ERROR,
                        f"{prefix}{kind} needs a reason: write '{prefix}{kind} "
                        f"<{_ALLOW_MARKERS[kind]}>'."))
                elif kind == "allow-dynamic-sql":
                    out.allow_dynamic_sql = reason
                else:
                    out.allow_reader_policy = reason
            elif kind == "ignore":
                words = rest.split(maxsplit=1)
                rule = words[0] if words else ""
                reason = _reason(words[1] if len(words) > 1 else "", new_form)
                problem = _ignore_problem(rule, prefix)
                if problem:
                    out.findings.append(Finding(path, number, MARKER_INVALID, ERROR, problem))
                elif not reason:
                    out.findings.append(Finding(
                        path, number, MARKER_REASON, ERROR,
                        f"{prefix}ignore {rule} needs a reason: write '{prefix}ignore "
                        f"{rule} <why it is safe here>'."))
                else:
                    out.suppressions.append(Suppression(rule, number, reason))
            else:
                out.findings.append(Finding(
                    path, number, MARKER_INVALID, ERROR,
                    f"unknown marker {prefix.strip('- ')}{kind}; known: ignore, "
                    "allow-dynamic-sql, allow-reader-policy (and edulink:transaction)."))
    return out


def _ignore_problem(rule: str, prefix: str) -> str | None:
    if not rule or rule.startswith("reason:"):
        return (f"{prefix}ignore names no rule: write '{prefix}ignore squawk/<rule> "
                "<why it is safe here>'.")
    if rule.startswith("contract/"):
        return (f"{rule} cannot be ignored: a contract break is fixed in the topology "
                "(stop exposing the column, provision, then migrate), not with a comment.")
    if not rule.startswith("squawk/") and rule not in SUPPRESSIBLE_LINT_RULES:
        known = ", ".join(sorted(SUPPRESSIBLE_LINT_RULES))
        return (f"{rule} cannot be ignored: only lock hazards (squawk/<rule>) and {known} "
                "can; fix the problem instead.")
    return None


def _comments(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line, text) of each top-level SQL comment.  Only real comments count:
    a marker inside a string literal (or a DO body) is not a marker."""
    try:
        tokens = pg.scan(text)
    except pg.ParseError:
        return  # the file does not even tokenise; the analysis reports it
    # pglast's scanner gives offsets in characters (not bytes), ends inclusive.
    for token in tokens:
        if token.name in ("SQL_COMMENT", "C_COMMENT"):
            yield text.count("\n", 0, token.start) + 1, text[token.start:token.end + 1]
