"""Choosing a read replica: a health cache per replica, refreshed in the background.

``get_connection(service, replica=True)`` asks a :class:`ReplicaSet` for a replica
whose replay lag is at most ``DATABASE_REPLICA_MAX_LAG``.  Nothing is probed per
query: one daemon thread per set reads each replica's state about once a second over
a connection of its own, and :meth:`ReplicaSet.choose` only reads the cached result.

Lag is ``now() - pg_last_xact_replay_timestamp()``, except when the standby streams
and has replayed everything it received (or more: a WAL receiver that restarted counts
from the start of its segment): then it is 0.  Without that exception an
idle primary (no new transactions) would make every caught-up replica look more and
more behind.  A standby that does not stream (no WAL receiver) is judged by the
timestamp alone: it cannot know what it is missing.

States: ``ok``; ``lagging`` (lag above the limit, or unknown); ``down`` (cannot
connect or query, or -- for a service's replicas -- the service's schema is missing or
not usable there: a wrong database name or a role without privileges); ``not-a-standby``
(the server is a primary, e.g. promoted: reading there is no longer reading a replica
of our primary, and a session there could turn read-only mode off and write).  Each
state change is logged once, with the replica's host and port only.

Never a primary: replica pools connect with ``target_session_attrs=standby`` (see
config.replica_conninfos), and a pooled connection whose server reports
``in_hot_standby=off`` (PostgreSQL 14+ reports it after each statement once a standby
is promoted) is closed at checkout instead of used.

A replica whose checkouts fail while its probe succeeds (e.g. out of connection slots)
would flap between ``ok`` and ``down`` at the probe rate; after a failed checkout it
stays ``down`` for a hold-down time that doubles with each failure in a row (up to
:data:`MAX_HOLD_DOWN_S`), so a flapping replica logs a few lines, not two a second.

Fork safety: the probe thread does not survive ``fork()``.  In the child every set
forgets its thread (the next ``choose()`` starts one) and drops, without closing, the
parent's probe connections (closing would send the server a Terminate on the
parent's socket).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import psycopg

from ..config import host_label

log = logging.getLogger(__name__)

OK, LAGGING, DOWN, NOT_A_STANDBY, UNKNOWN = "ok", "lagging", "down", "not-a-standby", "unknown"
REFRESH_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2
MAX_HOLD_DOWN_S = 30.0

# One round trip.  pg_stat_wal_receiver shows a row (pid only, for roles without
# pg_read_all_stats) exactly while a WAL receiver runs.
LAG_QUERY = (
    "SELECT pg_catalog.pg_is_in_recovery(),"
    " CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN NULL"
    "  WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_stat_wal_receiver)"
    # >=, not =: a WAL receiver that (re)starts -- after a failover, or when the
    # standby restarts -- reports as received the start of the segment it streams
    # from, which is behind what it already replayed; until the primary writes again
    # (an idle one may not for hours) an '=' would judge it by the timestamp.
    "   AND pg_catalog.pg_last_wal_replay_lsn() >= pg_catalog.pg_last_wal_receive_lsn()"
    "  THEN 0::float8"
    "  ELSE extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp())::float8"
    " END,"
    # The service's schema, when given: usable by the role we log in as?  A replica URL
    # naming another database (or a role without privileges there) would otherwise
    # "work" and answer every read with 'relation does not exist'.
    " CASE WHEN %(schema)s::text IS NULL THEN true"
    "  WHEN pg_catalog.to_regnamespace(%(schema)s::text) IS NULL THEN false"
    "  ELSE pg_catalog.has_schema_privilege(pg_catalog.to_regnamespace(%(schema)s::text),"
    " 'USAGE') END"
)

P = TypeVar("P")
C = TypeVar("C", covariant=True)


def judge(in_recovery: bool, lag: float | None, max_lag: float) -> str:
    """The state of a replica that answered the lag query."""
    if not in_recovery:
        return NOT_A_STANDBY
    if lag is None or lag > max_lag:
        return LAGGING
    return OK


def _probe_params(params: dict[str, Any]) -> dict[str, Any]:
    out = dict(params)
    # The probe must see a primary to report it (not-a-standby), where the pools'
    # target_session_attrs=standby would only fail to connect; prefer-standby still
    # finds the standby of a multi-host replica URL as the pools do.
    out["target_session_attrs"] = "prefer-standby"
    # A probe must never hang the health cache: bounded connect and statement.
    out["connect_timeout"] = min(int(out.get("connect_timeout", PROBE_TIMEOUT_S) or
                                     PROBE_TIMEOUT_S), PROBE_TIMEOUT_S)
    out["options"] = (str(out.get("options", "")) + " -c statement_timeout=2000").strip()
    return out


def read_lag(conn: psycopg.Connection[Any], max_lag: float,
             schema: str | None = None) -> tuple[str, float | None]:
    """``(state, lag_seconds)`` of the server *conn* is connected to; ``down`` when
    *schema* is given and not usable there by the connected role."""
    row = conn.execute(LAG_QUERY, {"schema": schema}).fetchone()
    assert row is not None
    in_recovery, lag, schema_ok = bool(row[0]), row[1], bool(row[2])
    lag = None if lag is None else max(float(lag), 0.0)
    if not schema_ok:
        return DOWN, lag
    return judge(in_recovery, lag, max_lag), lag


def probe_once(params: dict[str, Any], max_lag: float) -> tuple[str, float | None]:
    """Connect, read the state and close: for one-off views such as ``health``."""
    try:
        with psycopg.connect(**_probe_params(params), autocommit=True) as conn:
            return read_lag(conn, max_lag)
    except psycopg.Error:
        return DOWN, None


@dataclass
class Replica(Generic[P]):
    """One replica of one service: where it is, its cached health, and its pool."""

    # repr=False: params hold the password, and a repr ends up in logs and tracebacks.
    params: dict[str, Any] = field(repr=False)
    pool: P = field(repr=False)
    label: str = ""
    state: str = UNKNOWN
    lag_seconds: float | None = None
    checked_at: float = 0.0
    hold_until: float = 0.0  # no probe may call it ok before (monotonic clock)
    failures: int = 0  # failed checkouts in a row
    _conn: psycopg.Connection[Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.label = host_label(self.params)

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.label, "state": self.state, "lag_seconds": self.lag_seconds}


class ReplicaSet(Generic[P]):
    """The replicas of one service and the thread that keeps their health current.

    *pools* are opaque to this module (the connection manager's pools); :meth:`choose`
    hands back the pool of a healthy replica, or None when none qualifies.
    """

    def __init__(self, service: str, replicas: Sequence[tuple[dict[str, Any], P]],
                 max_lag: float, *, interval: float = REFRESH_INTERVAL_S,
                 schema: str | None = None,
                 admit: Callable[[str], bool] | None = None) -> None:
        """*admit*: a second opinion on a healthy replica, by its ``host:port`` label
        (Patroni's view of its role and state), asked at each choice."""
        self.service = service
        self.admit = admit
        self.max_lag = max_lag
        self.schema = schema
        self.interval = interval
        self.replicas: list[Replica[P]] = [Replica(params, pool) for params, pool in replicas]
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Checkouts with replica=True by where they were served (the exporter's
        # edulink_db_replica_reads_total): a fallback share near 1 means no replica helps.
        self.served = {"replica": 0, "primary": 0}
        self._served_lock = threading.Lock()
        _SETS.add(self)

    def __repr__(self) -> str:
        return f"ReplicaSet({self.service!r}, {[r.label for r in self.replicas]})"

    # -- choosing ---------------------------------------------------------------
    def choose(self) -> Replica[P] | None:
        """A replica in state ``ok`` (round robin), else None.  The first call probes
        every replica before answering; later calls only read the cache."""
        if self._thread is None:
            self.start()
        admit = self.admit
        healthy = [r for r in self.replicas
                   if r.state == OK and (admit is None or admit(r.label))]
        if not healthy:
            return None
        return healthy[next(self._turn) % len(healthy)]

    def mark_down(self, replica: Replica[P], reason: str) -> None:
        """A checkout on *replica* failed: stop choosing it until a probe says otherwise,
        and not before a hold-down time (1 s, doubling per failure in a row)."""
        replica.failures += 1
        replica.hold_until = time.monotonic() + min(
            self.interval * 2 ** (replica.failures - 1), MAX_HOLD_DOWN_S)
        self._set(replica, DOWN, None, _scrub(reason, replica.params))

    def mark_not_a_standby(self, replica: Replica[P]) -> None:
        """A pooled connection of *replica* reports the server promoted."""
        self._set(replica, NOT_A_STANDBY, None, "the server left recovery (promoted?)")

    def checkout_ok(self, replica: Replica[P]) -> None:
        replica.failures = 0
        self.count("replica")

    def count(self, served_by: str) -> None:
        with self._served_lock:
            self.served[served_by] += 1

    def snapshot(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.replicas]

    # -- health --------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """Whether the health thread runs (the first probe of every replica is done)."""
        return self._thread is not None

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self.refresh()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"edulink-db replicas {self.service}")
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        for replica in self.replicas:
            if replica._conn is not None:
                replica._conn.close()
                replica._conn = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def refresh(self) -> None:
        """Probe every replica once (the background thread calls this every interval)."""
        for replica in self.replicas:
            if self._stop.is_set():
                return
            self._probe(replica)

    def _probe(self, replica: Replica[P]) -> None:
        try:
            if replica._conn is None or replica._conn.closed:
                replica._conn = psycopg.connect(**_probe_params(replica.params),
                                                autocommit=True)
            state, lag = read_lag(replica._conn, self.max_lag, self.schema)
            reason = (f"schema {self.schema} is missing or not usable by the service's role "
                      "there (wrong database name, or missing grants?)" if state == DOWN
                      else f"replay lag {lag:.1f}s over DATABASE_REPLICA_MAX_LAG "
                      f"{self.max_lag:g}s" if state == LAGGING and lag is not None
                      else "replay lag unknown (not streaming, nothing replayed yet)"
                      if state == LAGGING else "the server is not in recovery (promoted?)"
                      if state == NOT_A_STANDBY else "")
        except psycopg.Error as exc:
            if replica._conn is not None:
                replica._conn.close()
                replica._conn = None
            state, lag = DOWN, None
            reason = _scrub(" ".join(str(exc).split())[:200], replica.params) or type(
                exc).__name__
        if state == OK and time.monotonic() < replica.hold_until:
            return  # held down after failed checkouts: the probe alone does not vouch
        self._set(replica, state, lag, reason)

    def _set(self, replica: Replica[P], state: str, lag: float | None, reason: str) -> None:
        previous = replica.state
        replica.state, replica.lag_seconds = state, lag
        replica.checked_at = time.monotonic()
        if state == previous:
            return
        if state == OK:
            log.info("service %s: read replica %s is usable (lag %.1fs)", self.service,
                     replica.label, lag or 0.0)
        else:
            log.warning("service %s: skipping read replica %s, %s: %s; replica reads go to "
                        "the other replicas or the primary", self.service, replica.label,
                        state, reason)


def build(service: str, params: Sequence[dict[str, Any]], max_lag: float,
          make_pool: Callable[[dict[str, Any]], P], *,
          schema: str | None = None,
          admit: Callable[[str], bool] | None = None) -> ReplicaSet[P] | None:
    """A ReplicaSet over *params* with a pool each (None when there are none)."""
    if not params:
        return None
    return ReplicaSet(service, [(p, make_pool(p)) for p in params], max_lag, schema=schema,
                      admit=admit)


# Every live ReplicaSet, for the fork handler.
_SETS: weakref.WeakSet[ReplicaSet[Any]] = weakref.WeakSet()
# Probe connections inherited from the parent: kept referenced in the child, never
# closed or garbage-collected there (PQfinish would end the parent's session).
_INHERITED: list[psycopg.Connection[Any]] = []


def _after_fork_in_child() -> None:
    for replica_set in list(_SETS):
        replica_set._lock = threading.Lock()
        replica_set._stop = threading.Event()
        replica_set._thread = None
        for replica in replica_set.replicas:
            if replica._conn is not None:
                _INHERITED.append(replica._conn)
                replica._conn = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _scrub(text: str, params: dict[str, Any]) -> str:
    """*text* (a server or libpq message) with the password replaced, should it ever
    be echoed; logs and health output show it."""
    password = str(params.get("password") or "")
    return text.replace(password, "********") if len(password) >= 4 else text


def promoted(conn: Any) -> bool:
    """Whether the server of pooled connection *conn* said it left recovery (the
    ``in_hot_standby`` report of PostgreSQL 14+; nothing is known before 14)."""
    pgconn = getattr(conn, "pgconn", None)
    return pgconn is not None and pgconn.parameter_status(b"in_hot_standby") == b"off"


def lost_server(exc: BaseException | None, conn: Any) -> bool:
    """Whether the block ended because the replica went away (not a query error)."""
    return isinstance(exc, psycopg.OperationalError) and bool(getattr(conn, "closed", False)
                                                               or getattr(conn, "broken", False))
