"""The connection layer's seam for monitoring: what a pool asks of it, and who answers.

The pools never import monitoring (the layers contract in pyproject.toml forbids it).
Monitoring answers through a provider that the package root wires in
(``microservices.shared.database.__init__``); the provider is called, once, by the
first pool that opens with ``DATABASE_MONITORING_ENABLED``, so importing the package
imports no monitoring code and registers no metric.  Without a provider a pool runs
with plain cursors, as with monitoring off.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Settings


@dataclass(frozen=True)
class Instrumentation:
    """What a pool uses when monitoring is on.

    *monitor* returns the per-service object each of the pool's connections carries
    (``ServiceConnection.monitor``); the cursor classes record each statement on it.
    """

    monitor: Callable[[str, Settings], Any]
    cursor: type[Any]
    context_cursor: type[Any]
    async_cursor: type[Any]
    async_context_cursor: type[Any]


Provider = Callable[[], Instrumentation]

_lock = threading.Lock()
_provider: Provider | None = None
_instrumentation: Instrumentation | None = None


def set_provider(provider: Provider | None) -> None:
    """Install *provider* (None: remove it); the next :func:`instrumentation` calls it."""
    global _provider, _instrumentation
    with _lock:
        _provider, _instrumentation = provider, None


def instrumentation() -> Instrumentation | None:
    """The installed provider's instrumentation, built on first call; None without one."""
    global _instrumentation
    if _instrumentation is None and _provider is not None:
        with _lock:
            if _instrumentation is None and _provider is not None:
                _instrumentation = _provider()
    return _instrumentation
