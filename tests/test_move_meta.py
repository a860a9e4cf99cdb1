"""move-service's metadata (issue 25, items 7-8): who owns edulink_db_meta (the
project's NOLOGIN role, not an admin), who may read the registry (the topology's
roles, not PUBLIC), a change of admin between two moves, and the error a plain-SQL
read of a moved service's table gets."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database import MovedSchemaAccessError
from microservices.shared.database.config import load_settings
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.connections import location
from microservices.shared.database.core.errors import MoveError
from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.relocation import abort, mover, run_move
from microservices.shared.database.relocation.meta import check_meta, ensure_meta

from .clusters import Cluster
from .conftest import SERVICE_PASSWORD, do_provision, reachable_tempdir, service_env
from .test_move_service import INST, TOPOLOGY, _codes, _ctx, _leftovers, _p, _pair, _setup_source

OWNER = location.META_OWNER
OLD_LAYOUT = (  # what earlier versions created, owned by the admin that ran it
    "CREATE SCHEMA edulink_db_meta;"
    " CREATE TABLE edulink_db_meta.service_location (service text PRIMARY KEY, location text,"
    " epoch bigint NOT NULL DEFAULT 0, frozen_until timestamptz, watch_until timestamptz,"
    " moved_at timestamptz);"
    " CREATE TABLE edulink_db_meta.service_move (service text PRIMARY KEY, target text NOT NULL,"
    " phase text NOT NULL, fingerprint text, started_at timestamptz NOT NULL DEFAULT now(),"
    " updated_at timestamptz NOT NULL DEFAULT now());"
    " GRANT USAGE ON SCHEMA edulink_db_meta TO PUBLIC;"
    " GRANT SELECT ON edulink_db_meta.service_location TO PUBLIC")


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = reachable_tempdir("edulink-movemeta-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def home(root: Path) -> Iterator[Cluster]:
    a = Cluster.create(root, "meta", settings={"max_slot_wal_keep_size": "1GB"})
    try:
        do_provision(_p(a), TOPOLOGY)
        yield a
    finally:
        a.destroy()


def _admin(c: Cluster, name: str) -> dict[str, Any]:
    """A Supabase-like admin on *c*: LOGIN CREATEROLE REPLICATION BYPASSRLS, not a
    superuser, with CREATE on the database and ADMIN OPTION on the topology's roles
    (what a non-superuser needs to re-provision roles a superuser created, 16+)."""
    password = secrets.token_urlsafe(12)
    with c.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE REPLICATION BYPASSRLS"
                             " PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE postgres TO {}").format(
            sql.Identifier(name)))
        for role in TOPOLOGY.runtime_roles + TOPOLOGY.owner_roles + TOPOLOGY.migrator_roles:
            conn.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.Identifier(role), sql.Identifier(name)))
    return {**_p(c), "user": name, "password": password}


def _reset(c: Cluster, *admins: str) -> None:
    with c.connect() as conn:
        conn.execute("DROP SCHEMA IF EXISTS edulink_db_meta CASCADE")
        for name in (*admins, OWNER):
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone():
                conn.execute(sql.SQL("DROP OWNED BY {} CASCADE; DROP ROLE {}").format(
                    sql.Identifier(name), sql.Identifier(name)))


def _owners(c: Cluster) -> set[str]:
    with c.connect() as conn:
        return {r[0] for r in conn.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'edulink_db_meta'"
            " UNION SELECT relowner::regrole::text FROM pg_class"
            " WHERE relnamespace = 'edulink_db_meta'::regnamespace AND relkind = 'r'")}


def _can_read(params: dict[str, Any]) -> bool:
    with psycopg.connect(**params, autocommit=True) as conn:
        try:
            conn.execute("SELECT * FROM edulink_db_meta.service_location").fetchall()
            return True
        except psycopg.errors.InsufficientPrivilege:
            return False


def _anon(c: Cluster) -> dict[str, Any]:
    """A plain LOGIN role (Supabase's anon / authenticated): PUBLIC's privileges only."""
    with c.connect() as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'anon_like'").fetchone():
            conn.execute("CREATE ROLE anon_like LOGIN PASSWORD 'anon-pw-1'")
    return {**_p(c), "user": "anon_like", "password": "anon-pw-1"}


def _service(c: Cluster, role: str) -> dict[str, Any]:
    return {**_p(c), "user": role, "password": SERVICE_PASSWORD}


def test_registry_is_read_by_the_topology_roles_only(home: Cluster) -> None:
    """Earlier versions granted the registry to PUBLIC: ensure_meta revokes that, and
    grants USAGE + SELECT to the topology's roles; the journal stays the owner's."""
    admin = _admin(home, "adm_read")
    try:
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(OLD_LAYOUT)
        assert _can_read(_anon(home))  # the old grants
        with psycopg.connect(**admin, autocommit=True) as conn:
            ensure_meta(conn, TOPOLOGY)
            ensure_meta(conn, TOPOLOGY)  # idempotent
        assert not _can_read(_anon(home))
        assert _can_read(_service(home, INST.runtime_role))
        with psycopg.connect(**_service(home, INST.runtime_role), autocommit=True) as conn, \
                pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM edulink_db_meta.service_move")
        # The old layout belonged to the admin: handed over to the project's role.
        assert _owners(home) == {OWNER}
        report = verify(_p(home), TOPOLOGY)
        assert not [w for w in report.warnings if "edulink_db_meta" in w], report.warnings
        assert not [p for p in report.problems if p.schema == "edulink_db_meta"]
        # verify still flags anything else on it.
        with home.connect() as conn:
            conn.execute("GRANT USAGE ON SCHEMA edulink_db_meta TO PUBLIC")
            conn.execute("GRANT INSERT ON edulink_db_meta.service_location TO"
                         " institution_service_role")
        flagged = {(p.role, p.object, p.privilege) for p in verify(_p(home), TOPOLOGY).problems
                   if p.schema == "edulink_db_meta"}
        assert flagged == {("PUBLIC", "schema", "USAGE"),
                           ("institution_service_role", "table service_location", "INSERT")}
    finally:
        _reset(home, "adm_read")


def test_meta_of_another_admin_is_refused_with_the_command(home: Cluster) -> None:
    """The old layout created by admin A; admin B cannot act for A: one line naming A
    and the ALTER statements; once a superuser ran them, B proceeds."""
    a, b = _admin(home, "adm_old_a"), _admin(home, "adm_old_b")
    try:
        with psycopg.connect(**a, autocommit=True) as conn:
            conn.execute(OLD_LAYOUT)
        with psycopg.connect(**b, autocommit=True) as conn, \
                pytest.raises(MoveError) as info:
            ensure_meta(conn, TOPOLOGY)
        message = str(info.value)
        print("\n" + message)
        assert "\n" not in message and "owned by admin adm_old_a" in message
        commands = message.split(" run: ", 1)[1].removesuffix("; then retry.")
        assert "ALTER SCHEMA edulink_db_meta OWNER TO edulink_db_meta_owner" in commands
        with home.connect() as conn:
            conn.execute(commands)
        with psycopg.connect(**b, autocommit=True) as conn:
            ensure_meta(conn, TOPOLOGY)
            check_meta(conn)
        assert _owners(home) == {OWNER}
    finally:
        _reset(home, "adm_old_a", "adm_old_b")


def test_non_admin_member_of_the_meta_role_makes_the_registry_untrusted(
        home: Cluster) -> None:
    """A service role granted membership in the meta owner role could write the
    registry: the pools stop trusting it, check_meta and verify refuse it."""
    try:
        with home.connect() as conn:
            ensure_meta(conn, TOPOLOGY)
            conn.execute("INSERT INTO edulink_db_meta.service_location (service, location)"
                         " VALUES ('institution', 'host=evil port=1 dbname=x')")

        def trusted() -> Any:
            with psycopg.connect(**_service(home, INST.runtime_role), autocommit=True) as c:
                return c.execute(location.READ).fetchall()[0][4]

        assert trusted() is True
        with home.connect() as conn:
            conn.execute(sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(OWNER), sql.Identifier(INST.runtime_role)))
        assert trusted() is False
        with home.connect() as conn, pytest.raises(MoveError, match=INST.runtime_role):
            check_meta(conn)
        problems = [p for p in verify(_p(home), TOPOLOGY).problems if p.privilege == "MEMBER"]
        assert [p.role for p in problems] == [INST.runtime_role]
        with home.connect() as conn:
            conn.execute(sql.SQL("REVOKE {} FROM {}").format(
                sql.Identifier(OWNER), sql.Identifier(INST.runtime_role)))
        assert trusted() is True
    finally:
        _reset(home)


def test_change_of_admin_then_moved_table_error(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """Admin A prepares a move and aborts it; admin B (another Supabase-like admin)
    then moves the service.  After the move: no verify remark about edulink_db_meta, the
    registry unreadable by an anon-like role, and a plain-SQL read of the moved table on
    another service's own connection fails with MovedSchemaAccessError, while
    get_reader_connection follows the move."""
    a, b = _pair(root, "admins")
    try:
        _setup_source(a, monkeypatch, tmp_path)
        adm_a, adm_b = _admin(a, "adm_first"), _admin(a, "adm_second")
        real_copy = mover.copy

        def stop(_ctx: mover.MoveContext) -> None:
            raise RuntimeError("stopped after prepare")

        monkeypatch.setattr(mover, "copy", stop)
        ctx_a = _ctx(a, b)
        ctx_a.home, ctx_a.source = adm_a, adm_a
        with pytest.raises(RuntimeError, match="stopped after prepare"):
            run_move(ctx_a)
        monkeypatch.setattr(mover, "copy", real_copy)
        abort(ctx_a)
        assert _owners(a) == {OWNER}
        ctx_b = _ctx(a, b)
        ctx_b.home, ctx_b.source = adm_b, adm_b
        with psycopg.connect(**adm_a, autocommit=True) as conn:
            v16 = conn.info.server_version >= 160000
        if v16:
            # Only a holder of ADMIN OPTION on the role (A, who created it) or a
            # superuser can make B a member: the refusal says so, in one line.
            with pytest.raises(MoveError, match="adm_first") as info:
                run_move(ctx_b)
            grant = str(info.value).split(" run: ", 1)[1]
            assert grant.startswith('GRANT "edulink_db_meta_owner" TO "adm_second"')
            with psycopg.connect(**adm_a, autocommit=True) as conn:
                conn.execute(grant)
        run_move(ctx_b)  # PostgreSQL 15: B makes itself a member
        assert "seed500" in _codes(b)
        assert _leftovers(a) == [] and _leftovers(b) == []
        assert _owners(a) == {OWNER}
        report = verify(_p(a), TOPOLOGY)
        assert not [w for w in report.warnings if "edulink_db_meta" in w], report.warnings
        assert not [p.message for p in report.problems if p.schema == "edulink_db_meta"]
        assert not _can_read(_anon(a))
        assert _can_read(_service(a, TOPOLOGY.service("application").runtime_role))

        service_env(monkeypatch, _p(a))
        manager = ConnectionManager(load_settings())
        try:
            with pytest.raises(MovedSchemaAccessError) as moved, \
                    manager.get_connection("application") as conn:
                conn.execute("SELECT code FROM institution_schema.institutions_institution"
                             " LIMIT 1").fetchall()
            message = str(moved.value)
            print("\n" + message)
            assert "'institution' moved" in message and "get_reader_connection" in message
            assert location.location_string(_p(b)) in message
            assert isinstance(moved.value.__cause__, psycopg.errors.UndefinedTable)
            # The connection (and pool) stays usable.
            with manager.get_connection("application") as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            # A missing table of the service's own schema is still a plain 42P01.
            with pytest.raises(psycopg.errors.UndefinedTable), \
                    manager.get_connection("application") as conn:
                conn.execute("SELECT FROM application_schema.no_such_table")
            with manager.get_reader_connection("application", "institution") as conn:
                row = conn.execute("SELECT count(*) FROM institution_schema."
                                   "institutions_institution").fetchone()
            assert row is not None and row[0] >= 500
        finally:
            manager.close_all()
    finally:
        a.destroy()
        b.destroy()
