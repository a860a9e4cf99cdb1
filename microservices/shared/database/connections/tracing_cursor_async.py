"""Cursor classes whose statements run in OpenTelemetry spans (:mod:`.tracing`), built
only when ``DATABASE_TRACING_ENABLED`` is on.

``tracing_cursor_async.py`` is the source; ``tracing_cursor.py`` is generated from it by
``tools/async_to_sync.py`` (edit this one, then run the tool).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Self

from .tracing import Statement, tracer


def traced_async_cursor(base: type[Any], attributes: Mapping[str, Any]) -> type[Any]:
    """A subclass of the cursor class *base* whose statements run in spans."""
    trace = tracer()
    attrs = dict(attributes)

    class AsyncTracedCursor(base):  # type: ignore[misc]
        async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Self:
            stmt = Statement(trace, attrs, query, self._conn)
            try:
                await super().execute(query, params, **kwargs)
            except BaseException as exc:
                stmt.failed(exc)
                raise
            finally:
                stmt.end()
            return self

        async def executemany(self, query: Any, params_seq: Iterable[Any],
                              **kwargs: Any) -> None:
            stmt = Statement(trace, attrs, query, self._conn)
            try:
                await super().executemany(query, params_seq, **kwargs)
            except BaseException as exc:
                stmt.failed(exc)
                raise
            finally:
                stmt.end()

    AsyncTracedCursor.__name__ = AsyncTracedCursor.__qualname__ = f"Traced{base.__name__}"
    return AsyncTracedCursor
