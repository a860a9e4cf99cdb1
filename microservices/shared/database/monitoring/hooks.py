"""Monitoring's answer to the connection layer's hook (:mod:`..connections.hooks`).

The package root installs :func:`instrumentation` as the provider; the first pool that
opens with monitoring on calls it, which registers the metrics (:func:`.metrics.enable`)
and gives pools the timing cursors of :mod:`.instrumentation`.
"""

from __future__ import annotations

from ..connections.hooks import Instrumentation
from . import metrics
from .instrumentation import InstrumentedContextCursor, InstrumentedCursor
from .instrumentation_async import AsyncInstrumentedContextCursor, AsyncInstrumentedCursor
from .monitor import monitors


def instrumentation() -> Instrumentation:
    """Turn monitoring on for this process's pools: register the metrics, and return the
    per-service monitors and the cursor classes that time each statement."""
    metrics.enable()
    return Instrumentation(
        monitor=monitors.get,
        cursor=InstrumentedCursor,
        context_cursor=InstrumentedContextCursor,
        async_cursor=AsyncInstrumentedCursor,
        async_context_cursor=AsyncInstrumentedContextCursor,
    )
