"""Reading the catalog: everything verify compares, as a :class:`CatalogState`, in a fixed
number of queries (:func:`read_catalog`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..connections.location import META_OWNER, META_SCHEMA
from ..topology import Topology
from .model import (
    connection_budget_query,
    managed_mark_sql,
)

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")
TABLE_KINDS = ("r", "p", "v", "m", "f")
KIND_NAMES = {"r": "table", "p": "table", "v": "view", "m": "materialized view",
              "f": "foreign table", "S": "sequence"}
DANGEROUS_ATTRIBUTES = ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication",
                        "rolbypassrls")
# The CREATE/ALTER ROLE keyword of each attribute (pg_roles column -> keyword; the
# negation is NO + keyword).  Not derivable from the column name: rolsuper is SUPERUSER.
ATTRIBUTE_KEYWORDS = {"rolsuper": "SUPERUSER", "rolcreaterole": "CREATEROLE",
                      "rolcreatedb": "CREATEDB", "rolreplication": "REPLICATION",
                      "rolbypassrls": "BYPASSRLS", "rolcanlogin": "LOGIN"}


@dataclass(frozen=True)
class RoleState:
    name: str
    attributes: tuple[tuple[str, bool], ...]
    member_of: tuple[str, ...]
    settings: tuple[tuple[str, str], ...]  # role-level, overridden by database-specific
    managed: bool = False  # carries model.MANAGED_COMMENT
    connection_limit: int = -1  # pg_roles.rolconnlimit; -1 = unlimited
    # Settings made with ALTER ROLE ... IN DATABASE (this one): repaired there.
    database_setting_keys: tuple[str, ...] = ()

    @property
    def search_path(self) -> str | None:
        return dict(self.settings).get("search_path")

    def attr(self, name: str) -> bool:
        return dict(self.attributes)[name]


@dataclass(frozen=True)
class Relation:
    schema: str
    name: str
    kind: str
    owner: str


@dataclass
class CatalogState:
    """Privilege-relevant facts about the topology's roles and schemas."""

    roles: dict[str, RoleState] = field(default_factory=dict)
    schema_owners: dict[str, str] = field(default_factory=dict)
    schema_privileges: set[tuple[str, str, str]] = field(default_factory=set)  # role, schema, priv
    public_schema_privileges: set[tuple[str, str]] = field(default_factory=set)
    relations: set[Relation] = field(default_factory=set)
    relation_privileges: set[tuple[str, str, str, str]] = field(default_factory=set)
    public_relation_privileges: set[tuple[str, str, str]] = field(default_factory=set)
    default_privileges: set[tuple[str, str, str, str, str]] = field(default_factory=set)
    runtime_owned: set[tuple[str, str, str]] = field(default_factory=set)  # role, kind, name
    database_privileges: set[tuple[str, str]] = field(default_factory=set)
    # Routines in topology schemas that PUBLIC may execute (schema, signature), and
    # owner roles whose future routines PUBLIC could execute (grants.routine_statements).
    public_routines: set[tuple[str, str, int]] = field(default_factory=set)  # + oid
    owners_with_public_routines: set[str] = field(default_factory=set)
    # max_connections, superuser_reserved_connections, reserved_connections, usable,
    # headroom, derived limit: model.connection_budget_query.
    connection_budget: tuple[int, int, int, int, int, int] | None = None
    database: str = ""
    # Migrator roles: (member, granted) memberships whose privileges the member
    # inherits (PostgreSQL 16+: the grant's INHERIT option; on 15 the role's
    # INHERIT attribute decides, see RoleState), and what migrators hold themselves.
    inheriting_grants: set[tuple[str, str]] = field(default_factory=set)
    migrator_privileges: set[tuple[str, str, str, str, str]] = field(
        default_factory=set)  # role, kind, schema, name, privilege
    # SELECT on the columns of relations outside each runtime role's own schema:
    # (role, schema, relation, column) -> True when it comes with a table-level SELECT.
    # role 'PUBLIC' = an explicit column grant to PUBLIC.
    column_reads: dict[tuple[str, str, str, str], bool] = field(default_factory=dict)
    # The columns of the relations the topology exposes that exist, in attnum order.
    exposed_relation_columns: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # The project's meta schema (connections.location.META_SCHEMA) when it exists:
    # object ('schema' or a relation name) -> owner, its ACL entries (object, grantee
    # or 'PUBLIC', privilege) bar the owner's own, and the members of the meta owner
    # role (direct or indirect) that are neither superuser nor CREATEROLE.
    meta_owners: dict[str, str] = field(default_factory=dict)
    meta_privileges: set[tuple[str, str, str]] = field(default_factory=set)
    meta_non_admin_members: set[str] = field(default_factory=set)
    queries: int = 0


def read_catalog(conn: psycopg.Connection[Any], topology: Topology) -> CatalogState:
    """Read the catalog facts verify needs, in a constant number of queries.

    Roles and their attributes, memberships, settings, schemas, relations, columns,
    ownership, PUBLIC's grants, default privileges, routines, migrators, the connection
    budget.  Effective privileges come from ``has_*_privilege``, so grants through
    PUBLIC, role membership or predefined roles such as ``pg_read_all_data`` all count.
    Nothing here judges: :mod:`.compare` compares.
    """
    state = CatalogState(database=conn.info.dbname)
    runtime = topology.runtime_roles
    roles = runtime + topology.owner_roles + topology.migrator_roles
    schemas = topology.schemas

    def q(query: str | sql.Composed, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        state.queries += 1
        return conn.execute(query, params).fetchall()

    for row in q(
        sql.SQL("""
        SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
               r.rolreplication, r.rolbypassrls, r.rolinherit,
               ARRAY(SELECT g.rolname::text FROM pg_catalog.pg_auth_members m
                     JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                     WHERE m.member = r.oid ORDER BY 1),
               (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s
                 WHERE s.setrole = r.oid AND s.setdatabase = 0),
               (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s
                 JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
                 WHERE s.setrole = r.oid AND d.datname = current_database()),
               {managed}, r.rolconnlimit
        FROM pg_catalog.pg_roles r WHERE r.rolname = ANY(%(roles)s)
        """).format(managed=managed_mark_sql("r.oid")),
        {"roles": roles},
    ):
        (name, sup, crole, cdb, login, repl, bypass, inherit, member_of, role_cfg, db_cfg,
         managed, connlimit) = row
        settings: dict[str, str] = {}
        db_keys = tuple(sorted(item.partition("=")[0] for item in db_cfg or []))
        for cfg in (role_cfg or [], db_cfg or []):  # the database-specific one wins
            for item in cfg:
                key, _eq, value = item.partition("=")
                settings[key] = value
        state.roles[name] = RoleState(
            name=name,
            attributes=(("rolsuper", sup), ("rolcreaterole", crole), ("rolcreatedb", cdb),
                        ("rolcanlogin", login), ("rolreplication", repl),
                        ("rolbypassrls", bypass), ("rolinherit", inherit)),
            member_of=tuple(member_of),
            settings=tuple(sorted(settings.items())),
            managed=managed,
            connection_limit=connlimit,
            database_setting_keys=db_keys,
        )

    budget = q(connection_budget_query(topology), {})
    mc, sr, rc, usable, headroom, derived = (int(v) for v in budget[0])
    state.connection_budget = (mc, sr, rc, usable, headroom, derived)

    for role, schema, priv in q(
        """
        SELECT r.rolname, n.nspname, p.priv
        FROM pg_catalog.pg_roles r
        CROSS JOIN pg_catalog.pg_namespace n
        CROSS JOIN unnest(ARRAY['USAGE', 'CREATE']) AS p(priv)
        WHERE r.rolname = ANY(%(runtime)s)
          AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
          AND pg_catalog.has_schema_privilege(r.oid, n.oid, p.priv)
        """,
        {"runtime": runtime},
    ):
        state.schema_privileges.add((role, schema, priv))

    for schema, owner, public_priv in q(
        """
        SELECT n.nspname, pg_catalog.pg_get_userbyid(n.nspowner), a.privilege_type
        FROM pg_catalog.pg_namespace n
        LEFT JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
               ON a.grantee = 0
        WHERE n.nspname = ANY(%(schemas)s)
        """,
        {"schemas": schemas},
    ):
        state.schema_owners[schema] = owner
        if public_priv:
            state.public_schema_privileges.add((schema, public_priv))

    for schema, name, kind, owner, public_priv in q(
        """
        SELECT n.nspname, c.relname, c.relkind::text, pg_catalog.pg_get_userbyid(c.relowner),
               a.privilege_type
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault(
                 CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a
               ON a.grantee = 0
        WHERE n.nspname = ANY(%(schemas)s) AND c.relkind = ANY(%(kinds)s::"char"[])
        """,
        {"schemas": schemas, "kinds": [*TABLE_KINDS, "S"]},
    ):
        state.relations.add(Relation(schema, name, kind, owner))
        if public_priv:
            state.public_relation_privileges.add((schema, name, public_priv))

    for role, schema, name, priv in q(
        """
        SELECT r.rolname, n.nspname, c.relname, p.priv
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        CROSS JOIN pg_catalog.pg_roles r
        CROSS JOIN unnest(%(privs)s::text[]) AS p(priv)
        WHERE n.nspname = ANY(%(schemas)s) AND r.rolname = ANY(%(runtime)s)
          AND CASE
            WHEN c.relkind = 'S' THEN p.priv = ANY(%(seq_privs)s::text[])
                 AND pg_catalog.has_sequence_privilege(r.oid, c.oid, p.priv)
            WHEN c.relkind <> ALL(%(kinds)s::"char"[]) THEN false
            -- SELECT: table-level only; column-level reads are read below, per column.
            WHEN p.priv = 'SELECT' THEN pg_catalog.has_table_privilege(r.oid, c.oid, p.priv)
            WHEN p.priv IN ('INSERT', 'UPDATE', 'REFERENCES')
                 THEN pg_catalog.has_any_column_privilege(r.oid, c.oid, p.priv)
            WHEN p.priv = 'USAGE' THEN false
            ELSE pg_catalog.has_table_privilege(r.oid, c.oid, p.priv)
          END
        """,
        {"schemas": schemas, "runtime": runtime, "kinds": list(TABLE_KINDS),
         "privs": [*_table_privileges(conn), "USAGE"], "seq_privs": list(SEQUENCE_PRIVILEGES)},
    ):
        state.relation_privileges.add((role, schema, name, priv))

    for owner, schema, objtype, grantee, priv in q(
        """
        SELECT pg_catalog.pg_get_userbyid(d.defaclrole), coalesce(n.nspname, ''),
               d.defaclobjtype::text,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                    ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
               a.privilege_type
        FROM pg_catalog.pg_default_acl d
        LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace
        CROSS JOIN LATERAL aclexplode(d.defaclacl) a
        WHERE pg_catalog.pg_get_userbyid(d.defaclrole) = ANY(%(owners)s)
          AND a.grantee <> d.defaclrole
        """,
        {"owners": topology.owner_roles},
    ):
        state.default_privileges.add((owner, schema, objtype, grantee, priv))

    for kind, where, name, oid in q(
        """
        SELECT 'routine', n.nspname::text, p.oid::regprocedure::text, p.oid::bigint
          FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = ANY(%(schemas)s)
           AND (p.proacl IS NULL OR EXISTS (
                 SELECT FROM pg_catalog.aclexplode(p.proacl) a
                  WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))
        UNION ALL
        -- No global default ACL for the owner's functions, or one that still gives
        -- PUBLIC EXECUTE: its next function is executable by every role.
        SELECT 'default', r.rolname::text, '', 0::bigint
          FROM pg_catalog.pg_roles r
         WHERE r.rolname = ANY(%(owners)s)
           AND NOT EXISTS (
                 SELECT FROM pg_catalog.pg_default_acl d
                  WHERE d.defaclrole = r.oid AND d.defaclnamespace = 0
                    AND d.defaclobjtype = 'f'
                    AND NOT EXISTS (SELECT FROM pg_catalog.aclexplode(d.defaclacl) a
                                     WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))
        """,
        {"schemas": schemas, "owners": topology.owner_roles},
    ):
        if kind == "routine":
            state.public_routines.add((where, name, int(oid)))
        else:
            state.owners_with_public_routines.add(where)

    for role, kind, name in q(
        """
        WITH rt AS (SELECT oid, rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%(runtime)s))
        SELECT rt.rolname, 'schema', n.nspname::text
          FROM pg_catalog.pg_namespace n JOIN rt ON rt.oid = n.nspowner
        UNION ALL
        SELECT rt.rolname, 'relation', c.oid::regclass::text
          FROM pg_catalog.pg_class c JOIN rt ON rt.oid = c.relowner
        UNION ALL
        SELECT rt.rolname, 'function', p.oid::regprocedure::text
          FROM pg_catalog.pg_proc p JOIN rt ON rt.oid = p.proowner
        UNION ALL
        SELECT rt.rolname, 'database privilege', 'CREATE'
          FROM rt WHERE pg_catalog.has_database_privilege(rt.oid, current_database(), 'CREATE')
        """,
        {"runtime": runtime},
    ):
        if kind == "database privilege":
            state.database_privileges.add((role, name))
        else:
            state.runtime_owned.add((role, kind, name))
    _read_migrators(conn, topology, q, state)
    _read_column_reads(topology, q, state)
    _read_meta(q, state)
    return state


def _read_meta(q: Callable[[str, dict[str, Any]], list[tuple[Any, ...]]],
               state: CatalogState) -> None:
    """Owners and ACLs of the meta schema and its relations, and the meta owner role's
    non-admin members, in one query (nothing when no move ever ran here)."""
    for kind, obj, owner, grantee, priv in q(
        """
        SELECT 'object', 'schema', pg_catalog.pg_get_userbyid(n.nspowner),
               CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee)
               END, a.privilege_type
          FROM pg_catalog.pg_namespace n
          LEFT JOIN LATERAL pg_catalog.aclexplode(n.nspacl) a ON a.grantee <> n.nspowner
         WHERE n.nspname = %(schema)s
        UNION ALL
        SELECT 'object', c.relname::text, pg_catalog.pg_get_userbyid(c.relowner),
               CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee)
               END, a.privilege_type
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN LATERAL pg_catalog.aclexplode(c.relacl) a ON a.grantee <> c.relowner
         WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
        UNION ALL
        SELECT 'member', '', '', r.rolname::text, '' FROM (
          WITH RECURSIVE m(oid) AS (
            SELECT a.member FROM pg_catalog.pg_auth_members a
              JOIN pg_catalog.pg_roles o ON o.oid = a.roleid WHERE o.rolname = %(owner)s
            UNION SELECT a.member FROM pg_catalog.pg_auth_members a JOIN m ON a.roleid = m.oid)
          SELECT oid FROM m) m
          JOIN pg_catalog.pg_roles r ON r.oid = m.oid
         WHERE NOT (r.rolsuper OR r.rolcreaterole)
        """,
        {"schema": META_SCHEMA, "owner": META_OWNER},
    ):
        if kind == "member":
            state.meta_non_admin_members.add(grantee)
            continue
        state.meta_owners[obj] = owner
        if grantee is not None:
            state.meta_privileges.add((obj, grantee, priv))


def _read_column_reads(topology: Topology,
                       q: Callable[[str, dict[str, Any]], list[tuple[Any, ...]]],
                       state: CatalogState) -> None:
    """Who may SELECT which column outside their own schema, in one query.

    has_column_privilege counts table-level grants, grants to PUBLIC and through
    membership, so this is what a role can really read; the flag says whether a
    table-level SELECT is behind it (has_table_privilege ignores column grants).
    Rows with role NULL list the existing columns of the exposed relations, so a
    missing grant can be told from a column that does not exist.
    """
    exposed = [f"{svc.schema}.{table}" for svc in topology.services
               for table, _cols in svc.exposes]
    for role, schema, name, column, whole, _attnum in q(
        """
        WITH rt AS (
          SELECT r.oid, r.rolname, o.own
            FROM unnest(%(runtime)s::text[], %(own)s::text[]) AS o(role, own)
            JOIN pg_catalog.pg_roles r ON r.rolname = o.role),
        cols AS (
          SELECT n.nspname, c.oid AS relid, c.relname, a.attnum, a.attname, a.attacl
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
                 AND a.attnum > 0 AND NOT a.attisdropped
           WHERE n.nspname = ANY(%(schemas)s) AND c.relkind = ANY(%(kinds)s::"char"[]))
        SELECT rt.rolname::text, cols.nspname::text, cols.relname::text, cols.attname::text,
               pg_catalog.has_table_privilege(rt.oid, cols.relid, 'SELECT'), cols.attnum
          FROM cols CROSS JOIN rt
         WHERE cols.nspname <> rt.own
           AND pg_catalog.has_column_privilege(rt.oid, cols.relid, cols.attnum, 'SELECT')
        UNION ALL
        SELECT 'PUBLIC', cols.nspname::text, cols.relname::text, cols.attname::text, false,
               cols.attnum
          FROM cols, aclexplode(cols.attacl) x
         WHERE x.grantee = 0 AND x.privilege_type = 'SELECT'
        UNION ALL
        SELECT NULL, cols.nspname::text, cols.relname::text, cols.attname::text, false,
               cols.attnum
          FROM cols WHERE cols.nspname || '.' || cols.relname = ANY(%(exposed)s::text[])
        ORDER BY 2, 3, 6
        """,
        {"runtime": topology.runtime_roles, "own": [s.schema for s in topology.services],
         "schemas": topology.schemas, "kinds": list(TABLE_KINDS), "exposed": exposed},
    ):
        if role is None:
            state.exposed_relation_columns.setdefault((schema, name), []).append(column)
        else:
            state.column_reads[(role, schema, name, column)] = whole


def _read_migrators(conn: psycopg.Connection[Any], topology: Topology,
                    q: Callable[[str, dict[str, Any]], list[tuple[Any, ...]]],
                    state: CatalogState) -> None:
    """What migrator roles hold by themselves (they should hold nothing: they act
    only by becoming their owner role) and, on 16+, which memberships inherit."""
    migrators = topology.migrator_roles
    if conn.info.server_version >= 160000:
        for member, granted in q(
            """
            SELECT m.rolname, g.rolname FROM pg_catalog.pg_auth_members a
            JOIN pg_catalog.pg_roles m ON m.oid = a.member
            JOIN pg_catalog.pg_roles g ON g.oid = a.roleid
            WHERE m.rolname = ANY(%(migrators)s) AND a.inherit_option
            """,
            {"migrators": migrators},
        ):
            state.inheriting_grants.add((member, granted))
    for role, kind, schema, name, priv in q(
        """
        WITH mg AS (SELECT oid, rolname FROM pg_catalog.pg_roles
                    WHERE rolname = ANY(%(migrators)s))
        SELECT mg.rolname, 'schema', n.nspname::text, '', p.priv
          FROM mg CROSS JOIN pg_catalog.pg_namespace n
          CROSS JOIN unnest(ARRAY['USAGE', 'CREATE']) AS p(priv)
         WHERE n.nspname = ANY(%(schemas)s)
           AND pg_catalog.has_schema_privilege(mg.oid, n.oid, p.priv)
        UNION ALL
        SELECT mg.rolname, CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
               n.nspname::text, c.relname::text, p.priv
          FROM mg CROSS JOIN pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          CROSS JOIN unnest(%(privs)s::text[]) AS p(priv)
         WHERE n.nspname = ANY(%(schemas)s)
           AND CASE
             WHEN c.relkind = 'S' THEN p.priv = ANY(%(seq_privs)s::text[])
                  AND pg_catalog.has_sequence_privilege(mg.oid, c.oid, p.priv)
             WHEN c.relkind <> ALL(%(kinds)s::"char"[]) THEN false
             WHEN p.priv IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                  THEN pg_catalog.has_any_column_privilege(mg.oid, c.oid, p.priv)
             WHEN p.priv = 'USAGE' THEN false
             ELSE pg_catalog.has_table_privilege(mg.oid, c.oid, p.priv)
           END
        UNION ALL
        SELECT mg.rolname, 'owns schema', n.nspname::text, '', 'OWNER'
          FROM pg_catalog.pg_namespace n JOIN mg ON mg.oid = n.nspowner
        UNION ALL
        SELECT mg.rolname, 'owns relation', '', c.oid::regclass::text, 'OWNER'
          FROM pg_catalog.pg_class c JOIN mg ON mg.oid = c.relowner
        UNION ALL
        SELECT mg.rolname, 'owns function', '', p.oid::regprocedure::text, 'OWNER'
          FROM pg_catalog.pg_proc p JOIN mg ON mg.oid = p.proowner
        UNION ALL
        SELECT mg.rolname, 'database', '', current_database()::text, 'CREATE'
          FROM mg WHERE pg_catalog.has_database_privilege(mg.oid, current_database(), 'CREATE')
        """,
        {"migrators": migrators, "schemas": topology.schemas, "kinds": list(TABLE_KINDS),
         "privs": [*_table_privileges(conn), "USAGE"], "seq_privs": list(SEQUENCE_PRIVILEGES)},
    ):
        state.migrator_privileges.add((role, kind, schema, name, priv))


def _table_privileges(conn: psycopg.Connection[Any]) -> list[str]:
    # MAINTAIN (PostgreSQL 17+) lets a role VACUUM/ANALYZE/REINDEX/CLUSTER/LOCK.
    return list(TABLE_PRIVILEGES) + (["MAINTAIN"] if conn.info.server_version >= 170000 else [])
