"""edulink's own statement rules, and what the squawk filter needs to know of a file.

Rules (each documented in docs/lint-rules.md):

- ``lint/psql-meta-command``: a line such as ``\\restrict`` or ``\\connect`` (psql's, not
  SQL; pg_dump 17.6+ starts every dump with ``\\restrict``).  One error per line, at it.
- ``lint/session-setting``: ``SET``/``RESET``/``set_config()`` of the runner's timeouts,
  ``search_path``, ``role`` or ``session_authorization`` (also ``RESET ALL``), at top
  level or in a DO block.  A pasted pg_dump preamble (``SET statement_timeout = 0``)
  would silently turn the runner's timeouts off for the rest of the file.  A function's
  own ``SET search_path`` clause (``CREATE FUNCTION ... SET search_path = ''``) is fine:
  it applies only while the function runs.
- ``lint/function-timeout-clause``: a function's own ``SET lock_timeout = 0`` (or
  statement_timeout, idle_in_transaction_session_timeout; 0 in any unit) clause, in
  CREATE or ALTER FUNCTION/PROCEDURE.  While it runs, the clause replaces the runner's bound, so a
  migration that calls it waits without limit; ``migrate`` refuses it even without
  ``--strict``, and the runner's guard refuses a file that leaves such a function.
- ``lint/security-definer-search-path``: a ``SECURITY DEFINER`` function without ``SET
  search_path``: a caller who puts a schema of their own first in ``search_path`` runs
  their objects with the owner's rights.

The meta-command lines are blanked (same lines and columns) in :attr:`FileScan.sql`, so
pglast and squawk read the rest of the file.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from pglast import parser as pg

from ..core.parse_tree import plpgsql_tree, sql_tree
from .files import split_statements
from .findings import ERROR, Finding

META_COMMAND = "lint/psql-meta-command"
SESSION_SETTING = "lint/session-setting"
SECURITY_DEFINER = "lint/security-definer-search-path"
FUNCTION_TIMEOUT = "lint/function-timeout-clause"
# Findings that ``migrate`` refuses even without --strict: the runner cannot bound a
# migration that calls such a function (its guard would only refuse the file afterwards).
RUNNER_BYPASS_RULES = frozenset({FUNCTION_TIMEOUT})

# Setting -> what changing it inside a migration does.
SESSION_SETTINGS: dict[str, str] = {
    "lock_timeout": "the runner's lock_timeout",
    "statement_timeout": "the runner's statement_timeout",
    "idle_in_transaction_session_timeout": "the runner's idle_in_transaction_session_timeout",
    "search_path": "the search_path the runner sets (the service's schema, then shared)",
    "role": "the role the rest of the file runs as (the service's migrator)",
    "session_authorization": "the role the rest of the file runs as (the service's migrator)",
}
_META_LINE = re.compile(r"[ \t]*\\[a-zA-Z!?]")
_COMMENT_OR_BLANK = re.compile(r"[ \t]*(--.*)?$")
_FIRST_TOKEN = re.compile(rb"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)
_CREATES = {"CreateStmt": "relation", "ViewStmt": "view", "CreateTableAsStmt": "into",
            "CreateDomainStmt": "domainname"}
_TARGETS = {"AlterTableStmt": "relation", "IndexStmt": "relation", "RenameStmt": "relation",
            "AlterDomainStmt": "typeName", "CreateTrigStmt": "relation",
            "RuleStmt": "relation", "CreatePolicyStmt": "table"}


@dataclass
class FileScan:
    """One file as the linter sees it."""

    sql: str  # the text with psql meta-command lines blanked
    findings: list[Finding] = field(default_factory=list)
    # (first line, last line) of statements on an object this file created earlier: no
    # other session can hold or wait for a lock on it, so squawk's lock rules do not apply.
    fresh_spans: list[tuple[int, int]] = field(default_factory=list)
    parsed: bool = True


class _Lines:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.starts = [0] + [i + 1 for i, b in enumerate(raw) if b == 10]

    def at(self, offset: int) -> tuple[int, int]:
        """(1-based line, 1-based column in characters) of byte *offset*."""
        index = bisect_right(self.starts, max(offset, 0)) - 1
        start = self.starts[index]
        return index + 1, len(self.raw[start:offset].decode("utf-8", "replace")) + 1


def scan_file(path: str, text: str) -> FileScan:
    """Meta-commands, session settings and SECURITY DEFINER functions of *text*."""
    sql, findings = _meta_commands(path, text)
    scan = FileScan(sql=sql, findings=findings)
    raw = sql.encode("utf-8")
    try:
        tree = sql_tree(sql)
    except pg.ParseError:
        scan.parsed = False  # the contract analysis reports it (contract/unparsable)
        return scan
    lines = _Lines(raw)
    created: set[str] = set()
    for stmt in tree.get("stmts", []):
        start = stmt.get("stmt_location", 0)
        end = start + stmt.get("stmt_len", len(raw) - start)
        node = stmt["stmt"]
        kind, body = next(iter(node.items()))
        token = _FIRST_TOKEN.match(raw, start)
        begin = token.end() if token else start
        first, _ = lines.at(begin)
        last, _ = lines.at(max(begin, end - 1))

        def where(location: int | None, _begin: int = begin) -> tuple[int, int]:
            return lines.at(location if location is not None and location >= 0 else _begin)

        if _target(kind, body) in created:
            scan.fresh_spans.append((first, last))
        _track(kind, body, created)
        _session(path, kind, body, where, scan.findings, b"set_config" in raw[start:end])
        if kind == "DoStmt":
            _do_block(path, raw[start:end].decode("utf-8"), where(start)[0], scan.findings)
        elif kind in ("CreateFunctionStmt", "AlterFunctionStmt"):
            _security_definer(path, kind, body, where(start), scan.findings)
    return scan


def _meta_commands(path: str, text: str) -> tuple[str, list[Finding]]:
    if "\\" not in text:
        return text, []
    lines = text.split("\n")
    findings = []
    for stmt in split_statements(text):
        # A psql meta-command ends at its line's end, so sqlparse glues it to the next
        # statement: look at the lines at the start of each statement.
        number = stmt.line
        while number <= len(lines):
            line = lines[number - 1]
            if _META_LINE.match(line):
                command = line.split()[0]
                findings.append(Finding(path, number, META_COMMAND, ERROR,
                                        _meta_message(command),
                                        column=len(line) - len(line.lstrip()) + 1))
                lines[number - 1] = " " * len(line)
            elif not _COMMENT_OR_BLANK.fullmatch(line):
                break
            number += 1
    return "\n".join(lines), findings


def _meta_message(command: str) -> str:
    hint = {
        "\\restrict": "pg_dump 17.6+ writes it (and \\unrestrict) around a dump: delete both",
        "\\unrestrict": "pg_dump 17.6+ writes it (and \\restrict) around a dump: delete both",
        "\\connect": "a migration runs in its service's database: delete it",
        "\\c": "a migration runs in its service's database: delete it",
    }.get(command, "write the SQL it stands for, or delete it")
    return f"{command} is a psql meta-command, not SQL, and cannot run: {hint}."


def _name(value: Any) -> str | None:
    if isinstance(value, dict) and "relname" in value:
        return str(value["relname"])
    if isinstance(value, dict) and "rel" in value:
        return _name(value["rel"])
    if isinstance(value, dict) and "names" in value:
        return _name(value["names"])
    if isinstance(value, list) and value and "String" in value[-1]:
        return str(value[-1]["String"]["sval"])
    return None


def _target(kind: str, body: dict[str, Any]) -> str | None:
    key = _TARGETS.get(kind)
    return _name(body.get(key)) if key else None


def _track(kind: str, body: dict[str, Any], created: set[str]) -> None:
    if kind in _CREATES:
        name = _name(body.get(_CREATES[kind]))
        if name:
            created.add(name)
    elif kind == "RenameStmt" and _name(body.get("relation")) in created:
        created.add(str(body.get("newname")))


def _session(path: str, kind: str, body: dict[str, Any], where: Any,
             out: list[Finding], mentions_set_config: bool) -> None:
    """SET/RESET at top level; set_config() anywhere in the statement but a function
    definition (whose body is a string run later, and whose SET clause is local)."""
    if kind == "VariableSetStmt":
        name = body.get("name") or ("all" if body.get("kind") == "VAR_RESET_ALL" else "")
        verb = "RESET" if str(body.get("kind", "")).startswith("VAR_RESET") else "SET"
        if name in SESSION_SETTINGS or name == "all":
            line, column = where(None)
            out.append(Finding(path, line, SESSION_SETTING, ERROR,
                               _session_message(f"{verb} {name}".replace(
                                   "RESET all", "RESET ALL"), name), column=column))
        return
    if kind in ("CreateFunctionStmt", "AlterFunctionStmt"):
        _function_set_clause(path, kind, body, where, out)
        return
    if kind in ("AlterRoleSetStmt", "AlterDatabaseSetStmt"):
        return
    for call in _calls(body) if mentions_set_config else ():
        args = call.get("args", [])
        setting = args[0].get("A_Const", {}).get("sval", {}).get("sval") if args else None
        if setting in SESSION_SETTINGS:
            line, column = where(call.get("location"))
            out.append(Finding(path, line, SESSION_SETTING, ERROR,
                               _session_message(f"set_config('{setting}', ...)", setting),
                               column=column))


# Settings a function's own SET clause may not carry: while the function runs, the clause
# replaces the runner's value, so a migration that calls it (or fires it from a trigger)
# waits on locks or runs without bound.  search_path is not here: a SECURITY DEFINER
# function needs its own (lint/security-definer-search-path).
_FUNCTION_CLAUSE_SETTINGS = ("lock_timeout", "statement_timeout",
                             "idle_in_transaction_session_timeout")


def _function_set_clause(path: str, kind: str, body: dict[str, Any], where: Any,
                         out: list[Finding]) -> None:
    options = body.get("options" if kind == "CreateFunctionStmt" else "actions") or []
    for opt in options:
        d = opt.get("DefElem", {})
        variable = d.get("arg", {}).get("VariableSetStmt", {})
        setting = variable.get("name")
        if (d.get("defname") == "set" and setting in _FUNCTION_CLAUSE_SETTINGS
                and _turns_off(variable.get("args", []))):
            name = _name(body.get("funcname") or body.get("func", {}).get("objname"))
            line, column = where(d.get("location"))
            out.append(Finding(
                path, line, FUNCTION_TIMEOUT, ERROR,
                f"function {name} has its own SET {setting} = 0 clause: whenever it runs, "
                f"it turns off {SESSION_SETTINGS[setting]}, so a migration that calls it (or "
                "fires it from a trigger) is no longer bounded. Drop the clause; a caller "
                "that needs another value sets it with SET LOCAL in its own transaction.",
                column=column))


def _turns_off(args: list[dict[str, Any]]) -> bool:
    """The clause's one value turns the timeout off.  A finite value bounds the wait by
    itself, and ``FROM CURRENT`` keeps the runner's value."""
    if len(args) != 1:
        return False
    const = args[0].get("A_Const", {})
    if "sval" in const:
        value = str(const["sval"].get("sval", ""))
    elif "ival" in const:
        value = str(const["ival"].get("ival", 0))  # pglast leaves out a 0
    elif "fval" in const:
        value = str(const["fval"].get("fval", "0"))
    else:
        return False
    return timeout_is_off(value)


# A time setting as PostgreSQL's parse_int/parse_real read it: a number (decimal, hex
# or octal integer, or a real), an optional unit, blanks around.
_DURATION = re.compile(r"\s*(?P<number>[+-]?(?:0x[0-9a-f]+|\d+\.?\d*(?:e[+-]?\d+)?"
                       r"|\.\d+(?:e[+-]?\d+)?))\s*(?P<unit>us|ms|s|min|h|d)?\s*",
                       re.IGNORECASE)
_MS_PER_UNIT = {"us": 0.001, "ms": 1.0, "s": 1e3, "min": 6e4, "h": 3.6e6, "d": 8.64e7}


def timeout_is_off(value: str) -> bool:
    """Whether *value* of lock_timeout, statement_timeout or
    idle_in_transaction_session_timeout (milliseconds unless a unit says otherwise)
    means 0, i.e. no timeout: ``0``, ``'0s'``, ``' 00 '``, ``0.0``, ``'-0'``, and values
    that PostgreSQL rounds to 0 ms (``'0.4ms'``, ``'400us'``)."""
    found = _DURATION.fullmatch(value)
    if found is None:
        return False  # PostgreSQL refuses the value itself
    number = found.group("number")
    try:
        amount = float(int(number, 16)) if "x" in number.lower() else float(number)
    except ValueError:
        return False
    milliseconds = amount * _MS_PER_UNIT[(found.group("unit") or "ms").lower()]
    return round(milliseconds) == 0  # rint(), as PostgreSQL rounds to its base unit


def _session_message(what: str, name: str) -> str:
    effect = SESSION_SETTINGS.get(name, "every setting the runner made (timeouts included)")
    fix = ("schema-qualify names instead" if name == "search_path" else
           "a migration runs as its service's migrator" if name in (
               "role", "session_authorization") else
           "the runner sets the timeouts; delete the line (pg_dump writes these)")
    return f"{what} replaces {effect} for the rest of this migration: {fix}."


def _calls(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            call = item.get("FuncCall")
            if isinstance(call, dict) and _name(call.get("funcname")) == "set_config":
                found.append(call)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _do_block(path: str, statement: str, line: int, out: list[Finding]) -> None:
    try:
        tree = plpgsql_tree(statement)
    except pg.ParseError:
        return  # the contract analysis reports it
    stack: list[tuple[Any, int]] = [(tree, line)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, list):
            stack.extend((item, at) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("lineno"), int):
            at = line + node["lineno"] - 1
        query = node.get("PLpgSQL_expr", {}).get("query") if "PLpgSQL_expr" in node else None
        if isinstance(query, str):
            for sql in (query, f"SELECT {query}"):
                try:
                    inner = sql_tree(sql)
                except pg.ParseError:
                    continue
                for stmt in inner.get("stmts", []):
                    kind, body = next(iter(stmt["stmt"].items()))
                    _session(path, kind, body, lambda _loc, _at=at: (_at, 1), out,
                             "set_config" in sql)
                break
            continue
        stack.extend((value, at) for value in node.values())


def _security_definer(path: str, kind: str, body: dict[str, Any], where: tuple[int, int],
                      out: list[Finding]) -> None:
    options = body.get("options" if kind == "CreateFunctionStmt" else "actions", [])
    definer, search_path = False, False
    for opt in options:
        d = opt.get("DefElem", {})
        if d.get("defname") == "security":
            definer = bool(d.get("arg", {}).get("Boolean", {}).get("boolval"))
        elif d.get("defname") == "set":
            search_path |= d.get("arg", {}).get("VariableSetStmt", {}).get(
                "name") == "search_path"
    if definer and not search_path:
        name = _name(body.get("funcname") or body.get("func", {}).get("objname"))
        out.append(Finding(
            path, where[0], SECURITY_DEFINER, ERROR,
            f"function {name} is SECURITY DEFINER without SET search_path: a caller can put "
            "a schema of their own first and have it run their objects with the owner's "
            "rights. Add SET search_path = '' (and schema-qualify names in the body).",
            column=where[1]))
