"""One connection pool per service, each logged in as that service's runtime role.

    from microservices.shared.database.connection_manager import connection_manager

    with connection_manager.get_connection('user_service') as conn:
        with conn.cursor() as cursor:
            cursor.execute("SELECT * FROM user_schema.profiles_userprofile")

Transaction semantics of a checkout: connections are in autocommit mode, so a
plain statement costs one round trip and commits on its own.  Group statements
with ``with conn.transaction():``.  With ``user_id`` or ``readonly=True`` the
whole ``with`` block is one transaction: it commits when the block exits
normally and rolls back if it raises.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .config import Settings, conninfo_string, load_settings, service_conninfo
from .errors import ServiceConnectionError
from .topology import Service


class ConnectionManager:
    """Lazily opened, thread-safe pools keyed by service."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._pools: dict[str, ConnectionPool[psycopg.Connection[Any]]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ConnectionManager(pools={sorted(self._pools)})"

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def _service(self, name: str) -> Service:
        return self.settings.topology().service(name)

    def _pool(self, service: Service) -> ConnectionPool[psycopg.Connection[Any]]:
        pool = self._pools.get(service.name)
        if pool is not None:
            return pool
        with self._lock:
            pool = self._pools.get(service.name)
            if pool is None:
                settings = self.settings
                params = service_conninfo(service, settings)
                pool = ConnectionPool(
                    conninfo_string(params),
                    name=service.name,
                    min_size=settings.database_pool_size,
                    max_size=settings.database_pool_size + settings.database_max_overflow,
                    timeout=settings.database_pool_timeout,
                    kwargs={"autocommit": True, "prepare_threshold": None},
                    open=False,
                )
                pool.open(wait=False)
                self._pools[service.name] = pool
            return pool

    @contextmanager
    def get_connection(
        self, service: str, user_id: str | None = None, readonly: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """Yield a connection logged in as *service*'s runtime role."""
        svc = self._service(service)
        pool = self._pool(svc)
        try:
            with pool.connection() as conn:
                if user_id is None and not readonly:
                    yield conn
                    return
                with conn.transaction():
                    if readonly:
                        conn.execute("SET TRANSACTION READ ONLY")
                    if user_id is not None:
                        conn.execute(
                            "SELECT pg_catalog.set_config('app.current_user_id', %s, true)",
                            [str(user_id)])
                    yield conn
        except PoolTimeout:
            raise ServiceConnectionError(
                f"No connection for service {svc.name!r} within "
                f"{self.settings.database_pool_timeout}s (pool {pool.get_stats()})."
            ) from None

    def health_check(self, service: str) -> bool:
        """True if *service* can run a query now."""
        try:
            with self.get_connection(service) as conn:
                conn.execute("SELECT 1")
            return True
        except (psycopg.Error, ServiceConnectionError):
            return False

    def get_pool_stats(self, service: str) -> dict[str, int]:
        svc = self._service(service)
        stats = dict(self._pool(svc).get_stats())
        stats["checked_out"] = stats.get("pool_size", 0) - stats.get("pool_available", 0)
        return stats

    def close_all(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


connection_manager = ConnectionManager()
