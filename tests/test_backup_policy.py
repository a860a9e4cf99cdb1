"""The backup policy (what is due, with a fake clock), backup auto, drills, freshness."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.backup.drill import SCRATCH_PREFIX, run_drill
from microservices.shared.database.backup.schedule import (
    Policy,
    backup_freshness,
    freshness,
    load_policy,
    parse_interval,
    plan,
    run_auto,
)
from microservices.shared.database.backup.store import Manifest
from microservices.shared.database.config import load_settings
from microservices.shared.database.core.errors import ConfigError
from microservices.shared.database.lifecycle import run_status

from .test_backup import db, manager, scalar  # noqa: F401 - db is a fixture
from .test_backup_atomic import PROFILES, _wrapper_bin

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SCHEMAS = ["auth_schema", "user_schema", "shared_schema"]


def fake(kind: str, schemas: list[str], at: datetime, *, ok: bool = True) -> Manifest:
    return Manifest(backup_id=f"{kind}_{at:%Y%m%d_%H%M%S}", kind=kind, schemas=schemas,
                    database="d", format="custom", compression="none", server_version="18",
                    tool_version="18", started_at=at.isoformat(),
                    finished_at=(at + timedelta(minutes=2)).isoformat(), duration_s=120,
                    files=[], row_counts={}, snapshot="s",
                    verified={"ok": True} if ok else {})


def test_intervals() -> None:
    assert parse_interval("24h", "X") == 86400 and parse_interval("90m", "X") == 5400
    assert parse_interval("2d", "X") == 172800 and parse_interval(" 1.5 ", "X") == 5400
    assert parse_interval("off", "X") is None
    for bad in ("30s", "soon", "-1h", "1w"):
        with pytest.raises(ConfigError, match="X="):
            parse_interval(bad, "X")


def test_what_is_due_with_a_fake_clock() -> None:
    policy = Policy(full_every=86400, schema_every=dict.fromkeys(SCHEMAS, 3600.0))
    assert plan([], policy, SCHEMAS, T0).full  # nothing yet: a full backup covers all
    history = [fake("full", SCHEMAS, T0)]
    assert plan(history, policy, SCHEMAS, T0 + timedelta(minutes=1)).empty
    assert plan(history, policy, SCHEMAS, T0 + timedelta(minutes=59)).empty
    due = plan(history, policy, SCHEMAS, T0 + timedelta(hours=1))
    assert not due.full and due.schemas == SCHEMAS
    history.append(fake("schema", SCHEMAS, T0 + timedelta(hours=1)))
    assert plan(history, policy, SCHEMAS, T0 + timedelta(hours=1, minutes=3)).empty
    assert plan(history, policy, SCHEMAS, T0 + timedelta(hours=24)).full
    # Unverified and prerestore backups do not count.
    assert plan([fake("full", SCHEMAS, T0, ok=False)], policy, SCHEMAS, T0).full
    only_pre = [fake("full", SCHEMAS, T0 - timedelta(hours=2)),
                fake("prerestore", ["user_schema"], T0)]
    assert "user_schema" in plan(only_pre, policy, SCHEMAS, T0).schemas
    # A schema of its own interval; another switched off.
    policy.schema_every["user_schema"] = 900.0
    policy.schema_every["auth_schema"] = None
    assert plan(history, policy, SCHEMAS, T0 + timedelta(hours=1, minutes=20)).schemas == [
        "user_schema"]


def test_per_service_override_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDULINK_DB_USER_BACKUP_SCHEMA_EVERY", "15m")
    monkeypatch.setenv("EDULINK_DB_AUTH_BACKUP_SCHEMA_EVERY", "off")
    policy = load_policy(load_settings())
    assert policy.schema_every["user_schema"] == 900 and policy.schema_every[
        "auth_schema"] is None and policy.schema_every["shared_schema"] == 3600
    monkeypatch.setenv("EDULINK_DB_USER_BACKUP_SCHEMA_EVERY", "often")
    with pytest.raises(ConfigError, match="EDULINK_DB_USER_BACKUP_SCHEMA_EVERY"):
        load_policy(load_settings())


def test_freshness_does_not_cry_wolf() -> None:
    policy = Policy(full_every=86400, schema_every={"user_schema": 3600.0})
    new = freshness([], policy, ["user_schema"], {"user_schema": T0}, T0 + timedelta(
        minutes=1))
    assert not new[0].overdue  # a database created a minute ago is healthy
    old = freshness([], policy, ["user_schema"], {"user_schema": T0}, T0 + timedelta(hours=3))
    assert old[0].overdue and "backup auto" in old[0].message
    backed = [fake("schema", ["user_schema"], T0)]
    assert not freshness(backed, policy, ["user_schema"], {}, T0 + timedelta(hours=1.5))[
        0].overdue
    assert freshness(backed, policy, ["user_schema"], {}, T0 + timedelta(hours=2.5))[
        0].overdue


def test_backup_auto_takes_what_is_due_then_nothing(db: dict[str, Any]) -> None:  # noqa: F811
    m = manager()
    first = run_auto(m)
    assert first.plan is not None and first.plan.full and len(first.taken) == 1
    taken = m.store.load(first.taken[0])
    assert taken.kind == "full" and taken.verified.get("ok") and taken.hmac
    assert run_auto(manager()).taken == []  # right after: nothing is due
    # Later (fake clock): schemas are due again, in one schema backup.
    later = run_auto(manager(), now=datetime.now(UTC) + timedelta(hours=1, minutes=1))
    assert later.plan is not None and not later.plan.full
    assert set(m.store.load(later.taken[0]).schemas) == set(
        load_settings().topology().schemas)
    # What auto left is accepted by drill and restore without another step.
    assert run_drill(manager(), first.taken[0]).ok
    report = manager().restore(later.taken[0], schemas=["user_schema"], safety_backup=False)
    assert report.schemas == ["user_schema"]


def test_concurrent_backup_auto_runs_take_one_backup(db: dict[str, Any]) -> None:  # noqa: F811
    cmd = [sys.executable, "-m", "microservices.shared.database", "backup", "auto"]
    env = {**os.environ, "COLUMNS": "300"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    backups = manager().list_backups()
    assert [b["kind"] for b in backups] == ["full"], results
    outputs = " ".join(out for out, _ in results)
    assert ("nothing done" in outputs) or ("nothing due" in outputs)


def test_drill_that_fails_halfway_drops_its_database_and_touches_nothing_live(
    db: dict[str, Any], server: dict[str, Any], tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with psycopg.connect(**db, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {PROFILES} (user_id, first_name)"  # noqa: S608
                     " SELECT gen_random_uuid(), 'r' || i FROM generate_series(1, 100000) i")
    backup = manager().create_schema_backup(["user_schema"])
    manager().verify(backup.backup_id)
    with psycopg.connect(**server, autocommit=True) as conn:  # a live role setting
        conn.execute("ALTER ROLE user_service_role SET statement_timeout = '31s'")
    live = scalar(db, f"SELECT count(*) FROM {PROFILES}")  # noqa: S608

    def scratch_dbs() -> int:
        return int(scalar(server, "SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                          [SCRATCH_PREFIX + "%"]))

    monkeypatch.setenv("EDULINK_DB_PG_BIN", str(_wrapper_bin(tmp_path, "kill", 2_000_000)))
    failed = run_drill(manager())
    assert not failed.ok and "killed by signal 9" in (failed.error or "")
    assert scratch_dbs() == 0
    monkeypatch.delenv("EDULINK_DB_PG_BIN")
    good = run_drill(manager())
    assert good.ok and good.restore_seconds is not None and good.rows >= 100050
    assert scratch_dbs() == 0
    assert scalar(db, f"SELECT count(*) FROM {PROFILES}") == live  # noqa: S608
    setting = scalar(server, "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting"
                     " WHERE setrole = 'user_service_role'::regrole AND setdatabase = 0")
    assert "statement_timeout=31s" in setting
    with psycopg.connect(**server, autocommit=True) as conn:
        conn.execute("ALTER ROLE user_service_role SET statement_timeout = '30s'")


def test_health_exporter_and_status_follow_the_backups(
    db: dict[str, Any], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    settings = load_settings()
    status = run_status(settings)
    assert any("no backups yet" in w and "backup auto" in w for w in status.warnings)
    from microservices.shared.database.monitoring.monitor import get_database_health

    health = get_database_health(settings)
    assert health["checks"]["backup_freshness"]["status"] == "ok"  # a new database
    # Hours later, still without a backup: overdue (the schema's first migration dates it).
    later = datetime.now(UTC) + timedelta(hours=3)
    from microservices.shared.database.monitoring.health import _first_migrations

    first = _first_migrations(settings, ["user_schema", "auth_schema"])
    assert set(first) == {"user_schema", "auth_schema"}  # the fixture migrated them
    overdue = backup_freshness(settings, ["user_schema"], now=later,
                               first_migration=lambda schemas: {
                                   s: first[s] for s in schemas})
    assert overdue[0].overdue
    run_auto(manager())
    run_drill(manager())
    from prometheus_client import CollectorRegistry, generate_latest

    from microservices.shared.database.monitoring.exporter import DatabaseCollector

    registry = CollectorRegistry()
    registry.register(DatabaseCollector(load_settings()))
    text = generate_latest(registry).decode()
    assert 'edulink_db_backup_age_seconds{schema="user_schema"}' in text
    assert "edulink_db_backup_drill_success 1.0" in text
    assert "edulink_db_backup_drill_restore_seconds" in text
    assert not backup_freshness(settings, ["user_schema"], now=later - timedelta(hours=2))[
        0].overdue
    assert backup_freshness(load_settings(), ["user_schema"], now=later)[0].overdue
