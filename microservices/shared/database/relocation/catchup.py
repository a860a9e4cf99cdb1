"""Phase 3 of a move, catching up: how far the subscription on the target is behind,
and waiting until it is close enough to cut over."""

from __future__ import annotations

import time

from ..connections.direct import connect
from ..core.errors import MoveError
from .context import MoveContext

# Lag (bytes) under which the copy phase counts as caught up.
CAUGHT_UP_BYTES = 1024 * 1024


def lag(ctx: MoveContext) -> tuple[int, int, int, float | None, str]:
    """(tables ready, tables, lag bytes, lag seconds, wal_status) of the move."""
    with connect(ctx.target, purpose="read the subscription's progress") as conn:
        ready, total = conn.execute(
            "SELECT count(*) FILTER (WHERE r.srsubstate IN ('r', 's')), count(*)"
            " FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid"
            " WHERE s.subname = %s", [ctx.name]).fetchone() or (0, 0)
        failures = conn.execute(
            "SELECT apply_error_count + sync_error_count FROM pg_stat_subscription_stats"
            " WHERE subname = %s", [ctx.name]).fetchone()
    if failures and failures[0]:
        ctx.progress(f"the subscription's workers on the target failed {failures[0]} times "
                     "so far (they retry): see the target's server log")
    with connect(ctx.source, purpose="read the slot's lag") as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
            " wal_status, (SELECT extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication"
            "  WHERE application_name = %s LIMIT 1)"
            " FROM pg_replication_slots WHERE slot_name = %s", [ctx.name, ctx.name]).fetchone()
    if row is None:
        raise MoveError(f"The replication slot {ctx.name} is gone from the source: --abort, "
                        "then start the move again.")
    return int(ready), int(total), int(row[0] or 0), row[2], str(row[1])


def wait_caught_up(ctx: MoveContext) -> None:
    """Return once every table is synced and the lag is under CAUGHT_UP_BYTES; raise
    MoveError when the source lost WAL the move needs or ctx.sync_timeout_s passed."""
    deadline = time.monotonic() + ctx.sync_timeout_s
    shown = 0.0
    while True:
        ready, total, behind, seconds, wal_status = lag(ctx)
        if wal_status == "lost":
            raise MoveError("The source dropped WAL the move still needed "
                            "(max_slot_wal_keep_size reached): --abort, then retry with a "
                            "larger cap or when the source is quieter.")
        if ready == total and behind < CAUGHT_UP_BYTES:
            ctx.progress(f"caught up: {ready}/{total} tables synced, lag {behind} bytes")
            return
        if time.monotonic() - shown > 1.0:
            ctx.progress(f"copying: {ready}/{total} tables synced, lag {behind} bytes"
                         + (f", {seconds:.1f} s" if seconds is not None else ""))
            shown = time.monotonic()
        if time.monotonic() > deadline:
            raise MoveError(f"The copy has not caught up after {ctx.sync_timeout_s:g} s "
                            f"({ready}/{total} tables, lag {behind} bytes); it keeps running: "
                            "--resume later, or --abort.")
        time.sleep(0.2)

