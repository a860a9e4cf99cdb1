"""The phases of a move, each idempotent, journalled on the home server.

This module runs them in order (run_move, abort) and holds the cutover's sequence;
each phase's work lives in its own module: context (MoveContext, journal), plan
(prepare), copy, catchup, cutover (the freeze's steps), cleanup.  The names they
define are re-exported here, so ``relocation.mover.X`` keeps working.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from ..connections.direct import connect
from ..connections.location import IDLE_TTL_S, TTL_S, location_string, server_key
from ..core.errors import EdulinkDBError, MoveError
from ..migrations.history import LOCK_CLASS as MIGRATION_LOCK_CLASS
from .catchup import CAUGHT_UP_BYTES, lag, wait_caught_up
from .cleanup import cleanup, drop_replication, retire_source
from .context import (
    HOLD_ENV,
    PHASES,
    MoveContext,
    exists,
    hold_if_asked,
    journal_get,
    journal_set,
    journal_set_on,
    relations,
)
from .copy import copy, drop_move_role
from .cutover import (
    FREEZE_S,
    GRACE_S,
    WATCH_S,
    announce_freeze,
    copy_unlogged,
    flip,
    flush_barrier,
    matviews,
    refresh_matviews,
    verify_copy,
    wait_barrier,
    write_roles,
)
from .meta import JOURNAL, REGISTRY, ensure_meta, use_meta
from .plan import fingerprint, prepare, provision_topology, run_tool
from .preflight import PreflightReport, migration_lock_key, preflight

__all__ = [
    "CAUGHT_UP_BYTES", "FREEZE_S", "GRACE_S", "HOLD_ENV", "PHASES", "WATCH_S", "MoveContext",
    "abort", "announce_freeze", "cleanup", "copy", "copy_unlogged", "current_location",
    "cutover", "drop_move_role", "drop_replication", "exists", "fingerprint", "flip",
    "flush_barrier", "hold_if_asked", "journal_get", "journal_set", "journal_set_on", "lag",
    "matviews", "move_lock", "prepare", "provision_topology", "refresh_matviews",
    "relations", "retire_source", "run_move", "run_tool", "verify_copy", "wait_barrier",
    "wait_caught_up", "write_roles",
]

# cutover() calls these three through this module's globals, not the cutover module's:
# tests substitute them here (monkeypatch mover._flush_barrier etc.) to act inside the
# freeze.
_flush_barrier = flush_barrier
_verify_copy = verify_copy
_refresh_matviews = refresh_matviews


# -- phase 4: cut over ---------------------------------------------------------------------


def cutover(ctx: MoveContext, expected_fingerprint: str | None) -> float:
    """Freeze, barrier, sequences, flip, unfreeze.  Returns the write pause in seconds
    (ctx.steps gets its breakdown).  Any failure before the flip rolls the freeze back:
    the source stays authoritative."""
    schema, svc = ctx.service.schema, ctx.service
    steps: dict[str, float] = {}
    mark = started = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        steps[name] = now - mark
        mark = now

    # Connect first: connecting is not part of the pause.
    opened: list[psycopg.Connection[Any]] = []
    try:
        src = connect(ctx.source, purpose="freeze the schema", autocommit=False)
        opened.append(src)
        flusher = connect(ctx.source, purpose="flush the barrier")
        opened.append(flusher)
        tgt = connect(ctx.target, purpose="set the sequences")
        opened.append(tgt)
        home = src if location_string(ctx.source) == location_string(ctx.home) else connect(
            ctx.home, purpose="flip the routing", autocommit=False)
        opened.append(home)
    except BaseException:
        for conn in opened:
            conn.close()
        raise
    flipped = False
    try:
        # Not part of the pause: the target's rows are current up to the catch-up, and
        # a materialized view is a snapshot anyway.  Before the flip, so no process
        # ever reads an unpopulated view on the target.
        _refresh_matviews(ctx, src, tgt)
        ensure_meta(home, ctx.topology)
        # Processes read the registry once a second until a cutover is announced: set
        # watch_until, and let every process see it (and switch to reading it every
        # TTL_S) before the freeze; this wait is not part of the write pause.
        home.execute(sql.SQL(
            "INSERT INTO {} (service, watch_until) VALUES (%s, now() + make_interval("
            "secs => %s)) ON CONFLICT (service) DO UPDATE SET watch_until ="
            " EXCLUDED.watch_until").format(REGISTRY), [svc.name, WATCH_S])
        home.commit()
        time.sleep(IDLE_TTL_S + TTL_S)
        mark = started = time.monotonic()
        announce_freeze(home, ctx, FREEZE_S)
        home.commit()
        # Every process re-reads the registry within TTL_S: after this, new checkouts of
        # the service wait instead of writing into the freeze, and the few checked out
        # just before have had GRACE_S to finish their statement.
        time.sleep(TTL_S + GRACE_S)
        step("grace")
        src.execute("SET LOCAL lock_timeout = '2s'")
        tables = relations(src, schema)
        if tables:
            src.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables)))
        # A migration holding the runner's lock would change DDL that is not
        # replicated; holding it ourselves until the flip commits keeps new ones out.
        row = src.execute("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))",
                          [MIGRATION_LOCK_CLASS, migration_lock_key(svc)]).fetchone()
        if not (row and row[0]):
            raise MoveError(f"A migration of {svc.name} is running on the source (it holds "
                            "the migration lock); nothing changed: let it finish, then "
                            "--resume.")
        if expected_fingerprint is not None and fingerprint(src, schema) != expected_fingerprint:
            raise MoveError(f"The tables of {schema} changed (DDL) since the copy began; DDL "
                            "is not replicated: --abort, then move again.")
        # The owner role too: it holds its privileges by ownership, and through it a
        # migrator session opened before the cutover, a SECURITY DEFINER function or a
        # view it owns would still commit on the source after the flip.  (A superuser
        # session cannot be stopped this way: see docs/move-service.md.)  CASCADE: a
        # writer holding a grant option may have passed the privilege on.
        writers = [*write_roles(src, schema), sql.Identifier(svc.owner_role)]
        src.execute(sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN "
                            "SCHEMA {} FROM {} CASCADE").format(
            sql.Identifier(schema), sql.SQL(", ").join(writers)))
        # The migrator must not start new sessions (DDL) either: no logins until cleanup.
        src.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(svc.migrator_role)))
        step("lock")
        # Every write to the schema committed before the lock was granted, so its commit
        # record lies before the insert position.  A committed transaction flushes the
        # WAL past it now (not at the next wal_writer_delay); a transactional logical
        # message (ignored by the subscription) makes the walsender pass it on at once:
        # measured ~8 ms to confirmation, against 30-300 ms for an empty transaction.
        barrier = src.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert barrier is not None
        _flush_barrier(flusher, ctx.name)
        wait_barrier(ctx, flusher, str(barrier[0]))
        step("barrier")
        seqs = relations(src, schema, ("S",))
        if seqs:
            values = src.execute(sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {}, last_value, is_called FROM {}").format(
                    sql.Literal(sql.Identifier(schema, q).as_string(src)),
                    sql.Identifier(schema, q)) for q in seqs)).fetchall()
            tgt.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(
                sql.SQL("setval({}::regclass, {}, {})").format(
                    sql.Literal(n), sql.Literal(v), sql.Literal(c)) for n, v, c in values)))
        step("setval")
        unlogged = relations(src, schema, ("r",), persistence="u")
        if unlogged:
            copy_unlogged(src, tgt, schema, unlogged)
            step("unlogged")
        _verify_copy(src, tgt, schema)
        step("verify")
        hold_if_asked(ctx, "cutover")
        flip(home, ctx)
        if home is not src:
            home.commit()
        src.commit()
        flipped = True
        step("commit")
    except psycopg.errors.LockNotAvailable:
        raise MoveError(f"Could not lock the tables of {schema} within 2 s (a long "
                        "transaction holds them); nothing changed: --resume to retry.") from None
    finally:
        if not flipped:
            src.rollback()
            if home is not src:
                home.rollback()
            announce_freeze(home, ctx, None)
            home.commit()
        for conn in opened:
            conn.close()
    pause = time.monotonic() - started
    ctx.pauses.append(pause)
    ctx.steps.append(steps)
    return pause



# -- orchestration --------------------------------------------------------------------------


def current_location(ctx: MoveContext) -> str:
    """Where the registry on the home server says ctx.service lives now (a location
    string; home's when it never moved or moved back)."""
    with connect(ctx.home, purpose="read the registry") as conn:
        use_meta(conn)
        try:
            row = conn.execute(sql.SQL("SELECT location FROM {} WHERE service = %s").format(
                REGISTRY), [ctx.service.name]).fetchone()
        except psycopg.errors.UndefinedTable:
            row = None
    return row[0] if row and row[0] else location_string(ctx.home)


def _check_source_is_current(ctx: MoveContext) -> None:
    """Refuse to move from a server the service has left: its schema there is the
    empty one the clean-up re-provisioned, and moving it would point every pool at an
    empty copy, the data left behind."""
    where = current_location(ctx)
    # sslmode may differ between the URL given to one move and the one given to the next.
    if server_key(where) != server_key(ctx.source):
        raise MoveError(
            f"{ctx.service.name} lives on {where} now (the registry on the home server), "
            f"not on {location_string(ctx.source)}: pass that server's admin URL as --from "
            "to move it from there.")


# Session advisory lock on the home server, (class, hashtext(service)): one run of
# move-service (move, resume or abort) per service at a time.  A killed run's session
# ends with it, and so does its lock.
_LOCK_CLASS = 0x6D6F7665  # "move"


@contextmanager
def move_lock(ctx: MoveContext) -> Iterator[None]:
    """Hold ctx.service's move lock on the home server, or raise MoveError naming the
    session that holds it.  Without it two deploys' ``--resume`` (or a resume and an
    abort) both pass the journal check and undo each other's replication."""
    conn = connect(ctx.home, purpose="lock the move")
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                           [_LOCK_CLASS, ctx.service.name]).fetchone()
        if not (row and row[0]):
            holders = [str(r[0]) for r in conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = %s::bigint::oid"
                " AND objid = (hashtext(%s)::bigint & 4294967295)::oid AND objsubid = 2",
                [_LOCK_CLASS, ctx.service.name])]
            raise MoveError(
                f"another move-service run of {ctx.service.name} is in progress (server "
                f"pid {', '.join(holders) or 'unknown'} on the home server): let it finish; "
                "if it was killed, its session ends with it -- retry in a moment.")
        yield
    finally:
        conn.close()


def run_move(ctx: MoveContext, *, resume: bool = False) -> PreflightReport | None:
    """Run (or resume) the move of ctx.service; returns the preflight report of a new
    move.  Raises MoveError (with what to do) when it refuses or stops, or when
    another run of this service's move holds its lock."""
    with move_lock(ctx):
        return _run_move(ctx, resume=resume)


def _run_move(ctx: MoveContext, *, resume: bool) -> PreflightReport | None:
    entry = journal_get(ctx)
    target = location_string(ctx.target)
    if entry is not None and not resume:
        raise MoveError(f"A move of {ctx.service.name} to {entry[0]} is in progress (phase "
                        f"{entry[1]}): finish it with --resume, or undo it with --abort.")
    if entry is None and resume:
        raise MoveError(f"No move of {ctx.service.name} is in progress; nothing to resume.")
    if entry is not None and entry[0] != target:
        raise MoveError(f"The move in progress goes to {entry[0]}, not {target}: pass the "
                        "same --to to resume or abort it.")
    report = None
    phase, expected = (entry[1], entry[2]) if entry else (None, None)
    if phase is None:
        _check_source_is_current(ctx)
        report = preflight(ctx.source, ctx.target, ctx.service,
                           allow_unbounded_wal=ctx.allow_unbounded_wal, slot=ctx.name,
                           patroni=ctx.source_patroni, allow_slot_loss=ctx.allow_slot_loss)
        for note in report.notes:
            ctx.progress(note)
        ctx.progress(f"{len(report.tables)} tables, {len(report.sequences)} sequences, "
                     f"{report.size_bytes / 1e6:.1f} MB: about {report.estimate_s:.0f} s to copy")
        if not report.ok:
            raise MoveError("Preflight refused the move:\n  - " + "\n  - ".join(report.problems))
        journal_set(ctx, "prepare")
        phase = "prepare"
    if phase == "prepare":
        hold_if_asked(ctx, "prepare")
        t0 = time.monotonic()
        expected = prepare(ctx)
        ctx.phase_s["prepare"] = time.monotonic() - t0
        journal_set(ctx, "copy", expected)
        phase = "copy"
    if phase == "copy":
        hold_if_asked(ctx, "copy")
        t0 = time.monotonic()
        copy(ctx)
        ctx.phase_s["copy"] = time.monotonic() - t0
        journal_set(ctx, "cutover")
        phase = "cutover"
    if phase == "cutover":
        ctx.progress("cutting over")
        t0 = time.monotonic()
        wait_caught_up(ctx)
        pause = cutover(ctx, expected)
        ctx.phase_s["cutover"] = time.monotonic() - t0
        ctx.progress(f"routing flipped; writes paused {pause * 1000:.0f} ms ("
                     + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in ctx.steps[-1].items())
                     + ")")
        phase = "cleanup"
    if phase == "cleanup":
        hold_if_asked(ctx, "cleanup")
        t0 = time.monotonic()
        cleanup(ctx)
        ctx.phase_s["cleanup"] = time.monotonic() - t0
        ctx.progress("cleaned up: no slot, publication, subscription or temporary role left")
        permanent_slot_reminder(ctx)
    return report


def permanent_slot_reminder(ctx: MoveContext) -> None:
    """Say so when the move's slot is still one of the source's Patroni permanent slots:
    Patroni creates it again on the leader, where nothing consumes it and it holds WAL
    (up to max_slot_wal_keep_size).  Not removed here: that needs write access to
    Patroni's REST API, which this tool does not ask for."""
    if ctx.source_patroni is None:
        return
    try:
        slots = ctx.source_patroni.dynamic_config().get("slots")
    except EdulinkDBError:
        return
    if isinstance(slots, dict) and ctx.name in slots:
        ctx.progress(f"warning: slot {ctx.name} is still a permanent slot of the source's "
                     "Patroni cluster, which recreates it and keeps WAL for it: remove it "
                     f"with patronictl -c <patroni.yml> edit-config --force -s "
                     f"'slots.{ctx.name}=null'")


def abort(ctx: MoveContext) -> None:
    """Undo a move that has not cut over: drop what it created on both servers and lift
    any freeze.  The source stays authoritative; the target's copy is dropped.  Refused
    while another run of this service's move holds its lock."""
    with move_lock(ctx):
        _abort(ctx)


def _abort(ctx: MoveContext) -> None:
    entry = journal_get(ctx)
    if entry is not None and entry[1] == "cleanup":
        raise MoveError(f"The move of {ctx.service.name} has cut over already; finish it "
                        "with --resume, then move the service back (see docs/move-service.md).")
    if entry is not None and entry[0] != location_string(ctx.target):
        raise MoveError(f"The move in progress goes to {entry[0]}: pass that as --to.")
    drop_replication(ctx)
    if entry is not None:
        with connect(ctx.home, purpose="lift the freeze") as conn:
            announce_freeze(conn, ctx, None)
        with connect(ctx.target, purpose="drop the target's copy") as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(ctx.service.schema)))
        provision_topology(ctx, ctx.target)
        with connect(ctx.home, purpose="close the journal") as conn:
            conn.execute(sql.SQL("DELETE FROM {} WHERE service = %s").format(JOURNAL),
                         [ctx.service.name])
