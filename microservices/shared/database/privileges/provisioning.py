"""Provisioning: make the database match the topology.

One generator, :func:`provisioning_statements`, produces every statement.
:func:`provision` executes them in a single transaction, and
:func:`render_postgresql_script` prints the same statements as the checked-in
``postgresql_schema_setup.sql``, so the script and what ``edulink-db provision``
does cannot drift apart (a test compares them).

What it creates, per service: a NOLOGIN owner role that owns the schema and
everything in it; a LOGIN runtime role with a role-level ``search_path`` (own
schema first, then the shared schema) and exactly the grants the topology
declares, including ALTER DEFAULT PRIVILEGES so that tables the owner creates
later are covered; PUBLIC's default access to the schema revoked.  Other
services' runtime roles get column-level SELECT on exactly the columns the
topology exposes (``reader_statements``), never a table-level grant.  Plus the
shared schema with the append-only audit log and the RLS helper
``current_user_id()``.

Every statement is idempotent, and the run holds a transaction-level advisory
lock, so concurrent deploys serialise and a second run changes nothing.  It
needs CREATEROLE and CREATE on the database, not superuser: that is what
Supabase's ``postgres`` user has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..config import LoginKind, derive_service_conninfo, login_role
from ..connections.direct import connect
from ..core.errors import ForeignRoleError, ProvisioningError
from ..migrations.history import HISTORY_TABLE
from ..topology import PLATFORM_RESERVED_ROLES, Service, Topology
from .model import (
    HEADROOM_MIN,
    HEADROOM_PERCENT,
    MANAGED_COMMENT,
    MANAGED_MARKER,
    MIGRATOR_ROLE_ATTRIBUTES,
    OWN_SEQUENCE_PRIVILEGES,
    OWN_TABLE_PRIVILEGES,
    OWNER_ROLE_ATTRIBUTES,
    RUNTIME_ROLE_ATTRIBUTES,
    UNADOPTABLE_ATTRIBUTES,
    connection_budget_query,
    managed_mark_sql,
    search_path_for,
)

log = logging.getLogger(__name__)

PROVISION_LOCK = "edulink-db:provision"
# Columns a service may set when it writes an audit entry.  id, occurred_at and
# db_role are filled by the database, so the log records who really wrote it.
AUDIT_INSERT_COLUMNS = (
    "service_name", "action", "resource_type", "resource_id", "user_id", "details",
)
RLS_HELPER = "current_user_id"


@dataclass(frozen=True)
class Statement:
    """One provisioning statement and a one-line description of why it is there."""

    comment: str
    query: sql.Composed  # always composed from constants and sql.Identifier/sql.Literal


def _ids(names: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _privs(privileges: Iterable[str]) -> sql.Composable:
    # Privilege keywords come from the constants above, never from config.
    return sql.SQL(", ").join(sql.SQL(p) for p in privileges)


class RoleCreation(sql.Composed):
    """A statement that creates (and marks) one role; ``role`` names it.

    Provisioning finds the roles it manages by looking for these in its own
    statement list, so any role created through :func:`_create_role` is covered
    by the ownership check, whatever kind of role it is.
    """

    def __init__(self, role: str, seq: Sequence[sql.Composable]) -> None:
        super().__init__(seq)
        self.role = role


def _create_role(role: str, attributes: str) -> RoleCreation:
    # CREATE ROLE has no IF NOT EXISTS.  The mark goes on in the same statement, so a
    # role edulink-db created is never visible unmarked.  The exception handler covers
    # a role created concurrently from another database (advisory locks are per
    # database): that is fine if the other run was ours (marked), not if someone else
    # created a role of that name in the window after the ownership check.
    composed = sql.SQL(
        "DO $do$ BEGIN\n"
        "  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {name}) THEN\n"
        "    CREATE ROLE {role} {attributes};\n"
        "    COMMENT ON ROLE {role} IS {comment};\n"
        "  END IF;\n"
        "EXCEPTION WHEN duplicate_object OR unique_violation THEN\n"
        "  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles\n"
        "                 WHERE rolname = {name} AND {marked}) THEN\n"
        "    RAISE EXCEPTION 'role % was created concurrently by someone else', {name};\n"
        "  END IF;\n"
        "END $do$"
    ).format(name=sql.Literal(role), role=sql.Identifier(role), attributes=sql.SQL(attributes),
             comment=sql.Literal(MANAGED_COMMENT), marked=managed_mark_sql("oid"))
    return RoleCreation(role, list(composed))


def managed_roles(statements: Iterable[Statement]) -> list[str]:
    """The roles *statements* create, in order: exactly the roles provisioning manages."""
    return [s.query.role for s in statements if isinstance(s.query, RoleCreation)]


def _foreign_role_guard(roles: list[str]) -> sql.Composed:
    """Stop the run (and roll it back) if any of *roles* exists without the mark.

    ``provision`` checks this itself first, with a better message and ``--adopt``;
    this statement protects the psql script, which has no such check.
    """
    return sql.SQL(
        "DO $do$\n"
        "DECLARE foreign_roles text;\n"
        "BEGIN\n"
        "  SELECT pg_catalog.string_agg(rolname, ', ' ORDER BY rolname) INTO foreign_roles\n"
        "    FROM pg_catalog.pg_roles WHERE rolname = ANY({roles}::pg_catalog.name[])\n"
        "     AND NOT {marked};\n"
        "  IF foreign_roles IS NOT NULL THEN\n"
        "    RAISE EXCEPTION 'roles exist that edulink-db did not create: %', foreign_roles\n"
        "      USING HINT = 'Rename them in the topology, or adopt each deliberately with '\n"
        "                   'edulink-db provision --adopt ROLE.';\n"
        "  END IF;\n"
        "END $do$"
    ).format(roles=sql.Literal(roles), marked=managed_mark_sql("oid"))


def _connection_limit_statements(topology: Topology) -> list[Statement]:
    out: list[Statement] = []
    derived = [s.runtime_role for s in topology.services if s.connection_limit is None]
    for svc in topology.services:
        if svc.connection_limit is not None:
            # ALTER ROLE takes no bind parameters; the value is a validated int.
            out.append(Statement(
                f"Connection budget of {svc.runtime_role} (topology connection_limit).",
                sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
                    sql.Identifier(svc.runtime_role), sql.Literal(svc.connection_limit))))
    if derived:
        out.append(Statement(
            "Connection budget of " + ", ".join(derived) + ": derived from this server's "
            "max_connections (see the header).",
            sql.SQL(
                "DO $do$\n"
                "DECLARE per_role int; r text;\n"
                "BEGIN\n"
                "  SELECT b.derived INTO per_role\n"
                "    FROM ({budget}) AS b(mc, sr, rc, usable, headroom, derived);\n"
                "  FOREACH r IN ARRAY {roles}::text[] LOOP\n"
                "    EXECUTE pg_catalog.format('ALTER ROLE %I CONNECTION LIMIT %s', r, per_role);\n"
                "  END LOOP;\n"
                "END $do$"
            ).format(budget=connection_budget_query(topology), roles=sql.Literal(derived))))
    return out


def migrator_statements(svc: Service, topology: Topology) -> list[Statement]:
    """The migrator role of *svc*: logs in, and can only ever be its owner role.

    ``ALTER ROLE ... SET role`` makes the owner the role-level default of the
    ``role`` setting: every login starts as the owner (objects a migration or
    Django's ``migrate`` creates are the owner's), and RESET ROLE, RESET ALL,
    DISCARD ALL and SET SESSION AUTHORIZATION DEFAULT all lead back to the
    owner, never to the admin.  Checked on PostgreSQL 15 and 18: the default is
    applied at login and validated against the membership (16+ needs the
    grant's SET option, which GRANT gives by default).
    """
    m, o = sql.Identifier(svc.migrator_role), sql.Identifier(svc.owner_role)
    return [
        Statement(f"Migrator role of service {svc.name}: logs in to run migrations, "
                  f"acts only as {svc.owner_role}.",
                  _create_role(svc.migrator_role, MIGRATOR_ROLE_ATTRIBUTES)),
        Statement(f"{svc.migrator_role}'s one membership: {svc.owner_role}.",
                  sql.SQL("GRANT {} TO {}").format(o, m)),
        Statement(f"{svc.migrator_role} is {svc.owner_role} from login on "
                  "(and after RESET ROLE).",
                  sql.SQL("ALTER ROLE {} SET role = {}").format(
                      m, sql.Literal(svc.owner_role))),
        Statement("Unqualified names in migrations land in the service's schema.",
                  sql.SQL("ALTER ROLE {} SET search_path = {}").format(
                      m, _ids(search_path_for(svc, topology)))),
    ]


def exposure_grant(schema: str, table: str, columns: Iterable[str],
                   readers: Iterable[str]) -> sql.Composed:
    """A DO block granting SELECT on those of *columns* that exist, when *table* exists.

    Migrations create the tables after provisioning, and a column may be exposed
    before the migration that adds it runs: the block grants what exists now and
    does nothing else (the migration runner grants the rest after each file).
    Every name reaches the block as an already-quoted constant (sql.Identifier),
    and the one dynamic statement is assembled from those with %s only.
    """
    qualified = sql.Identifier(schema, table).as_string(None)
    return sql.SQL(
        "DO $do$\n"
        "DECLARE cols text;\n"
        "BEGIN\n"
        "  SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', '"
        " ORDER BY a.attnum)\n"
        "    INTO cols FROM pg_catalog.pg_attribute a\n"
        "    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid\n"
        "   WHERE a.attrelid = pg_catalog.to_regclass({table}) AND a.attnum > 0\n"
        "     AND c.relkind = ANY('{{r,p,v,m,f}}'::\"char\"[])\n"
        "     AND NOT a.attisdropped AND a.attname = ANY({columns}::pg_catalog.name[]);\n"
        "  IF cols IS NOT NULL THEN\n"
        "    EXECUTE pg_catalog.format('GRANT SELECT (%s) ON TABLE %s TO %s', cols, {table},"
        " {readers});\n"
        "  END IF;\n"
        "END $do$"
    ).format(table=sql.Literal(qualified), columns=sql.Literal(list(columns)),
             readers=sql.Literal(_ids(readers).as_string(None)))


def reader_statements(svc: Service, topology: Topology) -> list[Statement]:
    """What *svc*'s readers get: exactly the exposed columns, never a whole table.

    Each run first takes away every SELECT the readers hold in the schema (REVOKE on
    a table also revokes its column grants) and then grants the exposure, in the
    same transaction, so nobody ever sees the gap.  That also upgrades a database
    provisioned with the old table-level grants and their ALTER DEFAULT PRIVILEGES.
    A column grant never covers a column added later: new columns stay private
    until the topology exposes them.
    """
    readers = [reader.runtime_role for reader in topology.readers_of(svc)]
    if not readers:
        return []
    s, o, rr = sql.Identifier(svc.schema), sql.Identifier(svc.owner_role), _ids(readers)
    who = ", ".join(readers)
    out = [
        Statement(f"Readers of {svc.schema} ({who}) get no table-level SELECT: drop any, "
                  "with the column grants it carries; the exposure is granted below.",
                  sql.SQL("REVOKE SELECT ON ALL TABLES IN SCHEMA {} FROM {}").format(s, rr)),
        Statement(f"...and no SELECT on tables {svc.owner_role} creates later "
                  "(the migration runner grants the exposed columns after each file).",
                  sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} "
                          "REVOKE SELECT ON TABLES FROM {}").format(o, s, rr)),
    ]
    if not svc.exposes:
        out.append(Statement(f"{svc.name} exposes nothing: its readers need no USAGE on "
                             f"{svc.schema}.",
                             sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(s, rr)))
        return out
    out.append(Statement(f"Cross-service readers of {svc.schema}: {who}.",
                         sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, rr)))
    for table, columns in svc.exposes:
        out.append(Statement(
            f"{svc.name} exposes {table} ({', '.join(columns)}) to {who}.",
            exposure_grant(svc.schema, table, columns, readers)))
    return out


def routine_statements(owner: str, schema: str, runtime_role: str | None) -> list[Statement]:
    """EXECUTE on *schema*'s functions and procedures for its own service only.

    PostgreSQL lets PUBLIC execute every new function.  A reader of an exposed
    table would then run the exposing service's code with the *reader's*
    privileges whenever a policy, view or default on that table calls it -- code
    that can read the reader's private tables.  Without EXECUTE such a read
    fails instead.  Per-schema default privileges can only add to the global
    ones, so PUBLIC's default is revoked for the owner role globally (it creates
    objects in its own schema only).
    """
    o, s = sql.Identifier(owner), sql.Identifier(schema)
    out = [
        Statement(f"No PUBLIC EXECUTE on the routines in {schema}: a reader would run "
                  "this service's code with its own privileges.",
                  sql.SQL("REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA {} FROM PUBLIC").format(s)),
        Statement(f"...nor on the routines {owner} creates later.",
                  sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} "
                          "REVOKE EXECUTE ON ROUTINES FROM PUBLIC").format(o)),
    ]
    if runtime_role is not None:
        r = sql.Identifier(runtime_role)
        out += [
            Statement(f"{runtime_role} may run its own service's routines.",
                      sql.SQL("GRANT EXECUTE ON ALL ROUTINES IN SCHEMA {} TO {}").format(s, r)),
            Statement("...including routines created later.",
                      sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} "
                              "GRANT EXECUTE ON ROUTINES TO {}").format(o, s, r)),
        ]
    return out


def provisioning_statements(topology: Topology) -> list[Statement]:
    """Every statement that brings a database in line with *topology*, in order."""
    shared = topology.shared
    runtime_roles = topology.runtime_roles
    service_owners = [s.owner_role for s in topology.services]
    out: list[Statement] = [
        Statement(
            "Serialise concurrent provisioning runs (released at COMMIT).",
            sql.SQL("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext({}))").format(
                sql.Literal(PROVISION_LOCK)
            ),
        )
    ]

    for owner in topology.owner_roles:
        out.append(Statement(f"Owner role {owner}: owns a schema, cannot log in.",
                             _create_role(owner, OWNER_ROLE_ATTRIBUTES)))
        out.append(Statement(
            f"Let the provisioning admin act as {owner} (needed on PostgreSQL 16+ for "
            "CREATE SCHEMA AUTHORIZATION and ALTER DEFAULT PRIVILEGES FOR ROLE).",
            sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(owner)),
        ))
    for svc in topology.services:
        out.append(Statement(
            f"Runtime role of service {svc.name}: logs in, owns nothing, never bypasses RLS.",
            _create_role(svc.runtime_role, RUNTIME_ROLE_ATTRIBUTES),
        ))
        out.append(Statement(
            "search_path from the role, not the session: survives transaction poolers.",
            sql.SQL("ALTER ROLE {} SET search_path = {}").format(
                sql.Identifier(svc.runtime_role), _ids(search_path_for(svc, topology))
            ),
        ))
        for name, value in svc.role_settings:
            # name is from topology.ROLE_SETTINGS and value matched a duration pattern;
            # ALTER ROLE ... SET takes no bind parameters.
            out.append(Statement(
                f"{name} for {svc.runtime_role}, applied at login.",
                sql.SQL("ALTER ROLE {} SET {} = {}").format(
                    sql.Identifier(svc.runtime_role), sql.Identifier(name), sql.Literal(value)),
            ))

    out += _connection_limit_statements(topology)
    for svc in topology.services:
        out += migrator_statements(svc, topology)

    for schema in topology.schemas:
        owner = topology.schema_owner(schema)
        out.append(Statement(f"Schema {schema}, owned by {owner}.",
                             sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                                 sql.Identifier(schema), sql.Identifier(owner))))
        out.append(Statement(f"Re-assert the owner of {schema} if it existed before.",
                             sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(
                                 sql.Identifier(schema), sql.Identifier(owner))))
        out.append(Statement(f"No default access to {schema} for PUBLIC.",
                             sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(
                                 sql.Identifier(schema))))

    for svc in topology.services:
        s, r, o = sql.Identifier(svc.schema), sql.Identifier(svc.runtime_role), sql.Identifier(
            svc.owner_role)
        own = _privs(OWN_TABLE_PRIVILEGES)
        seq = _privs(OWN_SEQUENCE_PRIVILEGES)
        out += [
            Statement(f"{svc.runtime_role} may use its own schema (no CREATE: no DDL).",
                      sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r)),
            Statement(f"{svc.runtime_role} reads and writes its own tables.",
                      sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(own, s, r)),
            Statement(f"{svc.runtime_role} uses its own sequences.",
                      sql.SQL("GRANT {} ON ALL SEQUENCES IN SCHEMA {} TO {}").format(seq, s, r)),
            Statement(f"Tables {svc.owner_role} creates later are covered too.",
                      sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} "
                              "GRANT {} ON TABLES TO {}").format(o, s, own, r)),
            Statement(f"Sequences {svc.owner_role} creates later are covered too.",
                      sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} "
                              "GRANT {} ON SEQUENCES TO {}").format(o, s, seq, r)),
            *routine_statements(svc.owner_role, svc.schema, svc.runtime_role),
        ]
        out += reader_statements(svc, topology)

        history = sql.Identifier(svc.schema, HISTORY_TABLE)
        out.append(Statement(
            f"The migration history in {svc.schema} is the owner's alone: undo what the "
            "schema-wide grants just gave (same transaction, so never visible).",
            sql.SQL(
                "DO $do$ BEGIN\n"
                "  IF pg_catalog.to_regclass({name}) IS NOT NULL THEN\n"
                "    REVOKE ALL ON TABLE {history} FROM PUBLIC, {roles};\n"
                "  END IF;\n"
                "END $do$"
            ).format(name=sql.Literal(history.as_string(None)), history=history,
                     roles=_ids(runtime_roles)),
        ))
    ss, so = sql.Identifier(shared.schema), sql.Identifier(shared.owner_role)
    audit = sql.Identifier(shared.schema, shared.audit_table)
    helper = sql.Identifier(shared.schema, RLS_HELPER)
    out += [
        Statement("Every service (runtime and owner role) may use the shared schema.",
                  sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                      ss, _ids(runtime_roles + service_owners))),
        Statement(f"Create shared objects as {shared.owner_role}, so it owns them.",
                  sql.SQL("SET LOCAL ROLE {}").format(so)),
        Statement("The append-only audit log.", sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (\n"
            "    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
            "    occurred_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),\n"
            "    db_role name NOT NULL DEFAULT CURRENT_USER,\n"
            "    service_name text NOT NULL,\n"
            "    action text NOT NULL,\n"
            "    resource_type text NOT NULL,\n"
            "    resource_id text,\n"
            "    user_id text,\n"
            "    details jsonb NOT NULL DEFAULT '{{}}'::jsonb\n"
            ")").format(audit)),
        Statement("Time-ordered appends: a BRIN index is tiny and fits the access pattern.",
                  sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING brin (occurred_at)").format(
                      sql.Identifier(f"{shared.audit_table}_occurred_at_brin"), audit)),
        Statement(
            "RLS helper: the request's user id, or NULL when none is set "
            "(policies then match nothing: fail closed).",
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {}() RETURNS text\n"
                "    LANGUAGE sql STABLE\n"
                "    AS $fn$ SELECT NULLIF(pg_catalog.current_setting('app.current_user_id', "
                "true), '') $fn$"
            ).format(helper),
        ),
        Statement("Back to the provisioning admin.", sql.Composed([sql.SQL("RESET ROLE")])),
        Statement("Only services may call the RLS helper.",
                  sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(helper)),
        Statement("...runtime roles in policies, owner roles when creating them.",
                  sql.SQL("GRANT EXECUTE ON FUNCTION {}() TO {}").format(
                      helper, _ids(runtime_roles + service_owners))),
        *routine_statements(shared.owner_role, shared.schema, None),
        Statement("No PUBLIC access to the audit log.",
                  sql.SQL("REVOKE ALL ON TABLE {} FROM PUBLIC").format(audit)),
        Statement("Services may append to the audit log; no UPDATE, DELETE or TRUNCATE, and "
                  "id/occurred_at/db_role are always set by the database.",
                  sql.SQL("GRANT INSERT ({}) ON TABLE {} TO {}").format(
                      _ids(AUDIT_INSERT_COLUMNS), audit, _ids(runtime_roles))),
    ]
    # Right after the lock, before any statement touches a role: refuse roles that
    # exist but were not created by edulink-db (nor adopted).
    out.insert(1, Statement(
        "Refuse to touch roles edulink-db did not create (they belong to someone else).",
        _foreign_role_guard(managed_roles(out))))
    return out


def render_postgresql_script(topology: Topology) -> str:
    """The provisioning statements as a psql-ready script (``postgresql_schema_setup.sql``)."""
    lines = [
        "-- edulink-db: PostgreSQL schema and role setup.",
        "-- GENERATED from the topology by `edulink-db sql --dialect postgresql`; do not edit.",
        "-- Services: " + ", ".join(
            f"{s.name} ({s.schema})" for s in topology.services),
        "--",
        "-- Run as a role with CREATEROLE and CREATE on the database (Supabase's `postgres`",
        "-- user is enough; superuser is not needed). Idempotent: safe to run again.",
        "-- Runtime and migrator roles are created WITHOUT passwords: `edulink-db provision`",
        "-- sets them (SCRAM verifiers computed client-side), or set them yourself with psql's",
        "-- \\password <role>.  `edulink-db provision` additionally checks each service",
        "-- can log in, and `edulink-db verify` compares the result with the topology.",
        "--",
        "-- Roles: every role created here is marked with the comment",
        f"-- '{MANAGED_COMMENT}'.",
        "-- The script stops (and changes nothing) if a role it would create already exists",
        "-- without that mark: it belongs to someone else. Adopt one deliberately with",
        "-- `edulink-db provision --adopt ROLE`.",
        "--",
        "-- Connection limits: a service's `connection_limit` from the topology is written",
        "-- below as a number. For the others the script cannot know this server's",
        "-- max_connections, so it computes the limit when it runs, on the server itself:",
        "-- (max_connections - superuser_reserved_connections - reserved_connections",
        f"--  - headroom) / number of such services, headroom = max({HEADROOM_MIN}, "
        f"{HEADROOM_PERCENT}% of the rest),",
        "-- the same formula `edulink-db provision` and `edulink-db verify` use.",
        "",
        "BEGIN;",
        "",
    ]
    for stmt in provisioning_statements(topology):
        lines.append(f"-- {stmt.comment}")
        lines.append(stmt.query.as_string(None) + ";")
        lines.append("")
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


# -- applying ----------------------------------------------------------------


@dataclass
class ProvisionReport:
    """What a provisioning run did."""

    database: str
    admin: str
    server_version: int
    statements: int = 0
    created_roles: list[str] = field(default_factory=list)
    adopted_roles: list[str] = field(default_factory=list)
    passwords_set: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changed: bool = False
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "admin": self.admin,
            "server_version": self.server_version,
            "statements": self.statements,
            "created_roles": self.created_roles,
            "adopted_roles": self.adopted_roles,
            "passwords_set": self.passwords_set,
            "repaired": self.repaired,
            "unrepaired": self.unrepaired,
            "notes": self.notes,
            "changed": self.changed,
            "duration_s": round(self.duration_s, 3),
        }


def _diagnose(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip()
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    if diag.sqlstate == "42501" and ("superuser" in text.lower() or "attribute may" in text):
        # 15: "must be superuser to change bypassrls attribute"; 16+: "Only roles with the
        # BYPASSRLS attribute may change the BYPASSRLS attribute."
        text += (". This repair needs a superuser (on PostgreSQL 16+, or an admin that has "
                 "the attribute itself): have one run the statement")
    elif diag.sqlstate == "42501" and "role" in text:
        text += (
            ". On PostgreSQL 16+ a CREATEROLE admin may only alter roles it created or "
            "holds ADMIN OPTION on: have the role's creator run "
            "GRANT <role> TO <admin> WITH ADMIN OPTION, or drop the role and provision again"
        )
    return text


def check_admin(conn: psycopg.Connection[Any]) -> tuple[str, str, int]:
    """Fail early, with a clear message, if the admin cannot provision."""
    row = conn.execute(
        "SELECT current_user, current_database(), rolsuper, rolcreaterole,"
        " pg_catalog.has_database_privilege(current_database(), 'CREATE'),"
        " current_setting('server_version_num')::int"
        " FROM pg_catalog.pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    user, database, is_super, createrole, can_create, version = row
    if not (is_super or createrole):
        raise ProvisioningError(
            f"The admin role {user!r} needs CREATEROLE to create service roles "
            "(superuser is not required). Run: ALTER ROLE "
            f"{user} CREATEROLE; as a role that may, or use another admin in DATABASE_URL."
        )
    if not can_create:
        raise ProvisioningError(
            f"The admin role {user!r} cannot create schemas in database {database!r}. "
            f"Run: GRANT CREATE ON DATABASE {database} TO {user};"
        )
    return user, database, version


def set_role_password(conn: psycopg.Connection[Any], role: str, password: str) -> None:
    """Set *role*'s password without sending it in clear text.

    The SCRAM verifier is computed client-side (as psql's \\password does), so
    the password cannot surface in the server log even with log_statement=ddl.
    ALTER ROLE cannot take bind parameters; the verifier goes in as a quoted
    literal.
    """
    verifier = conn.pgconn.encrypt_password(
        password.encode(), role.encode(), b"scram-sha-256"
    ).decode()
    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(verifier)))


def _refusal(name: str, attrs: dict[str, bool], is_admin: bool) -> str | None:
    """Why *name* (not created by edulink-db) may never be adopted, or None."""
    if is_admin:
        return ("it is the provisioning admin itself (current_user/session_user); "
                "provisioning would strip its LOGIN or powers")
    if name in PLATFORM_RESERVED_ROLES:
        return "it belongs to the platform (Supabase, PostgREST, PgBouncer or PostgreSQL)"
    if name.startswith("pg_"):
        return "pg_* roles are PostgreSQL's own"
    held = [_ATTRIBUTE_KEYWORDS[a] for a in UNADOPTABLE_ATTRIBUTES if attrs[a]]
    if held:
        return (f"it has {', '.join(held)}: some other software relies on that power, and "
                "edulink-db roles never have it")
    return None


_ATTRIBUTE_KEYWORDS = {"rolsuper": "SUPERUSER", "rolbypassrls": "BYPASSRLS",
                       "rolreplication": "REPLICATION", "rolcreaterole": "CREATEROLE",
                       "rolcreatedb": "CREATEDB"}


def _claim_roles(
    conn: psycopg.Connection[Any],
    roles: list[str],
    adopt: Iterable[str],
    report: ProvisionReport,
    progress: Callable[[str], None],
) -> set[str]:
    """Make sure every existing role of *roles* is edulink-db's to manage; return them.

    Runs in the provisioning transaction, under its lock, before any statement
    changes a role.  A role that exists without the mark is refused unless named
    in *adopt*; then it is marked (and managed from here on).  Some roles are
    refused even when named: see :func:`_refusal`.  Raises ForeignRoleError
    naming every offending role, having changed nothing.
    """
    wanted = set(adopt)
    unknown = sorted(wanted - set(roles))
    if unknown:
        raise ForeignRoleError(
            f"Cannot adopt {', '.join(unknown)}: not a role of this topology (its roles are "
            f"{', '.join(roles)}). Adopt only a role the topology names. Nothing was changed.")
    rows = conn.execute(
        sql.SQL("SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolreplication,"
                " r.rolcreaterole, r.rolcreatedb, r.rolname IN (current_user, session_user),"
                " {marked},"
                " (SELECT a.rolsuper FROM pg_catalog.pg_roles a WHERE a.rolname = current_user)"
                " FROM pg_catalog.pg_roles r WHERE r.rolname = ANY(%s)"
                " ORDER BY r.rolname").format(marked=managed_mark_sql("r.oid")),
        [roles]).fetchall()
    foreign: list[str] = []
    refused: list[str] = []
    adopt_now: list[str] = []
    for name, sup, bypass, repl, crole, cdb, is_admin, marked, admin_super in rows:
        attrs = {"rolsuper": sup, "rolbypassrls": bypass, "rolreplication": repl,
                 "rolcreaterole": crole, "rolcreatedb": cdb}
        if is_admin:
            refused.append(f"{name}: {_refusal(name, attrs, True)}")
        elif marked:
            # Only a superuser may alter a superuser role at all, and on PostgreSQL 15 a
            # REPLICATION role too; every later ALTER ROLE would fail, so say why now.
            locked = "SUPERUSER" if sup else (
                "REPLICATION" if repl and conn.info.server_version < 160000 else None)
            if locked and not admin_super:
                refused.append(
                    f"{name}: edulink-db created it, but it has since been given {locked}, "
                    f"and only a superuser may alter such a role: have one run "
                    f"ALTER ROLE {name} NO{locked}; (verify reports this too)")
        elif name in wanted:
            reason = _refusal(name, attrs, False)
            if reason is None:
                adopt_now.append(name)
            else:
                refused.append(f"{name}: cannot be adopted: {reason}")
        else:
            foreign.append(name)
    if foreign or refused:
        parts = ["Provisioning refused; nothing was changed."]
        if foreign:
            parts.append(
                "These roles of the topology already exist, but edulink-db did not create "
                f"them (no {MANAGED_MARKER!r} comment): {', '.join(foreign)}. Provisioning "
                "would reset their passwords, revoke their memberships and change their "
                "attributes, breaking whatever uses them. Rename them in the topology, or, "
                "if a role really is this topology's, adopt it deliberately: "
                + "edulink-db provision " + " ".join(f"--adopt {n}" for n in foreign)
                + " (in Python: the adopt argument of provision).")
        parts += refused
        raise ForeignRoleError("\n  ".join(parts))
    for name in adopt_now:
        conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(
            sql.Identifier(name), sql.Literal(MANAGED_COMMENT)))
        report.adopted_roles.append(name)
        progress(f"adopted role {name}: edulink-db manages it from now on")
    return {r[0] for r in rows}


def _repair_drift(
    conn: psycopg.Connection[Any],
    topology: Topology,
    report: ProvisionReport,
    progress: Callable[[str], None],
) -> None:
    """Remove what the grants above cannot: privileges the topology does not declare
    (granted by hand, or left over from an older topology).

    Runs inside the provisioning transaction, after the GRANTs, and only issues
    statements for differences that exist, so the common case costs one catalog
    read.  Each repair runs in a savepoint: one the admin may not perform (e.g.
    NOBYPASSRLS needs a superuser) is reported instead of aborting the run;
    ``verify`` will still fail on it.
    """
    from .catalog import read_catalog
    from .verify import compare

    # A repair can uncover another difference: REVOKE SELECT ON a table also revokes
    # the column grants on it, so a reader's hand-made table grant, once revoked,
    # leaves its exposed columns to grant again.  So look again after repairing, a
    # bounded number of times, never repeating a statement.
    attempted: set[str] = set()
    for _round in range(3):
        repaired_any = False
        for problem in compare(read_catalog(conn, topology), topology).problems:
            if problem.repair is None:
                continue
            statement = problem.repair.as_string(conn)
            if statement in attempted:
                continue
            attempted.add(statement)
            try:
                with conn.transaction():
                    conn.execute(problem.repair)
            except psycopg.Error as exc:
                report.unrepaired.append(f"{statement}: {_diagnose(exc)}")
                continue
            repaired_any = True
            report.repaired.append(statement)
            progress(f"repaired: {statement}")
        if not repaired_any:
            return


def _enable_statement_statistics(conn: psycopg.Connection[Any], report: ProvisionReport) -> None:
    """Install pg_stat_statements where we may (monitoring reads it per role).

    Best effort: it needs a superuser (or a platform that ships it installed, as
    Supabase does) and shared_preload_libraries; without it monitoring degrades
    gracefully, so a refusal is a note, not an error.
    """
    try:
        with conn.transaction():
            exists = conn.execute("SELECT 1 FROM pg_catalog.pg_extension"
                                  " WHERE extname = 'pg_stat_statements'").fetchone()
            if exists is None:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                report.notes.append("installed pg_stat_statements")
    except psycopg.Error as exc:
        report.notes.append("pg_stat_statements not installed "
                            f"({exc.diag.message_primary}); monitoring works without it")
    conn.commit()


def _can_log_in(params: dict[str, Any]) -> bool:
    try:
        with psycopg.connect(**{"connect_timeout": 10, **params}, autocommit=True):
            return True
    except psycopg.OperationalError as exc:
        # 28P01 invalid_password; libpq reports it only in the message text.
        if "password authentication failed" in str(exc) or getattr(
                getattr(exc, "diag", None), "sqlstate", None) == "28P01":
            return False
        raise


def _logins(
    topology: Topology,
    passwords: Callable[[Service], str | None],
    migrator_passwords: Callable[[Service], str | None] | None,
) -> list[tuple[Service, LoginKind, str]]:
    """Every LOGIN role whose password edulink-db manages: (service, kind, password)."""
    out: list[tuple[Service, LoginKind, str]] = []
    sources: list[tuple[LoginKind, Callable[[Service], str | None] | None]] = [
        ("runtime", passwords), ("migrator", migrator_passwords)]
    for kind, source in sources:
        if source is None:
            continue
        for svc in topology.services:
            password = source(svc)
            if password is not None:
                out.append((svc, kind, password))
    return out


def provision(
    admin: dict[str, Any],
    topology: Topology,
    passwords: Callable[[Service], str | None],
    *,
    migrator_passwords: Callable[[Service], str | None] | None = None,
    rotate: Iterable[str] = (),
    adopt: Iterable[str] = (),
    progress: Callable[[str], None] = lambda _msg: None,
) -> ProvisionReport:
    """Bring the database at *admin* in line with *topology*.

    *passwords* returns the password a service should log in with (``None``
    when the service is configured with its own URL and manages its own
    credentials); *migrator_passwords* likewise for its migrator role (without
    it, migrator roles get no password and cannot log in until one is set).
    Runtime and migrator roles get their password when created, when their
    service is listed in *rotate*, or when logging in with the configured
    password fails.
    All DDL runs in one transaction: on any error nothing is changed.

    Only roles edulink-db created (marked with :data:`MANAGED_COMMENT`) are
    touched.  A topology role that exists unmarked raises ForeignRoleError
    before anything changes, unless it is listed in *adopt*: then it is marked
    and managed like the others.  Superusers, the admin itself, platform roles
    and roles with BYPASSRLS, REPLICATION, CREATEROLE or CREATEDB are never
    adopted.
    """
    from .catalog import read_catalog

    started = time.perf_counter()
    rotate_set = set(rotate)
    logins = _logins(topology, passwords, migrator_passwords)
    with connect(admin, purpose="provision", autocommit=False, primary=True) as conn:
        user, database, version = check_admin(conn)
        conn.commit()
        report = ProvisionReport(database=database, admin=user, server_version=version)
        before = read_catalog(conn, topology)
        conn.commit()
        statements = provisioning_statements(topology)
        roles = managed_roles(statements)
        existing: set[str] = set()
        current = "checking existing roles"
        try:
            for index, stmt in enumerate(statements):
                current = stmt.comment
                conn.execute(stmt.query)
                if index == 0:  # holding the lock: now see which roles exist, and whose
                    current = "checking that the existing roles are edulink-db's"
                    try:
                        existing = _claim_roles(conn, roles, adopt, report, progress)
                    except ForeignRoleError:
                        conn.rollback()
                        raise
                    progress(f"provisioning {len(topology.services)} services in {database}")
            report.statements = len(statements)
            current = "repairing privileges that differ from the topology"
            _repair_drift(conn, topology, report, progress)
            report.created_roles = [r for r in roles if r not in existing]
            for svc, kind, password in logins:
                role = login_role(svc, kind)
                if role not in existing or svc.name in rotate_set:
                    current = f"setting the password of {role}"
                    set_role_password(conn, role, password)
                    report.passwords_set.append(role)
            conn.commit()
        except psycopg.Error as exc:
            conn.rollback()
            raise ProvisioningError(
                f"Provisioning failed at: {current}\n  {_diagnose(exc)}\n"
                "Nothing was changed (the transaction was rolled back)."
            ) from None

        # A role that existed already keeps its password unless the configured
        # one no longer works (e.g. the secrets file was replaced).
        for svc, kind, password in logins:
            role = login_role(svc, kind)
            if role in report.passwords_set:
                continue
            params = derive_service_conninfo(admin, svc, password, kind=kind)
            if not _can_log_in(params):
                progress(f"configured password of {role} was rejected: resetting it")
                set_role_password(conn, role, password)
                conn.commit()
                report.passwords_set.append(role)

        _enable_statement_statistics(conn, report)
        after = read_catalog(conn, topology)
        conn.commit()
    report.changed = before != after or bool(report.passwords_set)
    for item in report.unrepaired:
        log.warning("could not repair %s", item)
    report.duration_s = time.perf_counter() - started
    return report
