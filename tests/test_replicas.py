"""Read replicas against real servers: a primary and two streaming standbys.

Run with ``-s`` to see the measured fallback times (correctness bounds are asserted,
not timings).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from microservices.shared.database.config import (
    load_settings,
    replica_conninfos,
    split_urls,
    to_url,
)
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.core.errors import ConfigError, EdulinkDBError
from microservices.shared.database.monitoring.health import collect
from microservices.shared.database.topology import default_topology

from .clusters import Cluster
from .conftest import SERVICE_PASSWORD, service_env
from .test_failover import DB, make_pair

PORT = "SELECT inet_server_port()"


@pytest.fixture(scope="module")
def trio() -> Iterator[tuple[Cluster, Cluster, Cluster]]:
    primary, (s1, s2) = make_pair("edulink-replicas-", standbys=2)
    try:
        yield primary, s1, s2
    finally:
        s2.destroy()
        s1.destroy()
        primary.destroy()


def db(cluster: Cluster) -> dict[str, Any]:
    return {**cluster.params, "dbname": DB}


@pytest.fixture
def make_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    made: list[ConnectionManager] = []

    def make(primary: Cluster, *replicas: Cluster, **env: str) -> ConnectionManager:
        extra = {"DATABASE_POOL_SIZE": "1", "DATABASE_MAX_OVERFLOW": "2", **env}
        if replicas:
            extra["DATABASE_REPLICA_URLS"] = ",".join(to_url(db(r)) for r in replicas)
        service_env(monkeypatch, db(primary), extra=extra)
        manager = ConnectionManager(load_settings())
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close_all()


def port_of(manager: ConnectionManager, **kw: Any) -> int:
    with manager.get_connection("user", **kw) as conn:
        row = conn.execute(PORT).fetchone()
    assert row is not None
    return int(row[0])


def test_replica_reads_go_to_a_replica_and_plain_checkouts_do_not(
        trio: tuple[Cluster, Cluster, Cluster], make_manager: Any) -> None:
    primary, s1, s2 = trio
    manager = make_manager(primary, s1, s2)
    seen = {port_of(manager, replica=True) for _ in range(8)}
    assert seen == {s1.port, s2.port}  # both healthy: both used
    assert {port_of(manager) for _ in range(5)} == {primary.port}
    with manager.get_connection("user", replica=True, user_id="u1") as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SELECT current_user").fetchone() == ("user_service_role",)
        assert conn.execute("SELECT count(*) FROM ticks").fetchone() is not None
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO ticks DEFAULT VALUES")
    statuses = manager.replica_status("user")
    assert [s["state"] for s in statuses] == ["ok", "ok"]
    # Process-side: replica reads by where they were served (low cardinality).
    from prometheus_client import REGISTRY, generate_latest

    assert replica_set(manager).served == {"replica": 9, "primary": 0}
    assert 'edulink_db_replica_reads_total{served_by="replica",service="user"}' in (
        generate_latest(REGISTRY).decode())
    assert {s["host"] for s in statuses} == {f"127.0.0.1:{s1.port}", f"127.0.0.1:{s2.port}"}


def test_async_replica_reads(trio: tuple[Cluster, Cluster, Cluster],
                             make_manager: Any) -> None:
    primary, s1, _s2 = trio
    manager = make_manager(primary, s1)

    async def main() -> tuple[int, int]:
        async with manager.get_async_connection("user", replica=True) as conn:
            replica = (await (await conn.execute(PORT)).fetchone())[0]
        async with manager.get_async_connection("user") as conn:
            plain = (await (await conn.execute(PORT)).fetchone())[0]
        await manager.aclose_all()
        return replica, plain

    assert asyncio.run(main()) == (s1.port, primary.port)


def test_no_replicas_configured_reads_the_primary(trio: tuple[Cluster, Cluster, Cluster],
                                                   make_manager: Any) -> None:
    primary, _s1, _s2 = trio
    manager = make_manager(primary)
    assert port_of(manager, replica=True) == primary.port
    assert manager.replica_status("user") == []


def _reader(manager: ConnectionManager, stop: threading.Event,
            seen: list[tuple[float, int]], errors: list[Any]) -> None:
    while not stop.is_set():
        # An error is stamped with the time its read *started*: "in flight at the stop"
        # must not depend on how soon this thread runs again on a busy machine.
        started = time.monotonic()
        try:
            seen.append((time.monotonic(), port_of(manager, replica=True)))
        except (psycopg.Error, EdulinkDBError) as exc:
            errors.append((started, exc))
        time.sleep(0.05)


def test_lagging_replica_falls_back_to_the_primary(
        trio: tuple[Cluster, Cluster, Cluster], make_manager: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    primary, s1, _s2 = trio
    manager = make_manager(primary, s1, DATABASE_REPLICA_MAX_LAG="1")
    assert port_of(manager, replica=True) == s1.port
    seen: list[tuple[float, int]] = []
    errors: list[Any] = []
    stop = threading.Event()
    thread = threading.Thread(target=_reader, args=(manager, stop, seen, errors))
    caplog.set_level(logging.INFO, "microservices.shared.database.connections.replicas")
    with s1.connect() as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            with primary.connect(dbname=DB) as conn:
                conn.execute("INSERT INTO user_schema.ticks DEFAULT VALUES")
            paused_at = time.monotonic()
            thread.start()
            deadline = paused_at + 10
            while time.monotonic() < deadline and not any(
                    p == primary.port for t, p in seen if t > paused_at):
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
    fell_back = [t for t, p in seen if p == primary.port]
    assert fell_back, "replica reads never left the paused replica"
    fallback_s = fell_back[0] - paused_at
    # Resumed: the replica catches up and serves again.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and seen[-1][1] != s1.port:
        time.sleep(0.05)
    stop.set()
    thread.join()
    print(f"\nlagging replica (max lag 1s): replica reads on the primary {fallback_s:.3f}s "
          f"after the pause and the next write; {len(seen)} reads, {len(errors)} errors")
    assert not errors
    assert fallback_s < 5.0
    assert seen[-1][1] == s1.port
    skipped = [r for r in caplog.records if "skipping read replica" in r.getMessage()]
    assert len(skipped) == 1 and "lagging" in skipped[0].getMessage()
    assert f"127.0.0.1:{s1.port}" in skipped[0].getMessage()


def test_stopped_replica_falls_back_to_the_primary_without_errors(
        trio: tuple[Cluster, Cluster, Cluster], make_manager: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    primary, s1, _s2 = trio
    manager = make_manager(primary, s1)
    for _ in range(3):
        assert port_of(manager, replica=True) == s1.port  # the pool holds replica conns
    seen: list[tuple[float, int]] = []
    errors: list[Any] = []
    stop = threading.Event()
    thread = threading.Thread(target=_reader, args=(manager, stop, seen, errors))
    caplog.set_level(logging.INFO, "microservices.shared.database.connections.replicas")
    thread.start()
    time.sleep(0.3)
    s1.stop()
    stopped_at = time.monotonic()
    try:
        # Reads move to the primary within the 5 s (a checkout already waiting
        # on the stopped replica's pool gives up after REPLICA_CHECKOUT_TIMEOUT_S), then
        # a second more of reads while the replica is still down.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                t > stopped_at and p == primary.port for t, p in seen):
            time.sleep(0.05)
        time.sleep(1)
        after = [p for t, p in seen if t > stopped_at]
    finally:
        s1.start()
    fell_back = [t for t, p in seen if t > stopped_at and p == primary.port]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and seen[-1][1] != s1.port:
        time.sleep(0.05)
    stop.set()
    thread.join()
    # A read in flight when the server shut down fails, as on a primary; none after.
    assert all(t <= stopped_at and isinstance(e, psycopg.OperationalError)
               for t, e in errors), errors[:3]
    assert len(errors) <= 1
    assert after and set(after) == {primary.port}
    print(f"\nstopped replica: first replica read on the primary "
          f"{fell_back[0] - stopped_at:.3f}s after pg_ctl stop returned; {len(after)} reads "
          f"while it was down, {len(errors)} failed in flight at the stop")
    assert seen[-1][1] == s1.port  # back once it is up again
    # Logged once per state change, not per read: down once (then, restarted, possibly
    # lagging until its WAL receiver streams again), whatever the number of reads.
    skipped = [r.getMessage() for r in caplog.records
               if "skipping read replica" in r.getMessage()]
    assert sum(", down:" in m for m in skipped) == 1, skipped
    assert len(skipped) <= 2, skipped


def test_health_shows_each_replica_state_and_lag(
        trio: tuple[Cluster, Cluster, Cluster], monkeypatch: pytest.MonkeyPatch) -> None:
    primary, s1, _s2 = trio
    dead = {**db(s1), "port": 1}  # nothing listens on port 1
    urls = ",".join(to_url(p) for p in (db(s1), dead, db(primary)))
    service_env(monkeypatch, db(primary), extra={"DATABASE_REPLICA_URLS": urls})
    settings = load_settings()
    with primary.connect(dbname=DB) as conn:
        stats = collect(conn, default_topology(), settings)
    replicas = stats.replication["replicas"]
    assert [(r["host"], r["state"]) for r in replicas] == [
        (f"127.0.0.1:{s1.port}", "ok"), ("127.0.0.1:1", "down"),
        (f"127.0.0.1:{primary.port}", "not-a-standby")]
    assert replicas[0]["lag_seconds"] is not None and replicas[0]["lag_seconds"] <= 5
    assert primary.password not in repr(stats.replication)
    assert primary.password not in repr(settings)


# -- configuration (no server needed) ---------------------------------------------


def test_replica_urls_split_keep_multi_host_urls_whole() -> None:
    text = ("postgresql://a:pw@h1:5432,h2:5433/db?target_session_attrs=any, "
            "postgres://a:pw@h3/db,host=h4 port=5 user=a")
    assert split_urls(text) == ["postgresql://a:pw@h1:5432,h2:5433/db?target_session_attrs=any",
                                "postgres://a:pw@h3/db", "host=h4 port=5 user=a"]


def test_service_credentials_are_derived_and_overridable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    admin = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "password": "admin-secret",
             "dbname": "db"}
    service_env(monkeypatch, admin, extra={
        "DATABASE_REPLICA_URLS": "postgresql://postgres:admin-secret@127.0.0.2:5432/db"})
    settings = load_settings()
    user = default_topology().service("user")
    (params,) = replica_conninfos(user, settings)
    assert (params["user"], params["password"], params["host"]) == (
        "user_service_role", SERVICE_PASSWORD, "127.0.0.2")
    assert "default_transaction_read_only=on" in params["options"]
    assert "admin-secret" not in repr(settings)
    monkeypatch.setenv("EDULINK_DB_USER_REPLICA_URLS",
                       "postgresql://own:own-pw@10.0.0.9:6000/db?options=-c%20work_mem%3D8MB")
    (own,) = replica_conninfos(user, load_settings())
    assert (own["user"], own["host"], own["sslmode"]) == ("own", "10.0.0.9", "require")
    assert own["options"] == "-c work_mem=8MB -c default_transaction_read_only=on"
    # A service on a server of its own gets none of the shared primary's replicas.
    monkeypatch.delenv("EDULINK_DB_USER_REPLICA_URLS")
    monkeypatch.setenv("EDULINK_DB_USER_URL", "postgresql://u:p@10.0.0.5/db")
    assert replica_conninfos(user, load_settings()) == []
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgresql://x:secret-in-url@h/db?no_such_option=1")
    with pytest.raises(ConfigError) as exc:
        replica_conninfos(default_topology().service("auth"), load_settings())
    assert "DATABASE_REPLICA_URLS" in str(exc.value) and "secret-in-url" not in str(exc.value)


# -- attacks and careless configurations ---------------------------------------------


def replica_set(manager: ConnectionManager) -> Any:
    chosen = manager._replica_set(manager._entry("user"))
    assert chosen is not None
    chosen.choose()  # probed once
    return chosen


def test_a_primary_listed_as_a_replica_never_serves_replica_reads(
        trio: tuple[Cluster, Cluster, Cluster], make_manager: Any) -> None:
    """A session there could SET default_transaction_read_only = off and write; the
    replica pool must not even connect, also when the probe has not seen it yet."""
    primary, _s1, _s2 = trio
    manager = make_manager(primary, primary)
    chosen = replica_set(manager)
    assert manager.replica_status("user")[0]["state"] == "not-a-standby"
    # The window before a probe notices (a standby promoted a moment ago): pretend ok.
    chosen._stop.set()
    chosen._thread.join()
    chosen.replicas[0].state = "ok"
    with manager.get_connection("user", replica=True) as conn:
        # Served by the primary's own pool (the fallback), not a "replica" session ...
        assert "default_transaction_read_only" not in (conn.info.options or "")
        conn.execute("SET default_transaction_read_only = off")
        # ... and the fallback is read-only as well: replica=True never writes.
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO ticks DEFAULT VALUES")
    assert chosen.replicas[0].state == "down"
    assert chosen.served == {"replica": 0, "primary": 1}


def test_replica_reads_falling_back_to_the_primary_stay_read_only(
        trio: tuple[Cluster, Cluster, Cluster], make_manager: Any) -> None:
    primary, s1, _s2 = trio
    manager = make_manager(primary, s1)
    chosen = replica_set(manager)
    chosen._stop.set()  # no probe: the replica stays as set here
    chosen._thread.join()
    chosen.replicas[0].state = "down"
    for kw in ({}, {"user_id": "u7"}):
        with manager.get_connection("user", replica=True, **kw) as conn:
            assert conn.execute(PORT).fetchone() == (primary.port,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO ticks DEFAULT VALUES")


def test_promoted_replica_is_left_after_its_next_statement(
        trio: tuple[Cluster, Cluster, Cluster], make_manager: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """A pooled replica connection whose server was promoted is closed, not reused,
    even before the next probe (in_hot_standby, reported by PostgreSQL 14+)."""
    primary, _s1, _s2 = trio
    s3 = Cluster.standby(primary, "s3")
    try:
        primary.wait_streaming(s3)
        manager = make_manager(primary, s3)
        assert port_of(manager, replica=True) == s3.port  # a pooled connection to s3
        chosen = replica_set(manager)
        chosen._stop.set()  # no probe from here on: only the checkouts can notice
        chosen._thread.join()
        caplog.set_level(logging.INFO, "microservices.shared.database.connections.replicas")
        s3.promote()
        with s3.connect() as conn:
            deadline = time.monotonic() + 60
            while conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        ports = [port_of(manager, replica=True) for _ in range(5)]
        # At most the first read (chosen before anything said "promoted") ran there.
        assert ports[1:] == [primary.port] * 4, ports
        assert chosen.replicas[0].state == "not-a-standby"
        changes = [r.getMessage() for r in caplog.records if "not-a-standby" in r.getMessage()]
        assert len(changes) == 1, changes
    finally:
        s3.destroy()


def test_replica_passwords_never_shown(
        trio: tuple[Cluster, Cluster, Cluster], make_manager: Any,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    primary, s1, _s2 = trio
    wrong = "Wr0ng-" + "x" * 12
    own = to_url({**db(s1), "user": "user_service_role", "password": wrong})
    manager = make_manager(primary, s1, EDULINK_DB_USER_REPLICA_URLS=own)
    caplog.set_level(logging.DEBUG)
    assert port_of(manager, replica=True) == primary.port  # login refused: fallback
    chosen = replica_set(manager)
    shown = " ".join([repr(chosen), repr(chosen.replicas), str(chosen.snapshot()),
                      str(manager.replica_status("user")), caplog.text,
                      repr(manager.settings)])
    assert chosen.replicas[0].state == "down"
    assert "password authentication failed" in caplog.text
    assert wrong not in shown and SERVICE_PASSWORD not in shown
    assert primary.password not in shown
    # Health (JSON and text) and the exporter, with the admin's replica URL.
    from prometheus_client import CollectorRegistry, generate_latest

    from microservices.shared.database.monitoring.exporter import DatabaseCollector
    from microservices.shared.database.monitoring.health import evaluate

    settings = load_settings()
    with primary.connect(dbname=DB) as conn:
        stats = collect(conn, default_topology(), settings)
    report = evaluate(stats, settings, default_topology(), [])
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(settings))
    text = generate_latest(registry).decode()
    for output in (repr(stats), str(report), text, caplog.text):
        assert primary.password not in output and wrong not in output


def test_replica_with_the_wrong_database_or_no_privileges_is_skipped(
        trio: tuple[Cluster, Cluster, Cluster], make_manager: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """It accepts the login, but every read would fail ('relation does not exist')."""
    primary, s1, _s2 = trio
    caplog.set_level(logging.INFO, "microservices.shared.database.connections.replicas")
    wrong_db = to_url({**db(s1), "dbname": "postgres", "user": "user_service_role",
                       "password": SERVICE_PASSWORD})
    other_role = to_url({**db(s1), "user": "auth_service_role", "password": SERVICE_PASSWORD})
    for url in (wrong_db, other_role):
        manager = make_manager(primary, EDULINK_DB_USER_REPLICA_URLS=url)
        with manager.get_connection("user", replica=True) as conn:
            assert conn.execute("SELECT count(*) FROM ticks").fetchone() is not None
            assert conn.execute(PORT).fetchone() == (primary.port,)
        (status,) = manager.replica_status("user")
        assert status["state"] == "down"
    assert "schema user_schema is missing or not usable" in caplog.text


def test_replica_checkouts_keep_the_rls_context_and_leak_no_session_state(
        trio: tuple[Cluster, Cluster, Cluster], make_manager: Any) -> None:
    primary, s1, _s2 = trio
    manager = make_manager(primary, s1, DATABASE_POOL_SIZE="1", DATABASE_MAX_OVERFLOW="0")
    current = "SELECT current_setting('app.current_user_id', true)"
    with manager.get_connection("user", replica=True, user_id="u1") as conn:
        assert conn.execute(PORT).fetchone() == (s1.port,)
        assert conn.execute(current).fetchone() == ("u1",)
        pid = conn.info.backend_pid
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("SET work_mem = '77MB'")
        conn.execute("SELECT set_config('app.current_user_id', 'evil', false)")
        conn.commit()
    with manager.get_connection("user", replica=True) as conn:
        assert conn.info.backend_pid == pid  # the same session, reset
        assert conn.execute(current).fetchone() in (("",), (None,))
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SHOW work_mem").fetchone() != ("77MB",)
    with manager.get_connection("user", replica=True, user_id="u2") as conn:
        assert conn.execute(current).fetchone() == ("u2",)


@pytest.mark.parametrize("value", [
    "garbage", "http://h/db", "postgresql://u:p@ss@h/db", "postgresql://u:p/ss@h/db",
    "postgresql://u:pw@h:99999/db", "postgresql://u:pw@h/db?no_such=1",
    "postgresql://u:pw@h/db?target_session_attrs=read-write",
])
def test_garbage_replica_urls_are_a_clear_config_error(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service_env(monkeypatch, {"host": "127.0.0.1", "port": 5432, "user": "postgres",
                              "password": "adm1n-pw", "dbname": "db"},
                extra={"DATABASE_REPLICA_URLS": f"postgresql://u:pw@h0/db,{value}"})
    with pytest.raises(ConfigError) as exc:
        replica_conninfos(default_topology().service("user"), load_settings())
    message = str(exc.value)
    assert "DATABASE_REPLICA_URLS" in message
    assert "entry " in message or "target_session_attrs" in message
    assert "ss@h" not in message and "ss" not in message.split("DATABASE_REPLICA_URLS")[0]
    assert "adm1n-pw" not in message and ":pw" not in message


@pytest.mark.parametrize("value", ["-1", "abc", "nan", ""])
def test_bad_replica_max_lag_is_a_clear_config_error(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_REPLICA_MAX_LAG", value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "DATABASE_REPLICA_MAX_LAG" in str(exc.value)


def test_close_all_leaves_async_replica_pools_to_aclose_all(
        trio: tuple[Cluster, Cluster, Cluster], make_manager: Any) -> None:
    """close_all() must not forget an open async replica pool: aclose_all() closes it."""
    primary, s1, _s2 = trio
    manager = make_manager(primary, s1)

    async def main() -> Any:
        async with manager.get_async_connection("user", replica=True) as conn:
            assert (await (await conn.execute(PORT)).fetchone()) == (s1.port,)
        assert port_of(manager, replica=True) == s1.port  # a sync replica pool too
        entry = replica_set(manager).replicas[0].pool
        async_pool = entry.apool
        assert async_pool is not None and entry.pool is not None
        manager.close_all()
        assert entry.pool is None and not async_pool.closed
        await manager.aclose_all()
        return async_pool

    assert asyncio.run(main()).closed


def test_replica_probing_survives_fork(trio: tuple[Cluster, Cluster, Cluster],
                                       make_manager: Any) -> None:
    """In a forked child the probe thread is restarted on next use, and the parent's
    probe connection is neither used nor closed by the child."""
    import gc
    import os
    import warnings

    primary, s1, _s2 = trio
    manager = make_manager(primary, s1)
    chosen = replica_set(manager)
    parent_probe = chosen.replicas[0]._conn
    assert parent_probe is not None and chosen._thread.is_alive()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            before = chosen.replicas[0].checked_at
            fresh = chosen.choose() is not None  # restarts the thread, probes at once
            gc.collect()  # an inherited connection finalized here would end the parent's
            code = 0 if (fresh and chosen._thread is not None and chosen._thread.is_alive()
                         and chosen.replicas[0]._conn is not parent_probe
                         and chosen.replicas[0].checked_at > before) else 2
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not parent_probe.closed
    assert parent_probe.execute("SELECT 1").fetchone() == (1,)
    assert port_of(manager, replica=True) == s1.port
