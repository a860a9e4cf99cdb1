"""What every phase of a move shares: its context, the journal on the home server, and
two small catalog readers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..connections.direct import connect
from ..connections.location import location_string
from ..connections.patroni import PatroniDiscovery
from ..topology import Service, Topology
from .meta import JOURNAL, ensure_meta, use_meta

PHASES = ("prepare", "copy", "cutover", "cleanup")
HOLD_ENV = "EDULINK_DB_MOVE_HOLD"  # tests: sleep at the start of this phase (to kill -9)


@dataclass
class MoveContext:
    """Everything a move needs.  *home* holds the registry and journal; *source* is
    where the schema lives now (usually home); *target* where it goes."""

    topology: Topology
    service: Service
    home: dict[str, Any]
    source: dict[str, Any]
    target: dict[str, Any]
    passwords: Callable[[Service], str | None]
    migrator_passwords: Callable[[Service], str | None]
    progress: Callable[[str], None] = lambda _m: None
    allow_unbounded_wal: bool = False
    # The source's Patroni cluster (its REST API), when it runs under Patroni: the
    # preflight checks that the move's slot is one of its permanent slots.
    source_patroni: PatroniDiscovery | None = None
    allow_slot_loss: bool = False
    sync_timeout_s: float = 600.0
    barrier_timeout_s: float = 10.0
    slot_timeout_s: float = 30.0
    pauses: list[float] = field(default_factory=list)
    # Per cutover: seconds spent in each step (grace, lock, barrier, setval, commit).
    steps: list[dict[str, float]] = field(default_factory=list)
    # Seconds each phase took in this run (benchmarks/move_service.py reports them).
    phase_s: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The publication, slot, subscription and temporary role of this move."""
        return f"edulink_move_{self.service.name}"[:63]

    @property
    def target_location(self) -> str | None:
        loc = location_string(self.target)
        return None if loc == location_string(self.home) else loc


def journal_get(ctx: MoveContext) -> tuple[str, str, str | None] | None:
    """(target, phase, fingerprint) of the move of ctx.service in progress, or None."""
    with connect(ctx.home, purpose="read the move journal") as conn:
        use_meta(conn)
        try:
            row = conn.execute(sql.SQL("SELECT target, phase, fingerprint FROM {}"
                                       " WHERE service = %s").format(JOURNAL),
                               [ctx.service.name]).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return (row[0], row[1], row[2]) if row else None


def journal_set_on(conn: psycopg.Connection[Any], ctx: MoveContext, phase: str,
                   fingerprint: str | None = None) -> None:
    """Record on *conn* (the home server, meta schema ensured) that the move of
    ctx.service is at *phase*; a None *fingerprint* keeps the stored one.  The caller
    commits (the cutover writes it in the flip's transaction)."""
    conn.execute(sql.SQL(
        "INSERT INTO {} (service, target, phase, fingerprint) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (service) DO UPDATE SET phase = EXCLUDED.phase,"
        " fingerprint = coalesce(EXCLUDED.fingerprint, {}.fingerprint), updated_at = now()"
    ).format(JOURNAL, JOURNAL), [ctx.service.name, location_string(ctx.target), phase,
                                 fingerprint])


def journal_set(ctx: MoveContext, phase: str, fingerprint: str | None = None) -> None:
    """Record, in a transaction of its own, that the move of ctx.service is at *phase*."""
    with connect(ctx.home, purpose="write the move journal") as conn:
        ensure_meta(conn, ctx.topology)
        journal_set_on(conn, ctx, phase, fingerprint)


def hold_if_asked(ctx: MoveContext, phase: str) -> None:
    """Sleep for an hour when HOLD_ENV names *phase* (tests kill the run there)."""
    if os.environ.get(HOLD_ENV) == phase:
        ctx.progress(f"holding at phase {phase} ({HOLD_ENV})")
        time.sleep(3600)



def relations(conn: psycopg.Connection[Any], schema: str, kinds: tuple[str, ...] = ("r",),
            *, persistence: str | None = None) -> list[str]:
    """Relations of *schema* of the given kinds (and relpersistence, when given)."""
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = ANY(%s::\"char\"[])"
        " AND (%s::\"char\" IS NULL OR c.relpersistence = %s::\"char\") ORDER BY 1",
        [schema, list(kinds), persistence, persistence])]



def exists(conn: psycopg.Connection[Any], query: str, name: str) -> bool:
    """Whether *query* (one %s parameter, *name*) returns a row."""
    return conn.execute(query, [name]).fetchone() is not None
