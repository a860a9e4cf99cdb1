"""Per-checkout request context (RLS user id, read-only) without session state.

A transaction pooler (Supavisor, PgBouncer in transaction mode) may hand every
transaction a different server connection, so nothing may live in the session.
The request context therefore travels *with each statement*, in the same
transaction and the same round trip:

* Fast path (a plain ``execute()``: text result format, no ``prepare=True``, no
  pipeline of the caller's): the statement's parameters are merged on the
  client (``psycopg.ClientCursor.mogrify``, the binding Django uses by default)
  and ONE simple-protocol Query message carries
  ``SELECT set_config('app.current_user_id', E'<user id>', true); <statement>``.
  The statements of one Query message form one implicit transaction (unless
  they contain transaction control), so the transaction-local setting applies
  to exactly that statement and is gone when it commits; if the statement
  fails, the setting is rolled back with it.  The cursor then moves to the
  statement's result (``nextset()``).  This costs ~1x a plain read, where
  psycopg's pipeline machinery costs ~100 us of client CPU per statement.
* Everything else (``executemany``, ``binary=True``, ``prepare=True``, the
  caller's own pipeline, parameters the client cannot merge): in pipeline mode
  the cursor sends ``SELECT set_config('app.current_user_id', $1, true)`` and
  the statement before a single Sync.  Everything up to a Sync is one
  (implicit) transaction in the extended query protocol, so the same holds, at
  the cost of one extra Execute message, not an extra round trip.

Inside an explicit transaction both paths put the setting in that transaction,
and it lasts until the transaction ends.  ``readonly`` works the same way
through ``transaction_read_only``.

The user id in the fast path's text is an ``E''`` literal built here, which
reads the same whatever ``standard_conforming_strings`` or ``backslash_quote``
the session has; a NUL byte is refused when the checkout is requested.

``COPY`` and ``stream()`` cannot be pipelined: they apply the context with a
separate statement, which is only meaningful inside an explicit transaction,
so outside one they raise :class:`~.errors.RequestContextError`.  Named
(server-side) cursors carry the context the same way: their ``DECLARE`` runs
inside a transaction, after the transaction-local settings.

Session state (see :mod:`.session_state`): every psycopg operation on a
:class:`ServiceConnection` passes through :meth:`ServiceConnection.wait`, which
marks the session *dirty* unless the operation was vouched for -- by a cursor
of this module running a statement that :func:`~.session_state.statement_is_clean`
proves harmless, or by psycopg's own transaction and pipeline control.  Cursors
created any other way (``psycopg.Cursor(conn)``, ``ClientCursor``, ``RawCursor``),
``copy()``/``stream()`` of a dirty statement, ``conn.autocommit = False``,
``notifies()`` ... therefore all mark it dirty, and the connection manager
resets a dirty session before the pool gets the connection back.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from decimal import Decimal
from typing import Any, NamedTuple, Self, TypeVar

import psycopg
from psycopg import sql
from psycopg.adapt import Buffer, Dumper
from psycopg.pq import Format, TransactionStatus
from psycopg.rows import TupleRow
from psycopg.types.numeric import DecimalDumper, FloatDumper

from ..core.errors import RequestContextError
from .session_state import statement_is_clean

T = TypeVar("T")

_SET_USER = "pg_catalog.set_config('app.current_user_id', %s, true)"
_SET_READONLY = "pg_catalog.set_config('transaction_read_only', 'on', true)"


class Prologue(NamedTuple):
    """The statement that establishes a request context, in two forms."""

    query: str  # with a %s placeholder: server-side binding (pipeline path)
    params: tuple[Any, ...]
    simple: str  # the same with the value as a literal, ending in "; " (fast path)


def quote_text(value: str) -> str:
    """*value* as a PostgreSQL string literal whose meaning does not depend on the
    session: an ``E''`` string reads backslash escapes whatever
    ``standard_conforming_strings`` says, and quotes are doubled rather than
    backslash-escaped, which ``backslash_quote`` cannot refuse.  The literal is
    built from characters, and the server converts the client encoding before it
    lexes, so no multibyte character can hide a quote or a backslash."""
    if "\x00" in value:
        raise RequestContextError("A user id cannot contain a NUL byte (PostgreSQL text "
                                  "cannot hold one); pass the user's primary key.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestContextError("A user id must be valid Unicode text (it has a lone "
                                  "surrogate); pass the user's primary key.") from None
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def make_prologue(user_id: object | None, readonly: bool) -> Prologue | None:
    """The statement that establishes a request context, or None when there is none.

    Raises RequestContextError for a user id PostgreSQL cannot store (NUL byte).
    """
    parts: list[str] = []
    literals: list[str] = []
    params: tuple[Any, ...] = ()
    if user_id is not None:
        value = str(user_id)
        parts.append(_SET_USER)
        literals.append(_SET_USER.replace("%s", quote_text(value)))
        params = (value,)
    if readonly:
        parts.append(_SET_READONLY)
        literals.append(_SET_READONLY)
    if not parts:
        return None
    return Prologue("SELECT " + ", ".join(parts), params,
                    "SELECT " + ", ".join(literals) + "; ")


def _needs_separate_statement(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
                              what: str) -> bool:
    status = conn.pgconn.transaction_status
    if status == TransactionStatus.IDLE:
        raise RequestContextError(
            f"{what} with user_id/readonly must run inside 'with conn.transaction():' "
            "(it cannot be pipelined with the request context)."
        )
    return status == TransactionStatus.INTRANS


def is_clean(query: Any, conn: Any) -> bool:
    """Whether *query* (str, bytes or psycopg.sql object) provably leaves no session
    state. Anything else (t-strings, unknown objects) counts as dirty."""
    if type(query) is str:
        return statement_is_clean(query)
    try:
        if isinstance(query, sql.Composable):
            return statement_is_clean(query.as_string(conn))
        if isinstance(query, bytes | bytearray | memoryview):
            return statement_is_clean(bytes(query).decode("utf-8"))
    except (UnicodeDecodeError, psycopg.Error, TypeError, ValueError):
        pass
    return False


class ServiceConnection(psycopg.Connection[TupleRow]):
    """A psycopg connection that can carry a request context for one checkout, and
    knows whether anything may have left state in its session (``session_dirty``)."""

    request_prologue: Prologue | None = None
    returned_at: float = 0.0  # time.monotonic() when last returned to the pool
    monitor: Any = None  # the service's monitoring.ServiceMonitor, when monitoring is on
    session_dirty: bool = False  # cleared only by a successful session reset
    vouched: int = 0  # > 0 while a vouched-for operation runs
    _prologue_cursor: psycopg.Cursor[TupleRow] | None = None
    _merge_cursor: psycopg.ClientCursor[TupleRow] | None = None

    def prologue_cursor(self) -> psycopg.Cursor[TupleRow]:
        """A plain cursor for the prologue, reused (it never reaches the caller)."""
        cur = self._prologue_cursor
        if cur is None:
            cur = self._prologue_cursor = psycopg.Cursor(self)
        return cur

    def merge_cursor(self) -> psycopg.ClientCursor[TupleRow]:
        """A ClientCursor used only for ``mogrify`` (it never executes), reused."""
        cur = self._merge_cursor
        if cur is None:
            cur = self._merge_cursor = _with_merge_dumpers(psycopg.ClientCursor(self))
        return cur

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        # The one funnel of every psycopg operation on this connection.  (Explicit
        # arguments: this is on every statement's path; *args would cost more.)
        if not self.vouched:
            self.session_dirty = True
        return super().wait(gen, interval, timeout)

    def commit(self) -> None:
        self.vouched += 1
        try:
            super().commit()
        finally:
            self.vouched -= 1

    def rollback(self) -> None:
        self.vouched += 1
        try:
            super().rollback()
        finally:
            self.vouched -= 1

    @contextmanager
    def transaction(self, savepoint_name: str | None = None,
                    force_rollback: bool = False) -> Iterator[psycopg.Transaction]:
        # BEGIN/SAVEPOINT/COMMIT/ROLLBACK are vouched for; the block's statements
        # are judged one by one by the cursors.
        with _vouched(self, super().transaction(savepoint_name, force_rollback)) as tx:
            yield tx

    @contextmanager
    def pipeline(self) -> Iterator[psycopg.Pipeline]:
        # Entering and syncing a pipeline runs no statement of its own; the queued
        # statements were judged when their cursors queued them.
        with _vouched(self, super().pipeline()) as pipeline:
            yield pipeline


class AsyncServiceConnection(psycopg.AsyncConnection[TupleRow]):
    """The asyncio twin of :class:`ServiceConnection`."""

    request_prologue: Prologue | None = None
    returned_at: float = 0.0
    monitor: Any = None
    session_dirty: bool = False
    vouched: int = 0
    _prologue_cursor: psycopg.AsyncCursor[TupleRow] | None = None
    _merge_cursor: psycopg.AsyncClientCursor[TupleRow] | None = None

    def prologue_cursor(self) -> psycopg.AsyncCursor[TupleRow]:
        cur = self._prologue_cursor
        if cur is None:
            cur = self._prologue_cursor = psycopg.AsyncCursor(self)
        return cur

    def merge_cursor(self) -> psycopg.AsyncClientCursor[TupleRow]:
        cur = self._merge_cursor
        if cur is None:
            cur = self._merge_cursor = _with_merge_dumpers(psycopg.AsyncClientCursor(self))
        return cur

    async def wait(self, gen: Any, interval: float = 0.1,
                   timeout: float | None = None) -> Any:
        if not self.vouched:
            self.session_dirty = True
        return await super().wait(gen, interval, timeout)

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
        async with _avouched(self, super().transaction(savepoint_name, force_rollback)) \
                as tx:
            yield tx

    @asynccontextmanager
    async def pipeline(self) -> AsyncIterator[psycopg.AsyncPipeline]:
        async with _avouched(self, super().pipeline()) as pipeline:
            yield pipeline


@contextmanager
def _vouched(conn: Any, cm: AbstractContextManager[T]) -> Iterator[T]:
    """Run *cm*'s enter and exit vouched for, but not the block inside it."""
    conn.vouched += 1
    try:
        value = cm.__enter__()
    finally:
        conn.vouched -= 1
    try:
        yield value
    except BaseException:
        conn.vouched += 1
        try:
            suppress = cm.__exit__(*sys.exc_info())
        finally:
            conn.vouched -= 1
        if not suppress:
            raise
    else:
        conn.vouched += 1
        try:
            cm.__exit__(None, None, None)
        finally:
            conn.vouched -= 1


@asynccontextmanager
async def _avouched(conn: Any, cm: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
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


def _vouch(conn: Any) -> bool:
    """Vouch for the next operations on *conn* (until :func:`_unvouch`); False on a
    plain psycopg connection, which keeps no account."""
    if isinstance(conn, ServiceConnection | AsyncServiceConnection):
        conn.vouched += 1
        return True
    return False


def _unvouch(conn: Any) -> None:
    conn.vouched -= 1


def _clean_and_vouched(query: Any, conn: Any) -> bool:
    """Vouch for *query* if it is clean (the caller then unvouches); else mark dirty."""
    if is_clean(query, conn):
        return _vouch(conn)
    _dirty(conn)
    return False


def _dirty(conn: Any) -> None:
    """Mark the session dirty before a statement that may change it.  Not left to
    wait(): another thread's vouched-for statement on the same connection could be
    in flight at that moment."""
    if isinstance(conn, ServiceConnection | AsyncServiceConnection):
        conn.session_dirty = True


def _run_prologue(conn: psycopg.Connection[Any], prologue: Prologue) -> None:
    vouched = _vouch(conn)  # set_config(..., true): transaction-local by construction
    try:
        _prologue_cursor(conn).execute(prologue.query, prologue.params)
    finally:
        if vouched:
            _unvouch(conn)


async def _arun_prologue(conn: psycopg.AsyncConnection[Any], prologue: Prologue) -> None:
    vouched = _vouch(conn)
    try:
        await _prologue_cursor(conn).execute(prologue.query, prologue.params)
    finally:
        if vouched:
            _unvouch(conn)


def _prologue_cursor(conn: Any) -> Any:
    """The connection's reusable prologue cursor (a fresh one on a plain connection)."""
    if isinstance(conn, ServiceConnection | AsyncServiceConnection):
        return conn.prologue_cursor()
    return psycopg.AsyncCursor(conn) if isinstance(conn, psycopg.AsyncConnection) \
        else psycopg.Cursor(conn)


class _MergedInt(Dumper):
    """Quotes an int for the client-side merge.  psycopg's ClientCursor writes -1 as
    `` -1``, so ``%s::text`` would become ``-(1::text)``; in parentheses it means
    what server-side binding means.  (The merge cursor never executes: no oid.)"""

    def dump(self, obj: Any) -> Buffer | None:
        return str(int(obj)).encode()

    def quote(self, obj: Any) -> Buffer:
        value = str(int(obj)).encode()
        return b"(" + value + b")" if obj < 0 else value


class _MergedFloat(FloatDumper):
    def quote(self, obj: Any) -> Buffer:
        value = bytes(super().quote(obj))
        return b"(" + value.lstrip() + b")" if value.startswith(b" -") else value


class _MergedDecimal(DecimalDumper):
    def quote(self, obj: Any) -> Buffer:
        value = bytes(super().quote(obj))
        return b"(" + value.lstrip() + b")" if value.startswith(b" -") else value


def _with_merge_dumpers(cur: Any) -> Any:
    """Register the parenthesising number dumpers on a merge-only ClientCursor."""
    cur.adapters.register_dumper(int, _MergedInt)
    cur.adapters.register_dumper(float, _MergedFloat)
    cur.adapters.register_dumper(Decimal, _MergedDecimal)
    return cur


def _joined(cursor: Any, prologue: Prologue, query: Any, params: Any, prepare: bool | None,
            binary: bool | None) -> str | None:
    """The prologue and *query* as one simple-protocol text, or None when this
    execute must take the pipeline path (see the module docstring)."""
    if prepare or (binary if binary is not None else cursor.format == Format.BINARY):
        return None
    if not (type(query) is str or isinstance(query, bytes | sql.SQL | sql.Composed)):
        return None  # e.g. a t-string: leave it to psycopg's own path
    conn = cursor._conn
    merger = conn.merge_cursor() if isinstance(
        conn, ServiceConnection | AsyncServiceConnection) else (
        _with_merge_dumpers(psycopg.AsyncClientCursor(conn) if isinstance(
            conn, psycopg.AsyncConnection) else psycopg.ClientCursor(conn)))
    try:
        # Mogrify with params=None leaves '%' alone, as server-side binding does.
        merged: str = merger.mogrify(query, params)
    except (psycopg.Error, TypeError, ValueError):
        # Not mergeable on the client (an adapter without text quoting, a wrong
        # number of parameters ...): psycopg's own path accepts it or raises its
        # own error, as without a request context.
        return None
    return prologue.simple + merged


class CleanCursor(psycopg.Cursor[TupleRow]):
    """Cursor that vouches for the statements proven free of session effects."""

    def execute(
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
            _dirty(conn)
            return super().execute(query, params, prepare=prepare, binary=binary)
        if not isinstance(conn, ServiceConnection):
            return super().execute(query, params, prepare=prepare, binary=binary)
        conn.vouched += 1
        try:
            return super().execute(query, params, prepare=prepare, binary=binary)
        finally:
            conn.vouched -= 1

    def executemany(self, query: Any, params_seq: Iterable[Any], *,
                    returning: bool = False) -> None:
        conn = self._conn
        if not _clean_and_vouched(query, conn):
            return super().executemany(query, params_seq, returning=returning)
        try:
            return super().executemany(query, params_seq, returning=returning)
        finally:
            _unvouch(conn)

    def stream(self, query: Any, params: Any = None, *, binary: bool | None = None,
               size: int = 1) -> Iterator[TupleRow]:
        rows = super().stream(query, params, binary=binary, size=size)
        assert isinstance(rows, Generator)
        if not is_clean(query, self._conn):
            _dirty(self._conn)
            yield from rows
            return
        # Vouch step by step, never across a yield: the caller's code runs there.
        try:
            while True:
                vouched = _vouch(self._conn)
                try:
                    row = next(rows)
                except StopIteration:
                    return
                finally:
                    if vouched:
                        _unvouch(self._conn)
                yield row
        finally:
            vouched = _vouch(self._conn)
            try:
                rows.close()
            finally:
                if vouched:
                    _unvouch(self._conn)

    @contextmanager
    def copy(self, statement: Any, params: Any = None, *,
             writer: Any = None) -> Iterator[psycopg.Copy]:
        conn = self._conn
        if not is_clean(statement, conn):
            _dirty(conn)
            with super().copy(statement, params, writer=writer) as copy:
                yield copy
            return
        # While COPY runs the connection accepts nothing else, so the whole block
        # is one operation: the clean COPY statement.
        vouched = _vouch(conn)
        try:
            with super().copy(statement, params, writer=writer) as copy:
                yield copy
        finally:
            if vouched:
                _unvouch(conn)


class ContextCursor(CleanCursor):
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
        conn = self._conn
        vouched = _clean_and_vouched(query, conn)
        try:
            if self._pgconn.pipeline_status:  # the caller's pipeline: just queue ahead
                _run_prologue(conn, prologue)
                return super().execute(query, params, prepare=prepare, binary=binary)
            joined = _joined(self, prologue, query, params, prepare, binary)
            if joined is not None:
                # psycopg.Cursor's own execute: the joined text (a new one per user
                # id) is judged by *query* above, not cached, never prepared.
                psycopg.Cursor.execute(self, joined, prepare=False)
                if self.nextset():
                    return self
                # No result after the prologue's: *query* held no statement (empty,
                # only comments).  Nothing ran; give it psycopg's own treatment.
            with conn.pipeline():
                _run_prologue(conn, prologue)
                super().execute(query, params, prepare=prepare, binary=binary)
            return self
        finally:
            if vouched:
                _unvouch(conn)

    def executemany(self, query: Any, params_seq: Iterable[Any], *,
                    returning: bool = False) -> None:
        prologue = self._prologue()
        if prologue is None:
            return super().executemany(query, params_seq, returning=returning)
        conn = self._conn
        vouched = _clean_and_vouched(query, conn)
        try:
            with conn.pipeline():  # executemany rides it: one implicit transaction
                _run_prologue(conn, prologue)
                super().executemany(query, params_seq, returning=returning)
        finally:
            if vouched:
                _unvouch(conn)
        return None

    def stream(self, query: Any, params: Any = None, *, binary: bool | None = None,
               size: int = 1) -> Iterator[TupleRow]:
        prologue = self._prologue()
        if prologue is not None and _needs_separate_statement(self._conn, "stream()"):
            _run_prologue(self._conn, prologue)
        yield from super().stream(query, params, binary=binary, size=size)

    @contextmanager
    def copy(self, statement: Any, params: Any = None, *,
             writer: Any = None) -> Iterator[psycopg.Copy]:
        prologue = self._prologue()
        if prologue is not None and _needs_separate_statement(self._conn, "COPY"):
            _run_prologue(self._conn, prologue)
        with super().copy(statement, params, writer=writer) as copy:
            yield copy


class AsyncCleanCursor(psycopg.AsyncCursor[TupleRow]):
    """The asyncio twin of :class:`CleanCursor`."""

    async def execute(
        self,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        conn = self._conn
        if not _clean_and_vouched(query, conn):
            return await super().execute(query, params, prepare=prepare, binary=binary)
        try:
            return await super().execute(query, params, prepare=prepare, binary=binary)
        finally:
            _unvouch(conn)

    async def executemany(self, query: Any, params_seq: Iterable[Any], *,
                          returning: bool = False) -> None:
        conn = self._conn
        if not _clean_and_vouched(query, conn):
            return await super().executemany(query, params_seq, returning=returning)
        try:
            return await super().executemany(query, params_seq, returning=returning)
        finally:
            _unvouch(conn)

    async def stream(self, query: Any, params: Any = None, *, binary: bool | None = None,
                     size: int = 1) -> AsyncIterator[TupleRow]:
        rows = super().stream(query, params, binary=binary, size=size)
        if not is_clean(query, self._conn):
            _dirty(self._conn)
            async for row in rows:
                yield row
            return
        try:
            while True:
                vouched = _vouch(self._conn)
                try:
                    row = await anext(rows)
                except StopAsyncIteration:
                    return
                finally:
                    if vouched:
                        _unvouch(self._conn)
                yield row
        finally:
            vouched = _vouch(self._conn)
            try:
                await rows.aclose()  # type: ignore[attr-defined]
            finally:
                if vouched:
                    _unvouch(self._conn)

    @asynccontextmanager
    async def copy(self, statement: Any, params: Any = None, *,
                   writer: Any = None) -> AsyncIterator[psycopg.AsyncCopy]:
        conn = self._conn
        if not is_clean(statement, conn):
            _dirty(conn)
            async with super().copy(statement, params, writer=writer) as copy:
                yield copy
            return
        vouched = _vouch(conn)
        try:
            async with super().copy(statement, params, writer=writer) as copy:
                yield copy
        finally:
            if vouched:
                _unvouch(conn)


class AsyncContextCursor(AsyncCleanCursor):
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
        conn = self._conn
        vouched = _clean_and_vouched(query, conn)
        try:
            if self._pgconn.pipeline_status:
                await _arun_prologue(conn, prologue)
                return await super().execute(query, params, prepare=prepare, binary=binary)
            joined = _joined(self, prologue, query, params, prepare, binary)
            if joined is not None:
                await psycopg.AsyncCursor.execute(self, joined, prepare=False)
                if self.nextset():
                    return self
            async with conn.pipeline():
                await _arun_prologue(conn, prologue)
                await super().execute(query, params, prepare=prepare, binary=binary)
            return self
        finally:
            if vouched:
                _unvouch(conn)

    async def executemany(self, query: Any, params_seq: Iterable[Any], *,
                          returning: bool = False) -> None:
        prologue = self._prologue()
        if prologue is None:
            return await super().executemany(query, params_seq, returning=returning)
        conn = self._conn
        vouched = _clean_and_vouched(query, conn)
        try:
            async with conn.pipeline():
                await _arun_prologue(conn, prologue)
                await super().executemany(query, params_seq, returning=returning)
        finally:
            if vouched:
                _unvouch(conn)
        return None

    async def stream(self, query: Any, params: Any = None, *, binary: bool | None = None,
                     size: int = 1) -> AsyncIterator[TupleRow]:
        prologue = self._prologue()
        if prologue is not None and _needs_separate_statement(self._conn, "stream()"):
            await _arun_prologue(self._conn, prologue)
        async for row in super().stream(query, params, binary=binary, size=size):
            yield row

    @asynccontextmanager
    async def copy(self, statement: Any, params: Any = None, *,
                   writer: Any = None) -> AsyncIterator[psycopg.AsyncCopy]:
        prologue = self._prologue()
        if prologue is not None and _needs_separate_statement(self._conn, "COPY"):
            await _arun_prologue(self._conn, prologue)
        async with super().copy(statement, params, writer=writer) as copy:
            yield copy


def _vouching(method: Callable[..., T]) -> Callable[..., T]:
    """Wrap a named cursor's FETCH/MOVE/CLOSE: they only read the cursor."""
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        vouched = _vouch(self._conn)
        try:
            return method(self, *args, **kwargs)
        finally:
            if vouched:
                _unvouch(self._conn)
    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


def _avouching(method: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        vouched = _vouch(self._conn)
        try:
            return await method(self, *args, **kwargs)
        finally:
            if vouched:
                _unvouch(self._conn)
    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


class ContextServerCursor(psycopg.ServerCursor[TupleRow]):
    """Named cursor (``conn.cursor(name=...)``) that carries the request context and
    keeps the session account: a cursor ``WITH HOLD`` outlives its transaction, so it
    makes the session dirty; ``DECLARE`` of a dirty query does too."""

    def execute(self, query: Any, params: Any = None, *, binary: bool | None = None,
                **kwargs: Any) -> Self:
        conn = self._conn
        prologue: Prologue | None = getattr(conn, "request_prologue", None)
        # DECLARE cannot be pipelined: apply the context first, in the transaction
        # (a named cursor without hold needs one anyway).
        if prologue is not None and _needs_separate_statement(conn, "A named cursor"):
            _run_prologue(conn, prologue)
        if (self.withhold or not is_clean(query, conn)) \
                and isinstance(conn, ServiceConnection):
            conn.session_dirty = True
        vouched = _vouch(conn)  # the account was settled just above
        try:
            return super().execute(query, params, binary=binary, **kwargs)
        finally:
            if vouched:
                _unvouch(conn)

    fetchone = _vouching(psycopg.ServerCursor.fetchone)
    fetchmany = _vouching(psycopg.ServerCursor.fetchmany)
    fetchall = _vouching(psycopg.ServerCursor.fetchall)
    scroll = _vouching(psycopg.ServerCursor.scroll)
    close = _vouching(psycopg.ServerCursor.close)
    __next__ = _vouching(psycopg.ServerCursor.__next__)


class AsyncContextServerCursor(psycopg.AsyncServerCursor[TupleRow]):
    """The asyncio twin of :class:`ContextServerCursor`."""

    async def execute(self, query: Any, params: Any = None, *,
                      binary: bool | None = None, **kwargs: Any) -> Self:
        conn = self._conn
        prologue: Prologue | None = getattr(conn, "request_prologue", None)
        if prologue is not None and _needs_separate_statement(conn, "A named cursor"):
            await _arun_prologue(conn, prologue)
        if (self.withhold or not is_clean(query, conn)) \
                and isinstance(conn, AsyncServiceConnection):
            conn.session_dirty = True
        vouched = _vouch(conn)
        try:
            return await super().execute(query, params, binary=binary, **kwargs)
        finally:
            if vouched:
                _unvouch(conn)

    fetchone = _avouching(psycopg.AsyncServerCursor.fetchone)
    fetchmany = _avouching(psycopg.AsyncServerCursor.fetchmany)
    fetchall = _avouching(psycopg.AsyncServerCursor.fetchall)
    scroll = _avouching(psycopg.AsyncServerCursor.scroll)
    close = _avouching(psycopg.AsyncServerCursor.close)
    __anext__ = _avouching(psycopg.AsyncServerCursor.__anext__)


__all__ = [
    "AsyncCleanCursor",
    "AsyncContextCursor",
    "AsyncContextServerCursor",
    "AsyncServiceConnection",
    "CleanCursor",
    "ContextCursor",
    "ContextServerCursor",
    "ServiceConnection",
    "make_prologue",
]
