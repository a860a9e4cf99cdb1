"""A real Django project (tests/django_project) on the shared database.

Each service is a separate process, as in production: migrate (as the owner),
then ORM work as the runtime role, then Django's own test runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.config import to_url
from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.topology import default_topology

from .conftest import SERVICE_PASSWORD, do_provision

PROJECT = Path(__file__).resolve().parent / "django_project"

pytest.importorskip("django")


def env_for(admin: dict[str, Any], service: str, *, migrate: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "EDULINK_", "DJANGO_"))}
    env.update({
        "DATABASE_URL": to_url(admin),
        "DJANGO_SETTINGS_MODULE": "edulink_site.settings",
        "EDULINK_DJANGO_SERVICE": service,
        "PYTHONPATH": os.pathsep.join([str(PROJECT), env.get("PYTHONPATH", "")]),
    })
    for svc in default_topology().services:
        env[f"EDULINK_DB_{svc.name.upper()}_PASSWORD"] = SERVICE_PASSWORD
        env[f"EDULINK_DB_{svc.name.upper()}_MIGRATOR_PASSWORD"] = SERVICE_PASSWORD
    if migrate:
        env["EDULINK_DB_DJANGO_MIGRATE"] = "1"
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def scenario(admin: dict[str, Any], service: str, *args: str) -> dict[str, Any]:
    result = run(["scenarios.py", *args], env_for(admin, service))
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


@pytest.fixture
def migrated(fresh_db: dict[str, Any]) -> dict[str, Any]:
    do_provision(fresh_db, default_topology())
    for service in ("auth", "user", "application"):
        result = run(["-m", "django", "migrate", "--noinput"],
                     env_for(fresh_db, service, migrate=True))
        assert result.returncode == 0, result.stderr
    # Django's migrate is not edulink-db's runner, which grants exposed columns after
    # each file: the documented step after it is provisioning (or 'edulink-db up').
    do_provision(fresh_db, default_topology())
    return fresh_db


def tables(admin: dict[str, Any]) -> dict[str, tuple[str, str]]:
    with psycopg.connect(**admin) as conn:
        rows = conn.execute(
            "SELECT tablename, schemaname, tableowner FROM pg_tables"
            " WHERE schemaname = ANY(%s)", [default_topology().schemas]).fetchall()
    return {name: (schema, owner) for name, schema, owner in rows
            if not name.startswith("edulink_") and name != "audit_log"}


def test_migrate_puts_each_services_tables_in_its_schema(migrated: dict[str, Any]) -> None:
    found = tables(migrated)
    assert found["auth_user"] == ("auth_schema", "auth_service_owner")
    assert found["django_content_type"] == ("auth_schema", "auth_service_owner")
    assert found["profiles_profile"] == ("user_schema", "user_service_owner")
    assert found["applications_jobapplication"] == (
        "application_schema", "application_service_owner")
    with psycopg.connect(**migrated) as conn:
        per_schema = dict(conn.execute(
            "SELECT schemaname, count(*) FROM pg_tables"
            " WHERE tablename NOT IN ('django_migrations') AND schemaname = ANY(%s)"
            " GROUP BY 1", [default_topology().schemas]).fetchall())
    # Each service created only its own apps' tables (plus its django_migrations).
    assert per_schema == {"auth_schema": 7, "user_schema": 1, "application_schema": 1,
                          "shared_schema": 1}
    report = verify(migrated, default_topology())
    assert report.ok, report.problems


def test_orm_cross_service_read_works_and_writes_fail_twice(migrated: dict[str, Any]) -> None:
    user_id = str(uuid.uuid4())
    created = scenario(migrated, "user", "user_creates_profile", user_id)
    assert created == {"count": 1, "role": "user_service_role"}
    result = scenario(migrated, "application", "application_works", user_id)
    assert result["applications"] == 1
    assert result["read"] == "Grace" and result["read_alias"] == "user"
    assert "may not write user_mirror.ProfileMirror" in result["router_write"]
    assert "permission denied for table profiles_profile" in result["db_write"]
    assert "permission denied for schema notification_schema" in result["other_read"]
    assert result["relation_allowed"] is False


def test_ungranted_cross_service_alias_fails_at_settings_time(migrated: dict[str, Any]) -> None:
    error = scenario(migrated, "application", "settings_refuse_ungranted")["error"]
    assert "'application' may not read service 'notification'" in error


def test_migrate_without_owner_mode_is_refused_by_postgres(migrated: dict[str, Any]) -> None:
    """Without EDULINK_DB_DJANGO_MIGRATE the runtime role runs migrate: no DDL allowed."""
    profiles = PROJECT / "profiles" / "migrations"
    extra = profiles / "0002_extra.py"
    extra.write_text(
        "from django.db import migrations, models\n\n\n"
        "class Migration(migrations.Migration):\n"
        "    dependencies = [('profiles', '0001_initial')]\n"
        "    operations = [migrations.AddField('profile', 'bio', "
        "models.TextField(default=''))]\n")
    try:
        result = run(["-m", "django", "migrate", "--noinput"], env_for(migrated, "user"))
        assert result.returncode != 0
        assert "must be owner of table profiles_profile" in result.stderr
    finally:
        extra.unlink()


def test_djangos_test_runner_builds_the_test_database(fresh_db: dict[str, Any]) -> None:
    do_provision(fresh_db, default_topology())
    result = run(["-m", "django", "test", "profiles", "-v", "2"], env_for(fresh_db, "user"))
    assert result.returncode == 0, result.stderr
    assert "Ran 1 test" in result.stderr and "OK" in result.stderr
    with psycopg.connect(**fresh_db) as conn:  # dropped afterwards
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            [f"test_{fresh_db['dbname']}"]).fetchone() == (0,)


def test_settings_shape(monkeypatch: pytest.MonkeyPatch, provisioned_db: dict[str, Any]) -> None:
    from microservices.shared.database.config import load_settings
    from microservices.shared.database.django_settings import (
        configure_cross_service_databases,
        configure_service_database,
    )

    from .conftest import service_env

    service_env(monkeypatch, provisioned_db)
    settings = load_settings()
    # The seed's snippet, as written.
    DATABASES = configure_service_database('user', settings=settings)
    DATABASES.update(configure_cross_service_databases('user', ['auth', 'institution'],
                                                       settings=settings))
    assert set(DATABASES) == {"default", "auth", "institution"}
    assert {d["USER"] for d in DATABASES.values()} == {"user_service_role"}
    assert DATABASES["auth"]["TEST"] == {"MIRROR": "default"}
    assert SERVICE_PASSWORD not in repr({k: {kk: vv for kk, vv in v.items()
                                             if kk != "PASSWORD"}
                                         for k, v in DATABASES.items()})
    migrate = configure_service_database("user", migrate=True, settings=settings)["default"]
    # The migrator, never the admin; the owner switch is the migrator's role default.
    assert migrate["USER"] == "user_service_migrator"
    assert "options" not in migrate["OPTIONS"]
    assert provisioned_db["password"] not in repr(migrate)
    monkeypatch.setenv("DATABASE_POOLER", "transaction")
    pooled = configure_service_database("user", settings=load_settings())["default"]
    assert pooled["OPTIONS"]["prepare_threshold"] is None
    mssql = configure_service_database("user", engine="mssql", settings=settings)["default"]
    assert mssql["ENGINE"] == "mssql" and mssql["USER"] == "user_service_role"
    assert mssql["OPTIONS"]["driver"].startswith("ODBC Driver")
