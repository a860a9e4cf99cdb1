"""Phase 3 of a move, copy: publication and slot on the source, subscription on the
target, and the temporary replication role the subscription logs in as."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ..connections.direct import connect
from ..core.errors import MoveError
from .catchup import wait_caught_up
from .context import MoveContext, exists
from .preflight import replication_login


def _subscription_conninfo(ctx: MoveContext, user: str, password: str) -> str:
    params = {k: ctx.source[k] for k in ("host", "port", "dbname", "sslmode",
                                         "target_session_attrs") if ctx.source.get(k)}
    if "," in str(params.get("host", "")):
        # A source listed by its members (a Patroni cluster): after a switchover the
        # subscription must reconnect to the new leader, never stop at a standby
        # (logical decoding needs the primary before PostgreSQL 16).
        params["target_session_attrs"] = "read-write"
    # The target *server* opens this connection: our root certificate's path means
    # nothing on its file system, and verify-full without one fails.  Encrypted, not
    # authenticated (docs/tls.md).
    if params.get("sslmode") in ("verify-ca", "verify-full"):
        params["sslmode"] = "require"
    params.update(user=user, password=password)
    return make_conninfo(**{k: str(v) for k, v in params.items()})


def _published(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """The tables a publication of *schema* lists: top-level ones only (a partitioned
    table is published through its root, so partitions attached later follow), not
    unlogged ones (they cannot be published; the cutover copies them)."""
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " AND c.relpersistence = 'p' ORDER BY 1", [schema])]


def copy(ctx: MoveContext) -> None:
    """Publish the schema's tables, create the slot and subscribe on the target; wait
    until caught up.  The subscription logs in as a temporary replication role, or --
    when the source admin may not create one (PostgreSQL 15 without a superuser) but has
    REPLICATION and BYPASSRLS itself -- as the source admin (preflight checked which)."""
    schema, name = ctx.service.schema, ctx.name
    password = secrets.token_urlsafe(24)
    with connect(ctx.source, purpose="publish the schema") as conn:
        tables = _published(conn, schema)
        login, problem = replication_login(conn)
        if problem:
            raise MoveError(f"Cannot replicate from the source: {problem}; then --resume "
                            "(or --abort).")
        role = sql.Identifier(name)
        if login == "admin":
            user, password = str(ctx.source.get("user", "")), str(ctx.source.get("password", ""))
            ctx.progress(f"the subscription logs in as the source admin {user} (it may not "
                         "create a replication role here): its password sits in the target's "
                         "pg_subscription, readable by superusers only, until the clean-up")
        else:
            user = name
            if exists(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", name):
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    role, sql.Literal(password)))
            else:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION BYPASSRLS PASSWORD {}"
                                     ).format(role, sql.Literal(password)))
                conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(
                    role, sql.Literal("edulink-db move-service temporary replication role")))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema), role))
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), role))
        if not exists(conn, "SELECT 1 FROM pg_publication WHERE pubname = %s", name):
            stmt = sql.SQL("CREATE PUBLICATION {}").format(sql.Identifier(name))
            if tables:
                stmt = sql.SQL("{} FOR TABLE {}").format(stmt, sql.SQL(", ").join(
                    sql.Identifier(schema, t) for t in tables))
            if conn.info.server_version >= 130000:
                # Changes to a partition are published as the root's: the target's
                # partitioning routes them, partitions attached later are covered, and
                # the initial copy reads each root with its partitions.
                stmt = sql.SQL("{} WITH (publish_via_partition_root = true)").format(stmt)
            conn.execute(stmt)
        if not exists(conn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", name):
            _create_slot(ctx, conn)
        elif not _subscribed(ctx):
            _skip_to_now(ctx, conn)
    with connect(ctx.target, purpose="subscribe on the target") as conn:
        conninfo = _subscription_conninfo(ctx, user, password)
        if exists(conn, "SELECT 1 FROM pg_subscription WHERE subname = %s", name):
            conn.execute(sql.SQL("ALTER SUBSCRIPTION {} CONNECTION {}").format(
                sql.Identifier(name), sql.Literal(conninfo)))
            conn.execute(sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(sql.Identifier(name)))
        else:
            # synchronous_commit: the apply worker reports a position as flushed only
            # once its local commit is flushed; 'off' (the default) delays that report,
            # hence the cutover's barrier, by up to wal_writer_delay.
            # run_as_owner (16+): apply as the admin, not as each table's owner, whom a
            # FORCE ROW LEVEL SECURITY table would refuse ("cannot replicate into
            # relation with row-level security enabled"); 15 always applies as the
            # subscription owner (a superuser there).
            as_owner = sql.SQL(", run_as_owner = true") \
                if conn.info.server_version >= 160000 else sql.SQL("")
            conn.execute(sql.SQL(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (create_slot = false,"
                " slot_name = {}, copy_data = true, synchronous_commit = 'on'{})").format(
                sql.Identifier(name), sql.Literal(conninfo), sql.Identifier(name),
                sql.Literal(name), as_owner))
    wait_caught_up(ctx)


# Sessions whose transaction holds an xid: creating a logical slot waits for them.
_SLOT_BLOCKERS = ("SELECT pid, usename, state, now() - xact_start FROM pg_stat_activity"
                  " WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() ORDER BY pid")


def _create_slot(ctx: MoveContext, conn: psycopg.Connection[Any]) -> None:
    """Create the move's slot, waiting at most ctx.slot_timeout_s for the open write
    transactions it must see end.  On timeout name them, and drop the publication and
    temporary role this phase made, so nothing is left behind."""
    ctx.progress("creating the replication slot (waits for open write transactions)")
    try:
        conn.execute(sql.SQL("SET statement_timeout = {}").format(
            sql.Literal(f"{int(ctx.slot_timeout_s * 1000)}ms")))
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [ctx.name])
    except psycopg.errors.QueryCanceled:
        blockers = conn.execute(_SLOT_BLOCKERS).fetchall()
        conn.execute("RESET statement_timeout")
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(ctx.name)))
        drop_move_role(conn, ctx)
        raise MoveError(
            f"Creating the replication slot waited {ctx.slot_timeout_s:g} s for open write "
            "transactions to end: "
            + (", ".join(f"pid {p} ({u}, {s}, open {age})" for p, u, s, age in blockers)
               or "none left now")
            + ". End them (pg_terminate_backend(pid)) or let them finish, then --resume; "
            "nothing was left behind.") from None
    conn.execute("RESET statement_timeout")


def _subscribed(ctx: MoveContext) -> bool:
    with connect(ctx.target, purpose="look for the move's subscription") as conn:
        return exists(conn, "SELECT 1 FROM pg_subscription WHERE subname = %s", ctx.name)


def _skip_to_now(ctx: MoveContext, conn: psycopg.Connection[Any]) -> None:
    """Advance a slot that existed before the publication to the current WAL position.

    Patroni creates a permanent slot (preflight.slot_survival_checks) as soon as it is
    configured, before the publication exists; pgoutput reads the publication with the
    catalog as of each change, so decoding a change older than the publication fails
    ("publication ... does not exist") for ever.  Nothing consumed the slot yet (no
    subscription), and the subscription's initial copy is taken later, so skipping
    what came before loses nothing.  Advancing decodes without the output plugin."""
    ctx.progress(f"the slot {ctx.name} existed before the publication (a Patroni "
                 "permanent slot?): advancing it to now")
    conn.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", [ctx.name])


def drop_move_role(conn: psycopg.Connection[Any], ctx: MoveContext) -> None:
    """Drop the temporary replication role, if any.  Revoke its grants rather than
    DROP OWNED BY: on 16+ a non-superuser admin that created it holds ADMIN OPTION on
    it but not its privileges, which DROP OWNED BY requires."""
    if not exists(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", ctx.name):
        return
    role, schema = sql.Identifier(ctx.name), sql.Identifier(ctx.service.schema)
    if exists(conn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", ctx.service.schema):
        conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(
            schema, role))
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(schema, role))
    try:
        conn.execute(sql.SQL("DROP ROLE {}").format(role))
    except psycopg.errors.DependentObjectsStillExist:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE {}").format(role))

