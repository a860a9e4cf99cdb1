"""The psycopg_pool class of a service pool: psycopg_pool's pool with the reconnect
policy of :mod:`.outage` (bounded jittered retries, one attempt at a time, one log
line per outage).

``reconnecting_pool_async.py`` is the source; ``reconnecting_pool.py`` is generated
from it by ``tools/async_to_sync.py`` (edit this one, then run the tool).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic

from psycopg_pool import AsyncConnectionPool
from psycopg_pool.abc import ACT
from psycopg_pool.base import AttemptWithBackoff

from .outage import Backoff, Outage, quiet_pool_logs


class AsyncReconnectingPool(AsyncConnectionPool[ACT], Generic[ACT]):
    """An :class:`~psycopg_pool.AsyncConnectionPool` whose lost connections come back
    within about :data:`.outage.MAX_DELAY_S` of the server, without a storm while it
    is down.  *target* names the server(s) in the outage log lines (no credentials);
    *on_failure* runs after each failed attempt (it must not block: the Patroni watch's
    poke)."""

    def __init__(self, *args: Any, target: str,
                 on_failure: Callable[[], None] | None = None, **kwargs: Any) -> None:
        name = kwargs.get("name") or "pool"
        self.outage = Outage(name, target)
        self.on_failure = on_failure
        quiet_pool_logs(name)
        super().__init__(*args, **kwargs)

    async def _connect(self, timeout: float | None = None) -> ACT:
        refused = self.outage.gate()
        if refused is not None:
            raise refused
        try:
            conn = await super()._connect(timeout)
        except Exception as exc:
            self.outage.failed(exc)
            if self.on_failure is not None:
                self.on_failure()
            raise
        self.outage.succeeded()
        return conn

    async def _add_connection(self, attempt: AttemptWithBackoff | None,
                              growing: bool = False) -> None:
        await super()._add_connection(
            attempt or Backoff(timeout=self.reconnect_timeout), growing)
