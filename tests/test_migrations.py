"""Migrations against a real server: ownership, checksums, rollback, locking, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.core.errors import (
    MigrationError,
    MigrationValidationError,
)
from microservices.shared.database.core.tracing import protocol_trace, round_trips
from microservices.shared.database.migrations.history import read_histories
from microservices.shared.database.migrations.manager import MigrationManager
from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.topology import default_topology

from .conftest import SERVICE_PASSWORD, do_provision, service_env, service_params

CLI = [sys.executable, "-m", "microservices.shared.database"]


@pytest.fixture
def db(fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    do_provision(fresh_db, default_topology())
    service_env(monkeypatch, fresh_db)
    return fresh_db


def manager() -> MigrationManager:
    return MigrationManager(load_settings())


def write(directory: Path, name: str, content: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(content)
    return path


def history(admin: dict[str, Any], schema: str) -> list[tuple[Any, ...]]:
    from psycopg import sql

    with psycopg.connect(**admin) as conn:
        return conn.execute(sql.SQL(
            "SELECT version, script, success FROM {} ORDER BY installed_rank").format(
            sql.Identifier(schema, "edulink_schema_history"))).fetchall()


def cli_env(admin: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "EDULINK_DB_"))}
    env["DATABASE_URL"] = to_url(admin)
    for svc in default_topology().services:
        env[f"EDULINK_DB_{svc.name.upper()}_PASSWORD"] = SERVICE_PASSWORD
        env[f"EDULINK_DB_{svc.name.upper()}_MIGRATOR_PASSWORD"] = SERVICE_PASSWORD
    return env


def test_seed_snippets_run_as_written(db: dict[str, Any], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "migrations" / "user", "V1__notes.sql",
          "CREATE TABLE user_notes (id serial PRIMARY KEY, body text);")
    write(tmp_path / "migrations" / "user", "V2__more.sql",
          "ALTER TABLE user_notes ADD COLUMN created_at timestamptz DEFAULT now();")
    write(tmp_path / "migrations" / "auth", "V1__tokens.sql",
          "CREATE TABLE auth_tokens (id serial PRIMARY KEY);")

    migration_manager = MigrationManager()
    migration_manager.run_service_migrations('user_service', './migrations/user')
    migration_manager.run_all_migrations('./migrations')
    status = migration_manager.get_migration_status('user_service')
    assert status['applied_count'] == 2
    assert status['pending_count'] == 0 and status['pending_migrations'] == []
    assert status['last_applied_version'] == "2" and status["ok"]
    assert len(history(db, "auth_schema")) == 1


def test_objects_belong_to_the_owner_and_runtime_roles_get_access(
    db: dict[str, Any], tmp_path: Path
) -> None:
    write(tmp_path / "user", "V1__t.sql", "CREATE TABLE things (id serial PRIMARY KEY, v text);")
    manager().run_service_migrations("user", tmp_path / "user")
    with psycopg.connect(**db) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'things'"
                             ).fetchone()
    assert owner == ("user_service_owner",)
    with psycopg.connect(**service_params(db, default_topology().service("user")),
                         autocommit=True) as conn:
        conn.execute("INSERT INTO things (v) VALUES ('x')")  # default privileges at work
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM edulink_schema_history")  # not the runtime role's
    report = verify(db, default_topology())
    assert report.ok, report.problems


def test_edited_file_is_refused_with_both_checksums_until_repaired(
    db: dict[str, Any], tmp_path: Path
) -> None:
    path = write(tmp_path / "user", "V1__t.sql", "CREATE TABLE t1 (id int);\n")
    write(tmp_path / "user", "V2__t.sql", "CREATE TABLE t2 (id int);\n")
    m = manager()
    m.run_service_migrations("user", tmp_path / "user")
    # Line endings only: not an edit.
    path.write_bytes(b"CREATE TABLE t1 (id int);\r\n")
    assert m.get_migration_status("user")["ok"]
    path.write_text("CREATE TABLE t1 (id bigint);\n")
    write(tmp_path / "user", "V3__t.sql", "CREATE TABLE t3 (id int);\n")
    status = m.get_migration_status("user")
    mismatch = status["checksum_mismatches"][0]
    with pytest.raises(MigrationValidationError) as exc:
        m.run_service_migrations("user")
    assert mismatch["applied"] in str(exc.value) and mismatch["current"] in str(exc.value)
    assert "V1__t.sql" in str(exc.value) and "repair" in str(exc.value)
    assert len(history(db, "user_schema")) == 2  # V3 did not run
    assert m.repair(["user"]) == {"user": ["V1__t.sql: checksum re-recorded"]}
    m.run_service_migrations("user")
    assert len(history(db, "user_schema")) == 3


def test_missing_and_out_of_order_files_are_refused(db: dict[str, Any], tmp_path: Path) -> None:
    write(tmp_path / "user", "V1__a.sql", "CREATE TABLE a (id int);")
    gone = write(tmp_path / "user", "V3__c.sql", "CREATE TABLE c (id int);")
    m = manager()
    m.run_service_migrations("user", tmp_path / "user")
    write(tmp_path / "user", "V2__b.sql", "CREATE TABLE b (id int);")
    with pytest.raises(MigrationValidationError, match=r"V2__b\.sql: never applied, but older"):
        m.run_service_migrations("user")
    (tmp_path / "user" / "V2__b.sql").unlink()
    gone.unlink()
    with pytest.raises(MigrationValidationError,
                       match=r"V3__c\.sql: applied, but the file is gone"):
        m.run_service_migrations("user")
    assert m.repair(["user"]) == {"user": ["V3__c.sql: marked deleted"]}
    assert m.get_migration_status("user")["ok"]


def test_failing_file_is_rolled_back_and_named_with_its_line(
    db: dict[str, Any], tmp_path: Path
) -> None:
    bad = write(tmp_path / "user", "V1__bad.sql",
                "CREATE TABLE half (id int);\n\n-- the next one fails\nINSERT INTO half\n"
                "  VALUES (1), (2), ('not a number');\n")
    m = manager()
    with pytest.raises(MigrationError) as exc:
        m.run_service_migrations("user", tmp_path / "user")
    message = str(exc.value)
    assert "V1__bad.sql failed at line 5" in message
    assert "INSERT INTO half" in message and "rolled back" in message
    with psycopg.connect(**db) as conn:
        assert conn.execute("SELECT to_regclass('user_schema.half')").fetchone() == (None,)
    assert m.get_migration_status("user")["applied_count"] == 0
    bad.write_text("CREATE TABLE half (id int);\nINSERT INTO half VALUES (1), (2);\n")
    assert m.run_service_migrations("user")["applied"] == ["V1__bad.sql"]


def test_repeatable_reapplied_when_changed(db: dict[str, Any], tmp_path: Path) -> None:
    write(tmp_path / "user", "V1__t.sql", "CREATE TABLE t (x int);")
    view = write(tmp_path / "user", "R__view.sql", "CREATE OR REPLACE VIEW v AS SELECT 1 AS a;")
    m = manager()
    assert m.run_service_migrations("user", tmp_path / "user")["applied"] == [
        "V1__t.sql", "R__view.sql"]
    assert m.run_service_migrations("user")["applied"] == []
    view.write_text("CREATE OR REPLACE VIEW v AS SELECT 1 AS a, 2 AS b;")
    assert m.run_service_migrations("user")["applied"] == ["R__view.sql"]


def test_concurrently_file_runs_outside_a_transaction(db: dict[str, Any], tmp_path: Path) -> None:
    write(tmp_path / "user", "V1__t.sql", "CREATE TABLE big (x int);\n"
          "INSERT INTO big SELECT generate_series(1, 1000);")
    write(tmp_path / "user", "V2__idx.sql",
          "CREATE INDEX CONCURRENTLY IF NOT EXISTS big_x ON big (x);\n"
          "CREATE INDEX CONCURRENTLY IF NOT EXISTS big_x2 ON big ((x * 2));")
    assert manager().run_service_migrations("user", tmp_path / "user")["applied"] == [
        "V1__t.sql", "V2__idx.sql"]
    with psycopg.connect(**db) as conn:
        rows = conn.execute("SELECT c.relname, i.indisvalid FROM pg_index i"
                            " JOIN pg_class c ON c.oid = i.indexrelid"
                            " WHERE c.relname LIKE 'big_x%' ORDER BY 1").fetchall()
    assert rows == [("big_x", True), ("big_x2", True)]


def test_refuses_a_transaction_pooler(db: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_POOLER", "transaction")
    with pytest.raises(MigrationError, match="transaction pooler"):
        manager().run_service_migrations("user", tmp_path)


def test_baseline_skips_what_exists(db: dict[str, Any], tmp_path: Path) -> None:
    write(tmp_path / "user", "V1__old.sql", "CREATE TABLE legacy (id int);")
    write(tmp_path / "user", "V2__new.sql", "CREATE TABLE fresh (id int);")
    m = manager()
    m.baseline("user", "1")
    assert m.run_service_migrations("user", tmp_path / "user")["applied"] == ["V2__new.sql"]
    with pytest.raises(MigrationError, match="already has a migration history"):
        m.baseline("user", "1")


def test_status_reads_all_histories_in_constant_round_trips(db: dict[str, Any]) -> None:
    manager().run_all_migrations()  # the reference schema: every service has a history
    services = list(default_topology().services)
    with psycopg.connect(**db, autocommit=True) as conn:  # no implicit BEGIN to count
        with protocol_trace(conn) as one:
            read_histories(conn, services[:1])
        with protocol_trace(conn) as six:
            histories = read_histories(conn, services)
    assert round_trips(one) == round_trips(six) == 2
    assert all(exists for exists, _rows in histories.values())


def test_eight_processes_migrate_all_services_at_once(fresh_db: dict[str, Any],
                                                      tmp_path: Path) -> None:
    do_provision(fresh_db, default_topology())
    root = tmp_path / "migrations"
    for svc in default_topology().services:
        for i in range(1, 6):
            write(root / svc.name, f"V{i}__step.sql",
                  f"CREATE TABLE step_{i} (id int);\nINSERT INTO step_{i} VALUES ({i});")
    procs = [subprocess.Popen([*CLI, "migrate", "--dir", str(root), "--json"],
                              env=cli_env(fresh_db), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    applied: dict[str, list[str]] = {}
    for out, _err in outputs:
        for service, result in json.loads(out).items():
            applied.setdefault(service, []).extend(result["applied"])
    for svc in default_topology().services:
        assert sorted(applied[svc.name]) == [f"V{i}__step.sql" for i in range(1, 6)]
        rows = history(fresh_db, svc.schema)
        assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
        assert all(r[2] for r in rows)


def _wait_for(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def _sleeping(admin: dict[str, Any]) -> bool:
    with psycopg.connect(**admin) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity"
                           " WHERE query LIKE 'SELECT pg_sleep%%' AND state = 'active'"
                           " AND pid <> pg_backend_pid()").fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("transactional", [True, False])
def test_sigkill_mid_migration_then_rerun_completes(
    fresh_db: dict[str, Any], tmp_path: Path, transactional: bool
) -> None:
    do_provision(fresh_db, default_topology())
    root = tmp_path / "migrations"
    write(root / "user", "V1__first.sql", "CREATE TABLE first (id int);")
    directive = "" if transactional else "-- edulink:transaction=off\n"
    write(root / "user", "V2__slow.sql",
          f"{directive}CREATE TABLE IF NOT EXISTS slow (id int);\nSELECT pg_sleep(2);\n"
          "CREATE INDEX CONCURRENTLY IF NOT EXISTS slow_id ON slow (id);" if not transactional
          else "CREATE TABLE slow (id int);\nSELECT pg_sleep(2);\nINSERT INTO slow VALUES (1);")
    proc = subprocess.Popen([*CLI, "migrate", "user", "--dir", str(root)],
                            env=cli_env(fresh_db), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _wait_for(lambda: _sleeping(fresh_db))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows = history(fresh_db, "user_schema")
    assert rows[0] == ("1", "V1__first.sql", True)
    # Transactional: nothing of V2 recorded. Non-transactional: recorded as in progress.
    assert rows[1:] == ([] if transactional else [("2", "V2__slow.sql", False)])
    rerun = subprocess.run([*CLI, "migrate", "user", "--dir", str(root), "--json"],
                           env=cli_env(fresh_db), capture_output=True, text=True, timeout=120,
                           check=False)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)["user"]
    assert result["applied" if transactional else "resumed"] == ["V2__slow.sql"]
    assert history(fresh_db, "user_schema") == [("1", "V1__first.sql", True),
                                                ("2", "V2__slow.sql", True)]


def test_two_services_migrate_in_parallel(fresh_db: dict[str, Any], tmp_path: Path) -> None:
    """A long migration of one service does not block another service's."""
    do_provision(fresh_db, default_topology())
    root = tmp_path / "migrations"
    write(root / "user", "V1__slow.sql", "CREATE TABLE s (id int);\nSELECT pg_sleep(4);")
    write(root / "auth", "V1__fast.sql", "CREATE TABLE f (id int);")
    slow = subprocess.Popen([*CLI, "migrate", "user", "--dir", str(root)],
                            env=cli_env(fresh_db), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: _sleeping(fresh_db))
        started = time.monotonic()
        fast = subprocess.run([*CLI, "migrate", "auth", "--dir", str(root)],
                              env=cli_env(fresh_db), capture_output=True, text=True,
                              timeout=60, check=False)
        assert fast.returncode == 0, fast.stderr
        assert slow.poll() is None, "the slow migration should still be running"
        assert time.monotonic() - started < 4
    finally:
        slow.wait(timeout=60)
    assert slow.returncode == 0


def test_provision_after_migrations_has_nothing_to_repair(db: dict[str, Any]) -> None:
    """The schema-wide grants must not reach the history tables, even for a moment."""
    manager().run_all_migrations()
    report = do_provision(db, default_topology())
    assert report.repaired == [] and not report.changed
    assert verify(db, default_topology()).ok
