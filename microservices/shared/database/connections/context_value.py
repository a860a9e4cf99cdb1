"""The request context's value: the statement that sets it (a :class:`Prologue`).

``make_prologue`` turns a checkout's user id and read-only flag into the
transaction-local ``set_config`` calls, once per checkout; the cursors of
:mod:`.cursor` send it with each statement (see :mod:`.request_context`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import psycopg
from psycopg.pq import TransactionStatus

from ..core.errors import RequestContextError

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


def needs_separate_statement(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
                             what: str) -> bool:
    """Whether *what* (COPY, stream(), a named cursor) must get the context from a
    statement of its own first: True inside a transaction, False in a failed one;
    outside a transaction it cannot carry the context at all and raises."""
    status = conn.pgconn.transaction_status
    if status == TransactionStatus.IDLE:
        raise RequestContextError(
            f"{what} with user_id/readonly must run inside 'with conn.transaction():' "
            "(it cannot be pipelined with the request context)."
        )
    return status == TransactionStatus.INTRANS
