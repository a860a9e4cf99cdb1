"""The pooled connection class: it carries a checkout's request context and keeps
the session account (``session_dirty``; see :mod:`.session_account`).

``service_connection_async.py`` is the source; ``service_connection.py`` is
generated from it by ``tools/async_to_sync.py`` (edit this one, then run the tool).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.rows import TupleRow

from .context_value import Prologue
from .outage import connection_lost_error, lost_connection
from .statement_merge import with_merge_dumpers

T = TypeVar("T")


class AsyncServiceConnection(psycopg.AsyncConnection[TupleRow]):
    """A psycopg connection that can carry a request context for one checkout, and
    knows whether anything may have left state in its session (``session_dirty``)."""

    request_prologue: Prologue | None = None
    returned_at: float = 0.0  # time.monotonic() when last returned to the pool
    monitor: Any = None  # the service's monitoring.ServiceMonitor, when monitoring is on
    session_dirty: bool = False  # cleared only by a successful session reset
    vouched: int = 0  # > 0 while a vouched-for operation runs
    service_name: str = ""  # set by the pool when it makes the connection
    server: str = ""  # host:port of the server this connection reached
    _prologue_cursor: psycopg.AsyncCursor[TupleRow] | None = None
    _merge_cursor: psycopg.AsyncClientCursor[TupleRow] | None = None

    def prologue_cursor(self) -> psycopg.AsyncCursor[TupleRow]:
        """A plain cursor for the prologue, reused (it never reaches the caller)."""
        cur = self._prologue_cursor
        if cur is None:
            cur = self._prologue_cursor = psycopg.AsyncCursor(self)
        return cur

    def merge_cursor(self) -> psycopg.AsyncClientCursor[TupleRow]:
        """A ClientCursor used only for ``mogrify`` (it never executes), reused."""
        cur = self._merge_cursor
        if cur is None:
            cur = self._merge_cursor = with_merge_dumpers(psycopg.AsyncClientCursor(self))
        return cur

    async def wait(self, gen: Any, interval: float = 0.1,
                   timeout: float | None = None) -> Any:
        # The one funnel of every psycopg operation on this connection.  (Explicit
        # arguments: this is on every statement's path; *args would cost more.)
        if not self.vouched:
            self.session_dirty = True
        try:
            return await super().wait(gen, interval, timeout)
        except psycopg.OperationalError as exc:
            if self.server and lost_connection(self, exc):
                raise connection_lost_error(self.service_name, self.server, exc) from exc
            raise

    async def commit(self) -> None:
        self.vouched += 1
        try:
            await super().commit()
        finally:
            self.vouched -= 1

    async def rollback(self) -> None:
        self.vouched += 1
        try:
            await super().rollback()
        finally:
            self.vouched -= 1

    @asynccontextmanager
    async def transaction(self, savepoint_name: str | None = None,
                          force_rollback: bool = False
                          ) -> AsyncIterator[psycopg.AsyncTransaction]:
        # BEGIN/SAVEPOINT/COMMIT/ROLLBACK are vouched for; the block's statements
        # are judged one by one by the cursors.
        async with _avouched(self, super().transaction(savepoint_name, force_rollback)) \
                as tx:
            yield tx

    @asynccontextmanager
    async def pipeline(self) -> AsyncIterator[psycopg.AsyncPipeline]:
        # Entering and syncing a pipeline runs no statement of its own; the queued
        # statements were judged when their cursors queued them.
        async with _avouched(self, super().pipeline()) as pipeline:
            yield pipeline


@asynccontextmanager
async def _avouched(conn: Any, cm: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Run *cm*'s enter and exit vouched for, but not the block inside it."""
    conn.vouched += 1
    try:
        value = await cm.__aenter__()
    finally:
        conn.vouched -= 1
    try:
        yield value
    except BaseException:
        conn.vouched += 1
        try:
            suppress = await cm.__aexit__(*sys.exc_info())
        finally:
            conn.vouched -= 1
        if not suppress:
            raise
    else:
        conn.vouched += 1
        try:
            await cm.__aexit__(None, None, None)
        finally:
            conn.vouched -= 1
