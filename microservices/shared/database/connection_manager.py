"""One connection pool per service, each logged in as that service's runtime role.

    from microservices.shared.database.connection_manager import connection_manager

    with connection_manager.get_connection('user_service') as conn:
        with conn.cursor() as cursor:
            cursor.execute("SELECT * FROM user_schema.profiles_userprofile")
            results = cursor.fetchall()

Transaction semantics of a checkout
-----------------------------------
Connections are in **autocommit** mode: every statement commits on its own, and
a plain read costs exactly one round trip (no BEGIN, COMMIT, RESET or SET is
added).  Group statements atomically with ``with conn.transaction():``; it
commits when the block ends and rolls back if it raises.  A transaction still
open when the ``get_connection`` block ends is rolled back.

``user_id=`` sets ``app.current_user_id`` and ``readonly=True`` makes the work
read-only, for this checkout only: both travel with every statement as
transaction-local settings (see :mod:`.request_context`), so nothing survives
into the next checkout or leaks through a transaction pooler.

Nothing else a checkout does to its session reaches the next one either: a
checkout that ran anything not provably free of session effects (a session
``SET``, ``set_config(..., false)``, ``pg_advisory_lock``, ``DECLARE ... WITH
HOLD``, a temporary table, ``LISTEN``, ``PREPARE``, ``DO``, any application
function, a cursor class of its own ...; see :mod:`.session_state`) is reset
with one extra round trip before the pool gets the connection back, and closed
if that fails.  A checkout that changed nothing pays nothing.

Pools are built on psycopg_pool, opened lazily on first use, and thread-safe.
Sizes come from the connection budget (:mod:`.connections.budget`): the role's
CONNECTION LIMIT divided by the service's processes, read when the pool opens.
Explicit sizes (min = ``DATABASE_POOL_SIZE``, max = min + ``DATABASE_MAX_OVERFLOW``,
or per service ``EDULINK_DB_<SERVICE>_POOL_SIZE`` / ``_MAX_OVERFLOW``) win, and are
refused at opening when the processes' pools cannot fit that limit.  Checkout
timeout: ``DATABASE_POOL_TIMEOUT`` / ``EDULINK_DB_<SERVICE>_POOL_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import logging
import select
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from .config import (
    Settings,
    conninfo_string,
    host_label,
    load_settings,
    mask_dsn,
    password_source,
    pooler_mode,
    replica_conninfos,
    service_conninfo,
)
from .connections import budget, location, replicas
from .connections.request_context import (
    AsyncCleanCursor,
    AsyncContextCursor,
    AsyncContextServerCursor,
    AsyncServiceConnection,
    CleanCursor,
    ContextCursor,
    ContextServerCursor,
    Prologue,
    ServiceConnection,
    make_prologue,
)
from .connections.session_state import RESET_SESSION
from .core.errors import (
    ConfigError,
    DatabaseUnavailableError,
    MovedSchemaAccessError,
    PoolExhaustedError,
    ServiceAuthenticationError,
    ServiceConnectionError,
    ServiceMovedError,
)
from .core.tls import explain
from .monitoring import metrics
from .topology import Service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolConfig:
    """The resolved pool settings of one service."""

    min_size: int
    max_size: int
    timeout: float
    max_lifetime: float
    check: bool
    pooler: str

    @property
    def prepare_threshold(self) -> int | None:
        # Transaction poolers hand each transaction another server connection, so a
        # statement prepared on one is unknown on the next (psycopg#280; Supabase docs).
        return None if self.pooler == "transaction" else 5


def pool_config(settings: Settings, service: Service, params: dict[str, Any],
                limit: int | None = None) -> PoolConfig:
    """*limit*: the CONNECTION LIMIT the pool's role holds (read when the pool opens);
    the sizes come from the connection budget (connections/budget.py).  Without it the
    sizes are only provisional: the explicit ones, else 0 until the pool opens."""
    pooler = pooler_mode(settings, params)
    timeout_raw = settings.service_override(service, "POOL_TIMEOUT")
    try:
        timeout = float(timeout_raw) if timeout_raw is not None else \
            settings.database_pool_timeout
    except ValueError:
        timeout = -1.0
    if timeout <= 0:
        raise ConfigError(f"EDULINK_DB_{service.name.upper()}_POOL_TIMEOUT must be a number "
                          f"of seconds > 0, got {timeout_raw!r}.")
    if limit is None:
        size, overflow = budget.explicit_pool(settings, service)
        min_size = size or 0
        max_size = min_size + overflow if overflow is not None else min_size
    else:
        sizes = budget.pool_size(settings, service, limit, pooler=pooler)
        min_size, max_size = sizes.min_size, sizes.max_size
    return PoolConfig(
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        max_lifetime=settings.database_pool_max_lifetime,
        check=settings.database_pool_check,
        pooler=pooler,
    )


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


def _idle_state(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
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


def _usable(conn: ServiceConnection, recheck_after: float = RECHECK_IDLE_AFTER_S) -> bool:
    if time.monotonic() - conn.returned_at < recheck_after:
        return True
    state = _idle_state(conn)
    if state != SUSPECT:
        return state == OK
    try:
        conn.execute("")
        return True
    except psycopg.Error:
        return False


async def _ausable(conn: AsyncServiceConnection,
                   recheck_after: float = RECHECK_IDLE_AFTER_S) -> bool:
    if time.monotonic() - conn.returned_at < recheck_after:
        return True
    state = _idle_state(conn)
    if state != SUSPECT:
        return state == OK
    try:
        await conn.execute("")
        return True
    except psycopg.Error:
        return False


def _classify_connect_error(service: Service, params: dict[str, Any],
                            exc: psycopg.OperationalError,
                            credentials_file: Path | None = None
                            ) -> ServiceConnectionError:
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
    return ServiceConnectionError(
        f"Service {service.name!r} cannot reach the database at {target}: {explain(reason, params)}"
    )


class _Stats:
    """Plain counters, per service (psycopg_pool's own counters are added on read)."""

    __slots__ = ("checked_out", "errors", "lock", "lost")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.checked_out = 0
        self.errors = 0
        self.lost = 0


class _ServicePool:
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
        self.monitor: Any = None
        if settings.database_monitoring_enabled:
            from .monitoring.instrumentation import (
                AsyncInstrumentedContextCursor,
                AsyncInstrumentedCursor,
                InstrumentedContextCursor,
                InstrumentedCursor,
            )
            from .monitoring.monitor import monitors

            self.monitor = monitors.get(service.name, settings)
            self.cursor: type[Any] = InstrumentedCursor
            self.context_cursor: type[Any] = InstrumentedContextCursor
            self.async_cursor: type[Any] = AsyncInstrumentedCursor
            self.async_context_cursor: type[Any] = AsyncInstrumentedContextCursor
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
        self._sync: ConnectionPool[ServiceConnection] | None = None
        self._async: AsyncConnectionPool[AsyncServiceConnection] | None = None
        self._lock = threading.Lock()

    def _trace_cursors(self) -> None:
        """Wrap every cursor class in OpenTelemetry spans, outermost (so a span covers
        the monitoring and the request context too). Only when tracing is on: off, the
        pool's classes stay exactly those above."""
        from .connections import tracing

        attrs = tracing.service_attributes(self.service, self.params)
        self.cursor = tracing.traced_cursor(self.cursor, attrs)
        self.context_cursor = tracing.traced_cursor(self.context_cursor, attrs)
        self.server_cursor = tracing.traced_cursor(self.server_cursor, attrs)
        self.async_cursor = tracing.traced_async_cursor(self.async_cursor, attrs)
        self.async_context_cursor = tracing.traced_async_cursor(self.async_context_cursor,
                                                                attrs)
        self.async_server_cursor = tracing.traced_async_cursor(self.async_server_cursor,
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
        return self.conninfo

    def _configure(self, conn: ServiceConnection) -> None:
        conn.monitor = self.monitor  # once per new connection, not per checkout
        conn.server_cursor_factory = self.server_cursor

    async def _aconfigure(self, conn: AsyncServiceConnection) -> None:
        conn.monitor = self.monitor
        conn.server_cursor_factory = self.async_server_cursor

    def _probe(self) -> None:
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

    def sync_pool(self) -> ConnectionPool[ServiceConnection]:
        pool = self._sync
        if pool is None:
            with self._lock:
                if self._sync is None:
                    self._probe()
                    pool = ConnectionPool(
                        self.current_conninfo,
                        connection_class=ServiceConnection,
                        kwargs={**self.kwargs, "cursor_factory": self.cursor},
                        configure=self._configure,
                        name=self.service.name,
                        min_size=self.config.min_size,
                        max_size=self.config.max_size,
                        timeout=self.config.timeout,
                        max_lifetime=self.config.max_lifetime,
                        check=ConnectionPool.check_connection if self.config.check else None,
                        open=False,
                    )
                    pool.open(wait=False)
                    self._sync = pool
                pool = self._sync
        return pool

    async def async_pool(self, lock: asyncio.Lock) -> AsyncConnectionPool[
            AsyncServiceConnection]:
        pool = self._async
        if pool is None:
            async with lock:
                if self._async is None:
                    await asyncio.to_thread(self._probe)
                    apool = AsyncConnectionPool(
                        self.current_conninfo,
                        connection_class=AsyncServiceConnection,
                        kwargs={**self.kwargs, "cursor_factory": self.async_cursor},
                        configure=self._aconfigure,
                        name=f"{self.service.name}-async",
                        min_size=self.config.min_size,
                        max_size=self.config.max_size,
                        timeout=self.config.timeout,
                        max_lifetime=self.config.max_lifetime,
                        check=AsyncConnectionPool.check_connection if self.config.check
                        else None,
                        open=False,
                    )
                    await apool.open(wait=False)
                    self._async = apool
                pool = self._async
        return pool

    # -- failures ------------------------------------------------------------------
    def timeout_error(self, stats: dict[str, int]) -> ServiceConnectionError:
        size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
        waiting = stats.get("requests_waiting", 0)
        numbers = (f"{self.stats.checked_out} checked out, pool size {size} of max "
                   f"{self.config.max_size}, {available} available, {waiting} waiting")
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

    def _restore_attributes(self, conn: ServiceConnection | AsyncServiceConnection) -> None:
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

    def reset(self, conn: ServiceConnection) -> None:
        """Remove every kind of session state, or close the connection (the pool then
        replaces it). Never raises for database errors."""
        conn.vouched += 1
        try:
            status = conn.pgconn.transaction_status
            if status == TransactionStatus.ACTIVE:
                raise psycopg.OperationalError("connection returned mid-operation")
            if status != TransactionStatus.IDLE:
                conn.rollback()
            conn.autocommit = True
            conn.isolation_level = conn.read_only = conn.deferrable = None
            self._restore_attributes(conn)
            with psycopg.Cursor(conn) as cur:  # plain: the reset is not the app's query
                cur.execute(self.reset_sql, prepare=False)
            conn.session_dirty = False
        except psycopg.Error as exc:
            self.reset_failed(conn, exc)
            conn.close()
        finally:
            conn.vouched = 0

    async def areset(self, conn: AsyncServiceConnection) -> None:
        """The asyncio twin of :meth:`reset`."""
        conn.vouched += 1
        try:
            status = conn.pgconn.transaction_status
            if status == TransactionStatus.ACTIVE:
                raise psycopg.OperationalError("connection returned mid-operation")
            if status != TransactionStatus.IDLE:
                await conn.rollback()
            await conn.set_autocommit(True)
            await conn.set_isolation_level(None)
            await conn.set_read_only(None)
            await conn.set_deferrable(None)
            self._restore_attributes(conn)
            async with psycopg.AsyncCursor(conn) as cur:
                await cur.execute(self.reset_sql, prepare=False)
            conn.session_dirty = False
        except psycopg.Error as exc:
            self.reset_failed(conn, exc)
            await conn.close()
        finally:
            conn.vouched = 0

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
        for pool in (self._sync, self._async):
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


# -- relocation hook (issue 17) ------------------------------------------------------
# How long a service's checkout waits while a cutover freezes its writes; the
# cutover announces at most this long a freeze (relocation.cutover.FREEZE_S).
FREEZE_WAIT_S = 10.0


class _MoveWatch:
    """Turns the refusal a frozen old location gives a queued statement (its writes
    revoked: 42501; its tables retired: 42P01) into ServiceMovedError when the
    registry shows the service moved since the checkout: retry it, it changed nothing.

    And a ``relation "<schema>.<table>" does not exist`` (42P01) for a table in the
    schema of a service that the registry places on another server than this
    checkout's (*where*: None = home) into MovedSchemaAccessError: a plain-SQL read of
    a moved service's table, which only ``get_reader_connection`` can follow.  Both
    run only on the error path (``check`` with an exception): a checkout that succeeds
    pays nothing."""

    __slots__ = ("epoch", "home", "registry", "service", "settings", "where")

    def __init__(self, registry: location.Registry, home: _ServicePool, service: str,
                 epoch: int, where: str | None = None, settings: Settings | None = None
                 ) -> None:
        self.registry, self.home, self.service, self.epoch = registry, home, service, epoch
        self.where, self.settings = where, settings

    @staticmethod
    def refused(exc: BaseException | None) -> bool:
        return isinstance(exc, psycopg.errors.InsufficientPrivilege
                          | psycopg.errors.UndefinedTable)

    def moved(self, now: location.Location, exc: BaseException) -> None:
        if now.epoch != self.epoch:
            raise ServiceMovedError(
                f"Service {self.service!r} moved to another server while this checkout ran "
                f"(location epoch {self.epoch} -> {now.epoch}); the statement changed "
                "nothing: run it again, the next checkout goes to the new location.") from exc
        if self.settings is not None and isinstance(exc, psycopg.errors.UndefinedTable):
            self.elsewhere(exc)

    def elsewhere(self, exc: psycopg.errors.UndefinedTable) -> None:
        """Raise MovedSchemaAccessError when *exc* names a relation qualified with the
        schema of a service that lives on another server than this checkout's.  The
        relation is matched on the quoted name PostgreSQL puts in the message (the same
        in every lc_messages language); the registry was refreshed just before."""
        assert self.settings is not None
        text = exc.diag.message_primary or ""
        reader = self.home.service.name
        for svc in self.settings.topology().services:
            mark = f'"{svc.schema}.'
            if mark not in text:
                continue
            loc = self.registry.cached(svc.name)
            if loc.where == self.where:
                continue  # the schema lives here: a table that really does not exist
            relation = text[text.index(mark) + 1:].split('"', 1)[0]
            raise MovedSchemaAccessError(
                f"{relation} does not exist on this server because service {svc.name!r} "
                f"moved (edulink-db move-service, location epoch {loc.epoch}) to "
                f"{loc.where or 'its home server'}; service {reader!r} read it with plain "
                f"SQL on its own connection, which stays where {reader!r} lives. Read it "
                f"with connection_manager.get_reader_connection({reader!r}, {svc.name!r}), "
                "which follows the move (PostgreSQL still enforces the exposure grants).",
                service=svc.name, location=loc.where, reader=reader) from exc

    def check(self, exc: BaseException | None) -> None:
        if exc is not None and self.refused(exc):
            self.moved(self.registry.get(self.service, _runner(self.home), fresh=True), exc)

    async def acheck(self, exc: BaseException | None, lock: asyncio.Lock) -> None:
        if exc is not None and self.refused(exc):
            self.moved(await self.registry.aget(self.service, _arunner(self.home, lock),
                                                fresh=True), exc)


def _runner(home: _ServicePool) -> location.Runner:
    """Runs a registry query on a connection of *home*'s own pool (no extra connection)."""
    def run(query: sql.Composed) -> location.Rows:
        with home.sync_pool().connection(timeout=location.BORROW_TIMEOUT_S) as conn, \
                psycopg.Cursor(conn) as cur:  # plain: not the app's query
            rows: location.Rows = cur.execute(query, prepare=False).fetchall()
            return rows
    return run


def _arunner(home: _ServicePool, lock: asyncio.Lock) -> location.AsyncRunner:
    async def run(query: sql.Composed) -> location.Rows:
        pool = await home.async_pool(lock)
        async with pool.connection(timeout=location.BORROW_TIMEOUT_S) as conn, \
                psycopg.AsyncCursor(conn) as cur:
            await cur.execute(query, prepare=False)
            return await cur.fetchall()
    return run


class Checkout:
    """Context manager returned by :meth:`ConnectionManager.get_connection`."""

    __slots__ = ("_conn", "_entry", "_moved", "_pool", "_prologue")

    def __init__(self, entry: _ServicePool, prologue: Prologue | None,
                 moved: _MoveWatch | None = None) -> None:
        self._entry = entry
        self._prologue = prologue
        self._moved = moved
        self._conn: ServiceConnection | None = None
        self._pool: ConnectionPool[ServiceConnection] | None = None

    def __enter__(self) -> ServiceConnection:
        entry = self._entry
        pool = self._pool = entry.sync_pool()
        # Bounded: each dead connection found is discarded and the pool drained, so
        # at most the connections that were idle at the restart are looked at.
        for _ in range(entry.config.max_size + 1):
            try:
                conn = pool.getconn()
            except PoolTimeout:
                raise entry.timeout_error(pool.get_stats()) from None
            if _usable(conn, entry.recheck_after):
                break
            entry.discard(conn)
            conn.close()
            pool.putconn(conn)
            pool.drain()  # the others are from before the restart too
            if entry.is_replica:
                raise entry.replica_lost()
        else:
            raise entry.timeout_error(pool.get_stats())
        if conn.session_dirty:  # never expected: every dirty return was reset
            entry.reset(conn)
        entry.lend(conn, self._prologue, entry.context_cursor)
        self._conn = conn
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        conn, pool, entry = self._conn, self._pool, self._entry
        assert conn is not None and pool is not None
        self._conn = None
        entry.take_back(conn, self._prologue, entry.cursor, exc)
        if entry.needs_reset(conn):
            entry.reset(conn)
        pool.putconn(conn)  # rolls back anything left open
        if entry.is_replica and conn.closed:
            # A replica that went away mid-block took its idle sessions too: without
            # this, the first checkouts after it comes back would find them dead.
            pool.drain()
        if self._moved is not None:
            self._moved.check(exc)


_AsyncFollow = Callable[[], Awaitable[tuple[_ServicePool, _MoveWatch]]]


class AsyncCheckout:
    """Async context manager returned by :meth:`ConnectionManager.get_async_connection`."""

    __slots__ = ("_conn", "_entry", "_follow", "_lock", "_moved", "_prologue")

    def __init__(self, entry: _ServicePool, prologue: Prologue | None,
                 lock: asyncio.Lock, follow: _AsyncFollow | None = None) -> None:
        self._entry = entry
        self._prologue = prologue
        self._lock = lock
        self._follow = follow
        self._moved: _MoveWatch | None = None
        self._conn: AsyncServiceConnection | None = None

    async def __aenter__(self) -> AsyncServiceConnection:
        if self._follow is not None:  # relocation hook (issue 17)
            self._entry, self._moved = await self._follow()
        entry = self._entry
        pool = await entry.async_pool(self._lock)
        for _ in range(entry.config.max_size + 1):
            try:
                conn = await pool.getconn()
            except PoolTimeout:
                raise entry.timeout_error(pool.get_stats()) from None
            if await _ausable(conn, entry.recheck_after):
                break
            entry.discard(conn)
            await conn.close()
            await pool.putconn(conn)
            await pool.drain()
            if entry.is_replica:
                raise entry.replica_lost()
        else:
            raise entry.timeout_error(pool.get_stats())
        if conn.session_dirty:
            await entry.areset(conn)
        entry.lend(conn, self._prologue, entry.async_context_cursor)
        self._conn = conn
        return conn

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        conn, entry = self._conn, self._entry
        assert conn is not None
        self._conn = None
        entry.take_back(conn, self._prologue, entry.async_cursor, exc)
        if entry.needs_reset(conn):
            await entry.areset(conn)
        pool = await entry.async_pool(self._lock)
        await pool.putconn(conn)
        if entry.is_replica and conn.closed:
            await pool.drain()  # as in Checkout.__exit__
        if self._moved is not None:
            await self._moved.acheck(exc, self._lock)


class ConnectionManager:
    """Lazily created, thread-safe pools keyed by service.

    Settings are read on first use (so importing the module never touches the
    environment); pass *settings* to use explicit ones.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._pools: dict[str, _ServicePool] = {}
        self._aliases: dict[str, _ServicePool] = {}
        self._replica_sets: dict[str, replicas.ReplicaSet[_ServicePool] | None] = {}
        self._located: dict[str, _ServicePool] = {}  # relocation hook: pools elsewhere
        self._lock = threading.Lock()
        self._async_lock: asyncio.Lock | None = None
        _MANAGERS.add(self)

    def __repr__(self) -> str:
        return f"ConnectionManager(services={sorted(self._pools)})"

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def _entry(self, service: str) -> _ServicePool:
        entry = self._aliases.get(service)
        if entry is not None:
            return entry
        with self._lock:
            svc = self.settings.topology().service(service)
            entry = self._pools.get(svc.name)
            if entry is None:
                entry = _ServicePool(svc, self.settings)
                self._pools[svc.name] = entry
            self._aliases[service] = entry
            return entry

    def _replica_set(self, entry: _ServicePool) -> replicas.ReplicaSet[_ServicePool] | None:
        name = entry.service.name
        if name not in self._replica_sets:
            with self._lock:
                if name not in self._replica_sets:
                    settings = self.settings
                    self._replica_sets[name] = replicas.build(
                        name, replica_conninfos(entry.service, settings),
                        settings.database_replica_max_lag,
                        lambda params: _ServicePool(entry.service, settings, params,
                                                    replica=True),
                        schema=entry.service.schema)
        return self._replica_sets[name]

    def get_connection(self, service: str, user_id: object | None = None,
                       readonly: bool = False, *, replica: bool = False
                       ) -> Checkout | replicas.ReplicaCheckout[_ServicePool,
                                                                 ServiceConnection]:
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
        entry, moved = self._follow(home)
        if replica and entry is home:
            chosen = self._replica_set(home)
            if chosen is not None:
                # The primary stands in read-only too: a block that writes must fail
                # whether or not a replica qualifies at that moment.
                prologue = make_prologue(user_id, readonly)
                return replicas.ReplicaCheckout(
                    chosen, lambda pool: Checkout(pool, prologue),
                    Checkout(home, make_prologue(user_id, True), moved))
        # A moved service's replicas are the old server's: read its new primary.
        return Checkout(entry, make_prologue(user_id, readonly or replica), moved)

    def get_async_connection(self, service: str, user_id: object | None = None,
                             readonly: bool = False, *, replica: bool = False
                             ) -> AsyncCheckout | replicas.AsyncReplicaCheckout[
                                 _ServicePool, AsyncServiceConnection]:
        """The asyncio twin of :meth:`get_connection` (``async with``)."""
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        home = self._entry(service)
        lock = self._async_lock
        if replica:
            chosen = self._replica_set(home)
            if chosen is not None and home.registry.cached(
                    home.service.name).where is None:
                prologue = make_prologue(user_id, readonly)
                return replicas.AsyncReplicaCheckout(
                    chosen, lambda pool: AsyncCheckout(pool, prologue, lock),
                    AsyncCheckout(home, make_prologue(user_id, True), lock,
                                  lambda: self._afollow(home, lock)))
        return AsyncCheckout(home, make_prologue(user_id, readonly or replica), lock,
                             lambda: self._afollow(home, lock))

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
    def _located_pool(self, home: _ServicePool, where: str) -> _ServicePool:
        key = f"{home.service.name}@{where}"
        entry = self._located.get(key)
        if entry is None:
            with self._lock:
                entry = self._located.get(key)
                if entry is None:
                    entry = _ServicePool(home.service, self.settings,
                                         location.located_params(home.params, where))
                    self._located[key] = entry
        return entry

    def _follow(self, home: _ServicePool, owner: str | None = None
                ) -> tuple[_ServicePool, _MoveWatch]:
        """The pool of *home*'s service where *owner*'s schema (default: its own) lives
        now.  The service's own checkouts wait while a cutover freezes its writes."""
        registry = home.registry
        name = owner or home.service.name
        run = _runner(home)
        loc = registry.get(name, run)
        if loc.frozen and owner is None:
            loc = registry.wait_unfrozen(name, run, FREEZE_WAIT_S)
        entry = home if loc.where is None else self._located_pool(home, loc.where)
        return entry, _MoveWatch(registry, home, name, loc.epoch, loc.where, self.settings)

    async def _afollow(self, home: _ServicePool, lock: asyncio.Lock
                       ) -> tuple[_ServicePool, _MoveWatch]:
        """The asyncio twin of :meth:`_follow` (waits out a freeze without blocking)."""
        registry = home.registry
        name = home.service.name
        run = _arunner(home, lock)
        loc = await registry.aget(name, run)
        if loc.frozen:
            loc = await registry.await_unfrozen(name, run, FREEZE_WAIT_S)
        entry = home if loc.where is None else self._located_pool(home, loc.where)
        return entry, _MoveWatch(registry, home, name, loc.epoch, loc.where, self.settings)

    def get_reader_connection(self, service: str, reads: str, user_id: object | None = None,
                              readonly: bool = True) -> Checkout:
        """Like :meth:`get_connection`, on the server where service *reads*' schema lives
        (the same as *service*'s own unless one of them was moved)."""
        home = self._entry(service)
        owner = self.settings.topology().service(reads).name
        entry, moved = self._follow(home, owner)
        return Checkout(entry, make_prologue(user_id, readonly), moved)

    def location_of(self, service: str, via: str | None = None) -> str | None:
        """Where *service*'s schema lives (None: at home), as seen from *via*'s pool."""
        home = self._entry(via or service)
        owner = self.settings.topology().service(service).name
        return home.registry.get(owner, _runner(home)).where

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

    def _replica_entries(self, *, keep_async: bool) -> list[_ServicePool]:
        """The replica pools to close; their sets are forgotten (rebuilt on next use)
        and their probe threads stopped.  With *keep_async*, a set with an open async
        pool stays (pools and probe thread alike) for :meth:`aclose_all`."""
        with self._lock:
            sets = [s for s in self._replica_sets.values() if s is not None]
            kept = {name: s for name, s in self._replica_sets.items() if s is not None
                    and keep_async and any(r.pool._async is not None for r in s.replicas)}
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
            if entry._sync is not None:
                entry._sync.close()
                entry._sync = None

    async def aclose_all(self) -> None:
        """Close every pool, async and sync, the replicas' included."""
        replica_entries = self._replica_entries(keep_async=False)
        with self._lock:
            entries = (list(self._pools.values()) + list(self._located.values())
                       + replica_entries)
            self._pools, self._aliases, self._located = {}, {}, {}
        for entry in entries:
            if entry._async is not None:
                await entry._async.close()
                entry._async = None
            if entry._sync is not None:
                entry._sync.close()
                entry._sync = None


_MANAGERS: weakref.WeakSet[ConnectionManager] = weakref.WeakSet()


def _all_pool_stats() -> list[dict[str, Any]]:
    out = []
    for manager in list(_MANAGERS):
        for entry in list(manager._pools.values()):
            if entry._sync is not None or entry._async is not None:
                out.append(entry.as_dict())
    return out


metrics.register(metrics.PoolCollector(_all_pool_stats))


def _all_replica_reads() -> list[tuple[str, str, int]]:
    totals: dict[tuple[str, str], int] = {}
    for manager in list(_MANAGERS):
        for replica_set in list(manager._replica_sets.values()):
            if replica_set is not None:
                for served_by, count in replica_set.served.items():
                    key = (replica_set.service, served_by)
                    totals[key] = totals.get(key, 0) + count
    return [(service, served_by, n) for (service, served_by), n in sorted(totals.items())]


metrics.register(metrics.ReplicaReadCollector(_all_replica_reads))
connection_manager = ConnectionManager()
