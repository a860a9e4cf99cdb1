"""Backups on a real Patroni cluster (issue 30): ``backup auto`` dumps the current
leader (or a replica, with EDULINK_DB_BACKUP_FROM=replica) and keeps working when the
leader is killed in the middle of a dump."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.backup.manager import BackupManager
from microservices.shared.database.backup.schedule import run_auto
from microservices.shared.database.config import load_settings
from microservices.shared.database.core.errors import (
    BackupInterruptedError,
    DatabaseUnavailableError,
)

from .ha_load import env_for, prepare, service_process_env
from .patroni import NODES, PatroniCluster, cluster_fixture, replayed, wait_for

BULK_ROWS = 800_000  # pg_dump needs a second or two for it: time to kill the leader


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[PatroniCluster, dict[str, Any]]]:
    with cluster_fixture(sync=True) as c:
        admin = prepare(c)
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute("SET ROLE user_service_owner")
            conn.execute("CREATE TABLE IF NOT EXISTS user_schema.bulk "
                         "(id bigint PRIMARY KEY, body text NOT NULL)")
            conn.execute("TRUNCATE user_schema.bulk")
            conn.execute("INSERT INTO user_schema.bulk SELECT i, md5(i::text) || md5("
                         "(i * 7)::text) FROM generate_series(1, %s) i", (BULK_ROWS,))
        yield c, admin


@pytest.fixture
def env(cluster: tuple[PatroniCluster, dict[str, Any]], tmp_path: Path
        ) -> Iterator[dict[str, str]]:
    c, admin = cluster
    wait_for(c.ready, 90)
    for member in c.replicas():  # the bulk load streamed to every replica
        replayed(c, member.name)
    values = {**env_for(c, admin), "EDULINK_DB_BACKUP_DIR": str(tmp_path / "bk"),
              "EDULINK_DB_HOME": str(tmp_path / "home"),
              "EDULINK_DB_BACKUP_SCHEMA_EVERY": "off"}
    with service_process_env(values):
        yield values


def _port_of(note: str) -> int:
    return int(note.split("(", 1)[1].split(")")[0].rsplit(":", 1)[1])


def _source_note(notes: list[str]) -> str:
    return next(n for n in notes if n.startswith("dumped from"))


def test_a_replica_backup_reads_a_replica_and_has_every_row(
        cluster: tuple[PatroniCluster, dict[str, Any]], env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    c, _ = cluster
    monkeypatch.setenv("EDULINK_DB_BACKUP_FROM", "replica")
    # Patroni's lag figures follow the replay a loop later.
    wait_for(lambda: all(isinstance(m.lag, int) and m.lag < 1 << 20 for m in c.replicas()),
             30)
    info = BackupManager(load_settings()).create_schema_backup(["user_schema"])
    manifest = BackupManager(load_settings()).store.load(info.backup_id)
    note = _source_note(manifest.notes)
    replica_ports = {c.started.pg_ports[NODES.index(m.name)] for m in c.replicas()}
    assert "Patroni replica" in note and _port_of(note) in replica_ports, note
    assert manifest.row_counts["user_schema.bulk"] == BULK_ROWS


def test_a_replica_backup_with_no_replica_in_reach_dumps_the_primary_and_says_so(
        cluster: tuple[PatroniCluster, dict[str, Any]], env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    c, _ = cluster
    monkeypatch.setenv("EDULINK_DB_BACKUP_FROM", "replica")
    monkeypatch.delenv("DATABASE_PATRONI_URLS")
    monkeypatch.setenv("DATABASE_REPLICA_URLS",  # nothing listens on port 9
                       f"postgresql://postgres:{c.started.password}@127.0.0.1:9/edulink")
    manager = BackupManager(load_settings())
    manifest = manager.store.load(manager.create_schema_backup(["user_schema"]).backup_id)
    note = _source_note(manifest.notes)
    assert note.startswith("dumped from the primary"), note
    assert "no replica within the lag limit answered" in note
    assert manifest.row_counts["user_schema.bulk"] == BULK_ROWS


def test_backup_with_the_rest_api_down_still_dumps_the_primary(
        cluster: tuple[PatroniCluster, dict[str, Any]], env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    c, _ = cluster
    monkeypatch.setenv("DATABASE_PATRONI_URLS", "http://127.0.0.1:9")  # nothing listens
    leader = c.leader()
    assert leader is not None
    manager = BackupManager(load_settings())
    info = manager.create_schema_backup(["user_schema"])
    manifest = manager.store.load(info.backup_id)
    assert _source_note(manifest.notes) == "dumped from the primary"
    assert manifest.row_counts["user_schema.bulk"] == BULK_ROWS


def _dumping(c: PatroniCluster, name: str) -> bool:
    with c.connect(name) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name"
                           " = 'pg_dump' AND query LIKE 'COPY%%'").fetchone()
    return bool(row and row[0])


def test_backup_auto_survives_the_leader_being_killed_mid_dump(
        cluster: tuple[PatroniCluster, dict[str, Any]], env: dict[str, str]) -> None:
    """SIGKILL the leader while pg_dump copies from it: the run waits for Patroni to
    promote a replica, dumps the new leader, verifies it, and leaves no partial
    backup; the old leader rejoins afterwards."""
    c, _ = cluster
    old = c.leader()
    assert old is not None
    lines: list[str] = []
    manager = BackupManager(load_settings(), progress=lines.append)
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(run_auto(manager))
        except Exception as exc:  # reported by the assertion below
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: _dumping(c, old.name), 60, interval=0.05)
    killed = time.monotonic()
    c.kill_node(old.name)
    try:
        thread.join(timeout=180)
        _check_the_run_after_the_kill(c, old.name, manager, result, lines, killed)
    finally:
        c.start_node(old.name)
        wait_for(c.ready, 120)


def _check_the_run_after_the_kill(c: PatroniCluster, old: str, manager: BackupManager,
                                  result: list[Any], lines: list[str], killed: float) -> None:
    assert result, "backup auto still running 180 s after the kill"
    report = result[0]
    assert not isinstance(report, Exception), f"backup auto failed: {report!r}\n{lines}"
    print(f"\nbackup auto finished {time.monotonic() - killed:.1f} s after the kill")
    assert any("trying again" in line for line in lines), lines
    [taken] = report.taken
    manifest = manager.store.load(taken)
    assert manifest.verified.get("ok"), manifest.verified
    note = _source_note(manifest.notes)
    new = c.leader()
    assert new is not None and new.name != old
    assert f"Patroni leader {new.name}" in note, note
    assert manifest.row_counts["user_schema.bulk"] == BULK_ROWS
    assert manager.store.partials() == []
    assert [m.backup_id for m in manager.store.backups()] == [taken]


def test_without_retries_the_interrupted_run_fails_cleanly_and_the_next_one_backs_up(
        cluster: tuple[PatroniCluster, dict[str, Any]], env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """EDULINK_DB_BACKUP_RETRY_FOR=0: the run that loses its leader fails with the
    project's error naming the server, keeps no partial backup, and the next run (cron's,
    a minute later) takes the backup on the new leader."""
    c, admin = cluster
    monkeypatch.setenv("EDULINK_DB_BACKUP_RETRY_FOR", "0")
    old = c.leader()
    assert old is not None
    manager = BackupManager(load_settings())
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(run_auto(manager))
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: _dumping(c, old.name), 60, interval=0.05)
    c.kill_node(old.name)
    thread.join(timeout=60)
    [error] = result
    assert isinstance(error, BackupInterruptedError), repr(error)
    assert "went away" in str(error) and c.started.password not in str(error)
    assert manager.store.partials() == [] and manager.store.backups() == []
    try:
        wait_for(lambda: _writable(admin), 60)  # a promoted replica accepts writes
        report = run_auto(BackupManager(load_settings()))
        [taken] = report.taken
        assert manager.store.load(taken).verified.get("ok")
    finally:
        c.start_node(old.name)
        wait_for(c.ready, 120)


def _writable(admin: dict[str, Any]) -> bool:
    try:
        with psycopg.connect(**admin, autocommit=True):
            return True
    except psycopg.OperationalError:
        return False


def test_a_wrong_password_is_not_retried(
        cluster: tuple[PatroniCluster, dict[str, Any]], env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, admin = cluster
    from microservices.shared.database.config import to_url

    monkeypatch.setenv("DATABASE_URL", to_url({**admin, "password": "not-the-password"}))
    lines: list[str] = []
    with pytest.raises(DatabaseUnavailableError) as caught:
        run_auto(BackupManager(load_settings(), progress=lines.append))
    assert "password authentication failed" in str(caught.value)
    assert "not-the-password" not in str(caught.value)
    assert not any("trying again" in line for line in lines), lines
