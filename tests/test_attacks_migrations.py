"""Red team: a hostile migration author, against a real server (issue 11).

Every file here runs as the service's migrator role, logged in with the
configured password.  The escapes that already fail in PostgreSQL are kept as
small regression tests; the real breaks found are marked where they are.
"""

# ruff: noqa: S608 - the SQL built here is migration files under attack; nothing else runs it
from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.config import load_settings
from microservices.shared.database.core.errors import MigrationError
from microservices.shared.database.migrations.manager import MigrationManager
from microservices.shared.database.topology import Service, Topology, parse_topology

from .conftest import (
    do_provision,
    drop_roles,
    migrator_params,
    service_env,
    service_params,
    unique_topology_text,
)


@dataclass
class Setup:
    admin: dict[str, Any]
    superuser: dict[str, Any]
    topology: Topology
    me: Service  # the service whose migration author is hostile
    other: Service  # a service that reads me's schema (topology: user reads auth)


@pytest.fixture(params=["createrole", "superuser"])
def setup(request: pytest.FixtureRequest, server: dict[str, Any], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    admin: dict[str, Any] = request.getfixturevalue(
        "createrole_admin" if request.param == "createrole" else "fresh_db")
    text = unique_topology_text(services=2)  # auth, user; user reads auth
    auth = re.search(r"\[services\.(auth_\w+)\]", text)
    assert auth is not None
    # auth exposes one column of a table a test creates, so user really reads it.
    text += f'\n[services.{auth.group(1)}.exposes]\naccounts = ["id"]\n'
    topology = parse_topology(text, source="red team topology")
    path = tmp_path / "topology.toml"
    path.write_text(text)
    try:
        do_provision(admin, topology)
        service_env(monkeypatch, admin, topology, extra={"EDULINK_DB_TOPOLOGY": str(path)})
        names = topology.service_names()
        yield Setup(admin=admin, superuser={**server, "dbname": admin["dbname"]},
                    topology=topology,
                    me=topology.service(next(n for n in names if n.startswith("auth_"))),
                    other=topology.service(next(n for n in names if n.startswith("user_"))))
    finally:
        drop_roles(server, topology.runtime_roles + topology.owner_roles
                   + topology.migrator_roles)


def ident(*names: str) -> str:
    return sql.Identifier(*names).as_string(None)


def migrate(tmp_path: Path, service: Service, body: str, name: str = "V1__attack.sql") -> None:
    root = tmp_path / f"migrations-{secrets.token_hex(3)}"
    (root / service.name).mkdir(parents=True)
    (root / service.name / name).write_text(body)
    MigrationManager(load_settings()).run_all_migrations(root)


def role_state(superuser: dict[str, Any], roles: list[str]) -> list[tuple[Any, ...]]:
    """Everything about *roles* a migration could change: password verifier,
    attributes, settings, comment, memberships."""
    with psycopg.connect(**superuser, autocommit=True) as conn:
        return conn.execute(
            "SELECT a.rolname, a.rolpassword, a.rolinherit, a.rolconnlimit,"
            " pg_catalog.shobj_description(a.oid, 'pg_authid'),"
            " ARRAY(SELECT s.setconfig::text FROM pg_db_role_setting s WHERE s.setrole = a.oid"
            "       ORDER BY s.setdatabase),"
            " ARRAY(SELECT m.roleid::regrole::text || '/' || m.member::regrole::text"
            "       FROM pg_auth_members m WHERE a.oid IN (m.roleid, m.member) ORDER BY 1)"
            " FROM pg_authid a WHERE a.rolname = ANY(%s) ORDER BY 1", [roles]).fetchall()


def _switch(role: str, statement: str, back: str) -> str:
    """A DO block that becomes *role* (the session user may always SET ROLE to itself),
    runs *statement* there and switches back to *back* before the statement ends, so
    a check of current_user after the statement sees the owner again.  Static SQL
    only: the contract analysis sees through DO blocks but finds nothing to object to."""
    return f"DO $$ BEGIN\n  SET ROLE {role};\n  {statement};\n  SET ROLE {back};\nEND $$;\n"


# BREAK (fixed in migrations.py): inside one statement, SET ROLE to the session user
# (the migrator) is always allowed, and an ordinary role may change its own password
# and role-level settings.  The runner only checked current_user *after* each
# statement, so a file could give its author a standing login as the migrator (the
# owner's power, outside review), or drop the 'role = owner' default.
ROLE_CHANGES = [
    ("migrator-password", "{m}", "ALTER ROLE {m} PASSWORD 'attacker-knows-this'"),
    ("migrator-role-default", "{m}", "ALTER ROLE {m} RESET role"),
    ("migrator-search-path", "{m}", "ALTER ROLE {m} SET search_path = pg_temp, {s}"),
    ("owner-settings", "{o}", "ALTER ROLE {o} SET search_path = pg_temp"),
]


@pytest.mark.parametrize(("as_role", "change"), [(r, c) for _i, r, c in ROLE_CHANGES],
                         ids=[i for i, _r, _c in ROLE_CHANGES])
def test_migration_cannot_alter_its_own_roles(setup: Setup, tmp_path: Path, as_role: str,
                                              change: str) -> None:
    names = {"m": ident(setup.me.migrator_role), "o": ident(setup.me.owner_role),
             "s": ident(setup.me.schema)}
    body = "CREATE TABLE innocent (x int);\n" + _switch(
        as_role.format(**names), change.format(**names), names["o"])
    roles = [setup.me.migrator_role, setup.me.owner_role]
    before = role_state(setup.superuser, roles)
    with pytest.raises(MigrationError) as exc:
        migrate(tmp_path, setup.me, body)
    assert "V1__attack.sql" in str(exc.value)
    assert "attacker-knows-this" not in str(exc.value)
    assert role_state(setup.superuser, roles) == before
    # The configured password still logs in; the attacker's does not.
    with psycopg.connect(**migrator_params(setup.admin, setup.me)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (setup.me.owner_role,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**{**migrator_params(setup.admin, setup.me),
                           "password": "attacker-knows-this"}).close()


def test_non_transactional_file_cannot_alter_roles_either(setup: Setup,
                                                          tmp_path: Path) -> None:
    """Statement by statement is no way around it: each statement that may run in a
    transaction runs in one of its own, so the check can still roll it back."""
    m = ident(setup.me.migrator_role)
    body = ("CREATE TABLE t (id int, x text);\n"
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n"
            "SELECT 1;\n"
            + _switch(m, f"ALTER ROLE {m} PASSWORD 'attacker-knows-this'",
                      ident(setup.me.owner_role)))
    before = role_state(setup.superuser, [setup.me.migrator_role])
    with pytest.raises(MigrationError) as exc:
        migrate(tmp_path, setup.me, body)
    assert "line 4" in str(exc.value)
    assert role_state(setup.superuser, [setup.me.migrator_role]) == before
    with psycopg.connect(**setup.superuser) as conn:  # statements before it stay applied
        assert conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                            [f"{ident(setup.me.schema)}.t_x"]).fetchone() == (True,)


def test_ordinary_migrations_still_pass_the_role_check(setup: Setup, tmp_path: Path) -> None:
    """DDL, grants to the own runtime role, RLS, functions, comments, ownership:
    none of it writes the shared role catalogs, so the check refuses none of it."""
    migrate(tmp_path, setup.me,
            "CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " owner_id text, body text);\n"
            "CREATE INDEX ON notes (owner_id);\n"
            "ALTER TABLE notes ENABLE ROW LEVEL SECURITY;\n"
            "CREATE POLICY own ON notes USING (owner_id = current_user_id());\n"
            "CREATE FUNCTION one() RETURNS int LANGUAGE sql AS 'SELECT 1';\n"
            "CREATE VIEW v AS SELECT id FROM notes;\n"
            "CREATE TYPE mood AS ENUM ('ok');\n"
            "COMMENT ON TABLE notes IS 'notes';\n"
            f"GRANT SELECT ON notes TO {ident(setup.me.runtime_role)};\n"
            f"ALTER TABLE notes OWNER TO {ident(setup.me.owner_role)};\n")
    with psycopg.connect(**setup.superuser) as conn:
        assert conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                            [f"{ident(setup.me.schema)}.notes"]).fetchone() == (True,)


# Regression: each of these is refused by PostgreSQL itself (the owner has no such
# power), on 15 and on 16+, under either admin.
REFUSED = [
    ("comment-on-own-role", "COMMENT ON ROLE {o} IS 'edulink-db managed: forged'"),
    ("comment-on-migrator", "COMMENT ON ROLE {m} IS 'edulink-db managed: forged'"),
    ("grant-owner-to-runtime", "GRANT {o} TO {r}"),
    ("grant-owner-to-other-service", "GRANT {o} TO {other_r}"),
    ("alter-runtime-role", "ALTER ROLE {r} SET search_path = pg_temp"),
    ("dblink", "CREATE EXTENSION dblink"),
    ("event-trigger", "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()"),
    ("alter-system", "ALTER SYSTEM SET work_mem = '1GB'"),
    ("load", "LOAD 'auto_explain'"),
    ("lo-import", "SELECT pg_catalog.lo_import('/etc/passwd')"),
    ("copy-to-file", "COPY (SELECT 1) TO '/tmp/edulink-redteam-copy'"),
    ("read-server-file", "SELECT pg_catalog.pg_read_file('/etc/passwd')"),
    ("shared-schema-function",
     "CREATE OR REPLACE FUNCTION {sh}.current_user_id() RETURNS text LANGUAGE sql"
     " AS 'SELECT ''u1'''"),
    ("audit-log-read", "SELECT * FROM {sh}.audit_log"),
    ("audit-log-triggers", "ALTER TABLE {sh}.audit_log DISABLE TRIGGER ALL"),
    ("public-schema", "CREATE TABLE public.planted (x int)"),
    ("new-schema", "CREATE SCHEMA planted"),
    ("publication", "CREATE PUBLICATION pub FOR TABLE t"),
    ("commit-in-procedure", "CALL c()"),
]


@pytest.mark.parametrize("statement", [s for _i, s in REFUSED], ids=[i for i, _s in REFUSED])
def test_owner_powers_stop_at_the_schema(setup: Setup, tmp_path: Path, statement: str) -> None:
    names = {"o": ident(setup.me.owner_role), "m": ident(setup.me.migrator_role),
             "r": ident(setup.me.runtime_role), "other_r": ident(setup.other.runtime_role),
             "sh": ident(setup.topology.shared.schema)}
    body = ("CREATE TABLE t (x int);\n"
            "CREATE FUNCTION f() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;\n"
            "CREATE PROCEDURE c() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;\n"
            + statement.format(**names) + ";\n")
    roles = setup.topology.runtime_roles + setup.topology.owner_roles \
        + setup.topology.migrator_roles
    before = role_state(setup.superuser, roles)
    with pytest.raises(MigrationError) as exc:
        migrate(tmp_path, setup.me, body)
    assert "failed at line 4" in str(exc.value)
    assert role_state(setup.superuser, roles) == before
    if not statement.startswith("ALTER SYSTEM"):  # that one makes the file non-transactional
        with psycopg.connect(**setup.superuser) as conn:  # the whole file was rolled back
            assert conn.execute("SELECT to_regclass(%s)",
                                [f"{ident(setup.me.schema)}.t"]).fetchone() == (None,)


def test_commit_inside_a_procedure_does_not_split_the_file(setup: Setup,
                                                            tmp_path: Path) -> None:
    """A procedure that COMMITs cannot end the runner's transaction early (a later
    error must still roll back everything before it)."""
    with pytest.raises(MigrationError) as exc:
        migrate(tmp_path, setup.me,
                "CREATE TABLE early (x int);\n"
                "DO $$ BEGIN COMMIT; END $$;\n")
    assert "invalid transaction termination" in str(exc.value)
    with psycopg.connect(**setup.superuser) as conn:
        assert conn.execute("SELECT to_regclass(%s)",
                            [f"{ident(setup.me.schema)}.early"]).fetchone() == (None,)


# BREAK (fixed in provisioning.py, routine_statements): a row-level security policy
# (or a view) on a table another service reads ran the owner's SECURITY INVOKER code with
# the *reader's* privileges; a hostile migration of service A read B's private data as B
# and sent it to A with pg_notify.  PUBLIC no longer holds EXECUTE on service routines,
# so B's read fails instead of running A's code.
def test_reader_does_not_run_the_exposing_services_code(setup: Setup, tmp_path: Path) -> None:
    other_secrets = ident(setup.other.schema, "secrets")
    with psycopg.connect(**setup.superuser, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(setup.other.owner_role)))
        conn.execute(f"CREATE TABLE {other_secrets} (v text)")
        conn.execute(f"INSERT INTO {other_secrets} VALUES ('reader-private-token')")
    migrate(tmp_path, setup.me,
            "CREATE TABLE accounts (id int);\n"
            "INSERT INTO accounts VALUES (1);\n"
            "CREATE FUNCTION visible() RETURNS boolean LANGUAGE plpgsql AS $$\n"
            "DECLARE loot text;\n"
            "BEGIN\n"
            f"  SELECT string_agg(v, ',') INTO loot FROM {other_secrets};\n"
            "  PERFORM pg_catalog.pg_notify('loot', loot);\n"
            "  RETURN true;\n"
            "EXCEPTION WHEN insufficient_privilege OR undefined_table THEN RETURN true;\n"
            "END $$;\n"
            "ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;\n"
            "CREATE POLICY everyone ON accounts USING (visible());\n")
    received: list[str] = []
    with psycopg.connect(**service_params(setup.admin, setup.me), autocommit=True) as spy:
        spy.add_notify_handler(lambda n: received.append(n.payload))
        spy.execute("LISTEN loot")
        with psycopg.connect(**service_params(setup.admin, setup.other),
                             autocommit=True) as reader:
            readable = reader.execute(  # the exposed column is readable...
                "SELECT has_column_privilege(%s, 'id', 'SELECT')",
                [sql.Identifier(setup.me.schema, "accounts").as_string(None)]).fetchone()
            assert readable == (True,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="function"):
                reader.execute(sql.SQL("SELECT id FROM {}").format(  # ...the policy is not
                    sql.Identifier(setup.me.schema, "accounts")))
        spy.execute("SELECT 1")
    assert "reader-private-token" not in received
