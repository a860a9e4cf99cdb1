"""The location registry under attack: who may own it, who may write it, what a
located connection accepts, and what reading it costs in connections."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.config import load_settings
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.connections import location
from microservices.shared.database.core.errors import MoveError
from microservices.shared.database.relocation import MoveContext, run_move
from microservices.shared.database.relocation.meta import check_meta, ensure_meta
from microservices.shared.database.topology import default_topology

from .clusters import Cluster
from .conftest import SERVICE_PASSWORD, do_provision, reachable_tempdir, service_env

TOPOLOGY = default_topology()
INST = TOPOLOGY.service("institution")
SETTINGS = {"max_slot_wal_keep_size": "1GB"}
MALLORY_PW = "mallory-pw-1"


def _p(c: Cluster) -> dict[str, Any]:
    return {k: v for k, v in c.params.items() if k != "connect_timeout"}


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Cluster, Cluster]]:
    root = reachable_tempdir("edulink-movereg-")
    a = Cluster.create(root, "a", settings=SETTINGS)
    b = Cluster.create(root, "b", settings=SETTINGS)
    try:
        do_provision(_p(a), TOPOLOGY)
        with a.connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE mallory LOGIN PASSWORD {}").format(
                sql.Literal(MALLORY_PW)))
            conn.execute("GRANT CREATE ON DATABASE postgres TO mallory")
        yield a, b
    finally:
        a.destroy()
        b.destroy()
        shutil.rmtree(root, ignore_errors=True)


def _ctx(a: Cluster, b: Cluster) -> MoveContext:
    return MoveContext(topology=TOPOLOGY, service=INST, home=_p(a), source=_p(a),
                       target=_p(b), passwords=lambda _s: SERVICE_PASSWORD,
                       migrator_passwords=lambda _s: SERVICE_PASSWORD)


def _drop_meta(a: Cluster) -> None:
    with a.connect() as conn:
        conn.execute("DROP SCHEMA IF EXISTS edulink_db_meta CASCADE")


def _leftovers(c: Cluster) -> list[Any]:
    with c.connect() as conn:
        return [*conn.execute("SELECT slot_name FROM pg_replication_slots"),
                *conn.execute("SELECT pubname FROM pg_publication"),
                *conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'edulink_move%'")]


@pytest.mark.parametrize("what", ["schema", "table"])
def test_meta_created_by_someone_else_is_refused(
        pair: tuple[Cluster, Cluster], monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    """mallory (CREATE on the database, nothing else) creates the registry first, with a
    row that sends institution's pools to a server of her choice.  The move refuses to
    adopt it, and the pools ignore it."""
    a, b = pair
    _drop_meta(a)
    try:
        with psycopg.connect(**{**_p(a), "user": "mallory", "password": MALLORY_PW},
                             autocommit=True) as evil:
            if what == "table":  # the admin made the schema, mallory got CREATE on it
                with a.connect() as conn:
                    conn.execute("CREATE SCHEMA edulink_db_meta")
                    conn.execute("GRANT USAGE, CREATE ON SCHEMA edulink_db_meta TO mallory")
            else:
                evil.execute("CREATE SCHEMA edulink_db_meta")
            evil.execute("CREATE TABLE edulink_db_meta.service_location (service text PRIMARY"
                         " KEY, location text, epoch bigint NOT NULL DEFAULT 0, frozen_until"
                         " timestamptz, moved_at timestamptz)")
            evil.execute("GRANT USAGE ON SCHEMA edulink_db_meta TO PUBLIC")
            evil.execute("GRANT SELECT ON edulink_db_meta.service_location TO PUBLIC")
            evil.execute("INSERT INTO edulink_db_meta.service_location VALUES"
                         " ('institution', %s, 1, NULL, now())",
                         [location.location_string(_p(b))])
        with pytest.raises(MoveError, match="mallory") as info:
            run_move(_ctx(a, b))
        assert "Refusing to use edulink_db_meta" in str(info.value)
        assert _leftovers(a) == [] and _leftovers(b) == []
        with a.connect() as conn, pytest.raises(MoveError, match="mallory"):
            ensure_meta(conn)
        # The pools do not follow it: institution keeps working at home.
        service_env(monkeypatch, _p(a))
        manager = ConnectionManager(load_settings())
        try:
            with manager.get_connection("institution") as conn:
                row = conn.execute("SELECT current_setting('port')").fetchone()
            assert row == (str(a.port),)
            assert manager.location_of("institution") is None
        finally:
            manager.close_all()
    finally:
        _drop_meta(a)


def test_meta_writable_by_others_is_refused(pair: tuple[Cluster, Cluster]) -> None:
    a, _ = pair
    _drop_meta(a)
    try:
        with a.connect() as conn:
            ensure_meta(conn)
            check_meta(conn)
            conn.execute("GRANT UPDATE ON edulink_db_meta.service_location TO"
                         " institution_service_role")
            with pytest.raises(MoveError, match="UPDATE to institution_service_role"):
                check_meta(conn)
    finally:
        _drop_meta(a)


def test_no_service_role_can_write_the_registry_or_journal(pair: tuple[Cluster, Cluster]
                                                           ) -> None:
    a, _ = pair
    _drop_meta(a)
    roles = TOPOLOGY.runtime_roles + TOPOLOGY.owner_roles + TOPOLOGY.migrator_roles
    try:
        with a.connect() as conn:
            ensure_meta(conn)
            conn.execute("INSERT INTO edulink_db_meta.service_location (service) VALUES ('x')")
            conn.execute("INSERT INTO edulink_db_meta.service_move (service, target, phase)"
                         " VALUES ('x', 'y', 'copy')")
        for role in roles:
            with a.connect() as conn:
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
                # Reading the registry is what every pool (and Django's migrate) does.
                conn.execute("SELECT * FROM edulink_db_meta.service_location").fetchall()
                for table in ("service_location", "service_move"):
                    name = sql.Identifier("edulink_db_meta", table)
                    for stmt in (sql.SQL("INSERT INTO {} (service) VALUES ('institution')"),
                                 sql.SQL("UPDATE {} SET service = 'institution'"),
                                 sql.SQL("DELETE FROM {}"), sql.SQL("TRUNCATE {}")):
                        with pytest.raises(psycopg.errors.InsufficientPrivilege):
                            conn.execute(stmt.format(name))
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("SELECT * FROM edulink_db_meta.service_move")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("CREATE TABLE edulink_db_meta.x (i int)")
    finally:
        _drop_meta(a)


def test_located_connection_refuses_cleartext_password(pair: tuple[Cluster, Cluster]) -> None:
    """A location whose pg_hba.conf says `password` would get the service's password in
    clear text; the located parameters insist on SCRAM."""
    a, b = pair
    hba = b.pgdata / "pg_hba.conf"
    before = hba.read_text()
    role = "cleartext_victim"
    with b.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(SERVICE_PASSWORD)))
    try:
        hba.write_text(f"host all {role} 127.0.0.1/32 password\n" + before)
        with b.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.3)
        home = {**_p(a), "user": role, "password": SERVICE_PASSWORD}
        where = location.location_string(_p(b))
        params = location.located_params(home, where)
        assert params["require_auth"] == "scram-sha-256"
        with pytest.raises(psycopg.OperationalError, match=r"require_auth|cleartext|password"):
            psycopg.connect(**params, connect_timeout=5).close()
        # The same server does log the role in when the client allows cleartext: the
        # refusal above is require_auth's doing (and a home conninfo may choose so).
        allowed = location.located_params({**home, "require_auth": "password"}, where)
        psycopg.connect(**allowed, connect_timeout=5).close()
    finally:
        hba.write_text(before)
        with b.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_registry_is_read_through_the_service_pool(pair: tuple[Cluster, Cluster],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the registry opens no connection besides the pool's own: the role's
    CONNECTION LIMIT budget (privileges/model.py) is unchanged."""
    a, _ = pair
    _drop_meta(a)
    try:
        with a.connect() as conn:
            ensure_meta(conn)  # a registry exists: every refresh runs a query
        service_env(monkeypatch, _p(a), extra={"EDULINK_DB_INSTITUTION_POOL_SIZE": "1",
                                               "EDULINK_DB_INSTITUTION_MAX_OVERFLOW": "0"})
        manager = ConnectionManager(load_settings())
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # many registry refreshes (TTL_S apart)
                with manager.get_connection("institution") as conn:
                    conn.execute("SELECT 1")
                time.sleep(location.TTL_S / 2)
            with a.connect() as admin:
                backends = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                    [INST.runtime_role]).fetchone()
            assert backends == (1,)
        finally:
            manager.close_all()
    finally:
        _drop_meta(a)
