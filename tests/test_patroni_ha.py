"""The six services on a real Patroni cluster (three PostgreSQL 15 nodes, three etcd
members; scripts/patroni-cluster.sh), under load while the leader changes (issue 30).

Each event runs writers and readers in this process (tests/ha_load.py) beside a bare
psycopg writer.  Run with ``-s`` for the numbers; benchmarks/patroni_failover.py runs
five of each and prints the table.  The bounds are the issue's, asserted as correctness
bounds (a pool that backed off for seconds, or wrote to a demoted leader, fails them).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from microservices.shared.database.config import load_settings
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.core.errors import (
    ServerConnectionLostError,
    ServiceConnectionError,
)

from .ha_load import DB, Outcome, Series, env_for, prepare, run_event, service_process_env
from .patroni import NODES, TTL, PatroniCluster, cluster_fixture, wait_for
from .patroni import replayed as _replayed


@pytest.fixture(scope="module")
def sync_cluster() -> Iterator[tuple[PatroniCluster, dict[str, Any]]]:
    with cluster_fixture(sync=True) as cluster:
        yield cluster, prepare(cluster)


def _healthy(cluster: PatroniCluster, timeout: float = 90) -> None:
    wait_for(cluster.ready, timeout)


def test_switchover_under_load(sync_cluster: tuple[PatroniCluster, dict[str, Any]]) -> None:
    cluster, admin = sync_cluster
    _healthy(cluster)
    outcome = run_event(cluster, admin, "switchover")
    print("\n" + outcome.line())
    assert outcome.pause_ours <= 2.0
    assert outcome.pause_ours <= outcome.pause_bare + 0.5
    assert outcome.lost_ours == 0 and outcome.lost_bare == 0  # synchronous_mode
    _reads_never_stopped(outcome)


def test_failover_under_load_and_the_old_leader_rejoins(
        sync_cluster: tuple[PatroniCluster, dict[str, Any]]) -> None:
    cluster, admin = sync_cluster
    _healthy(cluster)
    outcome = run_event(cluster, admin, "failover")
    print("\n" + outcome.line())
    assert outcome.resumed_after_promotion <= 1.0
    assert outcome.pause_ours <= TTL + 2 + 2  # ttl + 2 s, plus the kill and the detection
    assert outcome.lost_ours == 0 and outcome.lost_bare == 0  # synchronous_mode
    _no_raw_driver_errors(outcome)
    started = time.monotonic()
    cluster.start_node(outcome.old_leader)
    _healthy(cluster)
    print(f"old leader {outcome.old_leader} rejoined as a replica in "
          f"{time.monotonic() - started:.1f} s")
    old = next(m for m in cluster.members() if m.name == outcome.old_leader)
    assert old.role in ("replica", "sync_standby")
    # ... and takes replica reads again.
    old_port = cluster.started.pg_ports[NODES.index(outcome.old_leader)]
    with service_process_env(env_for(cluster, admin)):
        manager = ConnectionManager(load_settings())
        try:
            def served_by_old() -> bool:
                with manager.get_connection("user", replica=True) as conn:
                    row = conn.execute("SELECT inet_server_port()").fetchone()
                return row is not None and int(row[0]) == old_port
            started = time.monotonic()
            wait_for(served_by_old, 30, interval=0.05)
            print(f"old leader {outcome.old_leader} serves replica reads "
                  f"{time.monotonic() - started:.1f} s after it rejoined")
        finally:
            manager.close_all()


def _reads_never_stopped(outcome: Outcome) -> None:
    # 'Never stop': no read waited longer than the slowest single checkout could.
    assert outcome.read_gap_replica < 1.0, outcome.line()
    _no_raw_driver_errors(outcome)


def _no_raw_driver_errors(outcome: Outcome) -> None:
    for name in ("ours", "replica", "reader"):
        raw = [k for k in outcome.errors[name] if k in ("AdminShutdown", "OperationalError")]
        assert not raw, f"{name}: raw driver errors {raw}: {outcome.line()}"


def test_a_stopped_replica_moves_reads_within_5_s_without_errors(
        sync_cluster: tuple[PatroniCluster, dict[str, Any]]) -> None:
    """SIGKILL one replica's node: replica reads go to the other replica (or the
    leader) within 5 s, and no read that starts after the kill fails; the node comes
    back and takes reads again.  A read in flight on the node when it dies fails with
    ServerConnectionLostError, as the docs say (nothing can finish a statement on a
    server that is gone): at most that one."""
    cluster, admin = sync_cluster
    _healthy(cluster)
    leader = cluster.leader()
    assert leader is not None
    victim = next(m for m in cluster.replicas())
    victim_port = cluster.started.pg_ports[NODES.index(victim.name)]
    with service_process_env(env_for(cluster, admin)):
        manager = ConnectionManager(load_settings())
        series, stop = Series("replica"), threading.Event()

        def read() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    with manager.get_connection("user", replica=True) as conn:
                        row = conn.execute("SELECT inet_server_port()").fetchone()
                    assert row is not None
                    series.ok.append((time.monotonic(), int(row[0])))
                except Exception as exc:
                    series.errors.append((started, exc))  # when the block began
                time.sleep(0.01)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        try:
            wait_for(lambda: series.first_on(victim_port, 0.0), 30)
            killed_at = time.monotonic()
            cluster.kill_node(victim.name)
            dead_at = time.monotonic()  # every process of the node is gone
            time.sleep(6)
            moved = [t for t, p in series.ok if t > killed_at and p != victim_port]
            last_on_victim = max((t for t, p in series.ok if p == victim_port), default=0.0)
            cluster.start_node(victim.name)
            _healthy(cluster)
            back = wait_for(lambda: series.first_on(victim_port, time.monotonic() - 0.5), 30)
        finally:
            stop.set()
            thread.join(timeout=30)
            manager.close_all()
    gap = series.longest_gap(killed_at, killed_at + 6)
    print(f"\nreplica {victim.name} killed: reads elsewhere after "
          f"{(moved[0] - killed_at) if moved else float('inf'):.2f} s, longest gap "
          f"{gap:.2f} s; back on it: {back is not None}; errors "
          f"{sorted({type(e).__name__ for _, e in series.errors})}")
    assert moved and moved[0] - killed_at < 5.0 and gap < 5.0
    assert last_on_victim <= killed_at + 0.1
    after_kill = [e for t, e in series.errors if t >= dead_at]
    in_flight = [e for t, e in series.errors if t < dead_at]
    assert not after_kill, after_kill[:3]
    assert len(in_flight) <= 1 and all(
        isinstance(e, ServerConnectionLostError) for e in in_flight), in_flight


class _LyingPatroni(http.server.BaseHTTPRequestHandler):
    """A Patroni REST API that names a *replica* as the leader."""

    payload: bytes = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_rest_api_that_names_a_replica_leader_gets_no_write_there(
        sync_cluster: tuple[PatroniCluster, dict[str, Any]]) -> None:
    """Bad input: the REST endpoint lies.  The pool connects there read-write only, so
    the replica refuses and writes fail with a clear error; none lands on a replica."""
    cluster, admin = sync_cluster
    _healthy(cluster)
    replica = cluster.replicas()[0]
    _replayed(cluster, replica.name)  # it has the service roles' passwords too
    members = [{"name": m.name, "role": "leader" if m.name == replica.name else "replica",
                "state": "running", "host": m.host, "port": m.port, "api_url": m.api_url,
                "timeline": m.timeline, "lag": 0} for m in cluster.members()]
    handler = type("Handler", (_LyingPatroni,),
                   {"payload": json.dumps({"members": members}).encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**env_for(cluster, admin),
           "DATABASE_PATRONI_URLS": f"http://127.0.0.1:{server.server_port}",
           "DATABASE_POOL_TIMEOUT": "2"}
    try:
        with service_process_env(env):
            manager = ConnectionManager(load_settings())
            try:
                with pytest.raises(ServiceConnectionError) as caught, \
                        manager.get_connection("user") as conn:
                    conn.execute("INSERT INTO ticks (writer) VALUES ('lie')")
            finally:
                manager.close_all()
    finally:
        server.shutdown()
    print(f"\nlying REST API: {caught.value}")
    assert "read-write" in str(caught.value) or "read only" in str(caught.value) \
        or "cannot reach" in str(caught.value)
    with psycopg.connect(**{**admin, "dbname": DB}, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM user_schema.ticks WHERE writer = 'lie'"
                           ).fetchone()
    assert row == (0,)
