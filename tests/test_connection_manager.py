"""The connection manager: seed API, request context, round trips, faults."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg
import pytest

from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.core.errors import (
    PoolExhaustedError,
    RequestContextError,
    ServiceAuthenticationError,
    ServiceConnectionError,
    UnknownServiceError,
)
from microservices.shared.database.core.tracing import protocol_trace, round_trips


def test_seed_api_connects_as_the_service_role(provisioned_db: dict[str, Any],
                                               manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db)
    for name in ("user_service", "user"):
        with manager.get_connection(name) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT current_user, current_schemas(false)")
            assert cursor.fetchall() == [("user_service_role", ["user_schema",
                                                                 "shared_schema"])]
    assert manager.health_check("user_service") is True
    stats = manager.get_pool_stats("user_service")
    with psycopg.connect(**provisioned_db) as admin:
        limit = admin.execute("SELECT rolconnlimit FROM pg_roles"
                              " WHERE rolname = 'user_service_role'").fetchone()
    assert limit is not None and limit[0] > 0
    # Sized from the connection budget: 2 processes (the default) share the role's limit.
    assert stats["checked_out"] == 0 and stats["max_size"] == (limit[0] - 1) // 2
    with pytest.raises(UnknownServiceError, match="billing"):
        manager.get_connection("billing")


def test_plain_read_costs_one_round_trip(provisioned_db: dict[str, Any],
                                         manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db)
    with manager.get_connection("user") as conn:  # warm the pool
        conn.execute("SELECT 1")
    with manager.get_connection("user") as conn, protocol_trace(conn) as sent:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert round_trips(sent) == 1, sent
    # ... and returning it to the pool costs none (no RESET/ROLLBACK). The trace must
    # enclose the checkout (it is read when its own block ends), on a pool of one.
    one: ConnectionManager = manager_for(provisioned_db, EDULINK_DB_USER_POOL_SIZE="1",
                                         EDULINK_DB_USER_MAX_OVERFLOW="0")
    with one.get_connection("user") as conn:
        pass
    with protocol_trace(conn) as sent, one.get_connection("user") as same:
        assert same is conn
        same.execute("SELECT 1")
    assert round_trips(sent) == 1, sent


def test_user_context_costs_one_round_trip_per_statement(
    provisioned_db: dict[str, Any], manager_for: Any
) -> None:
    manager: ConnectionManager = manager_for(provisioned_db)
    with manager.get_connection("user", user_id="u3") as conn:
        with protocol_trace(conn) as sent:
            rows = conn.execute("SELECT owner_id FROM notes").fetchall()
        assert round_trips(sent) == 1, sent
        assert rows and {r[0] for r in rows} == {"u3"}


def test_user_context_applies_to_every_statement_and_nothing_after(
    provisioned_db: dict[str, Any], manager_for: Any
) -> None:
    manager: ConnectionManager = manager_for(provisioned_db, EDULINK_DB_USER_POOL_SIZE="1",
                                             EDULINK_DB_USER_MAX_OVERFLOW="0")
    with manager.get_connection("user", user_id="u1") as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (3,)
        with conn.cursor() as cur:  # a second statement, second cursor: still u1
            cur.execute("SELECT DISTINCT owner_id FROM notes")
            assert cur.fetchall() == [("u1",)]
        with conn.transaction():
            conn.execute("INSERT INTO notes (owner_id, body) VALUES ('u1', 'new')")
            assert conn.execute("SELECT count(*) FROM notes").fetchone() == (4,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # WITH CHECK
            conn.execute("INSERT INTO notes (owner_id, body) VALUES ('u2', 'forged')")
        conn.cursor().executemany("INSERT INTO notes (owner_id, body) VALUES (%s, %s)",
                                  [("u1", "a"), ("u1", "b")])
    # Same physical connection (pool of one), no user: sees nothing, setting gone.
    with manager.get_connection("user") as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
        assert conn.execute(
            "SELECT shared_schema.current_user_id()").fetchone() == (None,)


def test_readonly_checkout(provisioned_db: dict[str, Any], manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db)
    with manager.get_connection("user", user_id="u1", readonly=True) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (3,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO notes (owner_id, body) VALUES ('u1', 'x')")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), conn.transaction():
            conn.execute("UPDATE notes SET body = 'y'")
    with manager.get_connection("user", user_id="u1") as conn:  # read-write again
        conn.execute("UPDATE notes SET body = 'z' WHERE owner_id = 'u1'")


def test_copy_and_stream_with_context_need_a_transaction(
    provisioned_db: dict[str, Any], manager_for: Any
) -> None:
    manager: ConnectionManager = manager_for(provisioned_db)
    with manager.get_connection("user", user_id="u2") as conn:
        with pytest.raises(RequestContextError, match=r"conn\.transaction"):
            list(conn.cursor().stream("SELECT owner_id FROM notes"))
        with conn.transaction():
            assert {r[0] for r in conn.cursor().stream("SELECT owner_id FROM notes")} == {"u2"}
            with conn.cursor().copy("COPY (SELECT owner_id FROM notes) TO STDOUT") as copy:
                data = b"".join(bytes(chunk) for chunk in copy)
            assert set(data.decode().split()) == {"u2"}


def test_async_twin_has_the_same_semantics(provisioned_db: dict[str, Any],
                                           manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db)

    async def main() -> None:
        try:
            async with manager.get_async_connection("user", user_id="u4") as conn:
                cur = await conn.execute("SELECT DISTINCT owner_id FROM notes")
                assert await cur.fetchall() == [("u4",)]
                async with conn.transaction():
                    cur = await conn.execute("SELECT count(*) FROM notes")
                    assert await cur.fetchone() == (3,)
            async with manager.get_async_connection("user", readonly=True) as conn:
                cur = await conn.execute("SELECT count(*) FROM notes")
                assert await cur.fetchone() == (0,)
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    await conn.execute("INSERT INTO notes (owner_id, body) VALUES ('a', 'b')")
            results = await asyncio.gather(*[one(f"u{i % 10}") for i in range(40)])
            assert all(results)
        finally:
            await manager.aclose_all()

    async def one(user: str) -> bool:
        async with manager.get_async_connection("user", user_id=user) as conn:
            cur = await conn.execute("SELECT DISTINCT owner_id FROM notes")
            return await cur.fetchall() == [(user,)]

    asyncio.run(main())


def test_pool_exhaustion_names_the_service_and_numbers(
    provisioned_db: dict[str, Any], manager_for: Any
) -> None:
    manager: ConnectionManager = manager_for(
        provisioned_db, EDULINK_DB_USER_POOL_SIZE="1", EDULINK_DB_USER_MAX_OVERFLOW="1",
        EDULINK_DB_USER_POOL_TIMEOUT="0.5")
    with manager.get_connection("user"), manager.get_connection("user"), \
            pytest.raises(PoolExhaustedError) as exc, manager.get_connection("user"):
        pass
    message = str(exc.value)
    assert "'user' exhausted" in message and "2 checked out" in message
    assert "max 2" in message and "0.5s" in message


def test_wrong_password_is_a_clear_error_without_the_password(
    provisioned_db: dict[str, Any], manager_for: Any
) -> None:
    manager: ConnectionManager = manager_for(provisioned_db,
                                             EDULINK_DB_USER_PASSWORD="not-the-password")
    with pytest.raises(ServiceAuthenticationError, match="user_service_role") as exc, \
            manager.get_connection("user"):
        pass
    assert "not-the-password" not in str(exc.value)
    assert "EDULINK_DB_USER_PASSWORD" in str(exc.value)
    assert manager.health_check("user") is False


def test_server_down_is_a_clear_error(provisioned_db: dict[str, Any],
                                      manager_for: Any) -> None:
    manager: ConnectionManager = manager_for({**provisioned_db, "port": "1"})
    with pytest.raises(ServiceConnectionError, match="cannot reach") as exc, \
            manager.get_connection("user"):
        pass
    assert str(provisioned_db.get("password")) not in str(exc.value)


def test_pools_survive_a_server_restart(tmp_path: Any, manager_for: Any) -> None:
    """Requests made after the server is back succeed, without restarting the process."""
    from microservices.shared.database.server.embedded import EmbeddedServer
    from microservices.shared.database.topology import default_topology

    from .conftest import do_provision

    server = EmbeddedServer(tmp_path / ".edulink-db")
    info = server.start()
    try:
        admin = server.admin_params(info)
        do_provision(admin, default_topology())
        manager: ConnectionManager = manager_for(admin, EDULINK_DB_USER_POOL_SIZE="4")
        for _ in range(8):
            with manager.get_connection("user") as conn:
                conn.execute("SELECT 1")
        server.stop()
        assert server.start().port == info.port  # same data directory, same port
        for _ in range(20):
            with manager.get_connection("user") as conn:
                assert conn.execute("SELECT current_user").fetchone() == ("user_service_role",)
        assert int(manager.get_pool_stats("user")["connections_lost"]) >= 1
    finally:
        server.stop()


def test_pooler_mode_disables_prepared_statements(
    provisioned_db: dict[str, Any], manager_for: Any
) -> None:
    direct = manager_for(provisioned_db)
    pooled = manager_for(provisioned_db, DATABASE_POOLER="transaction")
    assert direct.get_pool_stats("user")["pooler"] == "none"
    with pooled.get_connection("user") as conn:
        assert conn.prepare_threshold is None
    supavisor = manager_for({**provisioned_db, "port": "6543"})
    assert supavisor.get_pool_stats("user")["pooler"] == "transaction"
    del os.environ["DATABASE_URL"]
