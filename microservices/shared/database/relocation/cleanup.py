"""Phase 5 of a move, clean up: drop the replication objects and retire the source's
copy of the schema."""

from __future__ import annotations

import time

from psycopg import sql

from ..connections.direct import connect
from ..connections.location import TTL_S
from ..core.errors import MoveError
from .context import MoveContext, exists, relations
from .copy import drop_move_role
from .meta import JOURNAL, REGISTRY
from .plan import provision_topology


def drop_replication(ctx: MoveContext) -> None:
    """Drop subscription, slot, publication and temporary role, wherever they exist."""
    name = sql.Identifier(ctx.name)
    try:
        with connect(ctx.target, purpose="drop the subscription") as conn:
            if exists(conn, "SELECT 1 FROM pg_subscription WHERE subname = %s", ctx.name):
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(name))
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(name))
                conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(name))
    except MoveError:
        raise
    with connect(ctx.source, purpose="drop the slot and publication") as conn:
        deadline = time.monotonic() + 30
        while True:
            row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name"
                               " = %s", [ctx.name]).fetchone()
            if row is None:
                break
            if row[0] is None:
                conn.execute("SELECT pg_drop_replication_slot(%s)", [ctx.name])
                break
            if time.monotonic() > deadline:
                conn.execute("SELECT pg_terminate_backend(%s)", [row[0]])
            time.sleep(0.1)
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(name))
        drop_move_role(conn, ctx)


def retire_source(ctx: MoveContext, epoch: int) -> None:
    """Rename the source's stale copy aside (kept, readable by the admin only) and
    re-provision an empty schema there, so `verify` passes and a process still writing
    to the old location gets an error (42P01) that its pool turns into a retry."""
    schema = ctx.service.schema
    retired = f"{schema}_moved_{epoch}"[:63]
    time.sleep(TTL_S * 2)  # every process has re-read the registry by now
    with connect(ctx.source, purpose="retire the source's copy", autocommit=False) as conn:
        if relations(conn, schema, ("r", "p", "S", "v", "m")) and not exists(
                conn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", retired):
            conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                sql.Identifier(schema), sql.Identifier(retired)))
            roles = sql.SQL(", ").join(
                [sql.SQL("PUBLIC"), *(sql.Identifier(s.runtime_role)
                                      for s in ctx.topology.services)])
            for what in ("ALL TABLES", "ALL SEQUENCES", "ALL FUNCTIONS"):
                conn.execute(sql.SQL("REVOKE ALL ON {} IN SCHEMA {} FROM {}").format(
                    sql.SQL(what), sql.Identifier(retired), roles))
            conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(
                sql.Identifier(retired), roles))
            for obj in ("TABLES", "SEQUENCES", "FUNCTIONS"):
                conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} "
                                     "REVOKE ALL ON {} FROM {}").format(
                    sql.Identifier(ctx.service.owner_role), sql.Identifier(retired),
                    sql.SQL(obj), roles))
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(
            sql.Identifier(ctx.service.migrator_role)))
        conn.commit()
    provision_topology(ctx, ctx.source)


def cleanup(ctx: MoveContext) -> None:
    """Drop the replication, retire the source's copy and close the journal."""
    drop_replication(ctx)
    with connect(ctx.home, purpose="read the registry") as conn:
        row = conn.execute(sql.SQL("SELECT epoch FROM {} WHERE service = %s").format(REGISTRY),
                           [ctx.service.name]).fetchone()
    retire_source(ctx, int(row[0]) if row else 0)
    with connect(ctx.home, purpose="close the journal") as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE service = %s").format(JOURNAL),
                     [ctx.service.name])

