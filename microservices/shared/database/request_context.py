"""Per-checkout request context (RLS user id, read-only) without session state.

A transaction pooler (Supavisor, PgBouncer in transaction mode) may hand every
transaction a different server connection, so nothing may live in the session.
The request context therefore travels *with each statement*: in pipeline mode
the cursor sends ``SELECT set_config('app.current_user_id', $1, true)`` and the
statement before a single Sync.  In the extended query protocol everything up
to a Sync is one (implicit) transaction, so the transaction-local setting
applies to exactly that statement, is gone when it commits, and never reaches
another client -- at the cost of one extra Execute message, not an extra round
trip.  Inside an explicit transaction the same happens, and the setting lasts
until the transaction ends.

``readonly`` works the same way through ``transaction_read_only``.

``COPY`` and ``stream()`` cannot be pipelined: they apply the context with a
separate statement, which is only meaningful inside an explicit transaction,
so outside one they raise :class:`~.errors.RequestContextError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Self

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from .errors import RequestContextError

_SET_USER = "pg_catalog.set_config('app.current_user_id', %s, true)"
_SET_READONLY = "pg_catalog.set_config('transaction_read_only', 'on', true)"

Prologue = tuple[str, tuple[Any, ...]]


def make_prologue(user_id: object | None, readonly: bool) -> Prologue | None:
    """The statement that establishes a request context, or None when there is none."""
    parts: list[str] = []
    params: tuple[Any, ...] = ()
    if user_id is not None:
        parts.append(_SET_USER)
        params = (str(user_id),)
    if readonly:
        parts.append(_SET_READONLY)
    if not parts:
        return None
    return "SELECT " + ", ".join(parts), params


def _needs_separate_statement(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
                              what: str) -> bool:
    status = conn.pgconn.transaction_status
    if status == TransactionStatus.IDLE:
        raise RequestContextError(
            f"{what} with user_id/readonly must run inside 'with conn.transaction():' "
            "(it cannot be pipelined with the request context)."
        )
    return status == TransactionStatus.INTRANS


class ServiceConnection(psycopg.Connection[TupleRow]):
    """A psycopg connection that can carry a request context for one checkout."""

    request_prologue: Prologue | None = None
    returned_at: float = 0.0  # time.monotonic() when last returned to the pool
    monitor: Any = None  # the service's monitoring.ServiceMonitor, when monitoring is on
    _prologue_cursor: psycopg.Cursor[TupleRow] | None = None

    def prologue_cursor(self) -> psycopg.Cursor[TupleRow]:
        """A plain cursor for the prologue, reused (it never reaches the caller)."""
        cur = self._prologue_cursor
        if cur is None:
            cur = self._prologue_cursor = psycopg.Cursor(self)
        return cur


class AsyncServiceConnection(psycopg.AsyncConnection[TupleRow]):
    """The asyncio twin of :class:`ServiceConnection`."""

    request_prologue: Prologue | None = None
    returned_at: float = 0.0
    monitor: Any = None
    _prologue_cursor: psycopg.AsyncCursor[TupleRow] | None = None

    def prologue_cursor(self) -> psycopg.AsyncCursor[TupleRow]:
        cur = self._prologue_cursor
        if cur is None:
            cur = self._prologue_cursor = psycopg.AsyncCursor(self)
        return cur


def _prologue_cursor(conn: Any) -> Any:
    """The connection's reusable prologue cursor (a fresh one on a plain connection)."""
    if isinstance(conn, ServiceConnection | AsyncServiceConnection):
        return conn.prologue_cursor()
    return psycopg.AsyncCursor(conn) if isinstance(conn, psycopg.AsyncConnection) \
        else psycopg.Cursor(conn)


class ContextCursor(psycopg.Cursor[TupleRow]):
    """Cursor that sends the connection's request context with every statement."""

    def _prologue(self) -> Prologue | None:
        prologue: Prologue | None = getattr(self._conn, "request_prologue", None)
        if prologue is None or self._pgconn.transaction_status == TransactionStatus.INERROR:
            return None  # an aborted transaction rejects everything anyway
        return prologue

    def execute(
        self,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        prologue = self._prologue()
        if prologue is None:
            return super().execute(query, params, prepare=prepare, binary=binary)
        if self._pgconn.pipeline_status:  # the caller's pipeline: just queue ahead
            _prologue_cursor(self._conn).execute(*prologue)
            return super().execute(query, params, prepare=prepare, binary=binary)
        with self._conn.pipeline():
            _prologue_cursor(self._conn).execute(*prologue)
            super().execute(query, params, prepare=prepare, binary=binary)
        return self

    def executemany(self, query: Any, params_seq: Iterable[Any], *,
                    returning: bool = False) -> None:
        prologue = self._prologue()
        if prologue is None:
            return super().executemany(query, params_seq, returning=returning)
        with self._conn.pipeline():  # executemany rides it: one implicit transaction
            _prologue_cursor(self._conn).execute(*prologue)
            super().executemany(query, params_seq, returning=returning)
        return None

    def stream(self, query: Any, params: Any = None, *, binary: bool | None = None,
               size: int = 1) -> Iterator[TupleRow]:
        prologue = self._prologue()
        if prologue is not None and _needs_separate_statement(self._conn, "stream()"):
            _prologue_cursor(self._conn).execute(*prologue)
        yield from super().stream(query, params, binary=binary, size=size)

    @contextmanager
    def copy(self, statement: Any, params: Any = None, *,
             writer: Any = None) -> Iterator[psycopg.Copy]:
        prologue = self._prologue()
        if prologue is not None and _needs_separate_statement(self._conn, "COPY"):
            _prologue_cursor(self._conn).execute(*prologue)
        with super().copy(statement, params, writer=writer) as copy:
            yield copy


class AsyncContextCursor(psycopg.AsyncCursor[TupleRow]):
    """The asyncio twin of :class:`ContextCursor`."""

    def _prologue(self) -> Prologue | None:
        prologue: Prologue | None = getattr(self._conn, "request_prologue", None)
        if prologue is None or self._pgconn.transaction_status == TransactionStatus.INERROR:
            return None
        return prologue

    async def execute(
        self,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        prologue = self._prologue()
        if prologue is None:
            return await super().execute(query, params, prepare=prepare, binary=binary)
        if self._pgconn.pipeline_status:
            await _prologue_cursor(self._conn).execute(*prologue)
            return await super().execute(query, params, prepare=prepare, binary=binary)
        async with self._conn.pipeline():
            await _prologue_cursor(self._conn).execute(*prologue)
            await super().execute(query, params, prepare=prepare, binary=binary)
        return self

    async def executemany(self, query: Any, params_seq: Iterable[Any], *,
                          returning: bool = False) -> None:
        prologue = self._prologue()
        if prologue is None:
            return await super().executemany(query, params_seq, returning=returning)
        async with self._conn.pipeline():
            await _prologue_cursor(self._conn).execute(*prologue)
            await super().executemany(query, params_seq, returning=returning)
        return None

    async def stream(self, query: Any, params: Any = None, *, binary: bool | None = None,
                     size: int = 1) -> AsyncIterator[TupleRow]:
        prologue = self._prologue()
        if prologue is not None and _needs_separate_statement(self._conn, "stream()"):
            await _prologue_cursor(self._conn).execute(*prologue)
        async for row in super().stream(query, params, binary=binary, size=size):
            yield row

    @asynccontextmanager
    async def copy(self, statement: Any, params: Any = None, *,
                   writer: Any = None) -> AsyncIterator[psycopg.AsyncCopy]:
        prologue = self._prologue()
        if prologue is not None and _needs_separate_statement(self._conn, "COPY"):
            await _prologue_cursor(self._conn).execute(*prologue)
        async with super().copy(statement, params, writer=writer) as copy:
            yield copy


__all__ = [
    "AsyncContextCursor",
    "AsyncServiceConnection",
    "ContextCursor",
    "ServiceConnection",
    "make_prologue",
]
