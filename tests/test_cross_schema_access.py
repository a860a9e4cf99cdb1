"""Cross-service helpers over the reference schema: checked in Python, enforced by PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.config import load_settings
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.core.errors import CrossServiceAccessError
from microservices.shared.database.core.tracing import protocol_trace, round_trips
from microservices.shared.database.cross_schema_access import CrossSchemaAccessManager
from microservices.shared.database.migrations.manager import MigrationManager
from microservices.shared.database.topology import default_topology, default_topology_text

from .conftest import do_provision, service_env, service_params

USER_ID = str(uuid.uuid4())
INSTITUTION_ID = str(uuid.uuid4())


@pytest.fixture
def reference_db(fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    do_provision(fresh_db, default_topology())
    service_env(monkeypatch, fresh_db)
    MigrationManager(load_settings()).run_all_migrations()
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO auth_schema.authentication_user (id, email, password_hash)"
                     " VALUES (%s, 'ada@example.edu', 'x')", [USER_ID])
        conn.execute("INSERT INTO user_schema.profiles_userprofile (user_id, first_name,"
                     " last_name) VALUES (%s, 'Ada', 'Lovelace')", [USER_ID])
        conn.execute("INSERT INTO institution_schema.institutions_institution (id, code, name)"
                     " VALUES (%s, 'UON', 'University of Nairobi')", [INSTITUTION_ID])
        conn.execute("INSERT INTO institution_schema.institutions_program (institution_id,"
                     " code, name) VALUES (%s, 'CS', 'Computer Science'),"
                     " (%s, 'EE', 'Electrical Engineering')", [INSTITUTION_ID] * 2)
    return fresh_db


@pytest.fixture
def manager(reference_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    # Pools of one connection: the round-trip tests trace the connection the helper uses.
    monkeypatch.setenv("DATABASE_POOL_SIZE", "1")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "0")
    connections = ConnectionManager(load_settings())
    yield CrossSchemaAccessManager(connections)
    connections.close_all()


def test_validate_access_is_answered_from_the_topology(manager: CrossSchemaAccessManager
                                                       ) -> None:
    assert manager.validate_access("user", "auth_schema", "read_only")
    assert not manager.validate_access("user", "auth_schema", "read_write")
    assert manager.validate_access("user_service", "user_schema", "read_write")
    assert not manager.validate_access("auth", "user_schema", "read_only")
    assert manager.validate_access("notification", "internship_schema", "read_only")
    assert not manager.validate_access("user", "shared_schema", "read_write")
    assert not manager.validate_access("user", "nonexistent_schema", "read_only")
    with pytest.raises(ValueError, match="level"):
        manager.validate_access("user", "auth_schema", "admin")


def test_profile_with_auth_in_one_round_trip(manager: CrossSchemaAccessManager) -> None:
    connections = manager.connections
    with connections.get_connection("application") as conn:
        pass  # now the pool has a connection to trace
    with protocol_trace(conn) as sent:
        profile = manager.get_user_profile_with_auth(USER_ID, "application_service")
    assert profile is not None
    assert (profile["first_name"], profile["auth"]["email"]) == ("Ada", "ada@example.edu")
    assert round_trips(sent) == 1, sent
    assert manager.get_user_profile_with_auth("123", "application_service") is None


def test_institution_details_in_one_round_trip(manager: CrossSchemaAccessManager) -> None:
    with manager.connections.get_connection("user") as conn:
        pass
    with protocol_trace(conn) as sent:
        inst = manager.get_institution_details(INSTITUTION_ID, "user_service")
    assert inst is not None and inst["name"] == "University of Nairobi"
    assert [p["code"] for p in inst["programs"]] == ["CS", "EE"]
    assert round_trips(sent) == 1
    assert manager.get_institution_details(str(uuid.uuid4()), "user") is None


def test_denial_names_service_schema_and_level_before_any_sql(
    manager: CrossSchemaAccessManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://x:y@127.0.0.1:1/nowhere")  # no SQL possible
    blind = CrossSchemaAccessManager(ConnectionManager(load_settings()))
    with pytest.raises(CrossServiceAccessError) as exc:
        blind.get_user_profile_with_auth(USER_ID, "institution_service")
    assert "'institution'" in str(exc.value) and "user_schema" in str(exc.value)
    assert "read_only" in str(exc.value)
    with pytest.raises(CrossServiceAccessError, match="'auth' has no read_only access"):
        blind.get_institution_details(INSTITUTION_ID, "auth")


def test_postgres_refuses_even_if_python_is_told_otherwise(
    reference_db: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topology file that 'grants' institution -> auth does not change the database."""
    lying = tmp_path / "topology.toml"
    lying.write_text(default_topology_text().replace(
        '[services.institution]\nreads = []', '[services.institution]\nreads = ["auth", "user"]'))
    monkeypatch.setenv("EDULINK_DB_TOPOLOGY", str(lying))
    connections = ConnectionManager(load_settings())
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            CrossSchemaAccessManager(connections).get_user_profile_with_auth(
                USER_ID, "institution")
    finally:
        connections.close_all()


def test_audit_log_append_only_with_trail(manager: CrossSchemaAccessManager,
                                          reference_db: dict[str, Any]) -> None:
    manager.create_audit_log("user_service", "profile_updated", "user_profile", USER_ID,
                             USER_ID, details={"fields": ["bio"]})
    manager.create_audit_log("application", "application_viewed", "user_profile", USER_ID,
                             None)
    trail = manager.get_audit_trail("user_profile", USER_ID)
    assert [(t["service_name"], t["db_role"], t["action"]) for t in trail] == [
        ("user", "user_service_role", "profile_updated"),
        ("application", "application_service_role", "application_viewed")]
    assert trail[0]["details"] == {"fields": ["bio"]}
    for svc in default_topology().services:
        with psycopg.connect(**service_params(reference_db, svc), autocommit=True) as conn:
            for stmt in ("UPDATE shared_schema.audit_log SET action = 'x'",
                         "DELETE FROM shared_schema.audit_log",
                         "TRUNCATE shared_schema.audit_log",
                         "SELECT count(*) FROM shared_schema.audit_log"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(stmt)
    assert len(manager.get_audit_trail("user_profile", USER_ID)) == 2


def test_optional_cache_with_explicit_invalidation(reference_db: dict[str, Any]) -> None:
    connections = ConnectionManager(load_settings())
    cached = CrossSchemaAccessManager(connections, cache_ttl=60)
    try:
        assert cached.get_institution_details(INSTITUTION_ID, "user")["name"] == (  # type: ignore[index]
            "University of Nairobi")
        with psycopg.connect(**reference_db, autocommit=True) as conn:
            conn.execute("UPDATE institution_schema.institutions_institution SET name = 'UoN'")
        assert cached.get_institution_details(INSTITUTION_ID, "user")["name"] == (  # type: ignore[index]
            "University of Nairobi")  # served from the cache
        cached.invalidate("institution", INSTITUTION_ID)
        assert cached.get_institution_details(INSTITUTION_ID, "user")["name"] == "UoN"  # type: ignore[index]
    finally:
        connections.close_all()
