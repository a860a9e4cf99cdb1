"""``health`` and the dashboard on a real Patroni cluster (issue 30): the members, their
roles, states and lag, the last leader change; the leader is never probed as a read
replica (it would be 'not-a-standby' and the cluster degraded for ever)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from microservices.shared.database.config import load_settings
from microservices.shared.database.monitoring.dashboard.app import make_app
from microservices.shared.database.monitoring.monitor import get_database_health

from .ha_load import env_for, prepare, service_process_env
from .patroni import NODES, PatroniCluster, cluster_fixture, replayed, wait_for


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[PatroniCluster, dict[str, Any]]]:
    with cluster_fixture(sync=False) as started:
        yield started, prepare(started)


def _health(cluster: PatroniCluster, admin: dict[str, Any], **extra: str) -> dict[str, Any]:
    with service_process_env({**env_for(cluster, admin), **extra}):
        return get_database_health(load_settings())


def _replication_problems(health: dict[str, Any]) -> dict[str, str]:
    return {k: c["message"] for k, c in health["checks"].items()
            if c["status"] != "ok" and k.split(":")[0] in (
                "primary", "standby", "replica", "patroni", "patroni_member",
                "patroni_skipped")}


def _settled(cluster: PatroniCluster) -> None:
    wait_for(cluster.ready, 90)
    for member in cluster.replicas():
        replayed(cluster, member.name)
    # Patroni publishes each member's WAL position once per loop: until both
    # replicas have one, it reports their lag as 'unknown'.
    wait_for(lambda: all(isinstance(m.lag, int) for m in cluster.replicas()) or None, 60)


def test_a_healthy_cluster_is_healthy_and_shows_every_member(
        cluster: tuple[PatroniCluster, dict[str, Any]]) -> None:
    started, admin = cluster
    _settled(started)
    leader = started.leader()
    assert leader is not None
    health = _health(started, admin)
    assert _replication_problems(health) == {}, health["checks"]
    repl = health["replication"]
    leader_host = f"127.0.0.1:{started.started.pg_ports[NODES.index(leader.name)]}"
    assert repl["primary"] == leader_host
    # The members in DATABASE_URL serve replica reads while they are replicas: both
    # replicas are probed, the leader is not.
    assert sorted(r["host"] for r in repl["replicas"]) == sorted(
        f"127.0.0.1:{p}" for p in started.started.pg_ports if f"127.0.0.1:{p}" != leader_host)
    assert all(r["state"] == "ok" for r in repl["replicas"]), repl["replicas"]
    patroni = repl["patroni"]
    assert patroni["leader"]["name"] == leader.name and patroni["error"] is None
    assert sorted(m["name"] for m in patroni["members"]) == sorted(NODES)
    assert {m["role"] for m in patroni["members"]} <= {"leader", "replica", "sync_standby"}
    assert all(isinstance(m["lag_bytes"], int) for m in patroni["members"]
               if m["role"] != "leader")
    assert health["checks"]["patroni"]["status"] == "ok"
    assert leader.name in health["checks"]["patroni"]["message"]
    assert started.started.password not in str(health)


def test_a_switchover_is_the_last_leader_change_and_health_follows_it(
        cluster: tuple[PatroniCluster, dict[str, Any]]) -> None:
    started, admin = cluster
    _settled(started)
    before = _health(started, admin)["replication"]["patroni"]["last_leader_change"]
    new_leader = started.replicas()[0].name
    started.switchover(new_leader)
    wait_for(lambda: (lambda m: (m is not None and m.name == new_leader) or None)(
        started.leader()), 60)
    _settled(started)
    # The replicas' WAL receivers reconnect to the new leader; until they stream again
    # (seconds) the probes judge them by their last replayed transaction, and may call
    # them lagging.  Then health must be clean.
    waited = time.monotonic()
    health = wait_for(lambda: (lambda h: h if not _replication_problems(h) else None)(
        _health(started, admin)), 30, interval=1) or _health(started, admin)
    print(f"\nhealth clean {time.monotonic() - waited:.1f} s after the cluster settled")
    patroni = health["replication"]["patroni"]
    change = patroni["last_leader_change"]
    assert change is not None and change["new_leader"] == new_leader
    assert change["at"], change
    assert before is None or change["timeline"] == before["timeline"] + 1
    assert patroni["leader"]["name"] == new_leader
    assert f"timeline {change['timeline']}" in health["checks"]["patroni"]["message"]
    assert _replication_problems(health) == {}, health["checks"]


def test_a_stopped_member_degrades_health_by_name_and_recovers(
        cluster: tuple[PatroniCluster, dict[str, Any]]) -> None:
    started, admin = cluster
    _settled(started)
    victim = started.replicas()[0].name
    victim_host = f"127.0.0.1:{started.started.pg_ports[NODES.index(victim)]}"
    started.kill_node(victim)
    try:
        def degraded() -> dict[str, str] | None:
            problems = _replication_problems(_health(started, admin))
            return problems if f"replica:{victim_host}" in problems else None

        problems = wait_for(degraded, 60, interval=1)
        assert problems is not None
        assert victim_host in problems[f"replica:{victim_host}"]
        assert "patroni" not in problems  # a leader, reachable: the cluster itself is fine
    finally:
        started.start_node(victim)
    _settled(started)
    assert _replication_problems(_health(started, admin)) == {}


def test_rest_api_down_is_one_degraded_check_not_a_crash(
        cluster: tuple[PatroniCluster, dict[str, Any]]) -> None:
    started, admin = cluster
    _settled(started)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    health = _health(started, admin, DATABASE_PATRONI_URLS=f"http://127.0.0.1:{closed}")
    check = health["checks"]["patroni"]
    assert check["status"] == "degraded"
    assert f"127.0.0.1:{closed}" in check["message"] and "last view" in check["message"]
    # The database itself still answers, through the members in DATABASE_URL.
    assert health["checks"]["connection"]["status"] == "ok"


def test_the_dashboard_shows_the_cluster(cluster: tuple[PatroniCluster, dict[str, Any]],
                                         tmp_path: Any) -> None:
    started, admin = cluster
    _settled(started)
    leader = started.leader()
    assert leader is not None
    env = {**env_for(started, admin), "EDULINK_DB_HOME": str(tmp_path / "home")}
    with service_process_env(env):
        app = make_app(token=None, interval=1.0, start_sampler=False)
        try:
            html = app._env.get_template("macros.html").module.replicas(  # type: ignore[attr-defined]
                get_database_health(load_settings())["replication"])
        finally:
            app.data.sampler.stop()
    text = str(html)
    assert "Patroni cluster" in text and f"leader: {leader.name}" in text
    for name in NODES:
        assert f"<td>{name}</td>" in text
    assert "last leader change" in text
