"""Service contracts: migrations that would break another service's reads are refused.

The corpus (tests/contract_corpus.py) runs through the analysis alone; a few cases run
end to end through ``migrate`` against a real database; the lint command is run as a
user would run it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.config import load_settings
from microservices.shared.database.core.errors import ContractViolationError, MigrationLintError
from microservices.shared.database.migrations import (
    MigrationManager,
    contracts,
    reference_migrations_dir,
)
from microservices.shared.database.migrations.files import parse_file
from microservices.shared.database.migrations.lint import lint
from microservices.shared.database.topology import default_topology

from .conftest import do_provision, service_env
from .contract_corpus import BREAKING, SAFE

CLI = [sys.executable, "-m", "microservices.shared.database"]
TOPOLOGY = default_topology()


def analyse(service: str, text: str) -> list[contracts.Finding]:
    findings, _spans = contracts.analyse_migration(
        TOPOLOGY, TOPOLOGY.service(service), "V9__case.sql", text)
    return findings


def test_corpus_sizes() -> None:
    assert len(BREAKING) >= 40 and len(SAFE) >= 50
    assert len({c[0] for c in BREAKING + SAFE}) == len(BREAKING) + len(SAFE)


@pytest.mark.parametrize(("service", "text"), [c[1:] for c in BREAKING],
                         ids=[c[0] for c in BREAKING])
def test_breaking_migrations_are_refused(service: str, text: str) -> None:
    findings = analyse(service, text)
    errors = [f for f in findings if f.severity == "error"]
    assert errors, f"not refused: {text!r}"
    for f in errors:
        assert 1 <= f.line <= text.count("\n") + 1
        assert f.rule.startswith(("contract/", "lint/"))


@pytest.mark.parametrize(("service", "text"), [c[1:] for c in SAFE], ids=[c[0] for c in SAFE])
def test_safe_migrations_pass(service: str, text: str) -> None:
    assert analyse(service, text) == []


def test_message_names_file_line_object_readers_and_the_way_out() -> None:
    text = "-- tidy up\nCREATE TABLE x (id int);\n\nALTER TABLE authentication_user\n" \
           "  ADD COLUMN y int,\n  DROP COLUMN email;\n"
    [f] = analyse("auth", text)
    assert (f.file, f.line, f.rule) == ("V9__case.sql", 4, "contract/drop-exposed-column")
    assert "auth_schema.authentication_user.email" in f.message
    assert "user, notification, application" in f.message
    assert "[services.auth.exposes]" in f.message and "edulink-db provision" in f.message
    assert str(f).startswith("V9__case.sql:4: error [contract/drop-exposed-column]")


def test_lines_inside_do_blocks_are_file_lines() -> None:
    text = "SELECT 1;\nDO $$\nDECLARE n int;\nBEGIN\n  n := 1;\n" \
           "  ALTER TABLE authentication_user DROP COLUMN email;\nEND $$;\n"
    assert [(f.line, f.rule) for f in analyse("auth", text)] == [
        (6, "contract/drop-exposed-column")]


def test_dynamic_sql_line_and_marker() -> None:
    text = "DO $$\nDECLARE c text := 'x';\nBEGIN\n  EXECUTE 'DROP TABLE ' || c;\nEND $$;\n"
    [f] = analyse("auth", text)
    assert (f.line, f.rule) == (4, "contract/dynamic-sql")
    assert "edulink:allow-dynamic-sql reason:" in f.message
    allowed = "-- edulink:allow-dynamic-sql reason: c is a private scratch table\n" + text
    assert analyse("auth", allowed) == []
    # The marker excuses what cannot be analysed, not what can.
    assert [f.rule for f in analyse(
        "auth", allowed + "ALTER TABLE authentication_user DROP COLUMN email;\n")] == [
        "contract/drop-exposed-column"]


def test_exposure_only_counts_in_the_owners_schema() -> None:
    # The notification service has a table called like auth's: not auth's contract.
    text = "ALTER TABLE authentication_user DROP COLUMN email;"
    assert analyse("notification", text) == []
    assert analyse("notification", "SET search_path TO auth_schema;\n" + text) != []


# -- lint: squawk warnings, suppressions, CLI ----------------------------------------

def write(directory: Path, name: str, content: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(content)
    return path


def lint_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
           "HOME": str(cwd)}
    return subprocess.run([*CLI, "migrations", "lint", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_reference_migrations_lint_clean() -> None:
    items = [(svc, parse_file(p)) for svc in TOPOLOGY.services
             for p in sorted((reference_migrations_dir() / svc.name).glob("*.sql"))]
    assert len(items) == 7
    assert lint(TOPOLOGY, items) == []


def test_squawk_warnings_are_one_based_and_suppressible(tmp_path: Path) -> None:
    text = ("-- backfill\n"
            "ALTER TABLE authentication_user ADD COLUMN score int;\n"
            "CREATE INDEX authentication_user_score_idx ON authentication_user (score);\n")
    path = write(tmp_path, "V2__score.sql", text)
    findings = lint(TOPOLOGY, [(TOPOLOGY.service("auth"), parse_file(path))])
    assert [(f.line, f.rule, f.severity) for f in findings] == [
        (3, "squawk/require-concurrent-index-creation", "warning")]
    path.write_text(text.replace(
        "CREATE INDEX", "-- edulink:ignore squawk/require-concurrent-index-creation "
        "reason: the table is empty in every environment\nCREATE INDEX"))
    assert lint(TOPOLOGY, [(TOPOLOGY.service("auth"), parse_file(path))]) == []
    path.write_text(text.replace(
        "CREATE INDEX", "-- edulink:ignore squawk/require-concurrent-index-creation\n"
        "CREATE INDEX"))
    rules = [f.rule for f in lint(TOPOLOGY, [(TOPOLOGY.service("auth"), parse_file(path))])]
    assert rules == ["lint/marker-without-reason", "squawk/require-concurrent-index-creation"]


def test_suppression_covers_only_the_next_statement(tmp_path: Path) -> None:
    text = ("-- edulink:ignore squawk/require-concurrent-index-creation reason: tiny\n"
            "CREATE INDEX a_idx ON authentication_user (email);\n"
            "CREATE INDEX b_idx ON authentication_user (last_login);\n")
    path = write(tmp_path, "V2__idx.sql", text)
    findings = lint(TOPOLOGY, [(TOPOLOGY.service("auth"), parse_file(path))])
    assert [(f.line, f.rule) for f in findings] == [
        (3, "squawk/require-concurrent-index-creation")]


def test_lint_cli_json_strict_and_exit_codes(tmp_path: Path) -> None:
    root = tmp_path / "migrations"
    write(root / "auth", "V1__base.sql", "CREATE TABLE authentication_user (id uuid, email text,"
          " is_active bool, is_staff bool, last_login timestamptz);\n")
    result = lint_cli("--dir", str(root), "--json", cwd=tmp_path)
    assert (result.returncode, json.loads(result.stdout)) == (0, []), result.stderr

    write(root / "auth", "V2__idx.sql",
          "\nCREATE INDEX u_email ON authentication_user (email);\n")
    result = lint_cli("--dir", str(root), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [finding] = json.loads(result.stdout)
    assert finding == {"file": str(root / "auth" / "V2__idx.sql"), "line": 2, "column": 1,
                       "rule": "squawk/require-concurrent-index-creation",
                       "severity": "warning", "message": finding["message"],
                       "url": "https://squawkhq.com/docs/require-concurrent-index-creation"}
    assert lint_cli("--dir", str(root), "--strict", cwd=tmp_path).returncode == 1

    write(root / "auth", "V3__drop.sql",
          "SELECT 1;\nALTER TABLE authentication_user DROP COLUMN email;\n")
    result = lint_cli("auth", "--dir", str(root), cwd=tmp_path)
    assert result.returncode == 2
    assert "V3__drop.sql:2:1: error [contract/drop-exposed-column]" in result.stdout
    assert "[services.auth.exposes]" in result.stdout  # not eaten as rich markup
    assert "squawk/ban-drop-column" in result.stdout  # squawk agrees, as a warning
    assert "1 error(s), 2 warning(s)" in result.stdout


def test_lint_cli_bad_input(tmp_path: Path) -> None:
    result = lint_cli("--dir", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    result = lint_cli("billing", "--dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "Unknown service 'billing'" in result.stderr


# -- end to end through migrate ---------------------------------------------------------

SNAPSHOT = """
SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
ORDER BY 1, 2, 3
"""


def snapshot(admin: dict[str, Any]) -> list[tuple[Any, ...]]:
    with psycopg.connect(**admin) as conn:
        return conn.execute(SNAPSHOT).fetchall()


@pytest.fixture
def migrated(fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
             tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """The default topology provisioned, the reference schema applied from a copy."""
    do_provision(fresh_db, TOPOLOGY)
    service_env(monkeypatch, fresh_db)
    root = tmp_path / "migrations"
    shutil.copytree(reference_migrations_dir(), root)
    MigrationManager(load_settings(), root).run_all_migrations()
    return fresh_db, root


E2E_BREAKING = {  # service -> (SQL after a first harmless line, line of the break)
    "auth": ("ALTER TABLE authentication_user ADD COLUMN x int, DROP COLUMN email;", 2),
    "institution": ("DO $$ BEGIN\n  ALTER TABLE institutions_program RENAME code TO c;\n"
                    "END $$;", 3),
    "user": ("ALTER TABLE user_schema.profiles_userprofile ALTER COLUMN phone TYPE "
             "varchar(20);", 2),
}


@pytest.mark.parametrize("service", sorted(E2E_BREAKING))
def test_migrate_refuses_the_whole_run(migrated: tuple[dict[str, Any], Path],
                                       service: str) -> None:
    admin, root = migrated
    # A harmless file of a service migrated *before* the breaking one must not run either.
    write(root / "auth", "V2__harmless.sql", "CREATE TABLE auth_scratch (id int);")
    text, line = E2E_BREAKING[service]
    write(root / service, "V3__break.sql", "SELECT 1;\n" + text)
    before = snapshot(admin)
    with pytest.raises(ContractViolationError) as info:
        MigrationManager(load_settings(), root).run_all_migrations()
    assert f"V3__break.sql:{line}: error" in str(info.value)
    assert "nothing was run" in str(info.value)
    assert snapshot(admin) == before
    with pytest.raises(ContractViolationError):
        MigrationManager(load_settings(), root).run_service_migrations(service)
    assert snapshot(admin) == before


def test_migrate_strict_blocks_on_warnings_only_with_strict(
        migrated: tuple[dict[str, Any], Path]) -> None:
    admin, root = migrated
    write(root / "auth", "V2__idx.sql",
          "CREATE INDEX u_last_login ON authentication_user (last_login);")
    before = snapshot(admin)
    with pytest.raises(MigrationLintError) as info:
        MigrationManager(load_settings(), root).run_all_migrations(strict=True)
    assert not isinstance(info.value, ContractViolationError)
    assert "squawk/require-concurrent-index-creation" in str(info.value)
    with psycopg.connect(**admin) as conn:
        assert conn.execute("SELECT to_regclass('auth_schema.u_last_login')").fetchone() == (
            None,)
    assert snapshot(admin) == before
    result = MigrationManager(load_settings(), root).run_all_migrations()
    assert result["auth"]["applied"] == ["V2__idx.sql"]


def test_migrate_cli_exit_code_on_contract_break(migrated: tuple[dict[str, Any], Path],
                                                 tmp_path: Path) -> None:
    admin, root = migrated
    write(root / "auth", "V2__drop.sql", "DROP TABLE authentication_user CASCADE;")
    before = snapshot(admin)
    from .test_migrations import cli_env

    result = subprocess.run([*CLI, "migrate", "--dir", str(root)], cwd=tmp_path,
                            env=cli_env(admin), capture_output=True, text=True, timeout=180,
                            check=False)
    assert result.returncode == 1, result.stderr
    assert "[contract/drop-exposed-table]" in result.stderr and "Traceback" not in result.stderr
    assert "[services.auth.exposes]" in result.stderr
    assert snapshot(admin) == before
