"""DatabaseWrapper: Django's PostgreSQL backend plus the location registry.

Each new connection of an alias whose settings name a service (``EDULINK_SERVICE``,
set by ..settings) consults the registry of the alias's configured (home)
server, cached for ``location.TTL_S`` per process:

- at home (never moved, or moved back): the connection Django would make, and the
  registry refresh, when one is due, runs on that very connection (no extra one);
- moved: a connection to the new location with the same role, password and options,
  SCRAM required (``location.located_params``). With Django's pool (``pool=True``,
  Django 5.1+) it comes from a pool of that location's own, made like Django's home
  pool (same sizes, timeout, checks, and Django's ``_configure_connection`` as its
  configure callback), so moved connections are pooled and capped as at home;
- frozen (a cutover in progress) on a writable alias: wait, at most
  ``FREEZE_WAIT_S``, then go where the registry then points.

Either way the connection then goes through Django's own ``init_connection_state``
unchanged: time zone, role and isolation level are set exactly as Django sets them
(by the pool's configure callback when pooled, else on the connection itself).

One connection attempt per checkout: when the home server cannot be reached to read
the registry, a service at home gets that connection error as it is (no retry), and
a moved one goes to its last known location.

A statement already sent when a cutover revokes the old location's writes gets
Django's ProgrammingError (permission denied); the freeze announced beforehand
makes that rare (see docs/move-service.md).
"""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from django.db import OperationalError as DjangoOperationalError
from django.db.backends.postgresql import base
from django.db.utils import DatabaseErrorWrapper

from ...config import host_label
from ...connection_manager import FREEZE_WAIT_S
from ...connections import location, patroni, registry_read
from ...connections.outage import connection_lost_error, lost_connection, server_label
from ...connections.reconnecting_pool import ReconnectingPool
from ...core import credentials
from ...core.errors import ServerConnectionLostError

SERVICE_KEY = "EDULINK_SERVICE"  # ..settings.SERVICE_KEY (not imported: independent)
READONLY_KEY = "EDULINK_READONLY"
CREDENTIALS_KEY = "EDULINK_CREDENTIALS_FILE"
TRACE_KEY = "EDULINK_TRACE"  # ..settings.TRACE_KEY: span attributes when tracing


class _DjangoConnectionLost(DjangoOperationalError,  # type: ignore[misc]
                            ServerConnectionLostError):
    """What a Django query raises when the server goes away during it: Django's
    ``OperationalError`` (so Django's own handling applies) that is also edulink-db's
    :class:`ServerConnectionLostError`, naming the server and the reason."""


class _ErrorWrapper(DatabaseErrorWrapper):  # type: ignore[misc]
    """Django's error wrapper, except that a lost connection of a service alias raises
    :class:`_DjangoConnectionLost` instead of a bare OperationalError."""

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        wrapper = self.wrapper
        conn = wrapper.connection
        if isinstance(exc_value, psycopg.OperationalError) and conn is not None \
                and wrapper.settings_dict.get(SERVICE_KEY) and lost_connection(conn, exc_value):
            wrapper.errors_occurred = True
            raise connection_lost_error(
                wrapper.settings_dict[SERVICE_KEY], _server_of(conn, wrapper.settings_dict),
                exc_value, _DjangoConnectionLost,
            ).with_traceback(traceback) from exc_value
        super().__exit__(exc_type, exc_value, traceback)


def _server_of(conn: psycopg.Connection[Any], settings_dict: dict[str, Any]) -> str:
    try:
        return server_label(conn)
    except psycopg.Error:  # the connection is already finished: name what was configured
        return host_label({"host": settings_dict.get("HOST"), "port": settings_dict.get("PORT")})


class _HomeUnreachable(Exception):  # an internal signal: it never escapes
    """Connecting to the home server (to read the registry) failed: __cause__."""


class DatabaseWrapper(base.DatabaseWrapper):  # type: ignore[misc]
    """Django's PostgreSQL DatabaseWrapper whose new connections follow the registry."""

    # Where this wrapper's current connection lives (None: home). Set before Django's
    # get_new_connection runs, and kept until the next one, so that `pool` (used by
    # Django to get, configure and give back the connection) is that location's pool.
    _edulink_where: str | None = None
    # (alias, location) -> the pool of a moved service's alias there; process-wide,
    # as Django's own _connection_pools (keyed by alias) is.
    _edulink_pools: ClassVar[dict[tuple[str, str], Any]] = {}
    _edulink_pools_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        attributes = self.settings_dict.get(TRACE_KEY)
        if attributes:
            # Installed first, so it is the outermost wrapper: a span covers whatever
            # wrappers the application adds. Without TRACE_KEY nothing is installed.
            from ...connections import tracing

            self.execute_wrappers.append(tracing.execute_wrapper(attributes))

    @cached_property
    def wrap_database_errors(self) -> DatabaseErrorWrapper:
        return _ErrorWrapper(self)

    @property
    def pool(self) -> Any:
        self._edulink_size_pool()
        home_pool = getattr(super(), "pool", None)  # Django < 5.1 has no pool
        if home_pool is not None and not isinstance(home_pool, ReconnectingPool):
            home_pool = self._edulink_reconnecting(home_pool)
        where = self._edulink_where
        if home_pool is None or where is None:
            return home_pool
        key = (self.alias, where)
        pool = self._edulink_pools.get(key)
        if pool is None:
            with self._edulink_pools_lock:
                pool = self._edulink_pools.get(key)
                if pool is None:
                    pool = self._edulink_pools[key] = self._located_pool(home_pool, where)
        return pool

    def _edulink_size_pool(self) -> None:
        """Before Django builds this alias's pool: its min and max size from the
        connection budget (connections/budget.py), as the service's other pools, unless
        OPTIONS["pool"] sets them -- then they must fit the role's CONNECTION LIMIT."""
        options = self.settings_dict["OPTIONS"]
        wanted, name = options.get("pool"), self.settings_dict.get(SERVICE_KEY)
        pools = getattr(self, "_connection_pools", None)  # Django < 5.1: no pool
        if not wanted or name is None or pools is None or self.alias in pools:
            return  # sized once per pool: an opened pool is in _connection_pools
        from ...config import load_settings, pooler_mode
        from ...connections import budget

        settings = load_settings()
        topology = settings.topology()
        service = topology.service(name)
        params = self.get_connection_params()
        with psycopg.connect(**params) as conn:
            limit = budget.held_limit(conn, service, topology)
        given = dict(wanted) if isinstance(wanted, dict) else {}
        pooler = pooler_mode(settings, params)
        if "max_size" in given or "min_size" in given:
            top = given.get("max_size") or given["min_size"]
            budget.check_fit(service, int(top), budget.processes(settings, service), limit,
                             pooler=pooler, setting='OPTIONS["pool"] max_size/min_size')
        else:
            size = budget.pool_size(settings, service, limit, pooler=pooler)
            given.update(min_size=size.min_size, max_size=size.max_size)
        options["pool"] = given

    def _edulink_reconnecting(self, django_pool: Any) -> Any:
        """Django's freshly built (never opened) home pool, swapped for the same pool
        with edulink-db's reconnect policy (connections/outage.py): Django builds a
        plain psycopg_pool, whose retries back off to seconds after an outage."""
        with self._edulink_pools_lock:
            current = self._connection_pools.get(self.alias)
            if isinstance(current, ReconnectingPool):
                return current
            cluster = self._edulink_cluster()
            kwargs = dict(django_pool.kwargs)
            if cluster is None:
                replacement = self._pool_like(django_pool, kwargs, django_pool.name)
            else:
                # Django reads the parameters once, when it builds its pool: the leader
                # must be looked up again for each new connection instead.
                configured = {key: kwargs.pop(key) for key in
                              ("host", "port", "hostaddr", "target_session_attrs")
                              if key in kwargs}
                replacement = self._pool_like(
                    django_pool, kwargs, django_pool.name,
                    conninfo=lambda: patroni.leader_member_conninfo(cluster, configured),
                    on_failure=cluster.poke)
                replacement.outage.target = host_label(configured)
            self._connection_pools[self.alias] = replacement
        django_pool.close()  # never opened: closing it only marks it closed
        return replacement

    def _located_pool(self, home_pool: Any, where: str) -> Any:
        """A pool like Django's *home_pool*, connecting to *where*."""
        return self._pool_like(home_pool, location.located_params(dict(home_pool.kwargs),
                                                                  where),
                               f"{home_pool.name}@{where}")

    def _pool_like(self, home_pool: Any, kwargs: dict[str, Any], name: str,
                   conninfo: Any = "", on_failure: Any = None) -> Any:
        """A pool with *home_pool*'s options and edulink-db's reconnect policy."""
        return ReconnectingPool(
            conninfo, kwargs=kwargs, target=host_label(kwargs), on_failure=on_failure,
            open=False, configure=self._configure_connection,
            check=home_pool._check,  # Django's choice (CONN_HEALTH_CHECKS)
            min_size=home_pool.min_size, max_size=home_pool.max_size,
            name=name, timeout=home_pool.timeout,
            max_waiting=home_pool.max_waiting, max_lifetime=home_pool.max_lifetime,
            max_idle=home_pool.max_idle, reconnect_timeout=home_pool.reconnect_timeout,
            num_workers=home_pool.num_workers)

    def close_pool(self) -> None:
        """Close the home pool (Django's) and every location's pool of this alias."""
        with self._edulink_pools_lock:
            located = [self._edulink_pools.pop(k) for k in list(self._edulink_pools)
                       if k[0] == self.alias]
        for pool in located:
            pool.close()
        where, self._edulink_where = self._edulink_where, None
        try:
            super().close_pool()
        finally:
            self._edulink_where = where

    def _drop_stale_pools(self, where: str | None) -> None:
        # The service moved again (or back): pools of its earlier locations go. Their
        # checked-out connections are closed when given back to a closed pool.
        with self._edulink_pools_lock:
            stale = [self._edulink_pools.pop(k) for k in list(self._edulink_pools)
                     if k[0] == self.alias and k[1] != where]
        for pool in stale:
            threading.Thread(target=pool.close, name=f"close {pool.name}",
                             daemon=True).start()

    def get_connection_params(self) -> dict[str, Any]:
        """Django's parameters, with the password as the service's credential file has
        it now (one stat; re-read only when the file changed): after a rotation, the
        next connection logs in with the new password.  Django's pool (``pool=True``)
        takes these once, when it is created."""
        params: dict[str, Any] = super().get_connection_params()
        path = self.settings_dict.get(CREDENTIALS_KEY)
        if path and "password" in params:
            params["password"] = credentials.load(Path(path)).params["password"]
        leader = self._edulink_leader()
        if leader is not None:
            params.update(patroni.member_params(leader), target_session_attrs="read-write")
        return params

    def _edulink_cluster(self) -> patroni.PatroniWatch | None:
        """The Patroni watch of a writable service alias (DATABASE_PATRONI_URLS)."""
        if not self.settings_dict.get(SERVICE_KEY) or self.settings_dict.get(READONLY_KEY):
            return None
        from ...config import load_settings

        return patroni.watch_for(load_settings())

    def _edulink_leader(self) -> patroni.Member | None:
        cluster = self._edulink_cluster()
        return cluster.leader() if cluster is not None else None

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        try:
            return self._edulink_new_connection(conn_params)
        except psycopg.OperationalError:
            cluster = self._edulink_cluster()
            if cluster is not None:
                cluster.poke()  # under Patroni: the leader may have changed
            raise

    def _edulink_new_connection(self, conn_params: dict[str, Any]) -> Any:
        service = self.settings_dict.get(SERVICE_KEY)
        self._edulink_where = None
        if not service:
            return super().get_new_connection(conn_params)
        registry = location.registry_for(conn_params)
        home: list[Any] = []

        def run(query: Any) -> location.Rows:
            if not home or home[0].closed:
                try:
                    home[:] = [super(DatabaseWrapper, self).get_new_connection(conn_params)]
                except psycopg.Error as exc:
                    raise _HomeUnreachable from exc
            conn = home[0]
            with psycopg.Cursor(conn) as cur:
                rows: location.Rows = cur.execute(query, prepare=False).fetchall()
            if not conn.autocommit:
                conn.rollback()  # leave it idle: Django sets autocommit next
            return rows

        try:
            loc = registry_read.get(registry, service, run)
            if loc.frozen and not self.settings_dict.get(READONLY_KEY):
                loc = registry_read.wait_unfrozen(registry, service, run, FREEZE_WAIT_S)
        except _HomeUnreachable as unreachable:
            error = unreachable.__cause__
            assert isinstance(error, psycopg.Error)
            loc = registry.cached(service)
            if loc.where is None:
                raise error from None  # at home: the one attempt's own error
            registry.postpone(error)  # moved: carry on where it was last seen
        if self._edulink_pools:
            self._drop_stale_pools(loc.where)
        if loc.where is None:
            return home[0] if home else super().get_new_connection(conn_params)
        if home:
            self._edulink_release(home[0])
        self._edulink_where = loc.where
        return super().get_new_connection(location.located_params(conn_params, loc.where))

    def _edulink_release(self, conn: Any) -> None:
        if getattr(conn, "_pool", None) is not None:
            conn._pool.putconn(conn)
        else:
            conn.close()
