"""Roles: the owner, runtime and migrator roles a topology declares, their memberships,
settings, connection limits and passwords, and which existing roles are edulink-db's."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..core.errors import ForeignRoleError
from ..topology import PLATFORM_RESERVED_ROLES, Service, Topology
from .model import (
    MANAGED_COMMENT,
    MANAGED_MARKER,
    MIGRATOR_ROLE_ATTRIBUTES,
    OWNER_ROLE_ATTRIBUTES,
    RUNTIME_ROLE_ATTRIBUTES,
    UNADOPTABLE_ATTRIBUTES,
    connection_budget_query,
    managed_mark_sql,
    search_path_for,
)
from .statement import Statement, id_list


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


def foreign_role_guard(roles: list[str]) -> sql.Composed:
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
                      m, id_list(search_path_for(svc, topology)))),
    ]



def role_statements(topology: Topology) -> list[Statement]:
    """Every role of *topology*, in order: the owner roles, the runtime roles and their
    settings, the connection limits, the migrator roles."""
    out: list[Statement] = []
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
                sql.Identifier(svc.runtime_role), id_list(search_path_for(svc, topology))
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
    return out


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


def claim_roles(
    conn: psycopg.Connection[Any],
    roles: list[str],
    adopt: Iterable[str],
    adopted: list[str],
    progress: Callable[[str], None],
) -> set[str]:
    """Make sure every existing role of *roles* is edulink-db's to manage; return them.

    Runs in the provisioning transaction, under its lock, before any statement
    changes a role.  A role that exists without the mark is refused unless named
    in *adopt*; then it is marked (and managed from here on) and appended to
    *adopted*.  Some roles are refused even when named: see :func:`_refusal`.
    Raises ForeignRoleError naming every offending role, having changed nothing.
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
        adopted.append(name)
        progress(f"adopted role {name}: edulink-db manages it from now on")
    return {r[0] for r in rows}
