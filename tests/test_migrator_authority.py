"""Migrations run with the service's own authority: the migrator role, never the admin.

Each escape below worked with the old runner, which logged in as the admin
(DATABASE_URL) and switched to the owner role with a transaction-local setting:
leaving that setting made a migration the admin again.  Now the runner logs in
as ``<service>_service_migrator`` (NOINHERIT, its one membership the owner
role, ``role`` = owner by default), so every escape lands on the owner or on a
role with no privileges, and the file is refused and rolled back.  Every case
runs under a Supabase-like CREATEROLE admin and under a superuser admin.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.core.errors import MigrationError
from microservices.shared.database.migrations.manager import MigrationManager
from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.topology import Service, Topology, parse_topology

from .conftest import (
    SERVICE_PASSWORD,
    do_provision,
    drop_roles,
    migrator_params,
    service_env,
    unique_topology_text,
)

CLI = [sys.executable, "-m", "microservices.shared.database"]


@dataclass
class Setup:
    admin: dict[str, Any]
    superuser: dict[str, Any]  # same database, for inspecting what really happened
    topology: Topology
    topology_path: Path
    me: Service  # the service whose migration tries to escape
    other: Service  # a service it must not touch
    admin_kind: str


@pytest.fixture(params=["createrole", "superuser"])
def setup(request: pytest.FixtureRequest, server: dict[str, Any], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    admin: dict[str, Any] = request.getfixturevalue(
        "createrole_admin" if request.param == "createrole" else "fresh_db")
    text = unique_topology_text(services=3)
    topology = parse_topology(text, source="migrator test topology")
    path = tmp_path / "topology.toml"
    path.write_text(text)
    try:
        do_provision(admin, topology)
        service_env(monkeypatch, admin, topology, extra={"EDULINK_DB_TOPOLOGY": str(path)})
        names = topology.service_names()
        yield Setup(admin=admin, superuser={**server, "dbname": admin["dbname"]},
                    topology=topology, topology_path=path,
                    me=topology.service(next(n for n in names if n.startswith("user_"))),
                    other=topology.service(next(n for n in names if n.startswith("auth_"))),
                    admin_kind=request.param)
    finally:
        drop_roles(server, topology.runtime_roles + topology.owner_roles
                   + topology.migrator_roles)


def snapshot(superuser: dict[str, Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Everything an escaped migration could change: roles, memberships, role
    settings, and every non-system object with its ACL, in the test database."""
    queries = {
        "roles": "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb,"
                 " rolcanlogin, rolreplication, rolbypassrls, rolpassword"
                 " FROM pg_authid ORDER BY 1",
        "members": "SELECT roleid::regrole::text, member::regrole::text FROM pg_auth_members"
                   " ORDER BY 1, 2",
        "settings": "SELECT setdatabase, setrole::regrole::text, setconfig"
                    " FROM pg_db_role_setting ORDER BY 1, 2",
        "schemas": "SELECT nspname, nspowner::regrole::text, nspacl::text FROM pg_namespace"
                   " ORDER BY 1",
        "relations": "SELECT oid::regclass::text, relowner::regrole::text, relacl::text"
                     " FROM pg_class WHERE relnamespace NOT IN"
                     " ('pg_catalog'::regnamespace, 'information_schema'::regnamespace,"
                     "  'pg_toast'::regnamespace) ORDER BY 1",
        "default_acl": "SELECT defaclrole::regrole::text, defaclnamespace, defaclobjtype,"
                       " defaclacl::text FROM pg_default_acl ORDER BY 1, 2, 3",
    }
    with psycopg.connect(**superuser, autocommit=True) as conn:
        return {name: conn.execute(q).fetchall() for name, q in queries.items()}


def write_migration(tmp_path: Path, service: Service, body: str) -> Path:
    root = tmp_path / "migrations"
    (root / service.name).mkdir(parents=True, exist_ok=True)
    (root / service.name / "V1__escape.sql").write_text(body)
    return root


def ident(*names: str) -> str:
    return sql.Identifier(*names).as_string(None)


# (id, file body template, must the error name a line?)  {other_table} is a table
# in the other service's schema that must not appear; names are filled per test.
ESCAPES = [
    ("reset-role", "RESET ROLE;\nCREATE TABLE {other_table} (x int);\n", True),
    ("session-authorization",
     "SET SESSION AUTHORIZATION DEFAULT;\nCREATE TABLE {other_table} (x int);\n", True),
    ("set-config-role-none",
     "SELECT pg_catalog.set_config('role', 'none', true);\n"
     "CREATE TABLE {other_table} (x int);\n", True),
    ("do-reset-role",
     "DO $$ BEGIN\n  EXECUTE 'RESET ROLE';\n  EXECUTE 'CREATE TABLE {other_table_q} (x int)';\n"
     "END $$;\n", True),
    ("do-session-authorization",
     "DO $$ BEGIN\n  EXECUTE 'SET SESSION AUTHORIZATION DEFAULT';\n"
     "  EXECUTE 'CREATE TABLE {other_table_q} (x int)';\nEND $$;\n", True),
    ("do-set-config",
     "DO $$ BEGIN\n  PERFORM pg_catalog.set_config('role', 'none', true);\n"
     "  EXECUTE 'CREATE TABLE {other_table_q} (x int)';\nEND $$;\n", True),
    ("create-role", "RESET ROLE;\nCREATE ROLE {new_role} LOGIN;\n", True),
    ("set-role-other-owner",
     "SET ROLE {other_owner};\nCREATE TABLE {other_table} (x int);\n", True),
    ("alter-runtime-role",
     "RESET ROLE;\nALTER ROLE {other_runtime} PASSWORD 'taken-over';\n", True),
    ("grant-schema-to-other-service",
     "CREATE TABLE secrets (x int);\n"
     "GRANT USAGE ON SCHEMA {my_schema} TO {other_runtime};\n"
     "GRANT SELECT ON secrets TO {other_runtime};\n", False),
    ("default-privileges-to-other-service",
     "ALTER DEFAULT PRIVILEGES IN SCHEMA {my_schema} GRANT SELECT ON TABLES"
     " TO {other_runtime};\n", False),
    ("grant-to-public", "CREATE TABLE open (x int);\nGRANT SELECT ON open TO PUBLIC;\n", False),
]


def fill(template: str, s: Setup, new_role: str) -> str:
    other_table = ident(s.other.schema, "escaped")
    return template.format(
        other_table=other_table, other_table_q=other_table.replace("'", "''"),
        other_owner=ident(s.other.owner_role), other_runtime=ident(s.other.runtime_role),
        my_schema=ident(s.me.schema), new_role=ident(new_role))


@pytest.mark.parametrize(("body", "names_line"), [(b, n) for _i, b, n in ESCAPES],
                         ids=[i for i, _b, _n in ESCAPES])
def test_escape_is_refused_and_nothing_changes(setup: Setup, tmp_path: Path, body: str,
                                               names_line: bool) -> None:
    new_role = f"escaped_{secrets.token_hex(3)}"
    root = write_migration(tmp_path, setup.me, fill(body, setup, new_role))
    before = snapshot(setup.superuser)
    try:
        with pytest.raises(MigrationError) as exc:
            MigrationManager(load_settings()).run_all_migrations(root)
        message = str(exc.value)
        assert "V1__escape.sql" in message
        if names_line:
            assert " at line " in message
        assert snapshot(setup.superuser) == before  # nothing created, granted or altered
    finally:
        drop_roles(setup.superuser, [new_role])  # had the escape worked


def test_copy_to_program_is_refused(setup: Setup, tmp_path: Path) -> None:
    target = tmp_path / f"pwned-{secrets.token_hex(4)}"
    root = write_migration(tmp_path, setup.me,
                           f"RESET ROLE;\nCOPY (SELECT 1) TO PROGRAM 'touch {target}';\n")
    before = snapshot(setup.superuser)
    with pytest.raises(MigrationError) as exc:
        MigrationManager(load_settings()).run_all_migrations(root)
    assert "V1__escape.sql failed at line 2" in str(exc.value)
    assert not target.exists()
    assert snapshot(setup.superuser) == before


def test_cli_prints_a_role_switch_without_traceback(setup: Setup, tmp_path: Path) -> None:
    root = write_migration(tmp_path, setup.me,
                           "CREATE TABLE fine (x int);\n"
                           f"SET ROLE {ident(setup.other.owner_role)};\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "EDULINK_DB_"))}
    env["DATABASE_URL"] = to_url(setup.admin)
    env["EDULINK_DB_TOPOLOGY"] = str(setup.topology_path)
    for svc in setup.topology.services:
        env[f"EDULINK_DB_{svc.name.upper()}_MIGRATOR_PASSWORD"] = SERVICE_PASSWORD
    result = subprocess.run([*CLI, "migrate", "--dir", str(root), setup.me.name], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "V1__escape.sql failed at line 2" in output
    assert "Traceback" not in output
    assert SERVICE_PASSWORD not in output
    assert setup.admin["password"] not in output


def test_migrations_create_owner_objects_as_the_migrator(setup: Setup, tmp_path: Path) -> None:
    """The happy path still works, and the history records who really ran it."""
    root = write_migration(tmp_path, setup.me,
                           "CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY,"
                           " body text);\n")
    MigrationManager(load_settings()).run_all_migrations(root)
    with psycopg.connect(**setup.superuser) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE schemaname = %s"
                             " AND tablename = 'notes'", [setup.me.schema]).fetchone()
        who = conn.execute(sql.SQL("SELECT installed_by FROM {}").format(
            sql.Identifier(setup.me.schema, "edulink_schema_history"))).fetchall()
    assert owner == (setup.me.owner_role,)
    assert who == [(setup.me.migrator_role,)]
    assert verify(setup.admin, setup.topology).ok


def test_migrator_role_shape(setup: Setup) -> None:
    with psycopg.connect(**migrator_params(setup.admin, setup.me), autocommit=True) as conn:
        row = conn.execute("SELECT current_user, session_user, current_schemas(false)"
                           ).fetchone()
        assert row == (setup.me.owner_role, setup.me.migrator_role,
                       [setup.me.schema, setup.topology.shared.schema])
        conn.execute("RESET ROLE")  # leads back to the owner, never further
        assert conn.execute("SELECT current_user").fetchone() == (setup.me.owner_role,)
        conn.execute("SET ROLE NONE")  # itself: NOINHERIT, so no privileges at all
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(
                sql.Identifier(setup.me.schema, "as_migrator")))
    with psycopg.connect(**setup.superuser) as conn:
        attrs = conn.execute(
            "SELECT rolcanlogin, rolinherit, rolsuper, rolcreaterole, rolcreatedb,"
            " rolreplication, rolbypassrls,"
            " ARRAY(SELECT roleid::regrole::text FROM pg_auth_members WHERE member = r.oid)"
            " FROM pg_roles r WHERE rolname = %s", [setup.me.migrator_role]).fetchone()
    assert attrs == (True, False, False, False, False, False, False, [setup.me.owner_role])


# Drift on a migrator role, made by a superuser: verify names it and provision repairs it.
DRIFTS = [
    ("member-of-other-owner", "GRANT {other_owner} TO {migrator}",
     "MEMBER OF {other_owner_raw}"),
    ("inherit", "ALTER ROLE {migrator} INHERIT", "INHERIT"),
    ("role-default", "ALTER ROLE {migrator} SET role = {other_owner}", "role"),
    ("createdb-attribute", "ALTER ROLE {migrator} CREATEDB", "CREATEDB"),
    ("direct-privilege", "GRANT USAGE ON SCHEMA {other_schema} TO {migrator}", "USAGE"),
]


@pytest.mark.parametrize(("change", "privilege"), [(c, p) for _i, c, p in DRIFTS],
                         ids=[i for i, _c, _p in DRIFTS])
def test_verify_reports_migrator_drift_and_provision_repairs_it(
        fresh_db: dict[str, Any], server: dict[str, Any], change: str, privilege: str) -> None:
    topology = parse_topology(unique_topology_text(services=2), source="drift topology")
    try:
        do_provision(fresh_db, topology)
        me, other = topology.services[1], topology.services[0]
        names = {"other_owner": ident(other.owner_role), "migrator": ident(me.migrator_role),
                 "other_schema": ident(other.schema), "other_owner_raw": other.owner_role}
        with psycopg.connect(**fresh_db, autocommit=True) as conn:
            conn.execute(change.format(**names))
        report = verify(fresh_db, topology)
        found = [p for p in report.problems
                 if p.role == me.migrator_role and p.privilege == privilege.format(**names)]
        assert found and all(p.repair is not None for p in found), report.problems
        do_provision(fresh_db, topology)  # re-asserts settings, applies the repairs
        assert verify(fresh_db, topology).ok
    finally:
        drop_roles(server, topology.runtime_roles + topology.owner_roles
                   + topology.migrator_roles)


def test_django_migrate_settings_never_carry_the_admin(setup: Setup) -> None:
    from microservices.shared.database.django_settings import configure_service_database

    db = configure_service_database(setup.me.name, migrate=True,
                                    settings=load_settings())["default"]
    assert db["USER"] == setup.me.migrator_role
    assert db["PASSWORD"] == SERVICE_PASSWORD
    assert setup.admin["password"] not in repr(db)


def test_inheriting_membership_is_reported_and_repaired(
        fresh_db: dict[str, Any], server: dict[str, Any], server_version: int) -> None:
    """PostgreSQL 16+: the INHERIT option lives on the grant, not only on the role."""
    if server_version < 160000:
        pytest.skip("grant-level INHERIT exists from PostgreSQL 16 (on 15 rolinherit decides)")
    topology = parse_topology(unique_topology_text(services=1), source="inherit topology")
    me = topology.services[0]
    try:
        do_provision(fresh_db, topology)
        with psycopg.connect(**fresh_db, autocommit=True) as conn:
            conn.execute(sql.SQL("GRANT {} TO {} WITH INHERIT TRUE").format(
                sql.Identifier(me.owner_role), sql.Identifier(me.migrator_role)))
        problems = [p for p in verify(fresh_db, topology).problems
                    if p.role == me.migrator_role]
        assert [p.privilege for p in problems] == [f"INHERIT {me.owner_role}"]
        assert do_provision(fresh_db, topology).repaired
        assert verify(fresh_db, topology).ok
    finally:
        drop_roles(server, topology.runtime_roles + topology.owner_roles
                   + topology.migrator_roles)
