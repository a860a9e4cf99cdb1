"""One service's pool: a psycopg_pool of its runtime role plus the checkout policy.

How a checkout behaves (autocommit, request context, session reset, sizes) is described
in :mod:`microservices.shared.database.connection_manager`, the seed's import path.
"""

from __future__ import annotations

import asyncio
import logging
import select
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg.rows import tuple_row

from ..config import (
    Settings,
    conninfo_string,
    host_label,
    mask_dsn,
    password_source,
    service_conninfo,
)
from ..core.errors import (
    ConfigError,
    PoolExhaustedError,
    ServiceAuthenticationError,
    ServiceConnectionError,
)
from ..core.tls import explain
from ..topology import Service
from . import budget, hooks, location, patroni
from .outage import server_label
from .pool_config import pool_config
from .reconnecting_pool import ReconnectingPool
from .reconnecting_pool_async import AsyncReconnectingPool
from .request_context import (
    AsyncCleanCursor,
    AsyncContextCursor,
    AsyncContextServerCursor,
    AsyncServiceConnection,
    CleanCursor,
    ContextCursor,
    ContextServerCursor,
    Prologue,
    ServiceConnection,
)
from .session_state import RESET_SESSION

# The pools' log records keep the name they had before the split (log configurations
# and tests select them by logger name).
log = logging.getLogger("microservices.shared.database.connection_manager")


OK, SUSPECT, DEAD = "ok", "suspect", "dead"
REPLICA_CHECKOUT_TIMEOUT_S = 3
# A standby refuses SET TRANSACTION READ WRITE ("cannot set transaction read-write mode
# during recovery"), and needs no way out of read-only mode: it cannot hold temporary
# tables for DISCARD TEMP to drop.  The rest of the reset is valid there.
_READ_WRITE = "SET TRANSACTION READ WRITE; "
assert RESET_SESSION.startswith(_READ_WRITE)
REPLICA_RESET_SESSION = RESET_SESSION.removeprefix(_READ_WRITE)

# A connection used successfully less than this long ago can only be dead if the
# server went down *and came back* within the interval.  Measured on this
# machine kind with the embedded server, stop -> accepting connections again
# takes ~235 ms (the postmaster's stop alone ~106 ms), so 25 ms leaves a wide
# margin.  Skipping the check for such connections keeps the hot path free of
# syscalls: under 16 threads each extra GIL release costs a full GIL hand-off
# (benchmarks/connections.py shows it).
RECHECK_IDLE_AFTER_S = 0.025


def idle_state(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    """Whether an idle pooled connection is usable, without a round trip.

    A server that shuts down or terminates a backend sends FATAL, then closes
    the socket.  Nothing else arrives on an idle connection in normal
    operation (no LISTEN here), so a readable socket means trouble: consume
    what arrived -- libpq reads the FATAL first and notices the EOF on the next
    read.  The common case is one zero-timeout select(), about a microsecond.
    Anything that arrived without proving the connection dead makes it
    SUSPECT, and the caller confirms with a real round trip.
    """
    pgconn = conn.pgconn
    if pgconn.status != ConnStatus.OK or pgconn.transaction_status == TransactionStatus.UNKNOWN:
        return DEAD
    try:
        if not select.select([pgconn.socket], [], [], 0)[0]:
            return OK
        for _ in range(3):
            pgconn.consume_input()
            if pgconn.status != ConnStatus.OK:
                return DEAD
            if not select.select([pgconn.socket], [], [], 0)[0]:
                break
    except (OSError, psycopg.Error):
        return DEAD
    return SUSPECT


def _classify_connect_error(service: Service, params: dict[str, Any],
                            exc: psycopg.OperationalError,
                            credentials_file: Path | None = None,
                            waited: float | None = None) -> ServiceConnectionError:
    """What a failed connection attempt means for *service*; *waited*: the checkout
    waited that long for the pool to reconnect first."""
    reason = " ".join(str(exc).split())
    target = mask_dsn(params)
    if "password authentication failed" in reason or "no password supplied" in reason \
            or getattr(exc.diag, "sqlstate", None) in ("28P01", "28000"):
        check = (f"EDULINK_DB_CREDENTIALS_FILE={credentials_file} (export it again after a "
                 "rotation: 'edulink-db credentials export')" if credentials_file else
                 f"EDULINK_DB_{service.name.upper()}_PASSWORD, or run 'edulink-db provision' "
                 "to (re)set the generated password")
        return ServiceAuthenticationError(
            f"Service {service.name!r} cannot log in as {service.runtime_role} at {target}: "
            f"{reason}. Check {check}."
        )
    if "too many connections for role" in reason:
        # Reached, and refused: every connection the role may hold is taken (other
        # processes of the service, or sessions outside the budget).
        return ServiceConnectionError(
            f"Service {service.name!r}: role {service.runtime_role} is at its CONNECTION "
            f"LIMIT at {target} ({reason}). 'edulink-db budget' shows how the limit is "
            f"shared; run fewer processes (EDULINK_DB_{service.name.upper()}_PROCESSES) or "
            "find the sessions that hold it (pg_stat_activity)."
        )
    waiting = "" if waited is None else (
        f" (the checkout waited {waited:g} s, DATABASE_POOL_TIMEOUT, while the pool kept "
        "reconnecting; it goes on, so a later checkout succeeds once the server answers)")
    return ServiceConnectionError(
        f"Service {service.name!r} cannot reach the database at {target}: "
        f"{explain(reason, params)}{waiting}"
    )


class _Stats:
    """Plain counters, per service (psycopg_pool's own counters are added on read)."""

    __slots__ = ("checked_out", "errors", "lock", "lost")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.checked_out = 0
        self.errors = 0
        self.lost = 0


class ServicePool:
    """A service's psycopg_pool plus the checkout policy around it."""

    def __init__(self, service: Service, settings: Settings,
                 params: dict[str, Any] | None = None, *, replica: bool = False) -> None:
        """*params*: connect elsewhere than the service's configured server (a read
        replica, with *replica*; or where move-service put the service's schema)."""
        self.service = service
        self.settings = settings
        self.params = service_conninfo(service, settings) if params is None else params
        self.config = pool_config(settings, service, self.params)
        # A replica may stop for good at any moment (its reads can go elsewhere), so
        # its idle connections are always looked at: one select(), no round trip.
        self.is_replica = replica
        self.recheck_after = 0.0 if replica else RECHECK_IDLE_AFTER_S
        self.reset_sql = REPLICA_RESET_SESSION if replica else RESET_SESSION
        if replica:
            # A replica that cannot serve soon is skipped for the primary, so waiting
            # the full checkout timeout for it would only delay the fallback.
            self.config = replace(self.config,
                                  timeout=min(self.config.timeout, REPLICA_CHECKOUT_TIMEOUT_S))
            self.params = {"connect_timeout": REPLICA_CHECKOUT_TIMEOUT_S, **self.params}
        self.conninfo = conninfo_string(self.params)
        self.target = host_label(self.params)  # for log lines: no credentials
        # Under Patroni (DATABASE_PATRONI_URLS), writes go to the leader its REST API
        # names (docs/patroni.md); a service with a server of its own is not in it.
        self.cluster = None if replica or params is not None \
            or settings.service_override(service, "URL") else patroni.watch_for(settings)
        # Where this pool's password came from, to read it again before each new
        # connection (a rotation then needs no restart); only when the password is that
        # source's (a replica URL with credentials of its own keeps them).
        self.credentials_file = settings.edulink_db_credentials_file
        source = password_source(service, settings)
        self._password = source if source is not None and source() == self.params.get(
            "password") else None
        # The location registry of this pool's server, looked up once: checkouts of a
        # service (and of its readers) consult it on every checkout.
        self.registry = location.registry_for(self.params)
        self.stats = _Stats()
        # Cursor classes: instrumented when monitoring is on; plain psycopg otherwise,
        # so that turning monitoring off removes its cost entirely.
        instrumented = hooks.instrumentation() if settings.database_monitoring_enabled \
            else None
        self.monitor: Any = None
        if instrumented is not None:
            self.monitor = instrumented.monitor(service.name, settings)
            self.cursor: type[Any] = instrumented.cursor
            self.context_cursor: type[Any] = instrumented.context_cursor
            self.async_cursor: type[Any] = instrumented.async_cursor
            self.async_context_cursor: type[Any] = instrumented.async_context_cursor
        else:
            self.cursor, self.context_cursor = CleanCursor, ContextCursor
            self.async_cursor, self.async_context_cursor = AsyncCleanCursor, AsyncContextCursor
        self.server_cursor: type[Any] = ContextServerCursor
        self.async_server_cursor: type[Any] = AsyncContextServerCursor
        if settings.database_tracing_enabled:
            self._trace_cursors()
        self.kwargs: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": self.config.prepare_threshold,
        }
        # The psycopg_pools, built on first use by connections/checkout.py (sync) and
        # connections/checkout_async.py, each under its own lock.
        self.pool: ReconnectingPool[ServiceConnection] | None = None
        self.apool: AsyncReconnectingPool[AsyncServiceConnection] | None = None
        self.pool_lock = threading.Lock()
        self.apool_lock = asyncio.Lock()

    def _trace_cursors(self) -> None:
        """Wrap every cursor class in OpenTelemetry spans, outermost (so a span covers
        the monitoring and the request context too). Only when tracing is on: off, the
        pool's classes stay exactly those above."""
        from . import tracing
        from .tracing_cursor import traced_cursor
        from .tracing_cursor_async import traced_async_cursor

        attrs = tracing.service_attributes(self.service, self.params)
        self.cursor = traced_cursor(self.cursor, attrs)
        self.context_cursor = traced_cursor(self.context_cursor, attrs)
        self.server_cursor = traced_cursor(self.server_cursor, attrs)
        self.async_cursor = traced_async_cursor(self.async_cursor, attrs)
        self.async_context_cursor = traced_async_cursor(self.async_context_cursor,
                                                                attrs)
        self.async_server_cursor = traced_async_cursor(self.async_server_cursor,
                                                               attrs)

    # -- creation --------------------------------------------------------------
    def current_conninfo(self) -> str:
        """The conninfo with the password as its source has it now (psycopg_pool calls
        this before each connection it makes): one stat of the credential file."""
        try:
            password = self._password() if self._password is not None else None
        except ConfigError as exc:  # the file replaced by a bad one: keep the last password
            log.warning("service %s: %s; connecting with the last password read",
                        self.service.name, exc)
            password = None
        if password and password != self.params.get("password"):
            self.params = {**self.params, "password": password}
            self.conninfo = conninfo_string(self.params)
            log.info("service %s: its password changed; new connections use the new one",
                     self.service.name)
        if self.cluster is not None:
            leader = self.cluster.leader()
            if leader is not None:
                return patroni.writable_conninfo(leader, self.conninfo)
        return self.conninfo

    def connect_failed(self) -> None:
        """A new connection failed: under Patroni, look for a new leader now."""
        if self.cluster is not None:
            self.cluster.poke()

    def configure(self, conn: ServiceConnection) -> None:
        """psycopg_pool's hook for each new connection (once, not per checkout)."""
        conn.monitor = self.monitor
        conn.server_cursor_factory = self.server_cursor
        conn.service_name, conn.server = self.service.name, server_label(conn)

    async def configure_async(self, conn: AsyncServiceConnection) -> None:
        conn.monitor = self.monitor
        conn.server_cursor_factory = self.async_server_cursor
        conn.service_name, conn.server = self.service.name, server_label(conn)

    def probe(self) -> None:
        """Connect once before building a pool, so a wrong password or an unreachable
        server is reported at once and precisely, not as a pool timeout later.

        The same connection reads the role's CONNECTION LIMIT and the server's
        max_connections (one catalog read per pool opening, nothing per checkout), from
        which the connection budget sizes the pool; an explicit size that cannot fit is
        refused here, at start, rather than failing under load.
        """
        try:
            with psycopg.connect(self.current_conninfo(), connect_timeout=10,
                                 autocommit=True) as conn:
                limit = budget.held_limit(conn, self.service, self.settings.topology())
        except psycopg.OperationalError as exc:
            raise _classify_connect_error(self.service, self.params, exc,
                                          self.credentials_file) from None
        sized = pool_config(self.settings, self.service, self.params, limit)
        self.config = replace(self.config, min_size=sized.min_size, max_size=sized.max_size)

    @property
    def is_open(self) -> bool:
        """Whether a sync or async psycopg_pool was built (a checkout ran)."""
        return self.pool is not None or self.apool is not None

    @property
    def has_async_pool(self) -> bool:
        return self.apool is not None

    # -- failures ------------------------------------------------------------------
    def timeout_error(self, stats: dict[str, int]) -> ServiceConnectionError:
        size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
        waiting = stats.get("requests_waiting", 0)
        numbers = (f"{self.stats.checked_out} checked out, pool size {size} of max "
                   f"{self.config.max_size}, {available} available, {waiting} waiting")
        outage = next((p.outage for p in (self.pool, self.apool)
                       if p is not None and p.outage.active), None)
        if outage is not None and outage.last_error is not None:
            # Its reconnect attempts are failing: say why, without one more attempt.
            return _classify_connect_error(
                self.service, self.params, psycopg.OperationalError(outage.last_error),
                self.credentials_file, waited=self.config.timeout)
        if size < self.config.max_size or self.stats.checked_out < size:
            # The pool could not even grow: connecting is failing. Say why.
            try:
                psycopg.connect(self.current_conninfo(), connect_timeout=5).close()
            except psycopg.OperationalError as exc:
                return _classify_connect_error(self.service, self.params, exc,
                                               self.credentials_file)
        return PoolExhaustedError(
            f"Pool {self.service.name!r} exhausted: no connection within "
            f"{self.config.timeout:g}s ({numbers}). Return connections sooner, or give "
            f"the pool more room: 'edulink-db budget' shows how the role's CONNECTION LIMIT "
            f"is shared among EDULINK_DB_{self.service.name.upper()}_PROCESSES processes."
        )

    def lend(self, conn: ServiceConnection | AsyncServiceConnection,
             prologue: Prologue | None, context_cursor: type[Any]) -> None:
        """Bookkeeping when a connection goes to a caller. Only a checkout with a request
        context pays for the context-carrying cursor."""
        if prologue is not None:
            conn.request_prologue = prologue
            conn.cursor_factory = context_cursor
        with self.stats.lock:
            self.stats.checked_out += 1

    def take_back(self, conn: ServiceConnection | AsyncServiceConnection,
                  prologue: Prologue | None, base_cursor: type[Any],
                  exc: BaseException | None) -> None:
        """Bookkeeping when it comes back, before the pool gets it."""
        if prologue is not None:
            conn.request_prologue = None
        # Always: a checkout may have swapped the factories for classes that skip the
        # request context or the session accounting (two attribute stores).
        conn.cursor_factory = base_cursor
        conn.server_cursor_factory = self.server_cursor \
            if isinstance(conn, ServiceConnection) else self.async_server_cursor
        conn.returned_at = time.monotonic()
        with self.stats.lock:
            self.stats.checked_out -= 1
            if isinstance(exc, psycopg.Error):
                self.stats.errors += 1

    # -- session state -----------------------------------------------------------------
    def needs_reset(self, conn: ServiceConnection | AsyncServiceConnection) -> bool:
        """Whether the checkout may have left state behind (see :mod:`.session_state`).
        The common clean checkout costs these few attribute reads, no round trip."""
        return (conn.session_dirty or conn.vouched != 0 or conn.row_factory is not tuple_row
                or conn.prepare_threshold != self.config.prepare_threshold)

    def restore_attributes(self, conn: ServiceConnection | AsyncServiceConnection) -> None:
        # Client-side settings a checkout may have changed; none of these sends
        # anything on an idle autocommit connection.
        conn.row_factory = tuple_row
        conn.prepare_threshold = self.config.prepare_threshold

    def reset_failed(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
                     exc: BaseException) -> None:
        with self.stats.lock:
            self.stats.lost += 1
        log.warning("service %s: could not reset a returned connection's session (%s); "
                    "closing it", self.service.name, type(exc).__name__)

    def replica_lost(self) -> ServiceConnectionError:
        """A replica closed its connections: its reads go elsewhere at once rather than
        waiting for it to come back (see connections/replicas.py)."""
        return ServiceConnectionError(
            f"read replica {host_label(self.params)} of service {self.service.name!r} "
            "closed its connections (stopped or restarting)")

    def discard(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
        with self.stats.lock:
            self.stats.lost += 1
        log.warning("service %s: discarding a dead pooled connection (server restarted?)",
                    self.service.name)

    # -- stats -----------------------------------------------------------------------
    def as_dict(self) -> dict[str, int | str]:
        combined: dict[str, int] = {}
        for pool in (self.pool, self.apool):
            if pool is not None:
                for key, value in pool.get_stats().items():
                    combined[key] = combined.get(key, 0) + value
        return {
            "service": self.service.name,
            "pooler": self.config.pooler,
            "min_size": self.config.min_size,
            "max_size": self.config.max_size,
            "size": combined.get("pool_size", 0),
            "available": combined.get("pool_available", 0),
            "checked_out": self.stats.checked_out,
            "waiting": combined.get("requests_waiting", 0),
            "requests": combined.get("requests_num", 0),
            "wait_ms_total": combined.get("requests_wait_ms", 0),
            "errors": self.stats.errors + combined.get("requests_errors", 0),
            "connections_lost": self.stats.lost + combined.get("connections_lost", 0)
            + combined.get("returns_bad", 0),
            "connection_errors": combined.get("connections_errors", 0),
        }

