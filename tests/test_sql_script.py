"""postgresql_schema_setup.sql: generated, checked in, and equivalent to provisioning."""

from __future__ import annotations

import os
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

from microservices.shared.database.privileges.provisioning import render_postgresql_script
from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.topology import Topology, default_topology

from .probes import create_probe_tables


def checked_in_script() -> str:
    return (resources.files("microservices.shared.database")
            / "postgresql_schema_setup.sql").read_text(encoding="utf-8")


def test_checked_in_script_matches_the_generator() -> None:
    assert checked_in_script() == render_postgresql_script(default_topology()), (
        "postgresql_schema_setup.sql is stale: run "
        "'edulink-db sql -o microservices/shared/database/postgresql_schema_setup.sql'")


def test_script_has_no_passwords_and_quotes_identifiers() -> None:
    script = checked_in_script()
    statements = [ln for ln in script.splitlines() if not ln.startswith("--")]
    assert not [ln for ln in statements if "PASSWORD" in ln.upper()]
    assert 'GRANT USAGE ON SCHEMA "user_schema" TO "user_service_role";' in script


def psql(bin_dir: Path, admin: dict[str, Any], script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": str(admin.get("password", ""))}
    return subprocess.run(
        [str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
         "-h", str(admin["host"]), "-p", str(admin["port"]), "-U", str(admin["user"]),
         "-d", str(admin["dbname"]), "-f", "-"],
        input=script, env=env, capture_output=True, text=True, check=False, timeout=120,
    )


def test_applying_the_script_with_psql_gives_a_verified_database(
    fresh_db: dict[str, Any], bin_dir: Path
) -> None:
    for _ in range(2):  # idempotent
        result = psql(bin_dir, fresh_db, checked_in_script())
        assert result.returncode == 0, result.stderr
    create_probe_tables(fresh_db, default_topology())
    report = verify(fresh_db, default_topology())
    assert report.ok, report.problems


def test_script_runs_as_a_createrole_only_admin(
    createrole_admin: dict[str, Any], unique_topology: Topology, bin_dir: Path
) -> None:
    result = psql(bin_dir, createrole_admin, render_postgresql_script(unique_topology))
    assert result.returncode == 0, result.stderr
    assert verify(createrole_admin, unique_topology).ok
