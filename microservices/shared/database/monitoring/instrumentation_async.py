"""Timing every statement that goes through the connection manager.

The pools give their connections :class:`InstrumentedCursor` (or the context
variant) when monitoring is on (``DATABASE_MONITORING_ENABLED``, default true);
otherwise plain psycopg cursors, and this module costs nothing.  The per-statement
cost is two ``perf_counter`` calls, a dict lookup of the SQL string (its
fingerprint is computed once), and one pre-bound histogram observation:
``benchmarks/monitoring.py`` measures it against monitoring off.

``instrumentation_async.py`` is the source; ``instrumentation.py`` is generated from it
by ``tools/async_to_sync.py`` (edit this one, then run the tool).
"""

from __future__ import annotations

from collections.abc import Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Self

import psycopg

from ..connections.request_context import AsyncCleanCursor, AsyncContextCursor

if TYPE_CHECKING:
    from .monitor import ServiceMonitor


def _monitor(conn: Any) -> ServiceMonitor | None:
    # Pools hand out ServiceConnections, which always have the attribute.
    monitor: ServiceMonitor | None = conn.monitor
    return monitor


class AsyncInstrumentedCursor(AsyncCleanCursor):
    """A psycopg cursor that records each statement's duration and outcome."""

    async def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                      binary: bool | None = None) -> Self:
        monitor = _monitor(self._conn)
        if monitor is None:
            await super().execute(query, params, prepare=prepare, binary=binary)
            return self
        started = perf_counter()
        try:
            await super().execute(query, params, prepare=prepare, binary=binary)
        except psycopg.Error as exc:
            monitor.record_statement(query, perf_counter() - started, exc.sqlstate, self._conn)
            raise
        monitor.record_statement(query, perf_counter() - started, None, self._conn)
        return self

    async def executemany(self, query: Any, params_seq: Iterable[Any], *,
                          returning: bool = False) -> None:
        monitor = _monitor(self._conn)
        started = perf_counter()
        try:
            await super().executemany(query, params_seq, returning=returning)
        except psycopg.Error as exc:
            if monitor is not None:
                monitor.record_statement(query, perf_counter() - started, exc.sqlstate,
                                         self._conn)
            raise
        if monitor is not None:
            monitor.record_statement(query, perf_counter() - started, None, self._conn)


class AsyncInstrumentedContextCursor(AsyncInstrumentedCursor, AsyncContextCursor):
    """Records statements and carries the request context (MRO: timing outermost)."""
