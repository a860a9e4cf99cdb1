"""move-service from a Patroni cluster (issue 30): PostgreSQL 15 keeps a logical slot
on the leader only, so the preflight refuses a move whose slot is not one of Patroni's
permanent slots (and says how to make it one); with it, a switchover of the source in
the middle of the move loses nothing and the move finishes on the new leader."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from microservices.shared.database.connections.patroni import PatroniDiscovery
from microservices.shared.database.core.errors import MoveError
from microservices.shared.database.relocation import MoveContext, preflight, run_move
from microservices.shared.database.topology import default_topology

from .clusters import Cluster
from .conftest import SERVICE_PASSWORD, reachable_tempdir
from .ha_load import DB, prepare
from .patroni import NODES, PatroniCluster, cluster_fixture, replayed, wait_for

TOPOLOGY = default_topology()
USER = TOPOLOGY.service("user")
SLOT = "edulink_move_user"


@pytest.fixture(scope="module")
def source() -> Iterator[tuple[PatroniCluster, dict[str, Any]]]:
    with cluster_fixture(sync=False) as started:
        yield started, prepare(started)


@pytest.fixture(scope="module")
def target() -> Iterator[Cluster]:
    root = reachable_tempdir("edulink-patroni-move-")
    server = Cluster.create(root, "pmt")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _params(server: Cluster) -> dict[str, Any]:
    return {k: v for k, v in server.params.items() if k != "connect_timeout"}


def _ctx(cluster: PatroniCluster, admin: dict[str, Any], target: Cluster,
         **kw: Any) -> MoveContext:
    return MoveContext(topology=TOPOLOGY, service=USER, home=admin, source=admin,
                       target=_params(target), passwords=lambda _s: SERVICE_PASSWORD,
                       migrator_passwords=lambda _s: SERVICE_PASSWORD,
                       allow_unbounded_wal=True, **kw)


def _discovery(cluster: PatroniCluster) -> PatroniDiscovery:
    return PatroniDiscovery(list(cluster.started.rest), 1.0, 2.0, None)


def _slots_on(cluster: PatroniCluster, name: str) -> set[str]:
    with cluster.connect(name, dbname=DB) as conn:
        return {r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots"
                                           " WHERE slot_type = 'logical'")}


def _edit_config(cluster: PatroniCluster, *settings: str) -> None:
    argv = ["patronictl", "-c", str(cluster.started.ctl_config), "edit-config", "--force"]
    for setting in settings:
        argv += ["-s", setting]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr


def _insert(admin: dict[str, Any], n: int, writer: str) -> None:
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute("INSERT INTO user_schema.ticks (writer) SELECT %s FROM"
                     " generate_series(1, %s)", (writer, n))


def test_a_move_whose_slot_is_not_permanent_is_refused_and_says_how(
        source: tuple[PatroniCluster, dict[str, Any]], target: Cluster) -> None:
    cluster, admin = source
    wait_for(cluster.ready, 90)
    with pytest.raises(MoveError) as refused:
        run_move(_ctx(cluster, admin, target, source_patroni=_discovery(cluster)))
    text = str(refused.value)
    assert "not one of the Patroni cluster's permanent slots" in text, text
    assert f"-s 'slots.{SLOT}.type=logical'" in text and "'slots." + SLOT + \
        f".database={DB}'" in text and "--allow-slot-loss" in text
    assert cluster.started.password not in text
    # Refused before anything was made: no slot, no publication.
    leader = cluster.leader()
    assert leader is not None and SLOT not in _slots_on(cluster, leader.name)
    with psycopg.connect(**admin) as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)


def test_without_patroni_urls_the_preflight_notes_the_standbys(
        source: tuple[PatroniCluster, dict[str, Any]], target: Cluster) -> None:
    cluster, admin = source
    wait_for(cluster.ready, 90)
    report = preflight(admin, _params(target), USER, allow_unbounded_wal=True, slot=SLOT)
    assert report.ok, report.problems
    assert any("physical standby" in n and "--abort" in n for n in report.notes), report.notes


def test_the_slot_survives_a_switchover_in_the_middle_of_the_move(
        source: tuple[PatroniCluster, dict[str, Any]], target: Cluster) -> None:
    cluster, admin = source
    wait_for(cluster.ready, 90)
    _edit_config(cluster, f"slots.{SLOT}.type=logical", f"slots.{SLOT}.database={DB}",
                 f"slots.{SLOT}.plugin=pgoutput")
    try:
        # Patroni creates the slot on the leader, then copies it to each replica
        # (restarting its PostgreSQL once) and advances it there every loop.
        wait_for(lambda: all(SLOT in _slots_on(cluster, n) for n in NODES) or None, 120,
                 interval=1)
        wait_for(cluster.ready, 90)
        _insert(admin, 500, "before")
        progress: list[str] = []
        switched: dict[str, Any] = {}
        lock = threading.Lock()

        def on_progress(message: str) -> None:
            progress.append(message)
            with lock:
                if not message.startswith("caught up") or switched:
                    return
                # The copy has caught up on the old leader: switch over now, write on the
                # new one, and let the move go on.  Its subscription must follow the
                # leader and find the slot there.
                old = cluster.leader()
                assert old is not None
                for member in cluster.replicas():
                    replayed(cluster, member.name)
                new = cluster.replicas()[0].name
                cluster.switchover(new)
                wait_for(lambda: (lambda m: (m is not None and m.name == new) or None)(
                    cluster.leader()), 60)
                try:
                    wait_for(cluster.ready, 90)
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}\n{cluster.status()}\n"
                                         f"{cluster.streaming()}") from exc
                switched.update(old=old.name, new=new)
                _insert(admin, 300, "after")

        ctx = _ctx(cluster, admin, target, source_patroni=_discovery(cluster),
                   progress=on_progress, sync_timeout_s=120)
        try:
            report = run_move(ctx)
        except MoveError as exc:
            slots = {}
            for name in NODES:
                with cluster.connect(name, dbname=DB) as conn:
                    slots[name] = conn.execute(
                        "SELECT slot_name, active, confirmed_flush_lsn::text,"
                        " pg_is_in_recovery() FROM pg_replication_slots").fetchall()
            raise AssertionError(f"{exc}\nswitched: {switched}\nslots: {slots}\ntarget "
                                 f"log:\n{target.log_tail(40)}") from exc
        assert report is not None
        assert any("permanent slot" in n for n in report.notes), report.notes
        assert switched, progress
        with target.connect() as conn:
            rows = dict(conn.execute("SELECT writer, count(*) FROM user_schema.ticks"
                                     " GROUP BY 1").fetchall())
        assert rows.get("before") == 500 and rows.get("after") == 300, (rows, progress)
        assert any("still a permanent slot" in m for m in progress), progress
    finally:
        _edit_config(cluster, f"slots.{SLOT}=null")
    # Once it is no longer permanent, nothing recreates the slot.
    leader = cluster.leader()
    assert leader is not None
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                     " WHERE slot_name = %s AND NOT active", (SLOT,))
    assert SLOT not in _slots_on(cluster, leader.name)
