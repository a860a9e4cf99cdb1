"""Observed reads: what each service's code really reads of other services.

pg_stat_statements keeps one row per (database, role, normalised statement), so
the statements a runtime role ran are the reads its service's code makes, from
every process.  Each is parsed with pglast (the PostgreSQL 18 grammar; ``$1``
placeholders parse like any parameter), its relations and column references are
resolved scope by scope against the catalog, and every read of another
service's relation outside the topology's exposure is reported: role, table,
columns and calls.

pg_stat_statements records statements that completed, so a read shows up only
if the database allowed it.  That is what makes the report useful: run on a
database that still has the old table-level grants (before ``provision`` moves
it to column grants), or on one where someone granted by hand, it lists what the
code reads that the topology does not declare -- before anything breaks.  Reads
hidden inside functions or views, or built with ``EXECUTE``, are not visible.

Query texts are never printed: a statement's text can carry literals (a
runtime role may run ``ALTER ROLE ... PASSWORD`` on itself); the report names
the statement by ``queryid``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pglast import parser as pg
from psycopg import sql

from ..connections.direct import connect
from ..core.parse_tree import sql_tree
from ..topology import Service, Topology

# Nodes that open a new name scope: their FROM-like clauses declare relations that
# the column references below them (and in nested scopes, for correlation) may use.
_SCOPES = ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")
_FROM_KEYS = ("fromClause", "usingClause", "relation", "sourceRelation")
WHOLE_ROW = "*"


@dataclass(frozen=True)
class ObservedRead:
    """Reads of one relation by one role beyond what the topology exposes to it."""

    role: str
    schema: str
    table: str
    columns: tuple[str, ...]  # outside the exposure; empty: the table itself is not exposed
    calls: int
    queryids: tuple[int, ...]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "schema": self.schema, "table": self.table,
                "columns": list(self.columns), "calls": self.calls,
                "queryids": list(self.queryids), "reason": self.reason}


@dataclass
class ObservedReadsReport:
    available: bool = False
    note: str = ""
    statements: int = 0  # statements of runtime roles looked at
    unparsed: int = 0  # statements pglast could not parse (left out)
    hidden: int = 0  # texts pg_stat_statements withheld (needs pg_read_all_stats)
    reads: list[ObservedRead] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reads

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "available": self.available, "note": self.note,
                "statements": self.statements, "unparsed": self.unparsed,
                "hidden": self.hidden, "reads": [r.as_dict() for r in self.reads]}


@dataclass
class _Relation:
    schema: str | None  # None: a CTE or a derived table (never another service's)
    table: str
    alias: str


class _Resolver:
    """Walks one parsed statement and collects (schema, table, column) reads."""

    def __init__(self, columns: dict[tuple[str, str], list[str]], search_path: list[str]):
        self.columns = columns
        self.search_path = search_path
        self.reads: set[tuple[str, str, str | None]] = set()  # column None: the relation

    def run(self, node: Any) -> None:
        self.walk(node, [])

    def walk(self, node: Any, scopes: list[list[_Relation]]) -> None:
        if isinstance(node, list):
            for item in node:
                self.walk(item, scopes)
            return
        if not isinstance(node, dict):
            return
        for kind, body in node.items():
            if not isinstance(body, dict):
                self.walk(body, scopes)
                continue
            if kind in _SCOPES:
                ctes = {c.get("CommonTableExpr", {}).get("ctename")
                        for c in (body.get("withClause") or {}).get("ctes", [])}
                scope = [rel for key in _FROM_KEYS
                         for rel in self.relations(body.get(key), ctes)]
                inner = [*scopes, scope]
                self.walk(list(body.values()), inner)
            elif kind == "ColumnRef":
                self.column(body.get("fields", []), scopes)
            else:
                self.walk(body, scopes)

    def relations(self, node: Any, ctes: set[str | None]) -> Iterator[_Relation]:
        if isinstance(node, list):
            for item in node:
                yield from self.relations(item, ctes)
            return
        if not isinstance(node, dict):
            return
        if "RangeVar" in node:
            rv = node["RangeVar"]
            name, schema = rv.get("relname", ""), rv.get("schemaname")
            alias = (rv.get("alias") or {}).get("aliasname") or name
            if schema is None:
                schema = None if name in ctes else self.unqualified(name)
            if schema is not None:
                self.reads.add((schema, name, None))
            yield _Relation(schema, name, alias)
        elif "JoinExpr" in node:
            yield from self.relations(node["JoinExpr"].get("larg"), ctes)
            yield from self.relations(node["JoinExpr"].get("rarg"), ctes)
        elif "RangeSubselect" in node:
            alias = (node["RangeSubselect"].get("alias") or {}).get("aliasname", "")
            yield _Relation(None, alias, alias)

    def unqualified(self, name: str) -> str | None:
        for schema in self.search_path:  # the role's own search_path
            if (schema, name) in self.columns:
                return schema
        return None

    def column(self, fields: list[Any], scopes: list[list[_Relation]]) -> None:
        names: list[str | None] = [f.get("String", {}).get("sval") if "String" in f else None
                                   for f in fields]  # None: A_Star
        if names == [None]:  # SELECT *: every column of every relation in scope
            for rel in scopes[-1] if scopes else []:
                self.whole(rel)
            return
        if len(names) >= 3 and names[-1] is not None:
            schema, table = names[-3], names[-2]
            if schema is not None and table is not None:
                self.reads.add((schema, table, names[-1]))
            return
        if len(names) == 2:
            found = self.find_alias(names[0], scopes)
            if found is not None and found.schema is not None:
                if names[1] is None:
                    self.whole(found)
                else:
                    self.reads.add((found.schema, found.table, names[1]))
            return
        name = names[0]
        for scope in reversed(scopes):  # innermost scope first, as PostgreSQL resolves
            owners = [r for r in scope if r.schema is not None
                      and name in self.columns.get((r.schema, r.table), ())]
            if owners:
                for rel in owners:
                    self.reads.add((rel.schema or "", rel.table, name))
                return
            whole = [r for r in scope if r.alias == name]
            if whole:  # a whole-row reference: `SELECT u FROM t u`
                for rel in whole:
                    self.whole(rel)
                return

    def find_alias(self, alias: str | None, scopes: list[list[_Relation]]) -> _Relation | None:
        for scope in reversed(scopes):
            for rel in scope:
                if rel.alias == alias:
                    return rel
        return None

    def whole(self, rel: _Relation) -> None:
        if rel.schema is None:
            return
        for column in self.columns.get((rel.schema, rel.table), [WHOLE_ROW]):
            self.reads.add((rel.schema, rel.table, column))


def _statement_reads(text: str, columns: dict[tuple[str, str], list[str]],
                     search_path: list[str]) -> set[tuple[str, str, str | None]] | None:
    try:
        tree = sql_tree(text)
    except pg.ParseError:
        return None
    resolver = _Resolver(columns, search_path)
    resolver.run(tree.get("stmts", []))
    return resolver.reads


def _beyond_exposure(svc: Service, topology: Topology,
                     reads: set[tuple[str, str, str | None]]
                     ) -> dict[tuple[str, str], tuple[set[str], str]]:
    """(schema, table) -> (columns outside the exposure, reason), for *svc*'s reads."""
    readable = {s.schema: s for s in topology.readable_services(svc)}
    managed = set(topology.schemas) - {svc.schema}
    out: dict[tuple[str, str], tuple[set[str], str]] = {}
    for schema, table, column in reads:
        if schema not in managed:
            continue  # its own schema, pg_catalog, or outside the topology
        owner = readable.get(schema)
        if schema == topology.shared.schema:
            reason = "the shared schema is append-only for services"
            exposed: set[str] = set()
        elif owner is None:
            other = topology.service_for_schema(schema)
            reason = f"{svc.name} does not read {other.name if other else schema}"
            exposed = set()
        else:
            exposed = set(dict(owner.exposes).get(table, ()))
            reason = (f"{owner.name} does not expose these columns" if exposed
                      else f"{owner.name} does not expose {table}")
        if column is not None and column in exposed:
            continue
        if column is None and exposed:
            continue  # the relation itself is exposed (e.g. count(*))
        cols, _reason = out.get((schema, table), (set(), reason))
        if column is not None:
            cols.add(column)
        out[(schema, table)] = (cols, reason)
    return out


def observed_reads(admin: dict[str, Any], topology: Topology) -> ObservedReadsReport:
    """Reads of other services' data that pg_stat_statements saw beyond the exposure.

    Three queries: where the extension lives, the runtime roles' statements in
    this database, and the columns of the managed schemas.  Without
    pg_stat_statements (not installed, or not preloaded) the report says so and
    lists nothing.
    """
    report = ObservedReadsReport()
    by_role = {s.runtime_role: s for s in topology.services}
    with connect(admin, purpose="read observed statements") as conn:
        row = conn.execute(
            "SELECT n.nspname FROM pg_catalog.pg_extension e"
            " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'pg_stat_statements'").fetchone()
        if row is None:
            report.note = ("pg_stat_statements is not installed in this database; "
                           "'edulink-db provision' installs it where the server allows "
                           "(it must be in shared_preload_libraries)")
            return report
        try:
            with conn.transaction():
                rows = conn.execute(sql.SQL(
                    "SELECT r.rolname, s.queryid, s.query, s.calls"
                    " FROM {}.pg_stat_statements s"
                    " JOIN pg_catalog.pg_roles r ON r.oid = s.userid"
                    " WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database"
                    "                  WHERE datname = pg_catalog.current_database())"
                    "   AND r.rolname = ANY(%s)").format(sql.Identifier(row[0])),
                    [list(by_role)]).fetchall()
        except psycopg.Error as exc:
            report.note = ("pg_stat_statements cannot be read: "
                           f"{exc.diag.message_primary or str(exc).strip()}")
            return report
        columns: dict[tuple[str, str], list[str]] = {}
        for schema, table, column in conn.execute(
            "SELECT n.nspname, c.relname, a.attname FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid"
            "  AND a.attnum > 0 AND NOT a.attisdropped"
            " WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
            " ORDER BY 1, 2, a.attnum", [topology.schemas]).fetchall():
            columns.setdefault((schema, table), []).append(column)
    report.available = True
    found: dict[tuple[str, str, str], tuple[set[str], int, set[int], str]] = {}
    for role, queryid, text, calls in rows:
        report.statements += 1
        if text is None or text.startswith("<insufficient privilege>"):
            report.hidden += 1
            continue
        svc = by_role[role]
        reads = _statement_reads(text, columns, [svc.schema, topology.shared.schema])
        if reads is None:
            report.unparsed += 1
            continue
        for (schema, table), (cols, reason) in _beyond_exposure(svc, topology, reads).items():
            have, n, ids, _r = found.get((role, schema, table), (set(), 0, set(), reason))
            found[(role, schema, table)] = (have | cols, n + int(calls), ids | {int(queryid)},
                                            reason)
    for (role, schema, table), (cols, calls, ids, reason) in sorted(found.items()):
        order = columns.get((schema, table), [])
        report.reads.append(ObservedRead(
            role, schema, table,
            tuple(sorted(cols, key=lambda c: order.index(c) if c in order else len(order))),
            calls, tuple(sorted(ids)), reason))
    if report.hidden:
        report.note = (f"{report.hidden} statement text(s) withheld: the admin needs "
                       "pg_read_all_stats to see other roles' statements")
    return report
