"""Backups and restores against a real server (pg_dump/pg_restore, nothing mocked)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.backup.manager import BackupManager, restore_backup
from microservices.shared.database.backup.store import now_utc
from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.core.errors import BackupCorruptError, BackupError
from microservices.shared.database.migrations.manager import MigrationManager
from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.topology import default_topology

from .conftest import _create_database, _drop_database, do_provision, service_env


@pytest.fixture
def db(fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
       tmp_path: Path) -> dict[str, Any]:
    do_provision(fresh_db, default_topology())
    # Its own home: the backup signing key goes into this test's secrets store.
    service_env(monkeypatch, fresh_db, extra={"EDULINK_DB_BACKUP_DIR": str(tmp_path / "bk"),
                                              "EDULINK_DB_HOME": str(tmp_path / "home")})
    MigrationManager(load_settings()).run_all_migrations()
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO user_schema.profiles_userprofile (user_id, first_name)"
                     " SELECT gen_random_uuid(), 'p' || i FROM generate_series(1, 50) i")
        conn.execute("INSERT INTO application_schema.applications_application"
                     " (id, user_profile_id, internship_id)"
                     " SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid()"
                     " FROM generate_series(1, 5)")
        conn.execute("INSERT INTO application_schema.applications_workflowstate"
                     " (application_id, to_status) SELECT id, 'submitted'"
                     " FROM application_schema.applications_application")
    return fresh_db


def manager() -> BackupManager:
    return BackupManager(load_settings())


def scalar(admin: dict[str, Any], query: str, params: list[Any] | None = None) -> Any:
    with psycopg.connect(**admin, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def test_round_trip_keeps_data_sequences_grants_and_policies(db: dict[str, Any]) -> None:
    m = manager()
    seq = "application_schema.applications_workflowstate_id_seq"
    next_at_backup = scalar(db, "SELECT last_value FROM "
                            "application_schema.applications_workflowstate_id_seq") + 1
    backup = m.create_schema_backup(["user_schema", "application_schema"])
    assert backup.row_counts["user_schema.profiles_userprofile"] == 50
    with psycopg.connect(**db, autocommit=True) as conn:  # damage everything we care about
        conn.execute("DELETE FROM user_schema.profiles_userprofile")
        conn.execute("INSERT INTO application_schema.applications_workflowstate"
                     " (application_id, to_status) SELECT id, 'x'"
                     " FROM application_schema.applications_application")
        conn.execute("DROP POLICY user_profile_policy ON user_schema.profiles_userprofile")
        conn.execute("REVOKE SELECT ON application_schema.applications_application"
                     " FROM notification_service_role")
        conn.execute("CREATE TABLE user_schema.created_later (x int)")
    report = m.restore(backup.backup_id)
    assert report.safety_backup is not None and not report.preamble_applied
    assert scalar(db, "SELECT count(*) FROM user_schema.profiles_userprofile") == 50
    assert scalar(db, "SELECT nextval(%s)", [seq]) == next_at_backup
    assert scalar(db, "SELECT count(*) FROM pg_policies WHERE policyname = 'user_profile_policy'"
                  ) == 1
    assert scalar(db, "SELECT relforcerowsecurity FROM pg_class"
                      " WHERE oid = 'user_schema.profiles_userprofile'::regclass") is True
    assert scalar(db, "SELECT to_regclass('user_schema.created_later')") is None
    result = verify(db, default_topology())
    assert result.ok, result.problems  # grants and default privileges are back
    # The safety backup undoes the restore.
    m.restore(report.safety_backup, safety_backup=False)
    assert scalar(db, "SELECT count(*) FROM user_schema.profiles_userprofile") == 0


def test_schema_backup_restores_into_a_clean_database(db: dict[str, Any],
                                                      server: dict[str, Any]) -> None:
    backup = manager().create_schema_backup(["user_schema"])
    clean = _create_database(server)
    try:
        target = {**server, "dbname": clean}
        report = manager().restore(backup.backup_id, target_db=to_url(target))
        assert report.preamble_applied and report.safety_backup is None
        assert scalar(target, "SELECT count(*) FROM user_schema.profiles_userprofile") == 50
        assert verify(target, default_topology()).ok
    finally:
        _drop_database(server, clean)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_backup_is_refused_before_anything_is_touched(
    db: dict[str, Any], damage: str
) -> None:
    m = manager()
    backup = m.create_schema_backup(["user_schema"])
    archive = backup.path / f"{backup.backup_id}.dump"
    data = bytearray(archive.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    archive.write_bytes(bytes(data))
    with psycopg.connect(**db, autocommit=True) as conn:
        conn.execute("DELETE FROM user_schema.profiles_userprofile WHERE first_name = 'p1'")
    with pytest.raises(BackupCorruptError, match="truncated" if damage == "truncate"
                       else "corrupted"):
        m.verify(backup.backup_id)
    with pytest.raises(BackupCorruptError):
        m.restore(backup.backup_id)
    assert restore_backup(backup.backup_id) is False
    assert scalar(db, "SELECT count(*) FROM user_schema.profiles_userprofile") == 49
    assert not list(m.store.root.glob("prerestore_*"))  # not even a safety backup was taken


def test_failed_restore_leaves_the_data_intact(db: dict[str, Any]) -> None:
    """The restore fails halfway (an owner role the backup needs is gone)."""
    ghost = f"ghost_{secrets.token_hex(3)}"
    with psycopg.connect(**db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(ghost)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA user_schema TO {}").format(
            sql.Identifier(ghost)))
        conn.execute(sql.SQL("ALTER TABLE user_schema.profiles_academicinfo OWNER TO {}").format(
            sql.Identifier(ghost)))
    m = manager()
    backup = m.create_schema_backup(["user_schema"])
    with psycopg.connect(**db, autocommit=True) as conn:
        conn.execute("ALTER TABLE user_schema.profiles_academicinfo OWNER TO user_service_owner")
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA user_schema FROM {}").format(
            sql.Identifier(ghost)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(ghost)))
        conn.execute("INSERT INTO user_schema.profiles_userprofile (user_id, first_name)"
                     " VALUES (gen_random_uuid(), 'after the backup')")
    with pytest.raises(BackupError, match="rolled back") as exc:
        m.restore(backup.backup_id, safety_backup=False)
    assert ghost in str(exc.value)
    assert scalar(db, "SELECT count(*) FROM user_schema.profiles_userprofile") == 51
    assert verify(db, default_topology()).ok


def test_backup_during_writes_matches_its_manifest_exactly(db: dict[str, Any]) -> None:
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with psycopg.connect(**db, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO user_schema.profiles_userprofile (user_id, first_name)"
                             " VALUES (gen_random_uuid(), 'w')")
                written[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while written[0] < 20:
            time.sleep(0.01)
        m = manager()
        backup = m.create_schema_backup(["user_schema"])
        assert written[0] > 20  # writes really went on around the backup
    finally:
        stop.set()
        thread.join()
    counted = backup.row_counts["user_schema.profiles_userprofile"]
    assert 50 + 20 <= counted < 50 + written[0]
    assert m.verify(backup.backup_id, deep=True)["ok"]  # restored rows == manifest, table by table


def test_manifest_contents(db: dict[str, Any]) -> None:
    backup = manager().create_full_backup(compress=False)
    manifest = json.loads((backup.path / "manifest.json").read_text())
    assert backup.backup_id.startswith("full_") and manifest["kind"] == "full"
    assert {"user_schema", "auth_schema", "shared_schema"} <= set(manifest["schemas"])
    assert manifest["compression"] == "none" and manifest["format"] == "custom"
    assert int(manifest["tool_version"]) >= int(manifest["server_version"].split(".")[0])
    assert {f["name"] for f in manifest["files"]} == {f"{backup.backup_id}.dump", "preamble.sql"}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in manifest["files"])
    assert manifest["duration_s"] >= 0 and manifest["snapshot"]
    assert db["password"] not in (backup.path / "manifest.json").read_text()


def test_directory_format_with_parallel_jobs(db: dict[str, Any]) -> None:
    m = manager()
    backup = m.create_schema_backup(["user_schema", "application_schema"], fmt="directory",
                                    jobs=2)
    assert m.verify(backup.backup_id, deep=True)["ok"]


def _age(m: BackupManager, backup_id: str, days: float) -> None:
    manifest = m.store.load(backup_id)
    manifest.finished_at = (now_utc() - timedelta(days=days)).isoformat()
    m.store.save(manifest)  # re-signed: an edited manifest is refused otherwise


def test_retention_and_status(db: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDULINK_DB_BACKUP_KEEP_LAST", "2")
    monkeypatch.setenv("EDULINK_DB_BACKUP_KEEP_DAYS", "7")
    monkeypatch.setenv("EDULINK_DB_BACKUP_MAX_AGE_HOURS", "24")
    m = manager()
    assert "backup auto" in m.status()["warnings"][0]  # no backups: how to take the first
    ids = [m.create_schema_backup(["auth_schema"]).backup_id for _ in range(5)]
    m.verify(ids[0])  # the only verified one: the oldest
    for i, backup_id in enumerate(ids):
        _age(m, backup_id, 40 - i)  # all older than KEEP_DAYS, oldest first
    status = m.status()
    assert status["total_backups"] == 5 and status["newest_verified"] == ids[0]
    assert "h old" in status["warnings"][0]
    assert sorted(m.prune(dry_run=True)) == sorted(ids[1:3])
    assert sorted(m.prune()) == sorted(ids[1:3])
    assert [b["backup_id"] for b in m.list_backups()] == [ids[0], ids[3], ids[4]]


def test_rls_forced_tables_need_an_admin_that_bypasses_rls(
    createrole_admin: dict[str, Any], unique_topology: Any, server: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """pg_dump turns row_security off and fails on FORCE RLS tables; --enable-row-security
    would silently dump only visible rows. Refuse clearly instead, before dumping."""
    do_provision(createrole_admin, unique_topology)
    svc = unique_topology.services[1]
    with psycopg.connect(**createrole_admin, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(svc.owner_role)))
        conn.execute(sql.SQL("CREATE TABLE {} (owner_id text, body text)").format(
            sql.Identifier(svc.schema, "notes")))
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('a', 'x'), ('b', 'y')").format(
            sql.Identifier(svc.schema, "notes")))
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(
            sql.Identifier(svc.schema, "notes")))
        conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(
            sql.Identifier(svc.schema, "notes")))
    service_env(monkeypatch, createrole_admin, unique_topology,
                extra={"EDULINK_DB_BACKUP_DIR": str(tmp_path / "bk"),
                       "EDULINK_DB_HOME": str(tmp_path / "home")})
    from .test_monitoring import _toml_of

    topo_file = tmp_path / "topology.toml"
    topo_file.write_text(_toml_of(unique_topology))
    monkeypatch.setenv("EDULINK_DB_TOPOLOGY", str(topo_file))
    m = manager()
    with pytest.raises(BackupError, match="BYPASSRLS") as exc:
        m.create_schema_backup([svc.schema])
    assert f"{svc.schema}.notes" in str(exc.value)
    assert m.list_backups() == [] and not m.store.partials()
    with psycopg.connect(**server, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(
            sql.Identifier(createrole_admin["user"])))
    backup = m.create_schema_backup([svc.schema])
    assert backup.row_counts[f"{svc.schema}.notes"] == 2
    assert m.verify(backup.backup_id, deep=True)["ok"]
