"""The cursors of a service connection: they send the request context with each
statement and vouch for the statements proven free of session effects.

``cursor_async.py`` is the source; ``cursor.py`` is generated from it by
``tools/async_to_sync.py`` (edit this one, then run the tool).  How the context
travels is explained in :mod:`.request_context`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Self

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from .context_value import Prologue, needs_separate_statement
from .service_connection_async import AsyncServiceConnection
from .session_account import clean_and_vouched, dirty, is_clean, unvouch, vouch
from .session_state import statement_is_clean
from .statement_merge import joined, with_merge_dumpers


async def _arun_prologue(conn: psycopg.AsyncConnection[Any], prologue: Prologue) -> None:
    vouched = vouch(conn)  # set_config(..., true): transaction-local by construction
    try:
        await _prologue_cursor(conn).execute(prologue.query, prologue.params)
    finally:
        if vouched:
            unvouch(conn)


def _prologue_cursor(conn: Any) -> Any:
    """The connection's reusable prologue cursor (a fresh one on a plain connection)."""
    if isinstance(conn, AsyncServiceConnection):
        return conn.prologue_cursor()
    return psycopg.AsyncCursor(conn)


def _merger(conn: Any) -> Any:
    """The connection's reusable merge cursor (a fresh one on a plain connection)."""
    if isinstance(conn, AsyncServiceConnection):
        return conn.merge_cursor()
    return with_merge_dumpers(psycopg.AsyncClientCursor(conn))


class AsyncCleanCursor(psycopg.AsyncCursor[TupleRow]):
    """Cursor that vouches for the statements proven free of session effects."""

    async def execute(
        self,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        conn: Any = self._conn
        # Inlined (every statement passes here): a str found clean in the cache.
        if not (statement_is_clean(query) if type(query) is str else is_clean(query, conn)):
            dirty(conn)
            return await super().execute(query, params, prepare=prepare, binary=binary)
        if not isinstance(conn, AsyncServiceConnection):
            return await super().execute(query, params, prepare=prepare, binary=binary)
        conn.vouched += 1
        try:
            return await super().execute(query, params, prepare=prepare, binary=binary)
        finally:
            conn.vouched -= 1

    async def executemany(self, query: Any, params_seq: Iterable[Any], *,
                          returning: bool = False) -> None:
        conn = self._conn
        if not clean_and_vouched(query, conn):
            return await super().executemany(query, params_seq, returning=returning)
        try:
            return await super().executemany(query, params_seq, returning=returning)
        finally:
            unvouch(conn)

    async def stream(self, query: Any, params: Any = None, *, binary: bool | None = None,
                     size: int = 1) -> AsyncIterator[TupleRow]:
        rows = super().stream(query, params, binary=binary, size=size)
        assert isinstance(rows, AsyncGenerator)
        if not is_clean(query, self._conn):
            dirty(self._conn)
            async for row in rows:
                yield row
            return
        # Vouch step by step, never across a yield: the caller's code runs there.
        try:
            while True:
                vouched = vouch(self._conn)
                try:
                    row = await anext(rows)
                except StopAsyncIteration:
                    return
                finally:
                    if vouched:
                        unvouch(self._conn)
                yield row
        finally:
            vouched = vouch(self._conn)
            try:
                await rows.aclose()
            finally:
                if vouched:
                    unvouch(self._conn)

    @asynccontextmanager
    async def copy(self, statement: Any, params: Any = None, *,
                   writer: Any = None) -> AsyncIterator[psycopg.AsyncCopy]:
        conn = self._conn
        if not is_clean(statement, conn):
            dirty(conn)
            async with super().copy(statement, params, writer=writer) as copy:
                yield copy
            return
        # While COPY runs the connection accepts nothing else, so the whole block
        # is one operation: the clean COPY statement.
        vouched = vouch(conn)
        try:
            async with super().copy(statement, params, writer=writer) as copy:
                yield copy
        finally:
            if vouched:
                unvouch(conn)


class AsyncContextCursor(AsyncCleanCursor):
    """Cursor that sends the connection's request context with every statement."""

    def _prologue(self) -> Prologue | None:
        prologue: Prologue | None = getattr(self._conn, "request_prologue", None)
        if prologue is None or self._pgconn.transaction_status == TransactionStatus.INERROR:
            return None  # an aborted transaction rejects everything anyway
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
        conn = self._conn
        vouched = clean_and_vouched(query, conn)
        try:
            if self._pgconn.pipeline_status:  # the caller's pipeline: just queue ahead
                await _arun_prologue(conn, prologue)
                return await super().execute(query, params, prepare=prepare, binary=binary)
            text = joined(self, prologue, query, params, prepare, binary, _merger)
            if text is not None:
                # psycopg's own execute: the joined text (a new one per user id) is
                # judged by *query* above, not cached, never prepared.
                await psycopg.AsyncCursor.execute(self, text, prepare=False)
                if self.nextset():
                    return self
                # No result after the prologue's: *query* held no statement (empty,
                # only comments).  Nothing ran; give it psycopg's own treatment.
            async with conn.pipeline():
                await _arun_prologue(conn, prologue)
                await super().execute(query, params, prepare=prepare, binary=binary)
            return self
        finally:
            if vouched:
                unvouch(conn)

    async def executemany(self, query: Any, params_seq: Iterable[Any], *,
                          returning: bool = False) -> None:
        prologue = self._prologue()
        if prologue is None:
            return await super().executemany(query, params_seq, returning=returning)
        conn = self._conn
        vouched = clean_and_vouched(query, conn)
        try:
            async with conn.pipeline():  # executemany rides it: one implicit transaction
                await _arun_prologue(conn, prologue)
                await super().executemany(query, params_seq, returning=returning)
        finally:
            if vouched:
                unvouch(conn)
        return None

    async def stream(self, query: Any, params: Any = None, *, binary: bool | None = None,
                     size: int = 1) -> AsyncIterator[TupleRow]:
        prologue = self._prologue()
        if prologue is not None and needs_separate_statement(self._conn, "stream()"):
            await _arun_prologue(self._conn, prologue)
        async for row in super().stream(query, params, binary=binary, size=size):
            yield row

    @asynccontextmanager
    async def copy(self, statement: Any, params: Any = None, *,
                   writer: Any = None) -> AsyncIterator[psycopg.AsyncCopy]:
        prologue = self._prologue()
        if prologue is not None and needs_separate_statement(self._conn, "COPY"):
            await _arun_prologue(self._conn, prologue)
        async with super().copy(statement, params, writer=writer) as copy:
            yield copy


def _avouching(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a named cursor's FETCH/MOVE/CLOSE: they only read the cursor."""
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        vouched = vouch(self._conn)
        try:
            return await method(self, *args, **kwargs)
        finally:
            if vouched:
                unvouch(self._conn)
    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


class AsyncContextServerCursor(psycopg.AsyncServerCursor[TupleRow]):
    """Named cursor (``conn.cursor(name=...)``) that carries the request context and
    keeps the session account: a cursor ``WITH HOLD`` outlives its transaction, so it
    makes the session dirty; ``DECLARE`` of a dirty query does too."""

    async def execute(self, query: Any, params: Any = None, *,
                      binary: bool | None = None, **kwargs: Any) -> Self:
        conn = self._conn
        prologue: Prologue | None = getattr(conn, "request_prologue", None)
        # DECLARE cannot be pipelined: apply the context first, in the transaction
        # (a named cursor without hold needs one anyway).
        if prologue is not None and needs_separate_statement(conn, "A named cursor"):
            await _arun_prologue(conn, prologue)
        if (self.withhold or not is_clean(query, conn)) \
                and isinstance(conn, AsyncServiceConnection):
            conn.session_dirty = True
        vouched = vouch(conn)  # the account was settled just above
        try:
            return await super().execute(query, params, binary=binary, **kwargs)
        finally:
            if vouched:
                unvouch(conn)

    fetchone = _avouching(psycopg.AsyncServerCursor.fetchone)
    fetchmany = _avouching(psycopg.AsyncServerCursor.fetchmany)
    fetchall = _avouching(psycopg.AsyncServerCursor.fetchall)
    scroll = _avouching(psycopg.AsyncServerCursor.scroll)
    close = _avouching(psycopg.AsyncServerCursor.close)
    __anext__ = _avouching(psycopg.AsyncServerCursor.__anext__)
