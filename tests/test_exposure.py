"""Column-level exposure: a reader gets exactly the exposed columns, and nothing else.

Every probe runs a real statement as a real runtime role of the default topology,
after provisioning and the reference migrations, so PostgreSQL is what answers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.config import load_settings
from microservices.shared.database.core.errors import MigrationError
from microservices.shared.database.migrations import (
    HISTORY_TABLE,
    MigrationManager,
    reference_migrations_dir,
)
from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.topology import default_topology, looks_secret

from .conftest import do_provision, service_env, service_params

TOPOLOGY = default_topology()


@pytest.fixture
def migrated(fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
             tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """Provisioned with the default topology, then the reference schema from a copy."""
    do_provision(fresh_db, TOPOLOGY)
    service_env(monkeypatch, fresh_db)
    root = tmp_path / "migrations"
    shutil.copytree(reference_migrations_dir(), root)
    MigrationManager(load_settings(), root).run_all_migrations()
    return fresh_db, root


def _run(admin: dict[str, Any], *statements: str) -> None:
    with psycopg.connect(**admin, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _tables(admin: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """schema -> table -> columns, for every service schema."""
    out: dict[str, dict[str, list[str]]] = {}
    with psycopg.connect(**admin) as conn:
        for schema, table, column in conn.execute(
            "SELECT n.nspname, c.relname, a.attname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0"
            "  AND NOT a.attisdropped"
            " WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm')"
            " ORDER BY 1, 2, a.attnum", [[s.schema for s in TOPOLOGY.services]]):
            out.setdefault(schema, {}).setdefault(table, []).append(column)
    return out


def _can(conn: psycopg.Connection[Any], query: sql.Composed | sql.SQL) -> bool:
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(query)
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


def _select(schema: str, table: str, column: str | None = None) -> sql.Composed:
    what = sql.SQL("*") if column is None else sql.Identifier(column)
    return sql.SQL("SELECT {} FROM {} LIMIT 1").format(what, sql.Identifier(schema, table))


def probe_exposure(admin: dict[str, Any]) -> list[str]:
    """Every way the database differs from 'readers get exactly the exposure'."""
    wrong: list[str] = []
    tables = _tables(admin)
    for svc in TOPOLOGY.services:
        with psycopg.connect(**service_params(admin, svc), autocommit=True) as conn:
            for other in TOPOLOGY.services:
                if other is svc:
                    continue
                exposure = dict(other.exposes) if other in TOPOLOGY.readable_services(svc) \
                    else {}
                has_usage = conn.execute("SELECT has_schema_privilege(%s, 'USAGE')",
                                         [other.schema]).fetchone() == (True,)
                if not exposure:
                    if has_usage:
                        wrong.append(f"{svc.runtime_role} has USAGE on {other.schema}")
                    continue
                for table, columns in tables.get(other.schema, {}).items():
                    exposed = set(exposure.get(table, ()))
                    # SELECT * needs every column: refused while any column is private.
                    # A table whose every column is exposed answers it with exactly
                    # those, until a migration adds one (new columns are private).
                    if _can(conn, _select(other.schema, table)) != exposed.issuperset(columns):
                        wrong.append(f"{svc.runtime_role}: SELECT * on {other.schema}.{table}")
                    for column in columns:
                        readable = _can(conn, _select(other.schema, table, column))
                        if readable and (column not in exposed or looks_secret(column)):
                            wrong.append(f"{svc.runtime_role} reads {other.schema}.{table}."
                                         f"{column}")
                        if column in exposed and not readable:
                            wrong.append(f"{svc.runtime_role} cannot read exposed "
                                         f"{other.schema}.{table}.{column}")
    return wrong


def test_readers_get_exactly_the_exposed_columns(migrated: tuple[dict[str, Any], Path]
                                                 ) -> None:
    admin, _root = migrated
    tables = _tables(admin)
    # The probes below must have something to bite on.
    assert "password_hash" in tables["auth_schema"]["authentication_user"]
    assert "token_hash" in tables["auth_schema"]["authentication_session"]
    assert probe_exposure(admin) == []
    report = verify(admin, TOPOLOGY)
    assert report.ok, report.problems
    assert report.matrix["user_service_role"]["auth_schema"] == "cols"
    assert report.matrix["application_service_role"]["internship_schema"] == "-"
    rows = {(e.schema, e.table): e for e in report.exposure}
    user_auth = rows[("auth_schema", "authentication_user")]
    assert user_auth.state == "granted"
    assert user_auth.readers == ("user_service_role", "notification_service_role",
                                 "application_service_role")
    assert rows[("user_schema", "profiles_profile")].state == "not created yet"


def test_secret_columns_refused_to_every_role(migrated: tuple[dict[str, Any], Path]) -> None:
    admin, _root = migrated
    secrets = [(s, t, c) for s, ts in _tables(admin).items() for t, cs in ts.items()
               for c in cs if looks_secret(c)]
    assert ("auth_schema", "authentication_session", "token_hash") in secrets
    for svc in TOPOLOGY.services:
        with psycopg.connect(**service_params(admin, svc), autocommit=True) as conn:
            for schema, table, column in secrets:
                if schema != svc.schema:
                    assert not _can(conn, _select(schema, table, column)), (svc.name, column)


HAND_MADE = [
    # (grant, role, table, privilege verify names, a column the message names)
    ("GRANT SELECT ON auth_schema.authentication_user TO user_service_role",
     "user_service_role", "authentication_user", "SELECT", "password_hash"),
    ("GRANT SELECT (password_hash, email) ON auth_schema.authentication_user "
     "TO application_service_role",
     "application_service_role", "authentication_user", "SELECT (password_hash)",
     "password_hash"),
    ("GRANT SELECT (token_hash) ON auth_schema.authentication_session TO user_service_role",
     "user_service_role", "authentication_session", "SELECT (token_hash)", "token_hash"),
    ("GRANT SELECT (student_number) ON user_schema.profiles_academicinfo "
     "TO internship_service_role",
     "internship_service_role", "profiles_academicinfo", "SELECT (student_number)",
     "student_number"),
    ("REVOKE SELECT (email) ON auth_schema.authentication_user FROM user_service_role",
     "user_service_role", "authentication_user", "SELECT (email)", "email"),
    ("GRANT SELECT (id) ON institution_schema.institutions_institution TO PUBLIC",
     "PUBLIC", "institutions_institution", "SELECT (id)", "id"),
]


@pytest.mark.parametrize(("change", "role", "table", "privilege", "column"), HAND_MADE,
                         ids=[h[0][:70] for h in HAND_MADE])
def test_hand_made_column_drift_is_named_and_repaired(
        migrated: tuple[dict[str, Any], Path], change: str, role: str, table: str,
        privilege: str, column: str) -> None:
    admin, _root = migrated
    _run(admin, change)
    report = verify(admin, TOPOLOGY)
    found = [p for p in report.problems
             if (p.role, p.object, p.privilege) == (role, f"table {table}", privilege)]
    assert found, report.problems
    assert column in found[0].message
    assert found[0].repair is not None
    prov = do_provision(admin, TOPOLOGY)
    assert prov.unrepaired == []
    after = verify(admin, TOPOLOGY)
    assert after.ok, after.problems
    assert probe_exposure(admin) == []


def test_table_grant_repair_keeps_the_exposed_columns(migrated: tuple[dict[str, Any], Path]
                                                      ) -> None:
    """REVOKE SELECT ON a table drops its column grants too; provisioning re-grants them."""
    admin, _root = migrated
    _run(admin, "GRANT SELECT ON auth_schema.authentication_user TO user_service_role")
    report = verify(admin, TOPOLOGY)
    [problem] = [p for p in report.problems if p.role == "user_service_role"]
    assert problem.repair is not None
    assert problem.repair.as_string(None) == (
        'REVOKE SELECT ON TABLE "auth_schema"."authentication_user" FROM "user_service_role"')
    prov = do_provision(admin, TOPOLOGY)
    assert any(r.startswith("REVOKE SELECT ON TABLE") for r in prov.repaired) or prov.changed
    with psycopg.connect(**service_params(admin, TOPOLOGY.service("user")),
                         autocommit=True) as conn:
        assert _can(conn, _select("auth_schema", "authentication_user", "email"))
        assert not _can(conn, _select("auth_schema", "authentication_user", "password_hash"))


def write(directory: Path, name: str, content: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(content)


def test_column_added_later_stays_private(migrated: tuple[dict[str, Any], Path]) -> None:
    admin, root = migrated
    write(root / "auth", "V2__nickname.sql",
          "ALTER TABLE authentication_user ADD COLUMN nickname text;")
    MigrationManager(load_settings(), root).run_service_migrations("auth")
    with psycopg.connect(**service_params(admin, TOPOLOGY.service("user")),
                         autocommit=True) as conn:
        assert not _can(conn, _select("auth_schema", "authentication_user", "nickname"))
        assert not _can(conn, _select("auth_schema", "authentication_user"))
        assert _can(conn, _select("auth_schema", "authentication_user", "email"))
    assert verify(admin, TOPOLOGY).ok
    assert probe_exposure(admin) == []


def test_exposed_table_created_by_a_later_migration_is_granted(
        migrated: tuple[dict[str, Any], Path]) -> None:
    """profiles_profile is exposed but no reference migration creates it: the migration
    that does gets its exposed columns granted by the runner, the rest stays private."""
    admin, root = migrated
    write(root / "user", "V2__profile_mirror.sql",
          "CREATE TABLE profiles_profile (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
          " user_id uuid NOT NULL UNIQUE, display_name text NOT NULL,"
          " private_notes text, created_at timestamptz NOT NULL DEFAULT now());")
    MigrationManager(load_settings(), root).run_service_migrations("user")
    report = verify(admin, TOPOLOGY)
    assert report.ok, report.problems
    assert {(e.table, e.state) for e in report.exposure if e.schema == "user_schema"} == {
        ("profiles_userprofile", "granted"), ("profiles_profile", "granted")}
    assert probe_exposure(admin) == []
    with psycopg.connect(**service_params(admin, TOPOLOGY.service("application")),
                         autocommit=True) as conn:
        assert _can(conn, sql.SQL("SELECT id, user_id, display_name FROM "
                                  "user_schema.profiles_profile"))
        assert not _can(conn, _select("user_schema", "profiles_profile", "private_notes"))


@pytest.mark.parametrize("grant", [
    "GRANT SELECT ON authentication_user TO user_service_role",
    "GRANT SELECT (password_hash) ON authentication_user TO user_service_role",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA auth_schema GRANT SELECT ON TABLES "
    "TO user_service_role",
])
def test_migration_granting_beyond_the_exposure_is_refused(
        migrated: tuple[dict[str, Any], Path], grant: str) -> None:
    """Built at run time (the static contract check cannot see it): the check after
    the file refuses any reader grant that is not exactly an exposed column."""
    admin, root = migrated
    write(root / "auth", "V2__sneaky.sql",
          "-- edulink:allow-dynamic-sql reason: a test of the post-file grant check\n"
          # The role name is assembled at run time, so only the check after the file
          # can see whom the statement grants to.
          "DO $$ BEGIN EXECUTE replace("
          f"{sql.Literal(grant.replace('user_service_role', 'ROLE_X')).as_string(None)},"
          " 'ROLE_X', 'user' || '_service_role'); END $$;")
    with pytest.raises(MigrationError, match=r"user_service_role.*topology does not declare"):
        MigrationManager(load_settings(), root).run_service_migrations("auth")
    assert verify(admin, TOPOLOGY).ok
    assert probe_exposure(admin) == []


def test_upgrade_from_table_level_grants(migrated: tuple[dict[str, Any], Path]) -> None:
    """A database provisioned by the old code: table-level SELECT for every reader,
    default privileges for future tables, USAGE on schemas that expose nothing."""
    admin, _root = migrated
    old: list[str] = []
    for svc in TOPOLOGY.services:
        readers = ", ".join(r.runtime_role for r in TOPOLOGY.readers_of(svc))
        if not readers:
            continue
        old += [f"GRANT USAGE ON SCHEMA {svc.schema} TO {readers}",
                f"GRANT SELECT ON ALL TABLES IN SCHEMA {svc.schema} TO {readers}",
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {svc.owner_role} IN SCHEMA {svc.schema} "
                f"GRANT SELECT ON TABLES TO {readers}"]
    _run(admin, *old, f"REVOKE ALL ON TABLE auth_schema.{HISTORY_TABLE} FROM user_service_role")
    assert probe_exposure(admin) != []
    report = verify(admin, TOPOLOGY)
    named = {(p.role, p.schema, p.object, p.privilege) for p in report.problems}
    assert ("user_service_role", "auth_schema", "table authentication_user", "SELECT") in named
    assert ("user_service_role", "auth_schema", "default privileges of auth_service_owner",
            "SELECT") in named
    assert ("application_service_role", "internship_schema", "schema", "USAGE") in named
    do_provision(admin, TOPOLOGY)
    after = verify(admin, TOPOLOGY)
    assert after.ok, after.problems
    assert probe_exposure(admin) == []


def test_script_alone_upgrades_and_grants(migrated: tuple[dict[str, Any], Path]) -> None:
    """The psql script (no drift repair) also revokes table-level reads and grants
    the exposure of tables that exist."""
    from microservices.shared.database.privileges.provisioning import render_postgresql_script

    admin, _root = migrated
    _run(admin, "GRANT SELECT ON ALL TABLES IN SCHEMA auth_schema TO user_service_role",
         "REVOKE SELECT (email) ON auth_schema.authentication_user FROM user_service_role")
    script = render_postgresql_script(TOPOLOGY)
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(script.encode())
    report = verify(admin, TOPOLOGY)
    assert report.ok, report.problems
    assert probe_exposure(admin) == []


def test_observed_reads_report_reads_beyond_the_exposure(
        migrated: tuple[dict[str, Any], Path]) -> None:
    """Reads that succeeded under a hand-made (or pre-upgrade) table grant are listed
    per role and table with the columns the topology does not expose."""
    import json

    from typer.testing import CliRunner

    from microservices.shared.database.cli import app
    from microservices.shared.database.monitoring.observed_reads import observed_reads

    admin, _root = migrated
    _run(admin, "GRANT SELECT ON auth_schema.authentication_user TO user_service_role")
    user, application = TOPOLOGY.service("user"), TOPOLOGY.service("application")
    with psycopg.connect(**service_params(admin, user), autocommit=True) as conn:
        for _ in range(2):
            conn.execute("SELECT u.email, u.password_hash FROM auth_schema.authentication_user u"
                         " WHERE u.id = %s", ["00000000-0000-0000-0000-000000000000"])
        conn.execute("SELECT id, email FROM auth_schema.authentication_user WHERE is_active")
        conn.execute("SELECT p.first_name, (SELECT created_at FROM"
                     " auth_schema.authentication_user a WHERE a.id = p.user_id)"
                     " FROM profiles_userprofile p")
        conn.execute("SELECT count(*) FROM auth_schema.authentication_user")
    with psycopg.connect(**service_params(admin, application), autocommit=True) as conn:
        conn.execute("SELECT i.name, p.code FROM institution_schema.institutions_institution i"
                     " JOIN institution_schema.institutions_program p"
                     " ON p.institution_id = i.id")
    report = observed_reads(admin, TOPOLOGY)
    assert report.available, report.note
    assert [(r.role, r.schema, r.table, r.columns) for r in report.reads] == [
        ("user_service_role", "auth_schema", "authentication_user",
         ("password_hash", "created_at"))]
    assert report.reads[0].calls == 3
    assert report.unparsed == 0

    result = CliRunner().invoke(app, ["reads", "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["reads"][0]["columns"] == ["password_hash", "created_at"]
    assert "password_hash" not in json.dumps(data["reads"][0]["queryids"])

    _run(admin, "DROP EXTENSION pg_stat_statements")
    missing = observed_reads(admin, TOPOLOGY)
    assert not missing.available and missing.reads == []
    assert "not installed" in missing.note


RESOLVER_CASES = [
    ("SELECT * FROM auth_schema.authentication_user",
     {"id", "email", "password_hash"}),
    ("SELECT u.* FROM auth_schema.authentication_user u JOIN profiles_userprofile p"
     " ON p.user_id = u.id", {"id", "email", "password_hash"}),
    ("SELECT u FROM auth_schema.authentication_user u", {"id", "email", "password_hash"}),
    ("SELECT email FROM auth_schema.authentication_user WHERE id = $1", {"email", "id"}),
    ("WITH x AS (SELECT password_hash AS h FROM auth_schema.authentication_user)"
     " SELECT h FROM x", {"password_hash"}),
    ("SELECT s.e FROM (SELECT a.email AS e FROM auth_schema.authentication_user a) s",
     {"email"}),
    ("SELECT first_name FROM profiles_userprofile p WHERE EXISTS (SELECT 1 FROM"
     " auth_schema.authentication_user a WHERE a.id = p.user_id AND password_hash = $1)",
     {"id", "password_hash"}),
    ("SELECT count(*) FROM auth_schema.authentication_user", set()),
]


@pytest.mark.parametrize(("text", "columns"), RESOLVER_CASES,
                         ids=[c[0][:50] for c in RESOLVER_CASES])
def test_observed_reads_resolve_columns_scope_by_scope(text: str, columns: set[str]) -> None:
    from microservices.shared.database.monitoring.observed_reads import _statement_reads

    catalog = {("auth_schema", "authentication_user"): ["id", "email", "password_hash"],
               ("user_schema", "profiles_userprofile"): ["id", "user_id", "first_name"]}
    reads = _statement_reads(text, catalog, ["user_schema", "shared_schema"])
    assert reads is not None
    assert {c for s, t, c in reads if t == "authentication_user" and c} == columns
    assert ("auth_schema", "authentication_user", None) in reads
