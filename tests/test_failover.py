"""Failover against real servers: a primary and a streaming standby (pg_basebackup -R).

Run with ``-s`` to see the measured outage.  The bound asserted (writes resume within
5 s of the promotion) is a correctness bound, not a timing benchmark.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.config import load_settings, mask_dsn, to_url
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.core.errors import EdulinkDBError, StandbyServerError
from microservices.shared.database.migrations.manager import MigrationManager
from microservices.shared.database.monitoring.health import collect, evaluate
from microservices.shared.database.topology import default_topology

from .clusters import Cluster, debian_bin_dir
from .conftest import do_provision, reachable_tempdir, service_env

DB = "edulink"


def cluster_bin_dir() -> Path | None:
    """The embedded 18 binaries, or Debian's of the same major as a test server given
    with EDULINK_TEST_DATABASE_URL (e.g. 15), where installed."""
    url = os.environ.get("EDULINK_TEST_DATABASE_URL")
    if not url:
        return None
    with psycopg.connect(url, connect_timeout=5) as conn:
        major = conn.info.server_version // 10000
    return debian_bin_dir(major)


def make_pair(prefix: str, standbys: int = 1) -> tuple[Cluster, list[Cluster]]:
    """A primary with database DB provisioned for the default topology, a table
    ``user_schema.ticks`` the user service may write, and streaming standbys."""
    root = reachable_tempdir(prefix)
    primary = Cluster.create(root, "p", bin_dir=cluster_bin_dir())
    with primary.connect() as conn:
        conn.execute(f"CREATE DATABASE {DB}")
    admin = {**primary.params, "dbname": DB}
    do_provision(admin, default_topology())
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute("SET ROLE user_service_owner")
        conn.execute("CREATE TABLE user_schema.ticks (id bigint GENERATED ALWAYS AS IDENTITY"
                     " PRIMARY KEY, writer text NOT NULL DEFAULT 'x')")
        conn.execute("INSERT INTO user_schema.ticks DEFAULT VALUES")
    made = [Cluster.standby(primary, f"s{i}") for i in range(1, standbys + 1)]
    for standby in made:
        primary.wait_streaming(standby)
    return primary, made


def multi_host(admin: dict[str, Any], *clusters: Cluster) -> dict[str, Any]:
    return {**admin, "host": ",".join("127.0.0.1" for _ in clusters),
            "port": ",".join(str(c.port) for c in clusters)}


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Cluster, Cluster]]:
    primary, (standby,) = make_pair("edulink-failover-")
    try:
        yield primary, standby
    finally:
        standby.destroy()
        primary.destroy()


def test_clusters_run_the_test_servers_major_version(pair: tuple[Cluster, Cluster]) -> None:
    """With EDULINK_TEST_DATABASE_URL at a Debian 15 server (.ci/run's second leg), the
    primary and standby are PostgreSQL 15 too, so failover is tested on both."""
    primary, standby = pair
    expected = 18
    url = os.environ.get("EDULINK_TEST_DATABASE_URL")
    if url:
        with psycopg.connect(url, connect_timeout=5) as conn:
            major = conn.info.server_version // 10000
        if debian_bin_dir(major) is not None:
            expected = major
    for cluster in (primary, standby):
        with cluster.connect() as conn:
            assert conn.info.server_version // 10000 == expected


def test_provision_refuses_a_standby_naming_it(pair: tuple[Cluster, Cluster]) -> None:
    _primary, standby = pair
    with pytest.raises(StandbyServerError) as exc:
        do_provision({**standby.params, "dbname": DB}, default_topology())
    message = str(exc.value)
    assert f"127.0.0.1:{standby.port}" in message and "standby" in message
    assert "provision" in message and standby.password not in message


def test_migrate_refuses_a_standby_and_runs_nothing(
        pair: tuple[Cluster, Cluster], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    primary, standby = pair
    service_env(monkeypatch, {**standby.params, "dbname": DB})
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "V1__t.sql").write_text("CREATE TABLE standby_t (id int);\n")
    manager = MigrationManager(load_settings(), tmp_path)
    with pytest.raises(StandbyServerError) as exc:
        manager.run_service_migrations("user", tmp_path / "user")
    assert f"127.0.0.1:{standby.port}" in str(exc.value) and "migrate user" in str(exc.value)
    with pytest.raises(StandbyServerError):
        manager.run_all_migrations(tmp_path)
    # Reading the status is not a change: allowed on a standby.
    assert manager.get_migration_status("user", tmp_path / "user")["pending_count"] == 1
    with psycopg.connect(**{**primary.params, "dbname": DB}) as conn:
        assert conn.execute("SELECT to_regclass('user_schema.standby_t')").fetchone() == (None,)


def test_multi_host_url_with_the_standby_first_finds_the_primary(
        pair: tuple[Cluster, Cluster], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without target_session_attrs in the URL, provision and migrate ask libpq for the
    writable host themselves, instead of refusing the standby listed first."""
    primary, standby = pair
    admin = multi_host({**primary.params, "dbname": DB}, standby, primary)
    do_provision(admin, default_topology())  # lands on the primary: no error
    service_env(monkeypatch, admin)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "V1__t.sql").write_text("CREATE TABLE multi_t (id int);\n")
    report = MigrationManager(load_settings(), tmp_path).run_service_migrations(
        "user", tmp_path / "user")
    assert report["applied"] == ["V1__t.sql"] or len(report["applied"]) == 1
    with psycopg.connect(**{**primary.params, "dbname": DB}) as conn:
        assert conn.execute("SELECT to_regclass('user_schema.multi_t')").fetchone() != (None,)
    # Only standbys in the list: refused, saying why.
    with pytest.raises(StandbyServerError) as exc:
        do_provision(multi_host({**primary.params, "dbname": DB}, standby, standby),
                     default_topology())
    assert "standby" in str(exc.value) and standby.password not in str(exc.value)


def test_health_shows_the_primary_and_streaming_standby(pair: tuple[Cluster, Cluster],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    primary, standby = pair
    admin = multi_host({**primary.params, "dbname": DB}, standby, primary)
    admin["target_session_attrs"] = "read-write"
    service_env(monkeypatch, admin)
    settings = load_settings()
    with psycopg.connect(**admin, autocommit=True) as conn:
        stats = collect(conn, default_topology(), settings)
    repl = stats.replication
    assert repl["in_recovery"] is False
    assert repl["primary"] == f"127.0.0.1:{primary.port}"
    (entry,) = repl["standbys"]
    assert entry["name"] == standby.name and entry["state"] == "streaming"
    assert entry["client_addr"] == "127.0.0.1" and entry["replay_lag_bytes"] is not None
    assert repl["replicas"] == []
    health = evaluate(stats, settings, default_topology(), [])
    assert health["checks"]["primary"]["status"] == "ok"
    assert health["replication"] == repl
    # Connected to the standby: it says so.
    with psycopg.connect(**{**standby.params, "dbname": DB}, autocommit=True) as conn:
        on_standby = collect(conn, default_topology(), settings)
    assert on_standby.replication["in_recovery"] is True
    assert on_standby.replication["primary"] is None
    assert evaluate(on_standby, settings, default_topology(), [])["checks"]["primary"][
        "status"] == "degraded"
    from prometheus_client import CollectorRegistry, generate_latest

    from microservices.shared.database.monitoring.exporter import DatabaseCollector

    registry = CollectorRegistry()
    registry.register(DatabaseCollector(settings))
    text = generate_latest(registry).decode()
    assert f'edulink_db_primary_info{{host="127.0.0.1:{primary.port}"}} 1.0' in text
    assert 'edulink_db_standby_streaming{standby="s1"} 1.0' in text
    assert "edulink_db_in_recovery 0.0" in text and primary.password not in text


def test_backup_verify_and_health_through_a_multi_host_url_reach_the_primary(
        pair: tuple[Cluster, Cluster], tmp_path: Path) -> None:
    """The standby listed first, no target_session_attrs: the commands still read the
    primary (a row the paused standby has not replayed is in the backup), and print
    the URL masked."""
    import json
    import subprocess
    import sys

    from .conftest import SERVICE_PASSWORD

    primary, standby = pair
    admin = multi_host({**primary.params, "dbname": DB}, standby, primary)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "EDULINK_", "SUPABASE_"))}
    env.update(DATABASE_URL=to_url(admin), EDULINK_DB_HOME=str(tmp_path),
               EDULINK_DB_BACKUP_DIR=str(tmp_path / "backups"))
    for svc in default_topology().services:
        env[f"EDULINK_DB_{svc.name.upper()}_PASSWORD"] = SERVICE_PASSWORD
        env[f"EDULINK_DB_{svc.name.upper()}_MIGRATOR_PASSWORD"] = SERVICE_PASSWORD

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "microservices.shared.database", *args],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300, check=False)
        for out in (result.stdout, result.stderr):
            assert primary.password not in out and SERVICE_PASSWORD not in out
            assert "Traceback" not in out
        return result

    with standby.connect() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        try:
            with primary.connect(dbname=DB) as p:
                p.execute("INSERT INTO user_schema.ticks (writer) VALUES ('after-pause')")
                row = p.execute("SELECT count(*) FROM user_schema.ticks").fetchone()
                assert row is not None
                count = row[0]
            backup = cli("backup", "schema", "user_schema", "--json")
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")
    assert backup.returncode == 0, backup.stderr[-2000:]
    info = json.loads(backup.stdout)
    manifest = next((tmp_path / "backups").rglob(f"{info['backup_id']}*.json"), None)
    rows = json.loads(manifest.read_text())["row_counts"] if manifest else info.get("row_counts")
    assert rows["user_schema.ticks"] == count, rows
    verify = cli("verify")
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    health = cli("health", "--json")
    assert health.returncode in (0, 1), health.stderr[-2000:]
    report = json.loads(health.stdout)
    assert report["replication"]["primary"] == f"127.0.0.1:{primary.port}"
    text = cli("health").stdout
    assert f"primary: 127.0.0.1:{primary.port}" in text
    assert f"standby {standby.name} (127.0.0.1): streaming, replay lag" in text


def test_failover_under_continuous_writes(pair: tuple[Cluster, Cluster],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill the primary, promote the standby: the service's pool (no restart) resumes
    writing within 5 s of the promotion.  Runs last: it consumes the pair."""
    primary, standby = pair
    admin = multi_host({**primary.params, "dbname": DB}, primary, standby)
    admin["target_session_attrs"] = "read-write"
    service_env(monkeypatch, admin, extra={"DATABASE_POOL_SIZE": "2",
                                           "DATABASE_MAX_OVERFLOW": "2",
                                           "DATABASE_POOL_TIMEOUT": "1"})
    assert "target_session_attrs=read-write" in mask_dsn(load_settings().database_url
                                                         .get_secret_value())  # type: ignore[union-attr]
    manager = ConnectionManager(load_settings())
    successes: list[tuple[float, int]] = []
    errors: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            try:
                with manager.get_connection("user") as conn:
                    row = conn.execute("INSERT INTO ticks (writer) VALUES ('w')"
                                       " RETURNING inet_server_port()").fetchone()
                assert row is not None
                successes.append((time.monotonic(), int(row[0])))
            except (psycopg.Error, EdulinkDBError) as exc:
                errors.append(type(exc).__name__)
                time.sleep(0.02)
            time.sleep(0.005)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(successes) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert successes and successes[-1][1] == primary.port
        killed_at = time.monotonic()
        primary.kill()
        standby.promote()
        promoted_at = time.monotonic()
        deadline = promoted_at + 15
        while time.monotonic() < deadline and not any(
                t > promoted_at and port == standby.port for t, port in successes):
            time.sleep(0.01)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(timeout=10)
        manager.close_all()
    after = [t for t, port in successes if t > promoted_at and port == standby.port]
    assert after, f"no write reached the promoted standby; errors: {errors[-5:]}"
    resumed = after[0] - promoted_at
    times = [t for t, _ in successes]
    outage = max(b - a for a, b in itertools.pairwise(times))
    print(f"\nfailover: kill->promote {promoted_at - killed_at:.3f}s, writes resumed "
          f"{resumed:.3f}s after promotion, longest gap between successful writes "
          f"{outage:.3f}s, {len(errors)} failed attempts during the outage")
    assert resumed < 5.0
    assert all(port == standby.port for t, port in successes if t > after[0])
