"""Service contracts: which migration statements would break another service's reads.

A service exposes tables and columns to its readers (``[services.X.exposes]`` in the
topology).  A migration must not drop, rename, retype or move an exposed column, nor
drop, rename or move a table (or its schema) that has exposed columns: readers would
fail at their next query.  The safe way is expand/contract -- stop exposing the column
in the topology and provision first (readers lose the grant, so they must already
have stopped using it), then migrate.

:func:`analyse_migration` parses a file with pglast (libpg_query, the PostgreSQL 18
grammar) and resolves every relation to its schema the way the migration runner
does: unqualified names against the service's schema and the shared schema (the
runner's search_path), plus any schema a ``SET search_path`` in the file names.
PL/pgSQL bodies of DO blocks -- and of functions the same file creates and then
calls -- are parsed too.  ``EXECUTE`` of a string built at run time cannot be
analysed: it is refused unless the file says why it is safe with
``-- edulink:allow-dynamic-sql reason: ...``.  An ``EXECUTE`` of a constant string
is analysed like any other statement.

Contract findings cannot be silenced with ``-- edulink:ignore``: the way out is the
topology, not a comment.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pglast import parser as pg

from ..core.parse_tree import plpgsql_tree, sql_tree
from ..topology import Service, Topology
from .findings import ERROR, WARNING, Finding
from .markers import MARKER_INVALID, MARKER_REASON, Markers, Suppression, read_markers

__all__ = ["ERROR", "MARKER_INVALID", "MARKER_REASON", "WARNING", "ContractIndex", "Finding",
           "Markers", "Suppression", "analyse_migration", "read_markers"]

DROP_COLUMN = "contract/drop-exposed-column"
RENAME_COLUMN = "contract/rename-exposed-column"
RETYPE_COLUMN = "contract/retype-exposed-column"
DROP_TABLE = "contract/drop-exposed-table"
RENAME_TABLE = "contract/rename-exposed-table"
MOVE_TABLE = "contract/move-exposed-table"
DROP_SCHEMA = "contract/drop-exposed-schema"
RENAME_SCHEMA = "contract/rename-exposed-schema"
DROP_CASCADE = "contract/drop-cascade"
DROP_OWNED = "contract/drop-owned"
GRANT = "contract/grant-outside-topology"
DYNAMIC_SQL = "contract/dynamic-sql"
UNPARSABLE = "contract/unparsable"

_RELATION_KINDS = frozenset({"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW",
                             "OBJECT_FOREIGN_TABLE"})
# Objects whose CASCADE cannot take a column or a view with it.
_HARMLESS_CASCADE = frozenset({"OBJECT_INDEX", "OBJECT_SEQUENCE", "OBJECT_TRIGGER",
                               "OBJECT_POLICY", "OBJECT_RULE", "OBJECT_STATISTIC_EXT"})
_DYNAMIC_PLPGSQL = {  # statement kind -> key of its run-time query
    "PLpgSQL_stmt_dynexecute": "query",
    "PLpgSQL_stmt_dynfors": "query",
    "PLpgSQL_stmt_open": "dynquery",
    "PLpgSQL_stmt_return_query": "dynquery",
}
_FIRST_TOKEN = re.compile(rb"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)


@dataclass(frozen=True)
class Exposed:
    """A table with exposed columns, who owns it and who reads it."""

    schema: str
    table: str
    columns: frozenset[str]
    service: str
    readers: tuple[str, ...]

    def who(self) -> str:
        readers = ", ".join(self.readers) or "no service yet"
        return f"service {self.service!r} exposes it to: {readers}"


class ContractIndex:
    """Every exposed table of a topology, by (schema, table)."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.tables: dict[tuple[str, str], Exposed] = {}
        self.by_schema: dict[str, list[Exposed]] = {}
        for svc in topology.services:
            readers = tuple(r.name for r in topology.readers_of(svc))
            for table, columns in svc.exposes:
                exposed = Exposed(svc.schema, table, frozenset(columns), svc.name, readers)
                self.tables[(svc.schema, table)] = exposed
                self.by_schema.setdefault(svc.schema, []).append(exposed)


_EXPAND_CONTRACT = (
    "Expand/contract: first stop exposing it -- remove it from [services.{svc}.exposes] in "
    "the topology and run 'edulink-db provision' once every reader has stopped using it -- "
    "then migrate.")


@dataclass
class _Function:
    language: str
    body: str
    statement: str
    line: int
    body_line: int  # where the body's first line is in the file (PL/pgSQL counts from it)


class _Analysis:
    """One migration file (or a string it EXECUTEs), statement by statement."""

    def __init__(self, index: ContractIndex, service: Service, path: str,
                 allow_dynamic: bool) -> None:
        self.index = index
        self.service = service
        self.path = path
        self.allow_dynamic = allow_dynamic
        self.search_path = [service.schema, index.topology.shared.schema]
        self.functions: dict[str, _Function] = {}
        self.expanding: set[str] = set()
        self.findings: list[Finding] = []
        self.spans: list[tuple[int, int]] = []
        self.other_runtime_roles = {s.runtime_role for s in index.topology.services
                                    if s.name != service.name}

    # -- reporting ---------------------------------------------------------------
    def report(self, line: int, rule: str, message: str, owner: str | None = None) -> None:
        if owner is not None:
            message = f"{message} {_EXPAND_CONTRACT.format(svc=owner)}"
        self.findings.append(Finding(self.path, line, rule, ERROR, message))

    def dynamic(self, line: int, what: str) -> None:
        if self.allow_dynamic:
            return
        self.report(line, DYNAMIC_SQL,
                    f"{what} cannot be analysed for contract breaks. Write static SQL, or "
                    "check by hand that it cannot drop, rename, retype or move an exposed "
                    "column and add '-- edulink:allow-dynamic-sql reason: <why>' to the file.")

    # -- entry points ----------------------------------------------------------
    def run_file(self, text: str) -> None:
        raw = text.encode("utf-8")
        try:
            tree = sql_tree(text)
        except pg.ParseError as exc:
            location = getattr(exc, "location", None)
            line = _line_at(raw, _char_to_byte(text, location)) if location else 1
            self.report(line, UNPARSABLE, f"cannot parse the file: {exc}. Fix the SQL.")
            return
        for stmt in tree.get("stmts", []):
            start = stmt.get("stmt_location", 0)
            end = start + stmt.get("stmt_len", len(raw) - start)
            first = _FIRST_TOKEN.match(raw, start)
            token = first.end() if first else start
            line = _line_at(raw, token)
            self.spans.append((line, _line_at(raw, max(token, end - 1))))
            self.statement(stmt["stmt"], raw[token:end].decode("utf-8"),
                           lambda loc, base=line: base if loc is None else _line_at(raw, loc))

    def run_nested(self, sql_text: str, line: int, context: str) -> None:
        """Statements found inside a PL/pgSQL body or an EXECUTEd constant."""
        try:
            tree = sql_tree(sql_text)
        except pg.ParseError as exc:
            self.report(line, UNPARSABLE, f"cannot parse {context}: {exc}.")
            return
        raw = sql_text.encode("utf-8")
        for stmt in tree.get("stmts", []):
            start = stmt.get("stmt_location", 0)
            end = start + stmt.get("stmt_len", len(raw) - start)
            self.statement(stmt["stmt"], raw[start:end].decode("utf-8"),
                           lambda _loc, base=line: base)

    # -- statements ------------------------------------------------------------------
    def statement(self, node: dict[str, Any], text: str, line_of: Any) -> None:
        kind, body = next(iter(node.items()))
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(body, text, line_of)
        if self.functions and kind != "CreateFunctionStmt":
            for name in _called_functions(node):
                self.call(name, line_of(None))

    def _on_VariableSetStmt(self, body: dict[str, Any], _text: str, _line_of: Any) -> None:
        if body.get("name") == "search_path":
            for arg in body.get("args", []):
                value = arg.get("A_Const", {}).get("sval", {}).get("sval")
                if isinstance(value, str):
                    for schema in value.split(","):
                        schema = schema.strip().strip('"')
                        if schema and schema not in self.search_path:
                            self.search_path.append(schema)

    def _on_AlterTableStmt(self, body: dict[str, Any], _text: str, line_of: Any) -> None:
        if body.get("objtype", "OBJECT_TABLE") not in _RELATION_KINDS:
            return
        exposed = self.resolve(body.get("relation", {}))
        if exposed is None:
            return
        line = line_of(body["relation"].get("location"))
        for cmd in body.get("cmds", []):
            c = cmd.get("AlterTableCmd", {})
            column = c.get("name")
            if column not in exposed.columns:
                continue
            where = f"{exposed.schema}.{exposed.table}.{column}"
            if c.get("subtype") == "AT_DropColumn":
                self.report(line, DROP_COLUMN, f"drops exposed column {where}; "
                            f"{exposed.who()}.", exposed.service)
            elif c.get("subtype") == "AT_AlterColumnType":
                self.report(line, RETYPE_COLUMN, f"changes the type of exposed column "
                            f"{where}; {exposed.who()}.", exposed.service)

    def _on_RenameStmt(self, body: dict[str, Any], _text: str, line_of: Any) -> None:
        kind = body.get("renameType")
        if kind == "OBJECT_SCHEMA":
            self.schema_change(body.get("subname", ""), RENAME_SCHEMA, "renames", line_of(None))
            return
        relation = body.get("relation")
        if relation is None:
            return
        exposed = self.resolve(relation)
        if exposed is None:
            return
        line = line_of(relation.get("location"))
        if kind == "OBJECT_COLUMN" and body.get("subname") in exposed.columns:
            self.report(line, RENAME_COLUMN,
                        f"renames exposed column {exposed.schema}.{exposed.table}."
                        f"{body['subname']} to {body.get('newname')}; {exposed.who()}. "
                        "(To rename, add the new column or a compatibility view first.)",
                        exposed.service)
        elif kind in _RELATION_KINDS:
            self.report(line, RENAME_TABLE,
                        f"renames {exposed.schema}.{exposed.table}, which has exposed columns, "
                        f"to {body.get('newname')}; {exposed.who()}.", exposed.service)

    def _on_AlterObjectSchemaStmt(self, body: dict[str, Any], _text: str,
                                  line_of: Any) -> None:
        if body.get("objectType") not in _RELATION_KINDS or "relation" not in body:
            return
        exposed = self.resolve(body["relation"])
        if exposed is not None:
            self.report(line_of(body["relation"].get("location")), MOVE_TABLE,
                        f"moves {exposed.schema}.{exposed.table}, which has exposed columns, "
                        f"to schema {body.get('newschema')}; {exposed.who()}.", exposed.service)

    def _on_DropStmt(self, body: dict[str, Any], _text: str, line_of: Any) -> None:
        kind = body.get("removeType")
        line = line_of(None)
        hit = False
        if kind in _RELATION_KINDS:
            for obj in body.get("objects", []):
                names = [i["String"]["sval"] for i in obj.get("List", {}).get("items", [])
                         if "String" in i]
                exposed = self.resolve_names(names)
                if exposed is not None:
                    hit = True
                    self.report(line, DROP_TABLE,
                                f"drops {exposed.schema}.{exposed.table}, which has exposed "
                                f"columns; {exposed.who()}.", exposed.service)
        elif kind == "OBJECT_SCHEMA":
            for obj in body.get("objects", []):
                hit |= self.schema_change(obj.get("String", {}).get("sval", ""), DROP_SCHEMA,
                                          "drops", line)
        if (not hit and body.get("behavior") == "DROP_CASCADE"
                and kind not in _HARMLESS_CASCADE and self.service.exposes):
            self.report(line, DROP_CASCADE,
                        f"DROP ... CASCADE in service {self.service.name!r}, which exposes "
                        "columns: CASCADE silently drops dependent columns and views (a column "
                        "of a dropped type or domain, a view over a dropped table). Drop the "
                        "dependent objects explicitly and drop without CASCADE.")

    def _on_DropOwnedStmt(self, _body: dict[str, Any], _text: str, line_of: Any) -> None:
        if self.service.exposes:
            self.report(line_of(None), DROP_OWNED,
                        f"DROP OWNED drops every object of a role, including the tables service "
                        f"{self.service.name!r} exposes.", self.service.name)

    def _on_GrantStmt(self, body: dict[str, Any], _text: str, line_of: Any) -> None:
        grantees = {g.get("RoleSpec", {}).get("rolename") or g.get("RoleSpec", {}).get(
            "roletype") for g in body.get("grantees", [])}
        # REVOKE ... FROM PUBLIC takes away what every role has by default: it can only
        # narrow access, so it is left alone (provisioning revokes the same).
        public = "ROLESPEC_PUBLIC" if body.get("is_grant") else None
        foreign = sorted(r for r in grantees if r in self.other_runtime_roles
                         or r == public)
        if foreign:
            verb = "grants to" if body.get("is_grant") else "revokes from"
            roles = ", ".join(r.replace("ROLESPEC_PUBLIC", "PUBLIC") for r in foreign)
            self.report(line_of(None), GRANT,
                        f"{verb} {roles}"
                        ": what other services may read is declared in the topology "
                        "([services.X.exposes] and reads) and granted by 'edulink-db "
                        "provision', never by a migration.")

    def _on_AlterDefaultPrivilegesStmt(self, body: dict[str, Any], text: str,
                                       line_of: Any) -> None:
        self._on_GrantStmt(body.get("action", {}), text, line_of)

    def _on_DoStmt(self, body: dict[str, Any], text: str, line_of: Any) -> None:
        language, source, location = "plpgsql", None, None
        for arg in body.get("args", []):
            d = arg.get("DefElem", {})
            if d.get("defname") == "language":
                language = d.get("arg", {}).get("String", {}).get("sval", "")
            elif d.get("defname") == "as":
                source = d.get("arg", {}).get("String", {}).get("sval")
                location = d.get("arg_location", d.get("location"))
        line = line_of(location)
        if language != "plpgsql" or source is None:
            self.dynamic(line, f"a DO block in language {language}")
            return
        self.plpgsql(text, line, "the DO block")

    def _on_CreateFunctionStmt(self, body: dict[str, Any], text: str, line_of: Any) -> None:
        name = body["funcname"][-1]["String"]["sval"]
        language, source = "sql", None
        for opt in body.get("options", []):
            d = opt.get("DefElem", {})
            if d.get("defname") == "language":
                language = d.get("arg", {}).get("String", {}).get("sval", "")
            elif d.get("defname") == "as":
                items = d.get("arg", {}).get("List", {}).get("items", [])
                if items and "String" in items[0]:
                    source = items[0]["String"]["sval"]
        if source is None and "sql_body" in body:
            return  # BEGIN ATOMIC: parsed above as SQL; it cannot run DDL
        line = line_of(None)
        at = text.find(source) if source else -1
        body_line = line + text.count("\n", 0, at) if at >= 0 else line
        self.functions[name] = _Function(language, source or "", text, line, body_line)

    def _on_CreateTrigStmt(self, body: dict[str, Any], _text: str, line_of: Any) -> None:
        # The trigger fires on the next write to its table (in this file or any later
        # session), so its function's body counts as run: read where it drops a column.
        self.fired(body.get("funcname", []), f"trigger {body.get('trigname')}")

    def _on_CreateEventTrigStmt(self, body: dict[str, Any], _text: str,
                                line_of: Any) -> None:
        self.fired(body.get("funcname", []), f"event trigger {body.get('trigname')}")

    def fired(self, funcname: list[dict[str, Any]], what: str) -> None:
        name = funcname[-1].get("String", {}).get("sval") if funcname else None
        fn = self.functions.get(name) if name else None
        if fn is not None and name is not None:
            self.call(name, fn.line, fired_by=what)

    # -- bodies ---------------------------------------------------------------------
    def call(self, name: str, line: int, fired_by: str | None = None) -> None:
        fn = self.functions.get(name)
        if fn is None or name in self.expanding:
            return
        self.expanding.add(name)
        try:
            if fn.language == "plpgsql" and fired_by is not None:
                # Report at the offending statement inside the body: file lines.
                self.plpgsql(fn.statement, fn.body_line, f"function {name} (run by {fired_by})")
            elif fn.language == "plpgsql":
                self.plpgsql(fn.statement, line, f"function {name}", fixed_line=True)
            elif fn.language == "sql":
                self.run_nested(fn.body, line, f"the body of function {name}")
            else:
                self.dynamic(line, f"a call of function {name} (language {fn.language})")
        finally:
            self.expanding.discard(name)

    def plpgsql(self, statement: str, line: int, context: str, *,
                fixed_line: bool = False) -> None:
        try:
            tree = plpgsql_tree(statement)
        except pg.ParseError as exc:
            self.report(line, UNPARSABLE, f"cannot parse {context}: {exc}.")
            return
        for fn in tree:
            self.walk_plpgsql(fn, line, line, fixed_line)

    def walk_plpgsql(self, node: Any, base: int, line: int, fixed: bool) -> None:
        if isinstance(node, list):
            for item in node:
                self.walk_plpgsql(item, base, line, fixed)
            return
        if not isinstance(node, dict):
            return
        if not fixed and isinstance(node.get("lineno"), int):
            line = base + node["lineno"] - 1
        for key, value in node.items():
            if key in _DYNAMIC_PLPGSQL and isinstance(value, dict):
                query = value.get(_DYNAMIC_PLPGSQL[key], {}).get("PLpgSQL_expr", {})
                if "query" in query:
                    stmt_line = line if fixed else base + value.get("lineno", 1) - 1
                    self.executed(query["query"], stmt_line)
            if key == "PLpgSQL_expr" and isinstance(value, dict) and "query" in value:
                if value.get("parseMode", 0) == 0:
                    self.run_nested(value["query"], line, "a statement of PL/pgSQL")
                elif self.functions:
                    self.scan_expression(value["query"], line)
                continue
            self.walk_plpgsql(value, base, line, fixed)

    def executed(self, expression: str, line: int) -> None:
        """EXECUTE <expression>: analysed if it is a constant string, refused if built."""
        try:
            tree = sql_tree(f"SELECT {expression}")
            target = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"]
            constant = target[0]["ResTarget"]["val"]["A_Const"]["sval"]["sval"]
            if len(target) != 1:
                raise KeyError
        except (pg.ParseError, KeyError, IndexError, TypeError):
            self.dynamic(line, f"EXECUTE of a string built at run time ({_short(expression)})")
            return
        self.run_nested(constant, line, "an EXECUTEd string")

    def scan_expression(self, expression: str, line: int) -> None:
        try:
            tree = sql_tree(f"SELECT {expression}")
        except pg.ParseError:
            return  # PL/pgSQL accepted it; only function calls matter here
        for name in _called_functions(tree):
            self.call(name, line)

    # -- resolution ------------------------------------------------------------------
    def resolve(self, relation: dict[str, Any]) -> Exposed | None:
        names = [relation["schemaname"]] if relation.get("schemaname") else []
        return self.resolve_names([*names, relation.get("relname", "")])

    def resolve_names(self, names: list[str]) -> Exposed | None:
        if len(names) >= 2:
            return self.index.tables.get((names[-2], names[-1]))
        for schema in self.search_path:
            exposed = self.index.tables.get((schema, names[-1])) if names else None
            if exposed is not None:
                return exposed
        return None

    def schema_change(self, schema: str, rule: str, verb: str, line: int) -> bool:
        exposed = self.index.by_schema.get(schema)
        if not exposed:
            return False
        owner = exposed[0].service
        tables = ", ".join(e.table for e in exposed)
        self.report(line, rule, f"{verb} schema {schema}, whose tables {tables} have exposed "
                    f"columns; {exposed[0].who()}.", owner)
        return True


def _called_functions(node: Any) -> Iterator[str]:
    """Names (unqualified) of every function or procedure a parse tree calls."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            call = item.get("FuncCall") or item.get("funccall")  # the latter: CALL
            if isinstance(call, dict):
                names = call.get("funcname", [])
                if names and "String" in names[-1]:
                    yield names[-1]["String"]["sval"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def _char_to_byte(text: str, location: int) -> int:
    # pglast reports parse error positions in characters.
    return len(text[:location].encode("utf-8"))


def _line_at(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, max(offset, 0)) + 1


Spans = list[tuple[int, int]]


def analyse_migration(topology: Topology, service: Service, path: str, text: str,
                      index: ContractIndex | None = None,
                      markers: Markers | None = None) -> tuple[list[Finding], Spans]:
    """The contract findings of one migration file of *service*, and the (first, last)
    line of each of its statements (for ``edulink:ignore``)."""
    markers = markers if markers is not None else read_markers(path, text)
    analysis = _Analysis(index or ContractIndex(topology), service, path,
                         allow_dynamic=markers.allow_dynamic_sql is not None)
    analysis.run_file(text)
    return markers.findings + analysis.findings, analysis.spans
