"""The connection manager: one pool per service, and the choice of pool per checkout
(the service's home server, a read replica, or where move-service put its schema)."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Awaitable
from typing import Any

import psycopg

from ..config import Settings, load_settings, replica_conninfos
from ..core.errors import DatabaseUnavailableError, ServiceConnectionError
from . import checkout, checkout_async, location, patroni, registry_read, replicas
from .checkout import Checkout
from .checkout_async import AsyncCheckout
from .move_watch import MoveWatch
from .pool import ServicePool
from .replica_checkout import ReplicaCheckout
from .replica_checkout_async import AsyncReplicaCheckout
from .request_context import AsyncServiceConnection, ServiceConnection, make_prologue

log = logging.getLogger("microservices.shared.database.connection_manager")


class ConnectionManager:
    """Lazily created, thread-safe pools keyed by service.

    Settings are read on first use (so importing the module never touches the
    environment); pass *settings* to use explicit ones.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._pools: dict[str, ServicePool] = {}
        self._aliases: dict[str, ServicePool] = {}
        self._replica_sets: dict[str, replicas.ReplicaSet[ServicePool] | None] = {}
        self._located: dict[str, ServicePool] = {}  # relocation hook: pools elsewhere
        self._lock = threading.Lock()
        _MANAGERS.add(self)

    def __repr__(self) -> str:
        return f"ConnectionManager(services={sorted(self._pools)})"

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def _entry(self, service: str) -> ServicePool:
        entry = self._aliases.get(service)
        if entry is not None:
            return entry
        with self._lock:
            svc = self.settings.topology().service(service)
            entry = self._pools.get(svc.name)
            if entry is None:
                entry = ServicePool(svc, self.settings)
                self._pools[svc.name] = entry
            self._aliases[service] = entry
            return entry

    def _replica_set(self, entry: ServicePool) -> replicas.ReplicaSet[ServicePool] | None:
        name = entry.service.name
        if name not in self._replica_sets:
            with self._lock:
                if name not in self._replica_sets:
                    settings = self.settings
                    self._replica_sets[name] = replicas.build(
                        name, replica_conninfos(entry.service, settings),
                        settings.database_replica_max_lag,
                        lambda params: ServicePool(entry.service, settings, params,
                                                    replica=True),
                        schema=entry.service.schema,
                        admit=None if entry.cluster is None
                        else patroni.replica_admission(entry.cluster))
        return self._replica_sets[name]

    def get_connection(self, service: str, user_id: object | None = None,
                       readonly: bool = False, *, replica: bool = False
                       ) -> Checkout | ReplicaCheckout[ServicePool, ServiceConnection]:
        """A connection logged in as *service*'s runtime role, for a ``with`` block.

        *service* may be ``'user'``, ``'user_service'`` or the role name.
        See the module docstring for what commits when.  ``replica=True`` reads from
        a read replica whose lag is within ``DATABASE_REPLICA_MAX_LAG`` (read-only
        connection), or from the primary when none qualifies (see
        :mod:`.connections.replicas`).

        Raises UnknownServiceError, ServiceAuthenticationError,
        ServiceConnectionError (server unreachable) or PoolExhaustedError.
        """
        home = self._entry(service)
        entry, moved = checkout.follow(home, self._located_pool, self.settings)
        if replica and entry is home:
            chosen = self._replica_set(home)
            if chosen is not None:
                # The primary stands in read-only too: a block that writes must fail
                # whether or not a replica qualifies at that moment.
                prologue = make_prologue(user_id, readonly)
                return ReplicaCheckout(
                    chosen, lambda pool: Checkout(pool, prologue),
                    Checkout(home, make_prologue(user_id, True), moved))
        # A moved service's replicas are the old server's: read its new primary.
        return Checkout(entry, make_prologue(user_id, readonly or replica), moved)

    def get_async_connection(self, service: str, user_id: object | None = None,
                             readonly: bool = False, *, replica: bool = False
                             ) -> AsyncCheckout | AsyncReplicaCheckout[
                                 ServicePool, AsyncServiceConnection]:
        """The asyncio twin of :meth:`get_connection` (``async with``); where the
        service lives is read when the block is entered, without blocking the loop."""
        home = self._entry(service)
        settings = self.settings

        def follow() -> Awaitable[tuple[ServicePool, MoveWatch]]:
            return checkout_async.afollow(home, self._located_pool, settings)

        if replica:
            chosen = self._replica_set(home)
            if chosen is not None and home.registry.cached(
                    home.service.name).where is None:
                prologue = make_prologue(user_id, readonly)
                return AsyncReplicaCheckout(
                    chosen, lambda pool: AsyncCheckout(pool, prologue),
                    AsyncCheckout(home, make_prologue(user_id, True), follow=follow))
        return AsyncCheckout(home, make_prologue(user_id, readonly or replica), follow=follow)

    def replica_status(self, service: str) -> list[dict[str, Any]]:
        """Each configured replica of *service* as its selector sees it: ``host``
        (host:port), ``state`` and ``lag_seconds``; ``[]`` without replicas."""
        chosen = self._replica_set(self._entry(service))
        if chosen is None:
            return []
        chosen.start()
        return chosen.snapshot()

    # -- relocation hook (issue 17: edulink-db move-service) ---------------------------
    # A moved service's pools, and its readers' pools, follow the location registry
    # (connections/location.py) of the service's home server, read through the
    # service's own pool there.
    def _located_pool(self, home: ServicePool, where: str) -> ServicePool:
        key = f"{home.service.name}@{where}"
        entry = self._located.get(key)
        if entry is None:
            with self._lock:
                entry = self._located.get(key)
                if entry is None:
                    entry = ServicePool(home.service, self.settings,
                                         location.located_params(home.params, where))
                    self._located[key] = entry
        return entry

    def get_reader_connection(self, service: str, reads: str, user_id: object | None = None,
                              readonly: bool = True) -> Checkout:
        """Like :meth:`get_connection`, on the server where service *reads*' schema lives
        (the same as *service*'s own unless one of them was moved)."""
        home = self._entry(service)
        owner = self.settings.topology().service(reads).name
        entry, moved = checkout.follow(home, self._located_pool, self.settings, owner)
        return Checkout(entry, make_prologue(user_id, readonly), moved)

    def location_of(self, service: str, via: str | None = None) -> str | None:
        """Where *service*'s schema lives (None: at home), as seen from *via*'s pool."""
        home = self._entry(via or service)
        owner = self.settings.topology().service(service).name
        return registry_read.get(home.registry, owner, checkout.runner(home)).where

    def health_check(self, service: str) -> bool:
        """True if *service* can run a query now (never raises for database errors)."""
        try:
            with self.get_connection(service) as conn:
                conn.execute("SELECT 1")
            return True
        except (psycopg.Error, ServiceConnectionError, DatabaseUnavailableError) as exc:
            log.warning("health check of %s failed: %s", service, exc)
            return False

    def get_pool_stats(self, service: str) -> dict[str, int | str]:
        """Counters of *service*'s pools (sync and async combined).

        Keys: service, pooler, min_size, max_size, size, available, checked_out,
        waiting, requests, wait_ms_total, errors, connections_lost, connection_errors.
        """
        return self._entry(service).as_dict()

    def _replica_entries(self, *, keep_async: bool) -> list[ServicePool]:
        """The replica pools to close; their sets are forgotten (rebuilt on next use)
        and their probe threads stopped.  With *keep_async*, a set with an open async
        pool stays (pools and probe thread alike) for :meth:`aclose_all`."""
        with self._lock:
            sets = [s for s in self._replica_sets.values() if s is not None]
            kept = {name: s for name, s in self._replica_sets.items() if s is not None
                    and keep_async and any(r.pool.has_async_pool for r in s.replicas)}
            self._replica_sets = dict(kept)
        for replica_set in sets:
            if replica_set not in kept.values():
                replica_set.close()
        return [r.pool for s in sets for r in s.replicas]

    def close_all(self) -> None:
        """Close every synchronous pool, the replicas' included.

        Async pools (primary and replica) are left to :meth:`aclose_all`: closing one
        is a coroutine of the event loop that runs its workers, which a synchronous
        caller cannot join.  A replica set with an async pool therefore stays known,
        so that a later ``aclose_all()`` still closes it.
        """
        replica_entries = self._replica_entries(keep_async=True)
        with self._lock:
            entries = (list(self._pools.values()) + list(self._located.values())
                       + replica_entries)
        for entry in entries:
            checkout.close_pool(entry)

    async def aclose_all(self) -> None:
        """Close every pool, async and sync, the replicas' included."""
        replica_entries = self._replica_entries(keep_async=False)
        with self._lock:
            entries = (list(self._pools.values()) + list(self._located.values())
                       + replica_entries)
            self._pools, self._aliases, self._located = {}, {}, {}
        for entry in entries:
            await checkout_async.aclose_pool(entry)  # async first, then sync
            checkout.close_pool(entry)

    def open_pool_stats(self) -> list[dict[str, Any]]:
        """:meth:`get_pool_stats` of each service whose pool is open (one checkout ran)."""
        return [entry.as_dict() for entry in list(self._pools.values()) if entry.is_open]

    def replica_reads(self) -> dict[tuple[str, str], int]:
        """``replica=True`` checkouts by (service, served_by: ``replica``/``primary``)."""
        totals: dict[tuple[str, str], int] = {}
        for replica_set in list(self._replica_sets.values()):
            if replica_set is not None:
                for served_by, count in replica_set.served.items():
                    key = (replica_set.service, served_by)
                    totals[key] = totals.get(key, 0) + count
        return totals


_MANAGERS: weakref.WeakSet[ConnectionManager] = weakref.WeakSet()


def open_pool_stats() -> list[dict[str, Any]]:
    """:meth:`ConnectionManager.open_pool_stats` of every manager in this process (the
    pool gauges of monitoring read them at scrape time)."""
    return [stats for manager in list(_MANAGERS) for stats in manager.open_pool_stats()]


def replica_reads() -> list[tuple[str, str, int]]:
    """``replica=True`` checkouts of every manager in this process, summed by (service,
    served_by) and sorted: ``(service, served_by, count)``."""
    totals: dict[tuple[str, str], int] = {}
    for manager in list(_MANAGERS):
        for key, count in manager.replica_reads().items():
            totals[key] = totals.get(key, 0) + count
    return [(service, served_by, n) for (service, served_by), n in sorted(totals.items())]


connection_manager = ConnectionManager()
