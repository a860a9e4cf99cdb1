"""A checkout: a pooled connection lent for one ``with`` block, and the relocation hook
(issue 17) that follows a moved service and explains a refusal of its old location.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from ..config import Settings
from ..core.errors import MovedSchemaAccessError, ServiceMovedError
from . import location
from .pool import ServicePool, ausable, usable
from .request_context import AsyncServiceConnection, Prologue, ServiceConnection

# -- relocation hook (issue 17) ------------------------------------------------------
# How long a service's checkout waits while a cutover freezes its writes; the
# cutover announces at most this long a freeze (relocation.mover.FREEZE_S).
FREEZE_WAIT_S = 10.0


class MoveWatch:
    """Turns the refusal a frozen old location gives a queued statement (its writes
    revoked: 42501; its tables retired: 42P01) into ServiceMovedError when the
    registry shows the service moved since the checkout: retry it, it changed nothing.

    And a ``relation "<schema>.<table>" does not exist`` (42P01) for a table in the
    schema of a service that the registry places on another server than this
    checkout's (*where*: None = home) into MovedSchemaAccessError: a plain-SQL read of
    a moved service's table, which only ``get_reader_connection`` can follow.  Both
    run only on the error path (``check`` with an exception): a checkout that succeeds
    pays nothing."""

    __slots__ = ("epoch", "home", "registry", "service", "settings", "where")

    def __init__(self, registry: location.Registry, home: ServicePool, service: str,
                 epoch: int, where: str | None = None, settings: Settings | None = None
                 ) -> None:
        self.registry, self.home, self.service, self.epoch = registry, home, service, epoch
        self.where, self.settings = where, settings

    @staticmethod
    def refused(exc: BaseException | None) -> bool:
        return isinstance(exc, psycopg.errors.InsufficientPrivilege
                          | psycopg.errors.UndefinedTable)

    def moved(self, now: location.Location, exc: BaseException) -> None:
        if now.epoch != self.epoch:
            raise ServiceMovedError(
                f"Service {self.service!r} moved to another server while this checkout ran "
                f"(location epoch {self.epoch} -> {now.epoch}); the statement changed "
                "nothing: run it again, the next checkout goes to the new location.") from exc
        if self.settings is not None and isinstance(exc, psycopg.errors.UndefinedTable):
            self.elsewhere(exc)

    def elsewhere(self, exc: psycopg.errors.UndefinedTable) -> None:
        """Raise MovedSchemaAccessError when *exc* names a relation qualified with the
        schema of a service that lives on another server than this checkout's.  The
        relation is matched on the quoted name PostgreSQL puts in the message (the same
        in every lc_messages language); the registry was refreshed just before."""
        assert self.settings is not None
        text = exc.diag.message_primary or ""
        reader = self.home.service.name
        for svc in self.settings.topology().services:
            mark = f'"{svc.schema}.'
            if mark not in text:
                continue
            loc = self.registry.cached(svc.name)
            if loc.where == self.where:
                continue  # the schema lives here: a table that really does not exist
            relation = text[text.index(mark) + 1:].split('"', 1)[0]
            raise MovedSchemaAccessError(
                f"{relation} does not exist on this server because service {svc.name!r} "
                f"moved (edulink-db move-service, location epoch {loc.epoch}) to "
                f"{loc.where or 'its home server'}; service {reader!r} read it with plain "
                f"SQL on its own connection, which stays where {reader!r} lives. Read it "
                f"with connection_manager.get_reader_connection({reader!r}, {svc.name!r}), "
                "which follows the move (PostgreSQL still enforces the exposure grants).",
                service=svc.name, location=loc.where, reader=reader) from exc

    def check(self, exc: BaseException | None) -> None:
        if exc is not None and self.refused(exc):
            self.moved(self.registry.get(self.service, runner(self.home), fresh=True), exc)

    async def acheck(self, exc: BaseException | None, lock: asyncio.Lock) -> None:
        if exc is not None and self.refused(exc):
            self.moved(await self.registry.aget(self.service, arunner(self.home, lock),
                                                fresh=True), exc)


def runner(home: ServicePool) -> location.Runner:
    """Runs a registry query on a connection of *home*'s own pool (no extra connection)."""
    def run(query: sql.Composed) -> location.Rows:
        with home.sync_pool().connection(timeout=location.BORROW_TIMEOUT_S) as conn, \
                psycopg.Cursor(conn) as cur:  # plain: not the app's query
            rows: location.Rows = cur.execute(query, prepare=False).fetchall()
            return rows
    return run


def arunner(home: ServicePool, lock: asyncio.Lock) -> location.AsyncRunner:
    async def run(query: sql.Composed) -> location.Rows:
        pool = await home.async_pool(lock)
        async with pool.connection(timeout=location.BORROW_TIMEOUT_S) as conn, \
                psycopg.AsyncCursor(conn) as cur:
            await cur.execute(query, prepare=False)
            return await cur.fetchall()
    return run


class Checkout:
    """Context manager returned by :meth:`ConnectionManager.get_connection`."""

    __slots__ = ("_conn", "_entry", "_moved", "_pool", "_prologue")

    def __init__(self, entry: ServicePool, prologue: Prologue | None,
                 moved: MoveWatch | None = None) -> None:
        self._entry = entry
        self._prologue = prologue
        self._moved = moved
        self._conn: ServiceConnection | None = None
        self._pool: ConnectionPool[ServiceConnection] | None = None

    def __enter__(self) -> ServiceConnection:
        entry = self._entry
        pool = self._pool = entry.sync_pool()
        # Bounded: each dead connection found is discarded and the pool drained, so
        # at most the connections that were idle at the restart are looked at.
        for _ in range(entry.config.max_size + 1):
            try:
                conn = pool.getconn()
            except PoolTimeout:
                raise entry.timeout_error(pool.get_stats()) from None
            if usable(conn, entry.recheck_after):
                break
            entry.discard(conn)
            conn.close()
            pool.putconn(conn)
            pool.drain()  # the others are from before the restart too
            if entry.is_replica:
                raise entry.replica_lost()
        else:
            raise entry.timeout_error(pool.get_stats())
        if conn.session_dirty:  # never expected: every dirty return was reset
            entry.reset(conn)
        entry.lend(conn, self._prologue, entry.context_cursor)
        self._conn = conn
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        conn, pool, entry = self._conn, self._pool, self._entry
        assert conn is not None and pool is not None
        self._conn = None
        entry.take_back(conn, self._prologue, entry.cursor, exc)
        if entry.needs_reset(conn):
            entry.reset(conn)
        pool.putconn(conn)  # rolls back anything left open
        if entry.is_replica and conn.closed:
            # A replica that went away mid-block took its idle sessions too: without
            # this, the first checkouts after it comes back would find them dead.
            pool.drain()
        if self._moved is not None:
            self._moved.check(exc)


_AsyncFollow = Callable[[], Awaitable[tuple[ServicePool, MoveWatch]]]


class AsyncCheckout:
    """Async context manager returned by :meth:`ConnectionManager.get_async_connection`."""

    __slots__ = ("_conn", "_entry", "_follow", "_lock", "_moved", "_prologue")

    def __init__(self, entry: ServicePool, prologue: Prologue | None,
                 lock: asyncio.Lock, follow: _AsyncFollow | None = None) -> None:
        self._entry = entry
        self._prologue = prologue
        self._lock = lock
        self._follow = follow
        self._moved: MoveWatch | None = None
        self._conn: AsyncServiceConnection | None = None

    async def __aenter__(self) -> AsyncServiceConnection:
        if self._follow is not None:  # relocation hook (issue 17)
            self._entry, self._moved = await self._follow()
        entry = self._entry
        pool = await entry.async_pool(self._lock)
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
            await pool.drain()
            if entry.is_replica:
                raise entry.replica_lost()
        else:
            raise entry.timeout_error(pool.get_stats())
        if conn.session_dirty:
            await entry.areset(conn)
        entry.lend(conn, self._prologue, entry.async_context_cursor)
        self._conn = conn
        return conn

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        conn, entry = self._conn, self._entry
        assert conn is not None
        self._conn = None
        entry.take_back(conn, self._prologue, entry.async_cursor, exc)
        if entry.needs_reset(conn):
            await entry.areset(conn)
        pool = await entry.async_pool(self._lock)
        await pool.putconn(conn)
        if entry.is_replica and conn.closed:
            await pool.drain()  # as in Checkout.__exit__
        if self._moved is not None:
            await self._moved.acheck(exc, self._lock)

