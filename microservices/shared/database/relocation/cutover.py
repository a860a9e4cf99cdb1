"""Phase 4 of a move, cut over: the steps of the freeze (registry announcements, the
writers to revoke, the barrier, unlogged tables, materialized views, the final row
check) and their timings.  mover.cutover runs them in order."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from ..core.errors import MoveError
from .context import MoveContext, journal_set_on, relations
from .meta import REGISTRY

# How long the registry announces a freeze; a killed cutover frees writers after it.
FREEZE_S = 5.0
# Beyond the registry's TTL: time for a statement checked out just before a process
# saw the freeze to finish before the tables are locked (it would otherwise queue on
# the lock and get ServiceMovedError).
GRACE_S = 0.02
# How long processes read the registry every TTL_S once a cutover is announced: the
# wait before the freeze, the freeze itself and the flip fit well inside it.
WATCH_S = 30.0


def announce_freeze(conn: psycopg.Connection[Any], ctx: MoveContext,
                     seconds: float | None) -> None:
    """Announce (or lift, *seconds* None) a freeze of ctx.service in the registry on
    *conn* (the home server, meta schema ensured); the caller commits."""
    conn.execute(sql.SQL(
        "INSERT INTO {} (service, frozen_until) VALUES (%s, now() + make_interval("
        "secs => %s)) ON CONFLICT (service) DO UPDATE SET frozen_until ="
        " EXCLUDED.frozen_until").format(REGISTRY), [ctx.service.name, seconds])


def flip(conn: psycopg.Connection[Any], ctx: MoveContext) -> None:
    """Point the registry on *conn* (home) at the target, bump the epoch, lift the
    freeze and journal the cleanup phase; the caller commits."""
    conn.execute(sql.SQL(
        "INSERT INTO {} (service, location, epoch, moved_at) VALUES (%s, %s, 1, now())"
        " ON CONFLICT (service) DO UPDATE SET location = EXCLUDED.location,"
        " epoch = {}.epoch + 1, frozen_until = NULL, moved_at = now()").format(
        REGISTRY, REGISTRY), [ctx.service.name, ctx.target_location])
    journal_set_on(conn, ctx, "cleanup")


def write_roles(conn: psycopg.Connection[Any], schema: str) -> list[sql.Composable]:
    """Every role that may write a table of *schema* (PUBLIC included), bar the owner."""
    rows = conn.execute(
        "SELECT DISTINCT a.grantee FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " CROSS JOIN LATERAL aclexplode(c.relacl) a"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'f')"
        "  AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')"
        "  AND a.grantee <> c.relowner"
        " UNION SELECT DISTINCT a.grantee FROM pg_attribute t"
        " JOIN pg_class c ON c.oid = t.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " CROSS JOIN LATERAL aclexplode(t.attacl) a"
        " WHERE n.nspname = %s AND a.privilege_type IN ('INSERT', 'UPDATE')",
        [schema, schema]).fetchall()
    names: list[sql.Composable] = []
    for (oid,) in rows:
        if oid == 0:
            names.append(sql.SQL("PUBLIC"))
        else:
            role = conn.execute("SELECT rolname FROM pg_roles WHERE oid = %s", [oid]).fetchone()
            if role:
                names.append(sql.Identifier(role[0]))
    return names



def refresh_matviews(ctx: MoveContext, src: psycopg.Connection[Any],
                      tgt: psycopg.Connection[Any]) -> None:
    """REFRESH on the target every materialized view populated on the source
    (pg_dump --schema-only creates them empty), as its owner: ownership stays with the
    topology's owner role, who can REFRESH it later.  A view never populated on the
    source stays unpopulated.  Creation (oid) order on the target is pg_dump's
    dependency order, so a view over another view is refreshed after it."""
    schema = ctx.service.schema
    populated = set(matviews(src, schema, populated_only=True))
    if src.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        src.rollback()  # src is not autocommit: do not hold a snapshot until the lock
    todo = [(m, owner) for m, owner, is_pop in _matview_rows(tgt, schema)
            if m in populated and not is_pop]
    for view, owner in todo:
        ctx.progress(f"refreshing the materialized view {schema}.{view} on the target")
        tgt.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        try:
            tgt.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(
                sql.Identifier(schema, view)))
        finally:
            tgt.execute("RESET ROLE")


def _matview_rows(conn: psycopg.Connection[Any], schema: str) -> list[tuple[str, str, bool]]:
    return [(r[0], r[1], bool(r[2])) for r in conn.execute(
        "SELECT c.relname, pg_get_userbyid(c.relowner), c.relispopulated FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = 'm' ORDER BY c.oid", [schema])]


def matviews(conn: psycopg.Connection[Any], schema: str, *, populated_only: bool
              ) -> list[str]:
    """Materialized views of *schema* (only the populated ones, when asked)."""
    return [m for m, _o, pop in _matview_rows(conn, schema) if pop or not populated_only]


def copy_unlogged(src: psycopg.Connection[Any], tgt: psycopg.Connection[Any], schema: str,
                   tables: list[str]) -> None:
    """Copy unlogged tables (never published) in the freeze: *src* holds their locks,
    so the rows read are the final ones.  The target's copy is replaced wholesale;
    its triggers are skipped where the target admin may (session_replication_role),
    as the subscription's apply skips them."""
    tgt.execute("BEGIN")
    try:
        try:
            tgt.execute("SET LOCAL session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            tgt.execute("ROLLBACK")
            tgt.execute("BEGIN")
        for table in tables:
            ident = sql.Identifier(schema, table)
            tgt.execute(sql.SQL("TRUNCATE ONLY {}").format(ident))
            with src.cursor().copy(sql.SQL("COPY (SELECT * FROM ONLY {}) TO STDOUT").format(
                    ident)) as out, tgt.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(
                    ident)) as into:
                for chunk in out:
                    into.write(chunk)
        tgt.execute("COMMIT")
    except BaseException:
        tgt.execute("ROLLBACK")
        raise


def _counts(conn: psycopg.Connection[Any], schema: str, tables: list[str]
            ) -> dict[str, int]:
    """Rows of each table FROM ONLY (a partitioned root or inheritance parent would
    count its children too), in one statement."""
    if not tables:
        return {}
    rows = conn.execute(sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {}::text, count(*) FROM ONLY {}").format(
            sql.Literal(t), sql.Identifier(schema, t)) for t in tables)).fetchall()
    return {str(t): int(n) for t, n in rows}


def verify_copy(src: psycopg.Connection[Any], tgt: psycopg.Connection[Any],
                 schema: str) -> None:
    """In the freeze, before the flip: every leaf table (plain, partition, inheritance
    child, unlogged) holds as many rows on the target as on the source, every sequence
    on the target is at least the source's, and materialized views are populated
    exactly where they are on the source.  Both sides count at once (two threads, one
    statement each), so the pause grows by the slower count, not their sum.  Raises
    MoveError naming the first difference; the caller rolls the freeze back."""
    tables = relations(src, schema, ("r",))
    found: dict[str, dict[str, int]] = {}
    failed: list[BaseException] = []

    def count_target() -> None:
        try:
            found["target"] = _counts(tgt, schema, tables)
        except BaseException as exc:
            failed.append(exc)

    worker = threading.Thread(target=count_target)
    worker.start()
    try:
        source = _counts(src, schema, tables)
    finally:
        worker.join()
    if failed:
        raise MoveError(f"Counting the rows on the target failed ({failed[0]}); nothing "
                        "changed, the source stays authoritative: --resume to retry.")
    target = found["target"]
    for table in tables:
        if source[table] != target.get(table):
            raise MoveError(
                f"Row counts differ in the freeze: {schema}.{table} has {source[table]} rows "
                f"on the source, {target.get(table)} on the target; nothing was flipped, the "
                "source stays authoritative: --abort, then move again.")
    seqs = relations(src, schema, ("S",))
    if seqs:
        query = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}::text, last_value FROM {}").format(
                sql.Literal(q), sql.Identifier(schema, q)) for q in seqs)
        theirs = {str(q): int(v) for q, v in tgt.execute(query)}
        for q, v in src.execute(query):
            if theirs.get(q, v - 1) < v:
                raise MoveError(f"Sequence {schema}.{q} is at {theirs.get(q)} on the target, "
                                f"behind the source's {v}; nothing was flipped: --resume.")
    want = set(matviews(src, schema, populated_only=True))
    have = set(matviews(tgt, schema, populated_only=True))
    if want != have:
        raise MoveError(f"Materialized views of {schema} populated on the source "
                        f"({', '.join(sorted(want)) or 'none'}) differ from the target's "
                        f"({', '.join(sorted(have)) or 'none'}); nothing was flipped: --resume.")


def flush_barrier(conn: psycopg.Connection[Any], name: str) -> None:
    """Commit a synchronous transaction on *conn* so the WAL up to now is flushed and
    sent to the subscription at once."""
    conn.execute("SET synchronous_commit = on")
    try:
        conn.execute("SELECT pg_logical_emit_message(true, %s, 'barrier')", [name])
    except psycopg.errors.InsufficientPrivilege:
        conn.execute("SELECT pg_current_xact_id()")  # slower, but needs no privilege


def wait_barrier(ctx: MoveContext, conn: psycopg.Connection[Any], barrier: str) -> None:
    """Return once the move's slot confirmed *barrier* (an LSN); MoveError after
    ctx.barrier_timeout_s."""
    deadline = time.monotonic() + ctx.barrier_timeout_s
    while True:
        row = conn.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM"
                           " pg_replication_slots WHERE slot_name = %s",
                           [barrier, ctx.name]).fetchone()
        if row and row[0]:
            return
        if time.monotonic() > deadline:
            raise MoveError(f"The target did not confirm the barrier LSN {barrier} "
                            f"within {ctx.barrier_timeout_s:g} s; the freeze was lifted "
                            "and nothing changed: --resume to retry.")
        time.sleep(0.002)

