"""The session account: which operations on a pooled connection are vouched for.

Every psycopg operation on a service connection passes through its ``wait()``,
which marks the session dirty unless the operation was vouched for; the cursors
vouch for statements that :func:`is_clean` proves harmless (see
:mod:`.request_context`).  A plain psycopg connection keeps no account.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from .service_connection import ServiceConnection
from .service_connection_async import AsyncServiceConnection
from .session_state import statement_is_clean


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


def vouch(conn: Any) -> bool:
    """Vouch for the next operations on *conn* (until :func:`unvouch`); False on a
    plain psycopg connection, which keeps no account."""
    if isinstance(conn, ServiceConnection | AsyncServiceConnection):
        conn.vouched += 1
        return True
    return False


def unvouch(conn: Any) -> None:
    conn.vouched -= 1


def clean_and_vouched(query: Any, conn: Any) -> bool:
    """Vouch for *query* if it is clean (the caller then unvouches); else mark dirty."""
    if is_clean(query, conn):
        return vouch(conn)
    dirty(conn)
    return False


def dirty(conn: Any) -> None:
    """Mark the session dirty before a statement that may change it.  Not left to
    wait(): another thread's vouched-for statement on the same connection could be
    in flight at that moment."""
    if isinstance(conn, ServiceConnection | AsyncServiceConnection):
        conn.session_dirty = True
