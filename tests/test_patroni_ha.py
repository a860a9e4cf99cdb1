"""The six services on a real Patroni cluster (three PostgreSQL 15 nodes, three etcd
members; scripts/patroni-cluster.sh), under load while the leader changes (issue 30).

Each event runs writers and readers in this process (tests/ha_load.py) beside a bare
psycopg writer.  Run with ``-s`` for the numbers; benchmarks/patroni_failover.py runs
five of each and prints the table.  The bounds are the issue's, asserted as correctness
bounds (a pool that backed off for seconds, or wrote to a demoted leader, fails them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from .ha_load import Outcome, prepare, run_event
from .patroni import TTL, PatroniCluster, cluster_fixture, wait_for


@pytest.fixture(scope="module")
def sync_cluster() -> Iterator[tuple[PatroniCluster, dict[str, Any]]]:
    with cluster_fixture(sync=True) as cluster:
        yield cluster, prepare(cluster)


def _healthy(cluster: PatroniCluster, timeout: float = 90) -> None:
    wait_for(cluster.healthy, timeout)


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


def _reads_never_stopped(outcome: Outcome) -> None:
    # 'Never stop': no read waited longer than the slowest single checkout could.
    assert outcome.read_gap_replica < 1.0, outcome.line()
    _no_raw_driver_errors(outcome)


def _no_raw_driver_errors(outcome: Outcome) -> None:
    for name in ("ours", "replica", "reader"):
        raw = [k for k in outcome.errors[name] if k in ("AdminShutdown", "OperationalError")]
        assert not raw, f"{name}: raw driver errors {raw}: {outcome.line()}"
