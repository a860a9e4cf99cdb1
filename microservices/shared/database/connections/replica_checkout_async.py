"""The checkout of ``get_connection(..., replica=True)``: a healthy replica's
connection, else the primary's (:class:`.replicas.ReplicaSet` chooses).

``replica_checkout_async.py`` is the source; ``replica_checkout.py`` is generated from
it by ``tools/async_to_sync.py`` (edit this one, then run the tool).
"""

from __future__ import annotations

import asyncio  # sync:
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Protocol

from ..core.errors import ServiceConnectionError
from .replicas import C, P, Replica, ReplicaSet, lost_server, promoted


class AsyncCheckoutLike(Protocol[C]):
    """What a replica checkout needs of the checkout of one pool."""

    async def __aenter__(self) -> C: ...
    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...


class AsyncReplicaCheckout(Generic[P, C]):
    """``with`` block of ``get_connection(..., replica=True)``: a connection of a healthy
    replica, else of the primary.  A replica whose checkout fails (unreachable, refused
    login, pool timeout) or that was promoted is marked and another healthy replica, or
    else the primary, serves this block instead: the caller sees no error.  A replica
    lost *during* the block fails that block, as a primary would; it is marked down so
    the next block does not wait for the probe."""

    __slots__ = ("_conn", "_inner", "_make", "_primary", "_replica", "_set")

    def __init__(self, replica_set: ReplicaSet[P],
                 make: Callable[[P], AsyncCheckoutLike[C]],
                 primary: AsyncCheckoutLike[C]) -> None:
        self._set, self._make, self._primary = replica_set, make, primary
        self._inner: AsyncCheckoutLike[C] | None = None
        self._replica: Replica[P] | None = None
        self._conn: Any = None

    async def __aenter__(self) -> C:
        if not self._set.started:  # the first probe connects: not on the event loop
            await asyncio.to_thread(self._set.start)  # sync: self._set.start()
        # Each failed replica is marked, so the next choice is another one; only when
        # none is left does the primary serve (under Patroni it may be mid-switchover).
        for _ in range(len(self._set.replicas)):
            replica = self._set.choose()
            if replica is None:
                break
            inner = self._make(replica.pool)
            try:
                conn = await inner.__aenter__()
            except ServiceConnectionError as exc:
                self._set.mark_down(replica, str(exc))
                continue
            if not promoted(conn):
                self._set.checkout_ok(replica)
                self._inner, self._replica, self._conn = inner, replica, conn
                return conn
            self._set.mark_not_a_standby(replica)
            closing: Any = conn
            await closing.close()  # the pool drops a closed connection
            await inner.__aexit__(None, None, None)
        self._inner, self._replica = self._primary, None
        conn = await self._primary.__aenter__()
        self._set.count("primary")
        return conn

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        inner, replica = self._inner, self._replica
        assert inner is not None
        self._inner = self._replica = None
        if replica is not None and lost_server(exc, self._conn):
            self._set.mark_down(replica, f"connection lost ({type(exc).__name__})")
        elif replica is not None and promoted(self._conn):
            self._set.mark_not_a_standby(replica)
            await self._conn.close()
        self._conn = None
        await inner.__aexit__(exc_type, exc, tb)
