"""The Patroni test cluster (scripts/patroni-cluster.sh, tests/patroni.py), for real:
3 etcd members, 3 Patroni nodes running PostgreSQL 15, switchover, SIGKILL failover.

Timings are printed (``pytest -s``).  Every test starts from a healthy cluster: the
``cluster`` fixture calls the idempotent ``start`` (which also brings back whatever a
previous test left dead) and waits until a leader has two streaming replicas.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .patroni import (
    EPHEMERAL_START,
    PORT_TAKEN,
    SCRIPT,
    TTL,
    Member,
    PatroniCluster,
    free_port_block,
    patroni_cluster,
    patroni_installed,
    wait_for,
)

__all__ = ["patroni_cluster", "patroni_installed"]  # the fixtures, imported for this module

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def cluster(patroni_cluster: PatroniCluster) -> Iterator[PatroniCluster]:
    patroni_cluster.start()
    wait_for(patroni_cluster.healthy, 60, what="a leader with two streaming replicas")
    yield patroni_cluster


def _pg_stat_replication(cluster: PatroniCluster, node: str) -> dict[str, str]:
    with cluster.connect(node) as conn:
        rows = conn.execute("SELECT application_name, state FROM pg_stat_replication").fetchall()
    return {name: state for name, state in rows}


def _in_recovery(cluster: PatroniCluster, node: str) -> bool:
    with cluster.connect(node) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    assert row is not None
    return bool(row[0])


def _new_leader(cluster: PatroniCluster, old: str) -> Member | None:
    leader = cluster.leader()
    return leader if leader is not None and leader.name != old else None


def _replica_of(cluster: PatroniCluster, node: str, leader: str) -> bool:
    """*node* runs as a replica, streams from *leader*, on the leader's timeline."""
    members = {m.name: m for m in cluster.members()}
    return (members[leader].role == "leader" and members[node].role != "leader"
            and members[node].state == "running"
            and members[node].timeline == members[leader].timeline
            and node in cluster.streaming() and _in_recovery(cluster, node))


@pytest.mark.usefixtures("patroni_installed")
def test_start_refuses_a_taken_port(tmp_path: Path) -> None:
    """Exit 3 naming the port, before anything is made: the caller tries another block."""
    base = free_port_block()
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", base + 7))  # node2's PostgreSQL
        holder.listen()
        result = subprocess.run([str(SCRIPT), "start", str(tmp_path / "c"), str(base)],
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == PORT_TAKEN, result.stderr
    assert f"port {base + 7} is taken" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "c").exists()


def test_one_leader_two_streaming_replicas(cluster: PatroniCluster) -> None:
    members = cluster.members()
    assert sorted(m.name for m in members) == ["node1", "node2", "node3"]
    leaders = [m for m in members if m.role == "leader"]
    assert len(leaders) == 1 and leaders[0].state == "running"
    leader = leaders[0].name
    replicas = {m.name for m in members if m.name != leader}
    assert {m.role for m in members if m.name in replicas} <= {"replica", "sync_standby"}
    assert cluster.streaming() == replicas
    assert _pg_stat_replication(cluster, leader) == dict.fromkeys(replicas, "streaming")
    assert not _in_recovery(cluster, leader)
    assert all(_in_recovery(cluster, r) for r in replicas)
    # The URL's hosts are the three nodes; libpq finds the writable one.
    facts = cluster.started
    assert facts.url.endswith("@" + ",".join(f"127.0.0.1:{p}" for p in facts.pg_ports)
                              + "/postgres")
    assert all(p < EPHEMERAL_START for p in (*facts.pg_ports, *facts.rest_ports))
    import psycopg

    with psycopg.connect(facts.url + "?target_session_attrs=read-write") as conn:
        assert conn.info.port == cluster.params(leader)["port"]


def test_the_password_is_in_no_log(cluster: PatroniCluster) -> None:
    password = cluster.started.password
    logs = [*cluster.dir.glob("*/*.log"), *cluster.dir.glob("node*/pglog/*")]
    assert logs
    assert not [str(p) for p in logs if password in p.read_text(errors="replace")]
    assert (cluster.dir / "superuser.password").stat().st_mode & 0o777 == 0o600


def test_a_write_on_the_leader_is_read_on_the_replicas(cluster: PatroniCluster) -> None:
    leader = cluster.leader()
    assert leader is not None
    value = secrets.token_hex(8)
    with cluster.connect(leader.name) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS patroni_probe (value text)")
        conn.execute("INSERT INTO patroni_probe VALUES (%s)", (value,))
    started = time.monotonic()
    for replica in cluster.replicas():
        def visible(name: str = replica.name) -> bool:
            with cluster.connect(name) as conn:
                return conn.execute("SELECT 1 FROM patroni_probe WHERE value = %s",
                                    (value,)).fetchone() is not None
        wait_for(visible, 10, 0.05, what=f"the write on {replica.name}")
    print(f"\n[patroni] write visible on both replicas after {time.monotonic() - started:.2f} s")


def test_synchronous_mode_from_the_flag(cluster: PatroniCluster) -> None:
    started = time.monotonic()
    facts = cluster.start(sync=True)
    assert facts.sync
    try:
        roles = [m.role for m in cluster.members()]
        assert roles.count("sync_standby") == 1, roles
        leader = cluster.leader()
        assert leader is not None
        with cluster.connect(leader.name) as conn:
            names = conn.execute("SHOW synchronous_standby_names").fetchone()
        assert names is not None and names[0], names
        print(f"\n[patroni] synchronous mode on in {time.monotonic() - started:.1f} s")
    finally:
        assert not cluster.start(sync=False).sync
    wait_for(lambda: not any(m.role == "sync_standby" for m in cluster.members()), 30,
             what="no sync_standby")


def test_switchover_changes_the_leader_and_the_old_one_returns(cluster: PatroniCluster) -> None:
    old = cluster.leader()
    assert old is not None
    candidate = next(m.name for m in cluster.replicas())
    started = time.monotonic()
    output = cluster.switchover(candidate)
    assert "switched over" in output.lower() or "switchover" in output.lower(), output
    new = wait_for(lambda: _new_leader(cluster, old.name), 30, 0.1, what="a new leader")
    promoted = time.monotonic() - started
    assert new.name == candidate
    wait_for(lambda: _replica_of(cluster, old.name, new.name), 60, 0.2,
             what=f"{old.name} streaming from {new.name}")
    rejoined = time.monotonic() - started
    wait_for(lambda: not _in_recovery(cluster, new.name), 10, 0.05,
             what=f"{new.name} out of recovery")
    print(f"\n[patroni] switchover {old.name} -> {new.name}: new leader after {promoted:.1f} s, "
          f"old leader streaming again after {rejoined:.1f} s")


def test_sigkill_of_the_leader_fails_over_and_the_node_rejoins(cluster: PatroniCluster) -> None:
    old = cluster.leader()
    assert old is not None
    with cluster.connect(old.name) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS patroni_probe (value text)")
        conn.execute("INSERT INTO patroni_probe VALUES ('before the kill')")
    log = cluster.node_dir(old.name) / "patroni.log"
    log_offset = log.stat().st_size
    killed = time.monotonic()
    cluster.kill_node(old.name)
    assert not cluster.node_processes(old.name)
    new = wait_for(lambda: _new_leader(cluster, old.name), TTL + 10, 0.1,
                   what="a new leader")
    failover = time.monotonic() - killed
    # Patroni names the new leader (REST role 'leader') before its promotion completes.
    wait_for(lambda: not _in_recovery(cluster, new.name), 10, 0.05,
             what=f"{new.name} out of recovery")
    writable = time.monotonic() - killed
    assert writable < TTL + 5, f"new leader writable after {writable:.1f} s"

    restarted = time.monotonic()
    cluster.start_node(old.name)
    wait_for(lambda: _replica_of(cluster, old.name, new.name), 90, 0.2,
             what=f"{old.name} streaming from {new.name}")
    rejoined = time.monotonic() - restarted
    with cluster.connect(old.name) as conn:
        assert conn.execute("SELECT count(*) FROM patroni_probe WHERE value = 'before the kill'"
                            ).fetchone() == (1,)
    with log.open(errors="replace") as fh:
        fh.seek(log_offset)
        rejoin_log = fh.read()
    print(f"\n[patroni] SIGKILL of leader {old.name}: new leader {new.name} after "
          f"{failover:.1f} s, writable after {writable:.1f} s (ttl {TTL} s); "
          f"{old.name} back as a streaming replica {rejoined:.1f} s after start_node")
    # Patroni 3.0.2 first runs crash recovery in single-user mode, whose end-of-recovery
    # checkpoint lies past the point where the new leader's timeline forked: the old
    # leader always diverged, and pg_rewind (not a new base backup) brings it back.
    assert "pg_rewind exit code=0" in rejoin_log, rejoin_log[-3000:]
    assert "basebackup" not in rejoin_log.lower(), "the old leader was rebuilt, not rewound"


def test_stop_leaves_no_process(cluster: PatroniCluster) -> None:
    assert cluster.processes()
    started = time.monotonic()
    cluster.stop()
    stopped = time.monotonic() - started
    assert not cluster.processes()
    result = subprocess.run(["pgrep", "-f", f"{cluster.dir}/"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 1, result.stdout
    cluster.stop()  # idempotent
    print(f"\n[patroni] stop took {stopped:.1f} s")
    started = time.monotonic()
    cluster.start()  # reuses the data
    wait_for(cluster.healthy, 60, what="a leader with two streaming replicas")
    print(f"[patroni] restart on the same data took {time.monotonic() - started:.1f} s")
    leader = cluster.leader()
    assert leader is not None
    with cluster.connect(leader.name) as conn:
        assert conn.execute("SELECT to_regclass('patroni_probe') IS NOT NULL").fetchone() == (
            True,)
