"""Load on a Patroni cluster while its leader changes: writers and readers in one
process, beside a bare psycopg writer, and what they saw (issue 30).

Used by tests/test_patroni_ha.py (one event each, bounds asserted) and
benchmarks/patroni_failover.py (five events each, the pause and loss table).

Workers, each in its own thread, recording every success with its time and the
server port that served it:

* ``ours``: ``get_connection("user")`` inserts a row and keeps its id once the
  INSERT returned (autocommit: that is the acknowledgement);
* ``bare``: a plain psycopg connection on the same multi-host URL with
  ``target_session_attrs=read-write``, reconnecting at once after any error (the best
  a client can do);
* ``replica``: ``get_connection("user", replica=True)`` reads a count;
* ``reader``: ``get_reader_connection("user", "user")`` reads on the primary.

The promotion moment is the first time a member other than the old leader answers
``pg_is_in_recovery() = false`` (polled every 20 ms with superuser connections).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from microservices.shared.database.config import load_settings
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.core.errors import EdulinkDBError
from microservices.shared.database.topology import default_topology

from .conftest import SERVICE_PASSWORD, do_provision, service_params
from .patroni import NODES, PatroniCluster

DB = "edulink"


@dataclass
class Series:
    """What one worker saw."""

    name: str
    ok: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, server port)
    acked: list[int] = field(default_factory=list)  # ids of acknowledged inserts
    errors: list[tuple[float, BaseException]] = field(default_factory=list)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time without a success in [start, end] (from the last success
        before *start* to the first after it, and so on)."""
        times = [t for t, _ in self.ok]
        before = [t for t in times if t < start]
        inside = [t for t in times if start <= t <= end]
        after = [t for t in times if t > end]
        points = before[-1:] + inside + after[:1]
        if len(points) < 2:
            return float("inf")
        return max(b - a for a, b in itertools.pairwise(points))

    def gap_detail(self, start: float, end: float) -> str:
        """Where the longest gap in [start, end] was: the ports served around it."""
        points = [(t, p) for t, p in self.ok if start - 5 <= t <= end]
        if len(points) < 2:
            return "-"
        (a, pa), (b, pb) = max(itertools.pairwise(points), key=lambda ab: ab[1][0] - ab[0][0])
        return f"{b - a:.2f} s from {a - start:+.2f} s (port {pa}) to port {pb}"

    def first_on(self, port: int, after: float) -> float | None:
        return next((t for t, p in self.ok if t > after and p == port), None)

    def error_kinds(self) -> list[str]:
        return sorted({type(e).__name__ for _, e in self.errors})


def prepare(cluster: PatroniCluster) -> dict[str, Any]:
    """Database DB on the cluster, provisioned for the default topology, with a table
    ``user_schema.ticks`` the user service may write; returns the admin parameters
    (every member, read-write)."""
    facts = cluster.started
    admin: dict[str, Any] = {"host": ",".join("127.0.0.1" for _ in facts.pg_ports),
             "port": ",".join(str(p) for p in facts.pg_ports), "user": "postgres",
             "password": facts.password, "dbname": "postgres",
             "target_session_attrs": "read-write", "connect_timeout": 5}
    with psycopg.connect(**admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone() \
                is None:
            conn.execute(f"CREATE DATABASE {DB}")
    admin = {**admin, "dbname": DB}
    do_provision(admin, default_topology())
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute("SET ROLE user_service_owner")
        conn.execute("CREATE TABLE IF NOT EXISTS user_schema.ticks (id bigint GENERATED "
                     "ALWAYS AS IDENTITY PRIMARY KEY, writer text NOT NULL DEFAULT 'x')")
    return admin


def env_for(cluster: PatroniCluster, admin: dict[str, Any]) -> dict[str, str]:
    """The settings of a service process on *cluster* (DATABASE_URL with every member,
    DATABASE_PATRONI_URLS with every REST API)."""
    from microservices.shared.database.config import to_url

    env = {"DATABASE_URL": to_url(admin),
           "DATABASE_PATRONI_URLS": ",".join(cluster.started.rest),
           "DATABASE_POOL_SIZE": "2", "DATABASE_MAX_OVERFLOW": "2",
           "DATABASE_POOL_TIMEOUT": "20"}
    for svc in default_topology().services:
        env[f"EDULINK_DB_{svc.name.upper()}_PASSWORD"] = SERVICE_PASSWORD
        env[f"EDULINK_DB_{svc.name.upper()}_MIGRATOR_PASSWORD"] = SERVICE_PASSWORD
    return env


def _loop(series: Series, stop: threading.Event, step: Callable[[], tuple[int, int | None]],
          catch: tuple[type[BaseException], ...]) -> None:
    while not stop.is_set():
        try:
            port, acked = step()
            series.ok.append((time.monotonic(), port))
            if acked is not None:
                series.acked.append(acked)
        except catch as exc:
            series.errors.append((time.monotonic(), exc))
            time.sleep(0.005)
        time.sleep(0.005)


@dataclass
class Load:
    """The workers of one run, started together; :meth:`stop` joins them."""

    manager: ConnectionManager
    bare_params: dict[str, Any]
    series: dict[str, Series] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        manager = self.manager

        def ours() -> tuple[int, int | None]:
            with manager.get_connection("user") as conn:
                row = conn.execute("INSERT INTO ticks (writer) VALUES ('ours')"
                                   " RETURNING id, inet_server_port()").fetchone()
            assert row is not None
            return int(row[1]), int(row[0])

        def replica() -> tuple[int, int | None]:
            with manager.get_connection("user", replica=True) as conn:
                row = conn.execute("SELECT inet_server_port(), count(*) FROM ticks"
                                   " WHERE id > 0").fetchone()
            assert row is not None
            return int(row[0]), None

        def reader() -> tuple[int, int | None]:
            with manager.get_reader_connection("user", "user") as conn:
                row = conn.execute("SELECT inet_server_port()").fetchone()
            assert row is not None
            return int(row[0]), None

        bare_conn: list[psycopg.Connection[Any]] = []

        def bare() -> tuple[int, int | None]:
            if not bare_conn or bare_conn[0].closed:
                bare_conn[:] = [psycopg.connect(**self.bare_params, autocommit=True)]
            try:
                row = bare_conn[0].execute(
                    "INSERT INTO user_schema.ticks (writer) VALUES ('bare')"
                    " RETURNING id, inet_server_port()").fetchone()
            except psycopg.Error:
                bare_conn[0].close()
                raise
            assert row is not None
            return int(row[1]), int(row[0])

        ours_catch: tuple[type[BaseException], ...] = (EdulinkDBError, psycopg.Error)
        for name, step, catch in (("ours", ours, ours_catch), ("replica", replica, ours_catch),
                                  ("reader", reader, ours_catch),
                                  ("bare", bare, (psycopg.Error,))):
            self.series[name] = Series(name)
            thread = threading.Thread(target=_loop, args=(self.series[name], self._stop, step,
                                                          catch),
                                      name=f"load-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def warm(self, successes: int = 20, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(len(s.ok) >= successes for s in self.series.values()):
                return
            time.sleep(0.05)
        raise AssertionError({n: (len(s.ok), s.error_kinds()) for n, s in self.series.items()})

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@contextlib.contextmanager
def service_process_env(env: dict[str, str]) -> Iterator[None]:
    """Set *env* (and nothing else of DATABASE_/EDULINK_DB_) in os.environ for a block."""
    import os

    saved = {k: v for k, v in os.environ.items() if k.startswith(("DATABASE_", "EDULINK_DB_"))}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


def _reads_on_a_replica(load: Load, cluster: PatroniCluster, leader: str,
                       timeout: float = 30) -> None:
    """Wait until ``replica=True`` reads are served by replicas, not the leader.

    Right after the cluster starts, or after an earlier event, Patroni may report a
    replica's lag as ``unknown`` for a loop or two (its DCS entry has no WAL position
    yet), and until then replica reads fall back to the leader: an event then would
    measure the leader's outage, not whether reads on replicas stop."""
    leader_port = cluster.started.pg_ports[NODES.index(leader)]
    series = load.series["replica"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recent = series.ok[-10:]
        if len(recent) == 10 and all(port != leader_port for _, port in recent):
            return
        time.sleep(0.05)
    raise AssertionError(f"replica reads still on the leader ({leader}) after {timeout:g} s:"
                         f" {series.ok[-5:]} {series.error_kinds()}\n{cluster.status()}")


def promotion_watch(cluster: PatroniCluster, old_leader: str, stop: threading.Event,
                    seen: list[tuple[float, str]]) -> None:
    """Append (time, name) when a member other than *old_leader* first accepts writes."""
    conns: dict[str, psycopg.Connection[Any]] = {}
    while not stop.is_set() and not seen:
        for name in NODES:
            if name == old_leader:
                continue
            try:
                if name not in conns or conns[name].closed:
                    conns[name] = cluster.connect(name, connect_timeout=1)
                row = conns[name].execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and row[0] is False:
                    seen.append((time.monotonic(), name))
                    break
            except psycopg.Error:
                conns.pop(name, None)
        time.sleep(0.02)
    for conn in conns.values():
        conn.close()


def _present(conn: psycopg.Connection[Any], ids: list[int]) -> int:
    """How many of the acknowledged *ids* the (new) leader has."""
    row = conn.execute("SELECT count(*) FROM user_schema.ticks WHERE id = ANY(%s)",
                       (ids,)).fetchone()
    return int(row[0]) if row else 0


@dataclass
class Outcome:
    """One switchover or failover under load."""

    kind: str
    sync: bool
    old_leader: str
    new_leader: str
    event_at: float
    promoted_at: float
    pause_ours: float
    pause_bare: float
    resumed_after_promotion: float
    read_gap_replica: float
    read_gap_reader: float
    lost_ours: int
    lost_bare: int
    acked: int
    errors: dict[str, list[str]]
    detail: str = ""

    def line(self) -> str:
        return (f"{self.kind} (sync={'on' if self.sync else 'off'}): {self.old_leader} -> "
                f"{self.new_leader}; writes paused {self.pause_ours:.2f} s (bare psycopg "
                f"{self.pause_bare:.2f} s), resumed {self.resumed_after_promotion:.2f} s after "
                f"the promotion ({self.promoted_at - self.event_at:.2f} s after the event); "
                f"longest read gap {self.read_gap_replica:.2f} s (replica=True), "
                f"{self.read_gap_reader:.2f} s (reader); lost {self.lost_ours} of ours, "
                f"{self.lost_bare} bare, of {self.acked} acknowledged; errors {self.errors}; "
                f"longest gaps: {self.detail}")


def run_event(cluster: PatroniCluster, admin: dict[str, Any], kind: str,
              settle: float = 2.0) -> Outcome:
    """Run the load, make a *kind* ('switchover' or 'failover') happen, and measure.
    A failover leaves the old leader killed: the caller restarts it (start_node)."""
    leader = cluster.ready() or cluster.leader()
    assert leader is not None, cluster.status()
    env = env_for(cluster, admin)
    user = default_topology().service("user")
    bare_params = {**service_params(admin, user), "connect_timeout": 2}
    with service_process_env(env):
        manager = ConnectionManager(load_settings())
        load = Load(manager, bare_params)
        load.start()
        try:
            load.warm()
            _reads_on_a_replica(load, cluster, leader.name)
            seen: list[tuple[float, str]] = []
            stop = threading.Event()
            watcher = threading.Thread(target=promotion_watch,
                                       args=(cluster, leader.name, stop, seen), daemon=True)
            watcher.start()
            event_at = time.monotonic()
            if kind == "switchover":
                cluster.switchover()
            else:
                cluster.kill_node(leader.name)
            deadline = time.monotonic() + 60
            while not seen and time.monotonic() < deadline:
                time.sleep(0.02)
            stop.set()
            watcher.join(timeout=10)
            assert seen, f"no member was promoted within 60 s:\n{cluster.status()}"
            promoted_at, new_leader = seen[0]
            new_port = cluster.started.pg_ports[NODES.index(new_leader)]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (
                    load.series["ours"].first_on(new_port, promoted_at)
                    and load.series["bare"].first_on(new_port, promoted_at)):
                time.sleep(0.02)
            time.sleep(settle)
        finally:
            load.stop()
            manager.close_all()
    end = time.monotonic()
    ours, bare = load.series["ours"], load.series["bare"]
    resumed = ours.first_on(new_port, promoted_at)
    with psycopg.connect(**{**cluster.params(new_leader), "dbname": DB},
                         autocommit=True) as db:
        lost_ours = len(ours.acked) - _present(db, ours.acked)
        lost_bare = len(bare.acked) - _present(db, bare.acked)
    return Outcome(
        kind=kind, sync=cluster.started.sync, old_leader=leader.name, new_leader=new_leader,
        event_at=event_at, promoted_at=promoted_at,
        pause_ours=ours.longest_gap(event_at, end), pause_bare=bare.longest_gap(event_at, end),
        resumed_after_promotion=(resumed - promoted_at) if resumed else float("inf"),
        read_gap_replica=load.series["replica"].longest_gap(event_at, end),
        read_gap_reader=load.series["reader"].longest_gap(event_at, end),
        lost_ours=lost_ours, lost_bare=lost_bare, acked=len(ours.acked) + len(bare.acked),
        errors={n: s.error_kinds() for n, s in load.series.items()},
        detail="; ".join(f"{n}: {s.gap_detail(event_at, end)}"
                         for n, s in load.series.items()))
