"""Provisioning: idempotent, transactional, concurrent-safe, and superuser-free."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.core.errors import ProvisioningError
from microservices.shared.database.privileges.catalog import read_catalog
from microservices.shared.database.privileges.provisioning import provision
from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.topology import Topology, default_topology

from .conftest import SERVICE_PASSWORD, do_provision, service_params
from .probes import create_probe_tables
from .test_isolation import assert_matrix


def test_second_run_changes_nothing(fresh_db: dict[str, Any]) -> None:
    topology = default_topology()
    first = do_provision(fresh_db, topology)
    assert first.changed
    with psycopg.connect(**fresh_db) as conn:
        before = read_catalog(conn, topology)
    second = do_provision(fresh_db, topology)
    with psycopg.connect(**fresh_db) as conn:
        after = read_catalog(conn, topology)
    assert not second.changed
    assert second.created_roles == [] and second.passwords_set == []
    assert before == after


def test_tables_created_later_are_covered(fresh_db: dict[str, Any]) -> None:
    topology = default_topology()
    do_provision(fresh_db, topology)
    create_probe_tables(fresh_db, topology)
    report = verify(fresh_db, topology)
    assert report.ok, report.problems


def test_createrole_only_admin_provisions_and_verifies(
    createrole_admin: dict[str, Any], unique_topology: Topology
) -> None:
    """Supabase's postgres user is CREATEROLE, not superuser: that must be enough."""
    with psycopg.connect(**createrole_admin) as conn:
        row = conn.execute("SELECT rolsuper, rolcreaterole FROM pg_roles"
                           " WHERE rolname = current_user").fetchone()
    assert row == (False, True)
    report = do_provision(createrole_admin, unique_topology)
    assert report.changed
    assert not do_provision(createrole_admin, unique_topology).changed
    create_probe_tables(createrole_admin, unique_topology)
    assert_matrix(createrole_admin, unique_topology)
    result = verify(createrole_admin, unique_topology)
    assert result.ok, result.problems


def test_admin_without_createrole_is_refused_clearly(fresh_db: dict[str, Any]) -> None:
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        conn.execute("CREATE ROLE edulink_weak_admin LOGIN PASSWORD 'weak-pw'")
    try:
        weak = {**fresh_db, "user": "edulink_weak_admin", "password": "weak-pw"}
        with pytest.raises(ProvisioningError, match="needs CREATEROLE") as exc:
            do_provision(weak, default_topology())
        assert "weak-pw" not in str(exc.value)
    finally:
        with psycopg.connect(**fresh_db, autocommit=True) as conn:
            conn.execute("DROP ROLE edulink_weak_admin")


def test_failure_midway_rolls_everything_back(
    createrole_admin: dict[str, Any], unique_topology: Topology, server: dict[str, Any]
) -> None:
    """A schema that exists, owned by a role the admin cannot act as, stops provisioning
    halfway; nothing that came before it may remain."""
    blocked = unique_topology.services[-1].schema
    superuser_db = {**server, "dbname": createrole_admin["dbname"]}
    with psycopg.connect(**superuser_db, autocommit=True) as conn:
        # Owned by the superuser, whom the CREATEROLE admin cannot act as.
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(blocked)))
    with pytest.raises(ProvisioningError) as exc:
        do_provision(createrole_admin, unique_topology)
    message = str(exc.value)
    assert blocked in message and "rolled back" in message
    with psycopg.connect(**superuser_db) as conn:
        roles = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
                             [unique_topology.runtime_roles + unique_topology.owner_roles
                              + unique_topology.migrator_roles]
                             ).fetchone()
        schemas = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = ANY(%s)",
                               [unique_topology.schemas]).fetchone()
    assert roles == (0,)
    assert schemas == (1,)  # only the one we made by hand
    # Fix the cause; the next run completes.
    with psycopg.connect(**superuser_db, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(blocked)))
    assert do_provision(createrole_admin, unique_topology).changed
    assert verify(createrole_admin, unique_topology).ok


def test_pg16_roles_created_by_someone_else_get_a_clear_error(
    createrole_admin: dict[str, Any], server_version: int, fresh_db: dict[str, Any]
) -> None:
    """On PostgreSQL 16+ CREATEROLE no longer covers roles another admin created."""
    topology = default_topology()
    do_provision(fresh_db, topology)  # the roles now exist, created by the superuser
    if server_version < 160000:
        report = do_provision(createrole_admin, topology)  # PostgreSQL 15: allowed
        assert verify(createrole_admin, topology).ok, report
        return
    with pytest.raises(ProvisioningError, match="ADMIN OPTION"):
        do_provision(createrole_admin, topology)


def test_concurrent_runs_serialise(fresh_db: dict[str, Any]) -> None:
    topology = default_topology()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            do_provision(fresh_db, topology)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert verify(fresh_db, topology).ok


def test_passwords_are_set_without_clear_text_and_repaired_when_rejected(
    fresh_db: dict[str, Any],
) -> None:
    topology = default_topology()
    do_provision(fresh_db, topology)
    svc = topology.service("user")
    with psycopg.connect(**service_params(fresh_db, svc)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (svc.runtime_role,)
    # Someone changes the password by hand: the configured one stops working.
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD 'changed-by-hand'").format(
            sql.Identifier(svc.runtime_role)))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**service_params(fresh_db, svc)).close()
    report = do_provision(fresh_db, topology)
    assert report.passwords_set == [svc.runtime_role]
    with psycopg.connect(**service_params(fresh_db, svc)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_rotation_sets_a_new_password(fresh_db: dict[str, Any]) -> None:
    topology = default_topology()
    do_provision(fresh_db, topology)
    svc = topology.service("auth")
    new = "rotated-" + SERVICE_PASSWORD
    try:
        report = provision(fresh_db, topology,
                           lambda s: new if s.name == "auth" else SERVICE_PASSWORD,
                           rotate=["auth"])
        assert report.passwords_set == [svc.runtime_role]
        params = {**service_params(fresh_db, svc), "password": new}
        with psycopg.connect(**params) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (svc.runtime_role,)
    finally:
        do_provision(fresh_db, topology, rotate=["auth"])  # restore the shared test password


def test_provision_removes_privileges_the_topology_does_not_declare(
    fresh_db: dict[str, Any],
) -> None:
    """Drift (grants made by hand, or left by an older topology) is repaired by provision."""
    topology = default_topology()
    do_provision(fresh_db, topology)
    create_probe_tables(fresh_db, topology)
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        for stmt in (
            "GRANT USAGE ON SCHEMA auth_schema TO internship_service_role",
            "GRANT SELECT, TRUNCATE ON auth_schema.probe TO internship_service_role",
            "GRANT CREATE ON SCHEMA user_schema TO user_service_role",
            "GRANT SELECT ON user_schema.probe TO PUBLIC",
            "ALTER DEFAULT PRIVILEGES FOR ROLE auth_service_owner IN SCHEMA auth_schema"
            " GRANT SELECT ON TABLES TO institution_service_role",
            "GRANT auth_service_owner TO auth_service_role",
            "ALTER ROLE auth_service_role SET statement_timeout = '1h'",
        ):
            conn.execute(stmt)
    assert not verify(fresh_db, topology).ok
    report = do_provision(fresh_db, topology)
    assert report.changed and not report.unrepaired
    assert len(report.repaired) >= 7
    result = verify(fresh_db, topology)
    assert result.ok, result.problems
    assert not do_provision(fresh_db, topology).repaired  # nothing left to do


def test_repairs_the_admin_cannot_make_are_reported_not_fatal(
    createrole_admin: dict[str, Any], unique_topology: Topology, server: dict[str, Any]
) -> None:
    do_provision(createrole_admin, unique_topology)
    victim = unique_topology.services[0].runtime_role
    with psycopg.connect(**{**server, "dbname": createrole_admin["dbname"]},
                         autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(victim)))
    report = do_provision(createrole_admin, unique_topology)
    assert any("NOBYPASSRLS" in item for item in report.unrepaired)
    problems = verify(createrole_admin, unique_topology).problems
    assert [(p.role, p.privilege) for p in problems] == [(victim, "BYPASSRLS")]
