"""Judging a migration file by the catalog it leaves (issue 28).

A static reading of a file cannot see what a trigger, a rule or a column default
runs, nor SQL built at run time.  So the runner reads one snapshot of what matters
before a file and again after it, in the same transaction, and refuses the file
(rolling it back) when the difference is wider than the topology allows or breaks
what another service reads:

* who may EXECUTE each function of the service's schema: every other service's
  runtime role (``has_function_privilege``) and PUBLIC, with a NULL ACL read as
  PostgreSQL reads it (``acldefault('f', owner)`` gives PUBLIC EXECUTE);
* who may SELECT each column of the schema's relations, and use or create in the
  schema itself (every other runtime role; ``has_column_privilege``,
  ``has_schema_privilege``), of which only the readers' SELECT on exposed columns
  and USAGE on an exposing schema are allowed;
* the default privileges in effect for each role that can create objects in the
  schema: the global ``pg_default_acl`` row, or PostgreSQL's hard-wired default
  when there is none (deleting a row that revoked PUBLIC's EXECUTE shows up here),
  plus the schema's own row;
* explicit ACL entries of the schema's objects, the owner's default privileges and
  large objects for roles the topology does not name;
* each exposed table (kind, owner, row-level security flags) and exposed column
  (type) that existed before the file: still there and unchanged;
* the row-level security policies of exposed tables: on a table that had RLS before,
  a new or changed permissive policy for a reader (or PUBLIC), or a dropped restrictive
  one, may show readers more rows, so it needs the file's ``allow-reader-policy`` marker;
* functions of the schema whose own ``SET`` clause turns lock_timeout,
  statement_timeout or idle_in_transaction_session_timeout off (0): called by a later
  migration, they would lift the runner's bounds while they run.

One query per snapshot, so two per file (the cost is measured by
``benchmarks/migration_guard.py``).  Facts that were already there before the file
are not the file's doing and are left to ``edulink-db verify``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from ..topology import Service, Topology
from .hazards import timeout_is_off

# (kind, key, grantee) -> (value, label).  key identifies the object stably (an oid
# for functions, whose printed signature depends on search_path); label names it.
Facts = dict[tuple[str, str, str], tuple[str, str]]

_SNAPSHOT = """
WITH ns AS (SELECT oid, nspowner, nspacl FROM pg_catalog.pg_namespace
             WHERE nspname = %(schema)s),
others AS (SELECT oid, rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%(others)s)),
creators AS (
  SELECT r.oid, r.rolname FROM pg_catalog.pg_roles r, ns
   WHERE NOT r.rolsuper
     AND (r.oid = ns.nspowner OR pg_catalog.has_schema_privilege(r.oid, ns.oid, 'CREATE'))),
-- Each catalog read once (MATERIALIZED), the columns through pg_attribute's index
-- (OFFSET 0 keeps the planner from turning that into a scan of every column).
procs AS MATERIALIZED (
  SELECT p.oid, p.proowner, p.proacl, p.proconfig FROM pg_catalog.pg_proc p
   WHERE p.pronamespace = (SELECT oid FROM ns)),
classes AS MATERIALIZED (
  SELECT c.oid, c.relname, c.relkind, c.relowner, c.relrowsecurity, c.relforcerowsecurity,
         c.relacl, c.relkind = ANY('{r,p,v,m,f}'::"char"[]) AS readable
    FROM pg_catalog.pg_class c WHERE c.relnamespace = (SELECT oid FROM ns)),
rels AS (SELECT * FROM classes WHERE readable),
cols AS MATERIALIZED (
  SELECT c.oid AS relid, c.relname, c.readable, a.attnum, a.attname, a.atttypid,
         a.atttypmod, a.attacl
    FROM classes c CROSS JOIN LATERAL (
      SELECT att.attnum, att.attname, att.atttypid, att.atttypmod, att.attacl
        FROM pg_catalog.pg_attribute att
       WHERE att.attrelid = c.oid AND att.attnum > 0 AND NOT att.attisdropped
      OFFSET 0) a
   WHERE c.relkind <> 'i')
-- Functions: other runtime roles, and PUBLIC (NULL proacl = PostgreSQL's default).
SELECT 'execute', p.oid::text, o.rolname::text, '',
       p.oid::regprocedure::text
  FROM procs p CROSS JOIN others o
 WHERE pg_catalog.has_function_privilege(o.oid, p.oid, 'EXECUTE')
UNION ALL
SELECT 'execute', p.oid::text, 'PUBLIC', '', p.oid::regprocedure::text
  FROM procs p,
       pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
 WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'
UNION ALL
-- Columns other runtime roles may read (table-level grants, PUBLIC and memberships count).
SELECT 'select', c.relname || '.' || c.attname, o.rolname::text, '',
       c.relname || '.' || c.attname
  FROM cols c CROSS JOIN others o
 WHERE c.readable AND pg_catalog.has_column_privilege(o.oid, c.relid, c.attnum, 'SELECT')
UNION ALL
SELECT 'schema ' || pr.priv, %(schema)s, o.rolname::text, '', %(schema)s
  FROM ns CROSS JOIN others o CROSS JOIN unnest(ARRAY['USAGE', 'CREATE']) pr(priv)
 WHERE pg_catalog.has_schema_privilege(o.oid, ns.oid, pr.priv)
UNION ALL
SELECT 'schema ' || a.privilege_type, %(schema)s, 'PUBLIC', '', %(schema)s
  FROM ns, pg_catalog.aclexplode(coalesce(ns.nspacl, pg_catalog.acldefault('n', ns.nspowner))) a
 WHERE a.grantee = 0
UNION ALL
-- Default privileges in effect for each creator: the global row replaces the
-- hard-wired default, the schema's row adds to it.
SELECT 'default ' || t.objtype, cr.rolname::text,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END,
       a.privilege_type, t.label || ' created by ' || cr.rolname
  FROM creators cr
 CROSS JOIN (VALUES ('r', 'r', 'tables'), ('S', 's', 'sequences'), ('f', 'f', 'functions'),
                    ('T', 'T', 'types')) t(objtype, aclkind, label)
 CROSS JOIN LATERAL pg_catalog.aclexplode(
       coalesce((SELECT d.defaclacl FROM pg_catalog.pg_default_acl d
                  WHERE d.defaclrole = cr.oid AND d.defaclnamespace = 0
                    AND d.defaclobjtype = t.objtype::"char"),
                pg_catalog.acldefault(t.aclkind::"char", cr.oid))
       || coalesce((SELECT d.defaclacl FROM pg_catalog.pg_default_acl d, ns
                     WHERE d.defaclrole = cr.oid AND d.defaclnamespace = ns.oid
                       AND d.defaclobjtype = t.objtype::"char"), '{}'::aclitem[])) a
 WHERE a.grantee <> cr.oid
UNION ALL
-- Explicit ACL entries, bar those the topology allows: the own roles, PostgreSQL's
-- PUBLIC USAGE on types, and the readers' USAGE on an exposing schema and SELECT on
-- exactly the exposed columns.  (Default privileges: above, as they take effect.)
SELECT 'grant ' || g.kind, g.key || ' ' || g.privilege,
       CASE WHEN g.grantee = 0 THEN 'PUBLIC'
            ELSE pg_catalog.pg_get_userbyid(g.grantee)::text END,
       g.privilege, g.object
  FROM (
  SELECT 'table' AS kind, c.oid::text AS key, c.oid::regclass::text AS object, a.grantee,
         a.privilege_type AS privilege, NULL::text AS rel_col
    FROM classes c, pg_catalog.aclexplode(c.relacl) a
  UNION ALL
  SELECT 'column', c.relid::text || '.' || c.attnum::text,
         c.relid::regclass::text || '.' || pg_catalog.quote_ident(c.attname),
         a.grantee, a.privilege_type, c.relname::text || '.' || c.attname::text
    FROM cols c, pg_catalog.aclexplode(c.attacl) a
  UNION ALL
  SELECT 'function', p.oid::text, p.oid::regprocedure::text, a.grantee, a.privilege_type, NULL
    FROM procs p, pg_catalog.aclexplode(p.proacl) a
  UNION ALL
  SELECT 'type', t.oid::text, t.oid::regtype::text, a.grantee, a.privilege_type, NULL
    FROM pg_catalog.pg_type t JOIN ns ON t.typnamespace = ns.oid,
         pg_catalog.aclexplode(t.typacl) a
  UNION ALL
  SELECT 'schema', '', %(schema)s, a.grantee, a.privilege_type, NULL
    FROM ns, pg_catalog.aclexplode(ns.nspacl) a
  UNION ALL
  SELECT 'large object', l.oid::text, l.oid::text, a.grantee, a.privilege_type, NULL
    FROM pg_catalog.pg_largeobject_metadata l
    JOIN pg_catalog.pg_roles r ON r.oid = l.lomowner AND r.rolname = %(owner)s,
         pg_catalog.aclexplode(l.lomacl) a
  ) g
 WHERE NOT (g.grantee <> 0 AND pg_catalog.pg_get_userbyid(g.grantee) = ANY(%(own)s))
   AND NOT (g.grantee = 0 AND g.kind = 'type' AND g.privilege = 'USAGE')
   AND NOT (g.grantee <> 0 AND pg_catalog.pg_get_userbyid(g.grantee) = ANY(%(readers)s)
            AND ((g.kind = 'schema' AND g.privilege = 'USAGE' AND %(exposes)s)
                 OR (g.kind = 'column' AND g.privilege = 'SELECT'
                     AND g.rel_col = ANY(%(exposed)s::text[]))))
UNION ALL
-- What readers rely on: each exposed relation and column.
SELECT 'relation', c.relname::text, '',
       c.relkind::text || ' owner ' || pg_catalog.pg_get_userbyid(c.relowner)
       || CASE WHEN c.relrowsecurity THEN ', row level security' ELSE '' END
       || CASE WHEN c.relforcerowsecurity THEN ' (forced)' ELSE '' END,
       c.relname::text
  FROM rels c WHERE c.relname = ANY(%(exposed_tables)s)
UNION ALL
-- Row-level security policies on exposed tables decide which rows readers see.
SELECT 'policy', c.relname || '.' || pol.polname, '',
       pol.polcmd::text || CASE WHEN pol.polpermissive THEN ' permissive' ELSE ' restrictive' END
       || ' to ' || pg_catalog.array_to_string(ARRAY(
            SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(r)::text END
              FROM unnest(pol.polroles) r ORDER BY 1), ',')
       || ' using ' || coalesce(pg_catalog.md5(
            pg_catalog.pg_get_expr(pol.polqual, pol.polrelid)), '-')
       || ' check ' || coalesce(pg_catalog.md5(
            pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid)), '-'),
       c.relname::text || ' ' || pol.polname::text
  FROM rels c JOIN pg_catalog.pg_policy pol ON pol.polrelid = c.oid
 WHERE c.relname = ANY(%(exposed_tables)s)
UNION ALL
-- Functions with their own SET clause for a timeout (judged: hazards.timeout_is_off).
SELECT 'timeout clause', p.oid::text, '', s.setting, p.oid::regprocedure::text
  FROM procs p, unnest(p.proconfig) s(setting)
 WHERE s.setting ~ '^(lock_timeout|statement_timeout|idle_in_transaction_session_timeout)='
UNION ALL
SELECT 'column', c.relname || '.' || c.attname, '',
       c.atttypid::text || ':' || c.atttypmod::text || ':'
       || pg_catalog.format_type(c.atttypid, c.atttypmod),
       c.relname || '.' || c.attname
  FROM cols c WHERE c.readable AND c.relname || '.' || c.attname = ANY(%(exposed)s::text[])
"""


@dataclass(frozen=True)
class CatalogGuard:
    """The snapshot and the judgement for one service's migrations."""

    topology: Topology
    service: Service

    @property
    def _readers(self) -> set[str]:
        return {s.runtime_role for s in self.topology.readers_of(self.service)}

    @property
    def _exposed(self) -> set[str]:
        # 'table.column'; names are validated identifiers, so the dot is unambiguous.
        return {f"{table}.{column}" for table, columns in self.service.exposes
                for column in columns}

    def snapshot(self, conn: psycopg.Connection[Any]) -> Facts:
        others = [r for r in self.topology.runtime_roles if r != self.service.runtime_role]
        rows = conn.execute(_SNAPSHOT, {
            "schema": self.service.schema, "others": others, "owner": self.service.owner_role,
            "own": [self.service.owner_role, self.service.runtime_role],
            "readers": sorted(self._readers), "exposes": bool(self.service.exposes),
            "exposed_tables": [table for table, _columns in self.service.exposes],
            "exposed": sorted(self._exposed)}).fetchall()
        return {(str(k), str(key), str(g)): (str(v), str(label))
                for k, key, g, v, label in rows}

    def problems(self, before: Facts, after: Facts, *,
                 allow_reader_policy: bool = False) -> list[str]:
        """What the change from *before* to *after* does that the topology forbids,
        one phrase per object (empty: the file may commit).  *allow_reader_policy*: the
        file says (marker ``allow-reader-policy``) that it changes which rows readers
        see on purpose."""
        found: list[str] = []
        if not allow_reader_policy:
            found += self._policy_problems(before, after)
        for fact in sorted(after.keys() - before.keys()):
            if fact[0] != "policy" and not self._allowed(fact, after[fact][0]):
                found.append(self._widening(fact, *after[fact]))
        for fact in sorted(before.keys() - after.keys()):
            kind, key, grantee = fact
            label = before[fact][1]
            if kind in ("relation", "column"):
                found.append(f"drops or renames exposed {kind} {self._name(label)}, which "
                             f"{self._reader_names()} read{'s' if len(self._readers) == 1 else ''}")
            elif (kind == "select" and key in self._exposed and grantee in self._readers
                  and ("column", key, "") in after):
                found.append(f"revokes {grantee}'s SELECT on exposed column "
                             f"{self._name(label)}")
            elif kind == "schema USAGE" and grantee in self._readers:
                found.append(f"revokes {grantee}'s USAGE on schema {self.service.schema}, "
                             "which it needs to read the exposed columns")
        for fact in sorted(before.keys() & after.keys()):
            kind = fact[0]
            if kind in ("relation", "column") and before[fact][0] != after[fact][0]:
                old, new = (v.split(":", 2)[-1] for v in (before[fact][0], after[fact][0]))
                found.append(f"changes exposed {kind} {self._name(before[fact][1])} from "
                             f"{old} to {new}, which {self._reader_names()} rely on")
        stale = sorted(creator for kind, creator, grantee in before
                       if kind == "default f" and grantee == "PUBLIC")
        if stale and any(p.startswith("lets PUBLIC EXECUTE function ") for p in found):
            # Not the file's doing: the schema was never provisioned (or drifted since).
            found.append(f"(default privileges of {', '.join(stale)} already gave PUBLIC "
                         "EXECUTE on new functions before this file: run 'edulink-db "
                         "provision', which revokes it)")
        return _merge_public(found)

    def _policy_problems(self, before: Facts, after: Facts) -> list[str]:
        """Policies that may show readers more rows of an exposed table that already had
        row-level security: a new or changed one that applies to them, or a dropped
        restrictive one.  (A table without RLS before: its policies applied to nothing.)"""
        found: list[str] = []
        for fact in sorted(before.keys() | after.keys()):
            kind, key, _grantee = fact
            if kind != "policy" or before.get(fact, ("",))[0] == after.get(fact, ("",))[0]:
                continue
            table = key.split(".", 1)[0]
            relation = before.get(("relation", table, ""))
            if relation is None or "row level security" not in relation[0]:
                continue
            old, new = before.get(fact), after.get(fact)
            label = (new or old or ("", key))[1].split(" ", 1)[1]
            if new is not None and self._reaches_readers(new[0], "permissive"):
                verb = "adds" if old is None else "changes"
                found.append(f"{verb} row-level security policy {label} on exposed table "
                             f"{self._name(table)}, which applies to {self._reader_names()} "
                             "and may show them rows it did not")
            elif old is not None and self._reaches_readers(old[0], "restrictive"):
                verb = "drops" if new is None else "changes"
                found.append(f"{verb} restrictive policy {label} on exposed table "
                             f"{self._name(table)}, which limited the rows "
                             f"{self._reader_names()} see")
        if found:
            found[-1] += (" (if the readers may now see those rows, say so in the file: "
                          "'-- edulink-db: allow-reader-policy <who agreed, and why>')")
        return found

    def _reaches_readers(self, value: str, mode: str) -> bool:
        """A *mode* (permissive/restrictive) SELECT or ALL policy for PUBLIC or a
        reader's runtime role (*value* as the snapshot prints it)."""
        head = value.split(" using ", 1)[0]
        command, kind, _rest = head.split(" ", 2)
        roles = set(head.split(" to ", 1)[1].split(","))
        return (command in ("r", "*") and kind == mode
                and ("PUBLIC" in roles or bool(self._readers & roles)))

    def _allowed(self, fact: tuple[str, str, str], value: str) -> bool:
        kind, key, grantee = fact
        if kind in ("relation", "column"):
            return True  # a new exposed object: nothing relied on it yet
        if kind == "timeout clause":
            return not timeout_is_off(value.split("=", 1)[1])
        if kind == "select":
            return grantee in self._readers and key in self._exposed
        if kind == "schema USAGE":
            return grantee in self._readers and bool(self.service.exposes)
        if kind.startswith("default "):
            # The own runtime role may be granted anything; PostgreSQL's own default
            # for types (PUBLIC USAGE) is harmless.
            return grantee == self.service.runtime_role or (
                kind == "default T" and grantee == "PUBLIC" and value == "USAGE")
        return False

    def _widening(self, fact: tuple[str, str, str], value: str, label: str) -> str:
        kind, _key, grantee = fact
        if kind == "execute":
            return f"lets {grantee} EXECUTE function {label}"
        if kind == "select":
            return f"lets {grantee} SELECT column {self._name(label)}"
        if kind.startswith("schema "):
            return f"lets {grantee} {kind.split()[1]} schema {self.service.schema}"
        if kind.startswith("default "):
            return f"makes default privileges give {grantee} {value} on {label}"
        if kind == "timeout clause":
            return (f"gives function {label} its own SET {value.replace('=', ' = ', 1)} "
                    "clause, which replaces the runner's timeout whenever it runs (drop "
                    "the clause; a caller sets SET LOCAL in its own transaction)")
        return f"grants {value} on {kind.split(' ', 1)[1]} {label} to {grantee}"

    def _name(self, relative: str) -> str:
        return f"{self.service.schema}.{relative}"

    def _reader_names(self) -> str:
        return ", ".join(sorted(self._readers)) or "no service"


def _merge_public(found: list[str]) -> list[str]:
    """Leave out 'lets role X EXECUTE f' when 'lets PUBLIC EXECUTE f' says it all."""
    public = {p.split(" EXECUTE function ", 1)[1] for p in found
              if p.startswith("lets PUBLIC EXECUTE function ")}
    return [p for p in found if p.startswith("lets PUBLIC ")
            or " EXECUTE function " not in p or p.split(" EXECUTE function ", 1)[1] not in public]
