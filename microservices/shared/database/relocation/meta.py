"""The project's metadata on the home server: the location registry and the move journal.

``edulink_db_meta`` (schema), ``service_location`` (the registry every pool reads) and
``service_move`` (the journal) belong to :data:`~..connections.location.META_OWNER`, a
NOLOGIN role of the project's own, marked as managed the way provisioning marks its
roles -- not to whichever admin ran the first move -- so that a change of admin does
not lock anyone out: the admin running a move becomes a member of that role (see
:func:`ensure_owner_role`) and the objects are created, or handed over, to it.

Who may do what:

* the meta owner role (so: its members, which must all be admin-class -- superuser
  or CREATEROLE) owns everything and is the only writer;
* every role of the topology gets USAGE on the schema and SELECT on the registry
  (:func:`~..privileges.model.meta_readers`: runtime roles for the pools and readers'
  pools; owner and migrator roles for ``manage.py migrate`` through the Django
  engine); nobody else;
* PUBLIC gets nothing (on Supabase, ``anon``/``authenticated`` must not learn where
  services live); the journal is the owner's only.

:func:`check_meta` refuses what an attacker could have prepared (objects owned by
someone else, write grants, a meta owner role that can log in or has a non-admin
member); :func:`ensure_meta` creates what is missing, migrates the layout of earlier
versions (objects owned by the admin itself) and repairs the grants.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

from ..connections.location import LOCATION_TABLE, META_OWNER, META_SCHEMA
from ..core.errors import MoveError
from ..privileges.model import MANAGED_COMMENT, managed_mark_sql, meta_readers
from ..topology import Topology, default_topology

JOURNAL_TABLE = "service_move"
JOURNAL = sql.Identifier(META_SCHEMA, JOURNAL_TABLE)
REGISTRY = sql.Identifier(META_SCHEMA, LOCATION_TABLE)
META_TABLE_NAMES = (LOCATION_TABLE, JOURNAL_TABLE)
META_TABLES = sql.SQL("CREATE TABLE IF NOT EXISTS {} (service text PRIMARY KEY, location text,"
                      " epoch bigint NOT NULL DEFAULT 0, frozen_until timestamptz,"
                      " watch_until timestamptz, moved_at timestamptz);"
                      " CREATE TABLE IF NOT EXISTS {} (service text PRIMARY KEY,"
                      " target text NOT NULL, phase text NOT NULL, fingerprint"
                      " text, started_at timestamptz NOT NULL DEFAULT now(),"
                      " updated_at timestamptz NOT NULL DEFAULT now())").format(
    REGISTRY, JOURNAL)


def meta_grants(readers: Iterable[str]) -> sql.Composed:
    """The registry's grants, idempotent: nothing for PUBLIC (earlier versions granted
    USAGE and SELECT to PUBLIC: revoked here), USAGE on the schema and SELECT on the
    registry for each role in *readers*; the journal stays the owner's only."""
    parts: list[sql.Composable] = [
        sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(META_SCHEMA)),
        sql.SQL("REVOKE ALL ON {}, {} FROM PUBLIC").format(REGISTRY, JOURNAL),
    ]
    names = sorted(set(readers))
    if names:
        roles = sql.SQL(", ").join(sql.Identifier(n) for n in names)
        parts.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(META_SCHEMA), roles))
        parts.append(sql.SQL("GRANT SELECT ON {} TO {}").format(REGISTRY, roles))
    return sql.SQL("; ").join(parts)


# Every role that is (directly or through other roles) a member of the meta owner and
# is not admin-class: each of them could write the registry and redirect pools.
_NON_ADMIN_MEMBERS = sql.SQL("""
WITH RECURSIVE m(oid) AS (
  SELECT a.member FROM pg_catalog.pg_auth_members a JOIN pg_catalog.pg_roles o
    ON o.oid = a.roleid WHERE o.rolname = {owner}
  UNION SELECT a.member FROM pg_catalog.pg_auth_members a JOIN m ON a.roleid = m.oid)
SELECT r.rolname FROM m JOIN pg_catalog.pg_roles r ON r.oid = m.oid
WHERE NOT (r.rolsuper OR r.rolcreaterole) ORDER BY 1""").format(owner=sql.Literal(META_OWNER))

# Problems of the meta schema, its tables and its owner role, one row each:
# (what, problem, owner) -- owner is set when an object belongs to another
# non-superuser admin (the layout before META_OWNER), which the message explains.
_META_PROBLEMS = sql.SQL("""
SELECT x.what, CASE WHEN x.kind <> 'r' THEN 'is not a table (relkind ' || x.kind || ')'
                    ELSE 'is owned by ' || r.rolname END,
       CASE WHEN r.rolcreaterole AND x.kind = 'r' THEN r.rolname END
FROM (
  SELECT 'schema ' || quote_ident(nspname) AS what, nspowner AS owner, 'r' AS kind
  FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s
  UNION ALL
  SELECT 'table ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relowner,
         c.relkind::text
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s)) x
JOIN pg_catalog.pg_roles r ON r.oid = x.owner
WHERE NOT (r.rolsuper OR r.rolname = current_user OR r.rolname = %(owner)s) OR x.kind <> 'r'
UNION ALL
SELECT 'table ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname),
       'grants ' || a.privilege_type || ' to '
       || CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, NULL
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
WHERE n.nspname = %(schema)s AND a.grantee <> c.relowner
  AND (a.privilege_type <> 'SELECT' OR c.relname <> %(registry)s)
UNION ALL
SELECT 'schema ' || quote_ident(n.nspname), 'grants ' || a.privilege_type || ' to '
       || CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, NULL
FROM pg_catalog.pg_namespace n CROSS JOIN LATERAL pg_catalog.aclexplode(n.nspacl) a
WHERE n.nspname = %(schema)s AND a.grantee <> n.nspowner AND a.privilege_type <> 'USAGE'
UNION ALL
SELECT 'role ' || quote_ident(r.rolname), p.problem, NULL
FROM pg_catalog.pg_roles r CROSS JOIN LATERAL (VALUES
  (CASE WHEN r.rolcanlogin THEN 'can log in (ALTER ROLE ' || quote_ident(r.rolname)
        || ' NOLOGIN)' END),
  (CASE WHEN NOT {marked} THEN 'was not created by edulink-db (no managed mark)' END)) p(problem)
WHERE r.rolname = %(owner)s AND p.problem IS NOT NULL
UNION ALL
SELECT 'role ' || quote_ident({owner}), 'has member ' || quote_ident(n.rolname)
       || ', which is not an admin (superuser or CREATEROLE): REVOKE ' || quote_ident({owner})
       || ' FROM ' || quote_ident(n.rolname), NULL
FROM ({members}) n
""").format(marked=managed_mark_sql("r.oid"), owner=sql.Literal(META_OWNER),
            members=_NON_ADMIN_MEMBERS)


def _handover(owner: str, objects: list[str]) -> str:
    """The statements that hand *objects* (``schema x`` / ``table x.y``) to META_OWNER."""
    # META_OWNER passed validate_identifier: safe unquoted, and the objects' names come
    # quoted by quote_ident from the catalog.
    owner_to = f" OWNER TO {META_OWNER}"
    return "; ".join(("ALTER SCHEMA " + o.removeprefix("schema ") if o.startswith("schema ")
                      else "ALTER TABLE " + o.removeprefix("table ")) + owner_to
                     for o in objects)


def check_meta(conn: psycopg.Connection[Any]) -> None:
    """Refuse (MoveError) a meta schema or table owned by anyone but the project's meta
    owner role, a superuser or (the layout of earlier versions, which
    :func:`ensure_meta` migrates) the admin running this; one that grants anyone more
    than reading the registry (the journal: nothing); and a meta owner role that can
    log in, that edulink-db did not create, or that has a member who is not
    admin-class.  ``IF NOT EXISTS`` would otherwise silently adopt an object an
    attacker created first, and whoever writes the registry redirects every pool of a
    service to a server of their choice.

    Objects owned by another non-superuser admin (a move run by a previous admin with
    an earlier version) are refused in one line naming that owner and the statements
    to run as that owner or a superuser."""
    bad = conn.execute(_META_PROBLEMS, {"schema": META_SCHEMA, "owner": META_OWNER,
                                        "registry": LOCATION_TABLE,
                                        "tables": list(META_TABLE_NAMES)}).fetchall()
    if not bad:
        return
    admins = {who for _what, _problem, who in bad if who}
    if admins and all(who for _what, _problem, who in bad):
        owner = sorted(admins)[0]
        objects = [what for what, _problem, who in bad if who == owner]
        raise MoveError(
            f"Refusing to use {META_SCHEMA}: {', '.join(objects)} owned by admin {owner},"
            f" not by the project's role {META_OWNER} (a move run by another admin with an"
            f" earlier version); as a superuser (or as {owner}, once a member of"
            f" {META_OWNER}) run: {_handover(owner, objects)}; then retry.")
    raise MoveError(
        f"Refusing to use {META_SCHEMA}: "
        + "; ".join(f"{what} {problem}" for what, problem, _who in bad)
        + f". Only {META_OWNER} (whose members must all be admins), the admin running"
        " move-service or a superuser may own it, and nobody else may write it."
        f" If you did not create it, investigate; then DROP SCHEMA {META_SCHEMA} CASCADE"
        f" (or ALTER ... OWNER TO {META_OWNER}, REVOKE the grants) and retry.")


def ensure_owner_role(conn: psycopg.Connection[Any]) -> None:
    """Create :data:`META_OWNER` (NOLOGIN, marked) if missing, and make the admin of
    *conn* a member that inherits its privileges and may SET ROLE to it (needed to own,
    create in and ALTER ... OWNER TO it).  A superuser needs no membership.

    PostgreSQL 16+: the role's creator gets ADMIN OPTION on it, so it can grant itself
    the membership; another CREATEROLE admin cannot (only a holder of ADMIN OPTION or a
    superuser can): refused with the GRANT to run.  PostgreSQL 15: any CREATEROLE role
    may grant membership in a non-superuser role.  A pre-existing role of that name
    that edulink-db did not create is refused, never adopted (check_meta)."""
    me, superuser = conn.execute(
        "SELECT current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"
    ).fetchone() or ("", False)
    exists = conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s",
                          [META_OWNER]).fetchone()
    if not exists:
        try:
            with conn.transaction():  # a savepoint when conn is in a transaction
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN; COMMENT ON ROLE {} IS {}").format(
                    sql.Identifier(META_OWNER), sql.Identifier(META_OWNER),
                    sql.Literal(MANAGED_COMMENT)))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass  # another admin's move made it at the same moment: check_meta judges it
    check_meta(conn)  # refuse a foreign role before joining it
    if superuser:
        return
    v16 = conn.info.server_version >= 160000
    have = conn.execute(
        "SELECT pg_catalog.pg_has_role(current_user, %s, 'USAGE')"
        + (" AND pg_catalog.pg_has_role(current_user, %s, 'SET')" if v16 else ""),
        [META_OWNER, META_OWNER] if v16 else [META_OWNER]).fetchone()
    if have and have[0]:
        return
    grant = sql.SQL("GRANT {} TO {}").format(sql.Identifier(META_OWNER), sql.Identifier(me))
    if v16:
        grant = grant + sql.SQL(" WITH INHERIT TRUE, SET TRUE")
    try:
        with conn.transaction():
            conn.execute(grant)
    except psycopg.errors.InsufficientPrivilege:
        holders = [r[0] for r in conn.execute(
            "SELECT DISTINCT m.rolname FROM pg_catalog.pg_auth_members a"
            " JOIN pg_catalog.pg_roles o ON o.oid = a.roleid"
            " JOIN pg_catalog.pg_roles m ON m.oid = a.member"
            " WHERE o.rolname = %s AND a.admin_option ORDER BY 1", [META_OWNER])]
        raise MoveError(
            f"{me} cannot use {META_SCHEMA}: it belongs to the project's role {META_OWNER},"
            f" of which {me} is not a member and cannot make itself one (PostgreSQL 16+:"
            f" only a role with ADMIN OPTION on it{': ' + ', '.join(holders) if holders else ''}"
            f" or a superuser can); as one of them run: {grant.as_string(conn)}") from None


def use_meta(conn: psycopg.Connection[Any]) -> None:
    """:func:`check_meta`, then (when the meta owner role exists) make the admin of
    *conn* its member if it is not one yet (:func:`ensure_owner_role`), so that an
    admin other than the one who ran the first move can read the journal; refused
    with the GRANT to run when it cannot make itself a member.  Creates nothing else."""
    check_meta(conn)
    if conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s",
                    [META_OWNER]).fetchone():
        ensure_owner_role(conn)


def _readers(conn: psycopg.Connection[Any], topology: Topology) -> list[str]:
    """:func:`meta_readers` that exist here (a GRANT to a missing role fails)."""
    return [r[0] for r in conn.execute(
        "SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)",
        [meta_readers(topology)])]


def ensure_meta(conn: psycopg.Connection[Any], topology: Topology | None = None) -> None:
    """Create the registry and journal (idempotent), owned by :data:`META_OWNER`;
    refuse foreign ones (:func:`check_meta`); hand objects the admin of *conn* owns
    itself (earlier versions' layout) to META_OWNER; set the grants of
    :func:`meta_grants` for *topology*'s :func:`meta_readers` (default: the default topology).
    On a connection in a transaction the caller commits."""
    ensure_owner_role(conn)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
        sql.Identifier(META_SCHEMA), sql.Identifier(META_OWNER)))
    check_meta(conn)  # before creating anything in a schema somebody else owns
    conn.execute(META_TABLES)  # owned by the admin at first: handed over just below
    check_meta(conn)
    mine = conn.execute(
        "SELECT 'schema', nspname, NULL FROM pg_catalog.pg_namespace"
        " WHERE nspname = %(schema)s AND nspowner = (SELECT oid FROM pg_catalog.pg_roles"
        "  WHERE rolname = current_user)"
        " UNION ALL SELECT 'table', n.nspname, c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s)"
        "  AND c.relowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)",
        {"schema": META_SCHEMA, "tables": list(META_TABLE_NAMES)}).fetchall()
    owner = sql.Identifier(META_OWNER)
    for kind, schema, table in mine:
        if kind == "schema":
            conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(
                sql.Identifier(schema), owner))
        else:
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                sql.Identifier(schema, table), owner))
    conn.execute(meta_grants(_readers(conn, topology or default_topology())))
