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
Where each part lives: the context's value (:class:`Prologue`) in
:mod:`.context_value`; the fast path's statement rewriting in
:mod:`.statement_merge`; the session account in :mod:`.session_account`; the
connection class in :mod:`.service_connection` and the cursors in :mod:`.cursor`,
both generated from their async sources (``*_async.py``) by
``tools/async_to_sync.py``.  This module is the import path for all of them.
"""

from .context_value import Prologue, make_prologue, quote_text
from .cursor import CleanCursor, ContextCursor, ContextServerCursor
from .cursor_async import AsyncCleanCursor, AsyncContextCursor, AsyncContextServerCursor
from .service_connection import ServiceConnection
from .service_connection_async import AsyncServiceConnection
from .session_account import is_clean

__all__ = [
    "AsyncCleanCursor",
    "AsyncContextCursor",
    "AsyncContextServerCursor",
    "AsyncServiceConnection",
    "CleanCursor",
    "ContextCursor",
    "ContextServerCursor",
    "Prologue",
    "ServiceConnection",
    "is_clean",
    "make_prologue",
    "quote_text",
]
