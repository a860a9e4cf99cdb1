"""The fast path's statement rewriting: prologue and statement in one Query text.

The statement's parameters are merged on the client (``ClientCursor.mogrify``,
Django's default binding) behind the prologue's literal form, so one
simple-protocol message carries both (see :mod:`.request_context`).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Buffer, Dumper
from psycopg.pq import Format
from psycopg.types.numeric import DecimalDumper, FloatDumper

from .context_value import Prologue


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


def with_merge_dumpers(cur: Any) -> Any:
    """Register the parenthesising number dumpers on a merge-only ClientCursor."""
    cur.adapters.register_dumper(int, _MergedInt)
    cur.adapters.register_dumper(float, _MergedFloat)
    cur.adapters.register_dumper(Decimal, _MergedDecimal)
    return cur


def joined(cursor: Any, prologue: Prologue, query: Any, params: Any, prepare: bool | None,
           binary: bool | None, merger: Callable[[Any], Any]) -> str | None:
    """The prologue and *query* as one simple-protocol text, or None when this
    execute must take the pipeline path.  ``merger(conn)`` gives the ClientCursor
    that merges the parameters (asked for only when the statement can be joined)."""
    if prepare or (binary if binary is not None else cursor.format == Format.BINARY):
        return None
    if not (type(query) is str or isinstance(query, bytes | sql.SQL | sql.Composed)):
        return None  # e.g. a t-string: leave it to psycopg's own path
    merging = merger(cursor._conn)
    try:
        # Mogrify with params=None leaves '%' alone, as server-side binding does.
        merged: str = merging.mogrify(query, params)
    except (psycopg.Error, TypeError, ValueError):
        # Not mergeable on the client (an adapter without text quoting, a wrong
        # number of parameters ...): psycopg's own path accepts it or raises its
        # own error, as without a request context.
        return None
    return prologue.simple + merged
