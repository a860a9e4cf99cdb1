"""The checkout path of a service's pool: open its psycopg_pool on first use, lend an
idle connection that is still alive, reset a dirty session on the way back, and
follow a moved service (the relocation hook of issue 17).

``checkout_async.py`` is the source; ``checkout.py`` is generated from it by
``tools/async_to_sync.py`` (edit this one, then run the tool).  The policy these
steps apply (sizes, the liveness check, what a reset clears) lives in :mod:`.pool`.
"""

from __future__ import annotations

import asyncio  # sync:
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..config import Settings
from . import location
from .move_watch import FREEZE_WAIT_S, MoveWatch
from .pool import OK, RECHECK_IDLE_AFTER_S, SUSPECT, ServicePool, idle_state
from .reconnecting_pool_async import AsyncReconnectingPool
from .registry_read_async import aget, await_unfrozen
from .request_context import AsyncServiceConnection, Prologue

AsyncFollow = Callable[
    [], Awaitable[tuple[ServicePool, MoveWatch]]]  # sync: [], tuple[ServicePool, MoveWatch]]


# -- the psycopg_pool of a service pool ------------------------------------------------
async def aopen_pool(entry: ServicePool) -> AsyncReconnectingPool[AsyncServiceConnection]:
    """*entry*'s psycopg_pool, built (after one probing connection) on first use.  It
    reconnects as :mod:`.outage` explains."""
    pool = entry.apool
    if pool is None:
        async with entry.apool_lock:
            if entry.apool is None:
                await asyncio.to_thread(entry.probe)  # sync: entry.probe()
                built: AsyncReconnectingPool[AsyncServiceConnection] = AsyncReconnectingPool(
                    entry.current_conninfo,
                    target=entry.target, on_failure=entry.connect_failed,
                    connection_class=AsyncServiceConnection,
                    kwargs={**entry.kwargs, "cursor_factory": entry.async_cursor},
                    configure=entry.configure_async,
                    name=f"{entry.service.name}-async",  # sync: name=entry.service.name,
                    min_size=entry.config.min_size,
                    max_size=entry.config.max_size,
                    timeout=entry.config.timeout,
                    max_lifetime=entry.config.max_lifetime,
                    check=AsyncReconnectingPool.check_connection if entry.config.check
                    else None,
                    open=False,
                )
                await built.open(wait=False)
                entry.apool = built
            pool = entry.apool
    return pool


async def aclose_pool(entry: ServicePool) -> None:
    """Close *entry*'s psycopg_pool, if built."""
    if entry.apool is not None:
        await entry.apool.close()
        entry.apool = None


async def ausable(conn: AsyncServiceConnection,
                  recheck_after: float = RECHECK_IDLE_AFTER_S) -> bool:
    """Whether idle pooled *conn* is alive: no check when it was used moments ago, one
    ``select()`` otherwise, and a round trip only when that found something."""
    if time.monotonic() - conn.returned_at < recheck_after:
        return True
    state = idle_state(conn)
    if state != SUSPECT:
        return state == OK
    try:
        await conn.execute("")
        return True
    except psycopg.Error:
        return False


async def areset(entry: ServicePool, conn: AsyncServiceConnection) -> None:
    """Remove every kind of session state, or close the connection (the pool then
    replaces it). Never raises for database errors."""
    conn.vouched += 1
    try:
        status = conn.pgconn.transaction_status
        if status == TransactionStatus.ACTIVE:
            raise psycopg.OperationalError("connection returned mid-operation")
        if status != TransactionStatus.IDLE:
            await conn.rollback()
        await conn.set_autocommit(True)
        await conn.set_isolation_level(None)
        await conn.set_read_only(None)
        await conn.set_deferrable(None)
        entry.restore_attributes(conn)
        async with psycopg.AsyncCursor(conn) as cur:  # plain: the reset is not the app's
            await cur.execute(entry.reset_sql, prepare=False)
        conn.session_dirty = False
    except psycopg.Error as exc:
        entry.reset_failed(conn, exc)
        await conn.close()
    finally:
        conn.vouched = 0


# -- the relocation hook (issue 17) ------------------------------------------------------
def arunner(home: ServicePool) -> location.AsyncRunner:
    """Runs a registry query on a connection of *home*'s own pool (no extra connection)."""
    async def run(query: sql.Composed) -> location.Rows:
        pool = await aopen_pool(home)
        if pool.outage.active:
            # The home server is away (a restart, a switchover): waiting for it would
            # hold up every checkout, replica reads included.  The registry keeps its
            # last known locations and reads again after RETRY_S.
            raise psycopg.OperationalError(f"home server away: {pool.outage.last_error}")
        async with pool.connection(timeout=location.BORROW_TIMEOUT_S) as conn, \
                psycopg.AsyncCursor(conn) as cur:  # plain: not the app's query
            await cur.execute(query, prepare=False)
            return await cur.fetchall()
    return run


async def afollow(home: ServicePool, located: Callable[[ServicePool, str], ServicePool],
                  settings: Settings, owner: str | None = None
                  ) -> tuple[ServicePool, MoveWatch]:
    """The pool of *home*'s service where *owner*'s schema (default: its own) lives
    now (*located* gives the pool of *home*'s service on another server).  The
    service's own checkouts wait while a cutover freezes its writes."""
    registry = home.registry
    name = owner or home.service.name
    run = arunner(home)
    loc = await aget(registry, name, run)
    if loc.frozen and owner is None:
        loc = await await_unfrozen(registry, name, run, FREEZE_WAIT_S)
    entry = home if loc.where is None else located(home, loc.where)
    return entry, MoveWatch(registry, home, name, loc.epoch, loc.where, settings)


async def acheck(watch: MoveWatch, exc: BaseException | None) -> None:
    """Raise what *exc* means if the service moved while the checkout ran."""
    if exc is not None and watch.refused(exc):
        watch.moved(await aget(watch.registry, watch.service, arunner(watch.home),
                               fresh=True), exc)


# -- the checkout ------------------------------------------------------------------------
class AsyncCheckout:
    """Context manager returned by :meth:`ConnectionManager.get_connection` (and its
    async twin): a pooled connection lent for one block.  *moved* watches for a move
    found before the checkout; *follow* finds where the service lives when the block
    is entered (and sets both)."""

    __slots__ = ("_conn", "_entry", "_follow", "_moved", "_pool", "_prologue")

    def __init__(self, entry: ServicePool, prologue: Prologue | None,
                 moved: MoveWatch | None = None, follow: AsyncFollow | None = None) -> None:
        self._entry = entry
        self._prologue = prologue
        self._moved = moved
        self._follow = follow
        self._conn: AsyncServiceConnection | None = None
        # The pool the connection came from: it goes back there, even if the service's
        # pools were closed (and another built) while the block ran.
        self._pool: AsyncConnectionPool[AsyncServiceConnection] | None = None

    async def __aenter__(self) -> AsyncServiceConnection:
        if self._follow is not None:  # relocation hook (issue 17)
            self._entry, self._moved = await self._follow()
        entry = self._entry
        pool = self._pool = await aopen_pool(entry)
        # Bounded: each dead connection found is discarded and the pool drained, so
        # at most the connections that were idle at the restart are looked at.
        for _ in range(entry.config.max_size + 1):
            try:
                conn = await pool.getconn()
            except PoolTimeout:
                raise entry.timeout_error(pool.get_stats()) from None
            if await ausable(conn, entry.recheck_after):
                break
            entry.discard(conn)
            await conn.close()
            await pool.putconn(conn)
            await pool.drain()  # the others are from before the restart too
            if entry.is_replica:
                raise entry.replica_lost()
        else:
            raise entry.timeout_error(pool.get_stats())
        if conn.session_dirty:  # never expected: every dirty return was reset
            await areset(entry, conn)
        entry.lend(conn, self._prologue, entry.async_context_cursor)
        self._conn = conn
        return conn

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        conn, pool, entry = self._conn, self._pool, self._entry
        assert conn is not None and pool is not None
        self._conn = None
        entry.take_back(conn, self._prologue, entry.async_cursor, exc)
        if entry.needs_reset(conn):
            await areset(entry, conn)
        await pool.putconn(conn)  # rolls back anything left open
        if entry.is_replica and conn.closed:
            # A replica that went away mid-block took its idle sessions too: without
            # this, the first checkouts after it comes back would find them dead.
            await pool.drain()
        if self._moved is not None:
            await acheck(self._moved, exc)
