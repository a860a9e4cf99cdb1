"""The connection budget: how the server's connections are shared out.

One model, used by provisioning (each runtime role's CONNECTION LIMIT), the pools
(each process's min and max size), ``health``, ``verify``, the dashboard and
``edulink-db budget``:

    usable    = max_connections - superuser_reserved_connections - reserved_connections
    headroom  = max(HEADROOM_MIN, HEADROOM_PERCENT % of usable, rounded up)
    limit     = topology connection_limit, else (usable - headroom - explicit limits)
                / services without one (at least 1)
    pool max  = (limit - 1) / processes of the service (at least 1)
    pool min  = a third of pool max (at least 1)

A role's CONNECTION LIMIT is shared by every process of its service, but each process
holds its own pool, so a pool is the limit divided by the processes that share it
(``EDULINK_DB_PROCESSES_PER_SERVICE``, default 2, or ``EDULINK_DB_<SERVICE>_PROCESSES``).
Explicit pool sizes (``DATABASE_POOL_SIZE`` / ``DATABASE_MAX_OVERFLOW`` or the
per-service ones) win, but a pool that cannot fit is refused when it opens.

Behind a transaction pooler (Supavisor, PgBouncer in transaction mode) the processes'
pools are client connections of the pooler, which multiplexes them onto its own server
connections: the pooler's pool size per user is what must fit the role's limit, so
explicit pool sizes are not refused there (docs/connection-budget.md).

The headroom is for the sessions that are not runtime roles: the provisioning admin
(1-2), one migrator per service while a deploy runs (6 in the default topology),
monitoring and a psql session -- about 10 on any server -- and 5 % of big servers for
more of the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..config import Settings
from ..core.errors import ConfigError

# Defined in core/errors.py (every error class lives there); importable here as before.
from ..core.errors import PoolDoesNotFit as PoolDoesNotFit
from ..topology import Service, Topology

HEADROOM_MIN = 10
HEADROOM_PERCENT = 5
PROCESSES_KEY = "PROCESSES"
TRANSACTION = "transaction"


@dataclass(frozen=True)
class Server:
    """The connection settings of one PostgreSQL server."""

    max_connections: int
    superuser_reserved: int
    reserved: int = 0  # reserved_connections, PostgreSQL 16+

    @property
    def usable(self) -> int:
        """Connections a non-superuser may open."""
        return self.max_connections - self.superuser_reserved - self.reserved

    @property
    def headroom(self) -> int:
        return max(HEADROOM_MIN, -(-self.usable * HEADROOM_PERCENT // 100))


SERVER_QUERY = sql.SQL(
    "SELECT pg_catalog.current_setting('max_connections')::int,"
    " pg_catalog.current_setting('superuser_reserved_connections')::int,"
    # reserved_connections exists from PostgreSQL 16 on.
    " coalesce(pg_catalog.current_setting('reserved_connections', true)::int, 0)")


def read_server(conn: psycopg.Connection[Any]) -> Server:
    row = conn.execute(SERVER_QUERY).fetchone()
    assert row is not None
    return Server(*(int(v) for v in row))


def derived_limit(server: Server, topology: Topology) -> int:
    """The CONNECTION LIMIT of each runtime role whose topology sets none."""
    explicit = sum(s.connection_limit or 0 for s in topology.services)
    derived = sum(1 for s in topology.services if s.connection_limit is None)
    return max(1, (server.usable - server.headroom - explicit) // max(derived, 1))


def role_limits(server: Server, topology: Topology) -> dict[str, int]:
    """runtime role -> the CONNECTION LIMIT provisioning gives it on *server*."""
    each = derived_limit(server, topology)
    return {s.runtime_role: s.connection_limit if s.connection_limit is not None else each
            for s in topology.services}


def connection_budget_query(topology: Topology) -> sql.Composed:
    """:func:`derived_limit` in SQL, as one row: max_connections,
    superuser_reserved_connections, reserved_connections, usable, headroom, derived.

    Provisioning's script runs it on the server itself (it cannot know the server's
    max_connections when it is written); verify reads it.  Same formula as above.
    """
    explicit = sum(s.connection_limit or 0 for s in topology.services)
    derived = sum(1 for s in topology.services if s.connection_limit is None)
    return sql.SQL(
        "SELECT mc, sr, rc, usable, headroom,"
        " GREATEST(1, (usable - headroom - {explicit}) / {derived})"
        " FROM (SELECT mc, sr, rc, usable,"
        " GREATEST({hmin}, (usable * {hpct} + 99) / 100) AS headroom"
        " FROM (SELECT mc, sr, rc, mc - sr - rc AS usable"
        " FROM ({server}) AS x(mc, sr, rc)) AS u) AS b"
    ).format(explicit=sql.Literal(explicit), derived=sql.Literal(max(derived, 1)),
             hmin=sql.Literal(HEADROOM_MIN), hpct=sql.Literal(HEADROOM_PERCENT),
             server=SERVER_QUERY)


# -- per process -------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSize:
    min_size: int
    max_size: int
    explicit: bool = False

    @property
    def overflow(self) -> int:
        return self.max_size - self.min_size


def processes(settings: Settings, service: Service) -> int:
    """How many processes of *service* run at once, each with its own pool."""
    key = f"EDULINK_DB_{service.name.upper()}_{PROCESSES_KEY}"
    raw = settings.service_override(service, PROCESSES_KEY)
    if raw is None:
        return settings.edulink_db_processes_per_service
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{key} must be a whole number of processes >= 1, got {raw!r}.")
    return value


def _explicit(settings: Settings, service: Service, key: str, setting: str,
              default: int | None, least: int) -> int | None:
    raw = settings.service_override(service, key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = least - 1
    if value < least:
        raise ConfigError(f"EDULINK_DB_{service.name.upper()}_{key} must be a whole number "
                          f">= {least}, got {raw!r}; leave it unset to size the pool from "
                          f"the connection budget ({setting} is the default for all).")
    return value


def explicit_pool(settings: Settings, service: Service) -> tuple[int | None, int | None]:
    """(POOL_SIZE, MAX_OVERFLOW) of *service* as set (per service, else for all); None
    where unset."""
    return (_explicit(settings, service, "POOL_SIZE", "DATABASE_POOL_SIZE",
                      settings.database_pool_size, 1),
            _explicit(settings, service, "MAX_OVERFLOW", "DATABASE_MAX_OVERFLOW",
                      settings.database_max_overflow, 0))


def derived_pool(limit: int, procs: int) -> PoolSize:
    """The pool of one process when *procs* processes share a role's *limit*."""
    # One connection of the role stays free: the pool's probe when a process (re)starts,
    # and the one-off connection that diagnoses a pool timeout.
    top = max(1, (limit - 1) // procs)
    return PoolSize(min_size=max(1, top // 3), max_size=top)


def pool_size(settings: Settings, service: Service, limit: int, *,
              pooler: str = "none", procs: int | None = None) -> PoolSize:
    """The pool of one process of *service*, whose role may open *limit* connections.

    Explicit sizes win; one that would let the service's processes open more than
    *limit* is refused (a ConfigError giving the numbers and the fix), except behind a
    transaction pooler, where the pools are the pooler's clients.
    """
    size, overflow = explicit_pool(settings, service)
    procs = processes(settings, service) if procs is None else procs
    derived = derived_pool(limit, procs)
    if size is None and overflow is None:
        # A derived pool only fails to fit at its smallest (1) with more processes
        # than the limit.
        check_fit(service, derived.max_size, procs, limit, pooler=pooler)
        return derived
    min_size = derived.min_size if size is None else size
    max_size = max(min_size, derived.max_size) if overflow is None else min_size + overflow
    check_fit(service, max_size, procs, limit, pooler=pooler)
    return PoolSize(min_size, max_size, explicit=True)


def check_fit(service: Service, max_size: int, procs: int, limit: int, *,
              pooler: str = "none", setting: str = "") -> None:
    """Refuse an explicit pool max that lets *procs* processes open more than *limit*."""
    if pooler == TRANSACTION or max_size * procs <= limit:
        return
    name = service.name.upper()
    if max_size == 1:  # the derived pool, at its smallest: only fewer processes help
        raise PoolDoesNotFit(
            f"service {service.name}: {procs} process(es) need a connection each, but "
            f"role {service.runtime_role} has CONNECTION LIMIT {limit}. Fix: run at most "
            f"{max(limit, 1)} process(es) (EDULINK_DB_{name}_PROCESSES or "
            "EDULINK_DB_PROCESSES_PER_SERVICE), move to a plan with more max_connections "
            "(see 'edulink-db budget'), or connect through the transaction pooler.",
            procs, limit)
    setting = setting or (f"EDULINK_DB_{name}_POOL_SIZE/_MAX_OVERFLOW and "
                          "DATABASE_POOL_SIZE/_MAX_OVERFLOW")
    raise PoolDoesNotFit(
        f"service {service.name}: {procs} process(es) x pool max {max_size} = "
        f"{max_size * procs} connections, but role {service.runtime_role} has CONNECTION "
        f"LIMIT {limit}. Fix: lower the pool (unset {setting} to derive "
        f"{derived_pool(limit, procs).max_size}), run fewer processes "
        f"(EDULINK_DB_{name}_PROCESSES), move to a plan with more max_connections, or "
        "connect through the transaction pooler.", max_size * procs, limit)


def held_limit(conn: psycopg.Connection[Any], service: Service, topology: Topology) -> int:
    """The CONNECTION LIMIT of the role *conn* is logged in as; for a role without one
    (not provisioned on that server), the share the budget would give it."""
    row = conn.execute("SELECT rolconnlimit FROM pg_catalog.pg_roles"
                       " WHERE rolname = current_user").fetchone()
    if row is not None and row[0] >= 0:
        return int(row[0])
    server = read_server(conn)
    return role_limits(server, topology).get(service.runtime_role,
                                             derived_limit(server, topology))


# -- the whole table ---------------------------------------------------------------------


@dataclass(frozen=True)
class RoleBudget:
    service: str
    role: str
    limit: int
    limit_from: str  # "topology", "derived" or "catalog" (what the server holds)
    processes: int
    pool: PoolSize | None  # None: the explicit pool setting cannot fit (see problem)
    problem: str | None = None

    @property
    def total(self) -> int:
        return 0 if self.pool is None else self.pool.max_size * self.processes


@dataclass(frozen=True)
class Budget:
    server: Server
    roles: list[RoleBudget]
    pooler: str = "none"

    @property
    def runtime_total(self) -> int:
        """What every process of every service may hold at once."""
        return sum(r.total for r in self.roles)

    @property
    def limits_total(self) -> int:
        return sum(r.limit for r in self.roles)

    @property
    def spare(self) -> int:
        """Usable connections left for the admin, migrators and monitoring."""
        return self.server.usable - self.limits_total

    def as_dict(self) -> dict[str, Any]:
        return {"server": {**asdict(self.server), "usable": self.server.usable,
                           "headroom": self.server.headroom},
                "pooler": self.pooler, "limits_total": self.limits_total,
                "runtime_total": self.runtime_total, "spare": self.spare,
                "roles": [{**asdict(r), "total": r.total} for r in self.roles]}


def plan(server: Server, topology: Topology, settings: Settings, *,
         catalog: dict[str, int] | None = None, pooler: str = "none",
         procs: int | None = None) -> Budget:
    """The budget of *topology* on *server*.  *catalog*: the limits the roles hold
    (pg_roles.rolconnlimit; -1, unlimited, falls back to the model's); *procs*:
    processes per service instead of the settings' (``budget --processes``)."""
    want = role_limits(server, topology)
    rows = []
    for svc in topology.services:
        held = (catalog or {}).get(svc.runtime_role, -1)
        limit = held if held >= 0 else want[svc.runtime_role]
        source = ("catalog" if held >= 0 and held != want[svc.runtime_role] else
                  "topology" if svc.connection_limit is not None else "derived")
        n = procs if procs is not None else processes(settings, svc)
        pool: PoolSize | None
        problem: str | None = None
        try:
            pool = pool_size(settings, svc, limit, pooler=pooler, procs=n)
        except ConfigError as exc:
            pool, problem = None, str(exc)
        rows.append(RoleBudget(svc.name, svc.runtime_role, limit, source, n, pool, problem))
    return Budget(server, rows, pooler)


def read_budget(conn: psycopg.Connection[Any], topology: Topology, settings: Settings, *,
                pooler: str = "none", procs: int | None = None) -> Budget:
    """The budget of the server *conn* is connected to, with the limits its runtime
    roles hold (two catalog reads)."""
    server = read_server(conn)
    held = dict(conn.execute("SELECT rolname::text, rolconnlimit FROM pg_catalog.pg_roles"
                             " WHERE rolname = ANY(%s)", [topology.runtime_roles]).fetchall())
    return plan(server, topology, settings, catalog=held, pooler=pooler, procs=procs)
