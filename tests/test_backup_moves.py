"""Backups follow moves: after ``move-service`` a full backup is a set whose moved
schema is dumped from its new server, drills restore the whole set, coverage counts
only backups taken where a schema lives now (health, backup status, dashboard,
exporter), and a restore of a moved schema goes where the registry says it lives.
Two real servers (tests/clusters.py), the sample schema (tests/sample_schema.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from microservices.shared.database.backup.drill import run_drill
from microservices.shared.database.backup.manager import BackupManager
from microservices.shared.database.backup.placement import remember_location_admin
from microservices.shared.database.backup.schedule import backup_freshness, run_auto
from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.connections.location import location_string
from microservices.shared.database.core.errors import BackupError
from microservices.shared.database.monitoring.dashboard.data import DashboardData
from microservices.shared.database.monitoring.exporter import DatabaseCollector
from microservices.shared.database.monitoring.monitor import get_database_health
from microservices.shared.database.relocation import mover, run_move

from .clusters import Cluster
from .conftest import do_provision, reachable_tempdir, service_env
from .sample_schema import load_sample_schema, snapshot
from .test_move_real_schemas import _ctx, _pair
from .test_move_service import INST, TOPOLOGY, _p

SCHEMA = INST.schema


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = reachable_tempdir("edulink-backup-moves-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def moved(root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
          ) -> Iterator[tuple[Cluster, Cluster, dict[str, str]]]:
    """institution moved from a (home) to b, with one backup taken before the move."""
    a, b = _pair(root, f"bm{tmp_path.name[-6:].replace('-', '')}")
    env = {"EDULINK_DB_BACKUP_DIR": str(tmp_path / "bk"),
           "EDULINK_DB_HOME": str(tmp_path / "home"),
           "EDULINK_DB_BACKUP_SCHEMA_EVERY": "1h", "EDULINK_DB_BACKUP_FULL_EVERY": "1d"}
    try:
        do_provision(_p(a), TOPOLOGY)
        load_sample_schema(_p(a), SCHEMA, INST.owner_role)
        service_env(monkeypatch, _p(a), extra=env)
        m = BackupManager(load_settings())
        m.verify(m.create_full_backup().backup_id)
        run_move(_ctx(_p(a), _p(b), []))
        yield a, b, env
    finally:
        a.destroy()
        b.destroy()


def _write_on_target(code: str) -> None:
    manager = ConnectionManager(load_settings())
    try:
        with manager.get_connection("institution") as conn:
            conn.execute("INSERT INTO campus (code, name) VALUES (%s, 'after the move')", [code])
    finally:
        manager.close_all()


def _exporter_text() -> str:
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(load_settings()))
    return generate_latest(registry).decode()


def test_a_moved_service_is_uncovered_until_backed_up_where_it_lives(
        moved: tuple[Cluster, Cluster, dict[str, str]]) -> None:
    a, b, _env = moved
    settings = load_settings()
    fresh = {f.schema: f for f in backup_freshness(settings, [SCHEMA, "user_schema"])}
    # The backup taken before the move holds the old copy: it covers nothing now.
    assert fresh[SCHEMA].newest is None and fresh[SCHEMA].overdue
    assert "in no backup since it moved on" in fresh[SCHEMA].message
    assert fresh[SCHEMA].location == location_string(_p(b))
    assert fresh["user_schema"].newest is not None and not fresh["user_schema"].overdue
    health = get_database_health(settings)["checks"]["backup_freshness"]
    assert health["status"] == "degraded" and SCHEMA in health["message"]
    coverage = BackupManager(settings).status()["coverage"]
    assert coverage[SCHEMA]["overdue"] and coverage[SCHEMA]["newest"] is None
    dash = DashboardData(settings)._backups()
    assert dash["schemas"][SCHEMA]["overdue"] and dash["error"] is None
    text = _exporter_text()
    assert f'edulink_db_backup_covered{{schema="{SCHEMA}"}} 0.0' in text
    assert 'edulink_db_backup_covered{schema="user_schema"} 1.0' in text
    assert f'edulink_db_backup_age_seconds{{schema="{SCHEMA}"}}' in text  # since the move

    # Without a credential for b, the set fails at once, in one line, leaving nothing.
    m = BackupManager(settings)
    before = {p.name for p in m.store.root.iterdir()}
    with pytest.raises(BackupError) as info:
        m.create_full_backup()
    message = str(info.value)
    assert "\n" not in message and "institution" in message
    assert "EDULINK_DB_LOCATION_ADMIN_URLS" in message
    assert all(str(p["password"]) not in message for p in (_p(a), _p(b)) if p.get("password"))
    assert {p.name for p in m.store.root.iterdir()} == before

    remember_location_admin(settings, _p(b))  # what 'edulink-db move-service' does
    _write_on_target("post-move")
    report = run_auto(BackupManager(load_settings()))
    assert report.taken, report.plan
    m = BackupManager(load_settings())
    home = m.store.load(report.taken[0])
    assert home.set_schemas[SCHEMA]["source"] == location_string(_p(b))
    part_id = home.set_schemas[SCHEMA]["backup_id"]
    part = m.store.load(part_id)
    assert part.set_id == home.backup_id and part.schemas == [SCHEMA]
    assert SCHEMA not in home.schemas and "edulink_db_meta" in home.schemas
    on_b = snapshot(_p(b), SCHEMA)
    assert {t.split(".", 1)[1]: n for t, n in part.row_counts.items()} == on_b.rows
    assert part.verified.get("ok") and home.verified.get("ok")
    # Only the moved schema was due: a schema set, the registry in its home part.
    assert home.kind == "schema" and home.schemas == ["edulink_db_meta"]
    fresh = {f.schema: f for f in backup_freshness(load_settings(), [SCHEMA])}
    assert fresh[SCHEMA].newest == part_id and not fresh[SCHEMA].overdue
    assert f'edulink_db_backup_covered{{schema="{SCHEMA}"}} 1.0' in _exporter_text()

    # A drill restores the whole set (home part and moved part) into one scratch database.
    drill = run_drill(m)
    assert drill.backup_id == home.backup_id and drill.ok, drill.error
    assert drill.rows == sum(home.row_counts.values()) + sum(part.row_counts.values())


def test_restore_of_a_moved_schema_goes_where_it_lives(
        moved: tuple[Cluster, Cluster, dict[str, str]], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    a, b, env = moved
    # The credential from the setting this time (a rotated admin, another machine).
    service_env(monkeypatch, _p(a), extra={**env,
                                           "EDULINK_DB_LOCATION_ADMIN_URLS": to_url(_p(b))})
    _write_on_target("kept")
    m = BackupManager(load_settings())
    info = m.create_full_backup()
    assert info.parts == [f"{info.backup_id}.institution"] and SCHEMA in info.schemas
    home, part = m.store.load(info.backup_id), m.store.load(info.parts[0])
    # Large objects are the home database's (a move does not carry them).
    assert home.large_objects and home.large_object_count == 0 and not part.large_objects
    assert part.sequences["institution_schema.ticket_seq"] == 4242
    before = snapshot(_p(b), SCHEMA)
    home_before = snapshot(_p(a), SCHEMA)
    with b.connect() as conn:
        conn.execute("DELETE FROM institution_schema.note")
        conn.execute("DELETE FROM institution_schema.campus WHERE code = 'kept'")
        conn.execute("TRUNCATE institution_schema.session_cache")
    report = m.restore(info.backup_id, schemas=[SCHEMA], safety_backup=True)
    assert report.parts[0]["backup_id"] == info.parts[0]
    assert snapshot(_p(b), SCHEMA) == before
    assert snapshot(_p(a), SCHEMA) == home_before  # the home copy is not touched
    # The safety backup was taken where the restore replaced the schema: on b.
    safety = m.store.load(str(report.safety_backup))
    assert safety.source == location_string(_p(b))
    # The service reads the restored rows through its pool (which routes to b).
    manager = ConnectionManager(load_settings())
    try:
        with manager.get_connection("institution") as conn:
            assert conn.execute("SELECT count(*) FROM campus WHERE code = 'kept'"
                                ).fetchone() == (1,)
    finally:
        manager.close_all()

    # A move of the service under way: the restore refuses, in one line, touching nothing.
    ctx = _ctx(_p(b), _p(a), [])
    ctx.home = _p(a)
    mover.journal_set(ctx, "prepare")
    try:
        with pytest.raises(BackupError) as refused:
            m.restore(info.backup_id, schemas=[SCHEMA])
        assert "a move is in progress for institution" in str(refused.value)
        assert "\n" not in str(refused.value)
    finally:
        with psycopg.connect(**_p(a), autocommit=True) as conn:
            conn.execute("DELETE FROM edulink_db_meta.service_move")
    assert snapshot(_p(b), SCHEMA) == before


def test_cli_move_then_backup_full(root: Path, monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    """'edulink-db move-service' saves the target's admin login, so the next
    'edulink-db backup full' dumps the moved service there without further setup; the
    URL's password is in no output."""
    a, b = _pair(root, "bmcli")
    try:
        do_provision(_p(a), TOPOLOGY)
        load_sample_schema(_p(a), SCHEMA, INST.owner_role)
        service_env(monkeypatch, _p(a), extra={"EDULINK_DB_BACKUP_DIR": str(tmp_path / "bk"),
                                               "EDULINK_DB_HOME": str(tmp_path / "home")})

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            result = subprocess.run([sys.executable, "-m", "microservices.shared.database",
                                     *args], capture_output=True, text=True, check=False,
                                    timeout=600)
            assert b.password not in result.stdout + result.stderr
            assert result.returncode == 0, result.stdout + result.stderr
            return result

        moved = cli("move-service", "institution", "--to", to_url(_p(b)))
        assert "is in no backup taken where it lives now" in moved.stdout
        taken = json.loads(cli("backup", "full", "--json").stdout)
        assert taken["parts"] == [f"{taken['backup_id']}.institution"]
        assert taken["row_counts"][f"{SCHEMA}.campus"] == 2000
        cli("backups", "verify", taken["parts"][0], "--deep")
    finally:
        a.destroy()
        b.destroy()
