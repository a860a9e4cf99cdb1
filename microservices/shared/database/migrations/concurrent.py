"""The service's own code that a statement run outside a transaction would execute.

``CREATE INDEX CONCURRENTLY`` and ``REINDEX ... CONCURRENTLY`` cannot run in a
transaction block, so the catalog guard (:mod:`.guard`) cannot roll back what they do.
Their own effect (an index) grants nothing, but they evaluate index expressions and
predicates, and those may call functions, operators and domain checks that the service
wrote -- an ``IMMUTABLE`` function may still ``PERFORM`` one that ``GRANT``\\s.  So before
such a statement runs, the runner asks this module what of the schema's own code it would
call, and refuses the statement (with the names) when the answer is not empty.

Built-in code (``pg_catalog``) cannot be changed by the owner role, and neither can
operator classes or base types (both need a superuser), so what is left to look for is:
functions and operators outside ``pg_catalog`` that the expressions name (qualified, or
reachable through the search_path), casts to domains (whose CHECK may call a function),
and range types whose ``subtype_diff`` is not built in (GiST calls it on every row).
``REINDEX ... CONCURRENTLY`` re-evaluates existing indexes, whose dependencies PostgreSQL
records in ``pg_depend``.

Contract: :func:`user_code` returns a sorted list of phrases (``"function s.f"``), empty
when the statement runs only built-in code or is not one of these statements.
"""

from __future__ import annotations

from typing import Any

import psycopg
from pglast import parser as pg

from ..core.parse_tree import sql_tree

__all__ = ["user_code"]

_NAMED = """
SELECT 'function ' || n.nspname || '.' || p.proname
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname <> 'pg_catalog'
   AND (EXISTS (SELECT 1 FROM unnest(%(fs)s::text[], %(fn)s::text[]) q(s, f)
                 WHERE (q.s = n.nspname
                        OR (q.s = 'pg_temp' AND n.oid = pg_catalog.pg_my_temp_schema()))
                   AND q.f = p.proname)
        OR (p.proname = ANY(%(fu)s) AND n.nspname = ANY(pg_catalog.current_schemas(true))))
UNION
SELECT 'operator ' || n.nspname || '.' || o.oprname
  FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
 WHERE n.nspname <> 'pg_catalog'
   AND (EXISTS (SELECT 1 FROM unnest(%(os)s::text[], %(on)s::text[]) q(s, f)
                 WHERE (q.s = n.nspname
                        OR (q.s = 'pg_temp' AND n.oid = pg_catalog.pg_my_temp_schema()))
                   AND q.f = o.oprname)
        OR (o.oprname = ANY(%(ou)s) AND n.nspname = ANY(pg_catalog.current_schemas(true))))
UNION
SELECT 'domain ' || n.nspname || '.' || t.typname
  FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
 WHERE t.typtype = 'd' AND n.nspname <> 'pg_catalog'
   AND (EXISTS (SELECT 1 FROM unnest(%(ts)s::text[], %(tn)s::text[]) q(s, f)
                 WHERE (q.s = n.nspname
                        OR (q.s = 'pg_temp' AND n.oid = pg_catalog.pg_my_temp_schema()))
                   AND q.f = t.typname)
        OR (t.typname = ANY(%(tu)s) AND n.nspname = ANY(pg_catalog.current_schemas(true))))
UNION
SELECT 'range type ' || a.atttypid::regtype::text || ' (its subtype_diff '
       || r.rngsubdiff::regproc::text || ')'
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  JOIN pg_catalog.pg_range r
    ON r.rngtypid IN (a.atttypid, t.typbasetype) OR r.rngmultitypid = a.atttypid
  JOIN pg_catalog.pg_proc p ON p.oid = r.rngsubdiff
 WHERE a.attrelid = pg_catalog.to_regclass(%(table)s) AND a.attname = ANY(%(columns)s)
   AND p.pronamespace <> 'pg_catalog'::regnamespace
"""

_REINDEXED = """
WITH targets AS (
  SELECT i.indexrelid FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
   WHERE CASE %(kind)s
           WHEN 'index' THEN i.indexrelid = pg_catalog.to_regclass(%(name)s)
           WHEN 'table' THEN i.indrelid = pg_catalog.to_regclass(%(name)s)
           ELSE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace
                                   WHERE nspname = %(name)s) END)
SELECT DISTINCT 'function ' || d.refobjid::regprocedure::text
                || ' (index ' || t.indexrelid::regclass::text || ')'
  FROM targets t JOIN pg_catalog.pg_depend d
    ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = t.indexrelid
   AND d.refclassid = 'pg_catalog.pg_proc'::regclass
  JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid
 WHERE p.pronamespace <> 'pg_catalog'::regnamespace
UNION
SELECT DISTINCT 'operator ' || d.refobjid::regoperator::text
                || ' (index ' || t.indexrelid::regclass::text || ')'
  FROM targets t JOIN pg_catalog.pg_depend d
    ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = t.indexrelid
   AND d.refclassid = 'pg_catalog.pg_operator'::regclass
  JOIN pg_catalog.pg_operator o ON o.oid = d.refobjid
 WHERE o.oprnamespace <> 'pg_catalog'::regnamespace
"""


def user_code(conn: psycopg.Connection[Any], text: str) -> list[str]:
    """What of the schema's own code *text* (one statement) would run outside a
    transaction; empty if nothing (or if *text* is not a concurrent index statement)."""
    try:
        tree = sql_tree(text)
    except pg.ParseError:
        return []  # PostgreSQL reports it when the statement runs
    found: set[str] = set()
    for stmt in tree.get("stmts", []):
        kind, body = next(iter(stmt["stmt"].items()))
        if kind == "IndexStmt":
            found |= _index_code(conn, body)
        elif kind == "ReindexStmt":
            found |= _reindex_code(conn, body)
    return sorted(found)


def _index_code(conn: psycopg.Connection[Any], body: dict[str, Any]) -> set[str]:
    names: dict[str, list[tuple[str | None, str]]] = {"f": [], "o": [], "t": []}
    columns: set[str] = set()
    stack: list[Any] = [body.get("indexParams", []), body.get("whereClause")]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        if "FuncCall" in item:
            names["f"].append(_qualified(item["FuncCall"].get("funcname", [])))
        elif "A_Expr" in item:
            names["o"].append(_qualified(item["A_Expr"].get("name", [])))
        elif "TypeCast" in item:
            names["t"].append(_qualified(item["TypeCast"].get("typeName", {}).get("names", [])))
        elif "IndexElem" in item and item["IndexElem"].get("name"):
            columns.add(item["IndexElem"]["name"])
        elif "ColumnRef" in item:
            fields = item["ColumnRef"].get("fields", [])
            if fields and "String" in fields[-1]:
                columns.add(fields[-1]["String"]["sval"])
        stack.extend(item.values())
    relation = body.get("relation", {})
    table = ".".join(_quoted(p) for p in (relation.get("schemaname"), relation.get("relname"))
                     if p)
    params: dict[str, Any] = {"table": table, "columns": sorted(columns)}
    for key, found in names.items():
        params[f"{key}s"] = [s for s, n in found if s is not None]
        params[f"{key}n"] = [n for s, n in found if s is not None]
        params[f"{key}u"] = sorted({n for s, n in found if s is None})
    return {str(row[0]) for row in conn.execute(_NAMED, params).fetchall()}


def _reindex_code(conn: psycopg.Connection[Any], body: dict[str, Any]) -> set[str]:
    kind = str(body.get("kind", "")).removeprefix("REINDEX_OBJECT_").lower()
    relation = body.get("relation") or {}
    if kind in ("index", "table"):
        name = ".".join(_quoted(p) for p in (relation.get("schemaname"),
                                              relation.get("relname")) if p)
    elif kind == "schema":
        name = str(body.get("name", ""))
    else:
        return set()  # SYSTEM / DATABASE: refused to the owner role by PostgreSQL
    return {str(row[0]) for row in conn.execute(_REINDEXED, {"kind": kind,
                                                             "name": name}).fetchall()}


def _qualified(parts: list[dict[str, Any]]) -> tuple[str | None, str]:
    strings = [p["String"]["sval"] for p in parts if "String" in p]
    if not strings:
        return None, ""
    return (strings[-2] if len(strings) > 1 else None), strings[-1]


def _quoted(name: str) -> str:
    # to_regclass() reads a name as SQL does; quoting keeps its case and characters.
    return '"' + name.replace('"', '""') + '"'
