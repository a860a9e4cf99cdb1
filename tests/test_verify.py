"""verify reads what PostgreSQL grants and names every difference from the topology."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.topology import Topology, default_topology

from .conftest import do_provision
from .probes import create_probe_tables


@pytest.fixture
def provisioned(fresh_db: dict[str, Any]) -> dict[str, Any]:
    topology = default_topology()
    do_provision(fresh_db, topology)
    create_probe_tables(fresh_db, topology)
    return fresh_db


def _run(admin: dict[str, Any], statement: str) -> None:
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(statement)


CASES = [
    # (hand-made change, role, schema, privilege that verify must name)
    ("GRANT SELECT ON auth_schema.probe TO institution_service_role",
     "institution_service_role", "auth_schema", "SELECT"),
    ("GRANT SELECT ON notification_schema.probe TO user_service_role",
     "user_service_role", "notification_schema", "SELECT"),
    ("GRANT INSERT ON auth_schema.probe TO user_service_role",
     "user_service_role", "auth_schema", "INSERT"),
    ("GRANT TRUNCATE ON user_schema.probe TO user_service_role",
     "user_service_role", "user_schema", "TRUNCATE"),
    ("GRANT USAGE ON SCHEMA auth_schema TO internship_service_role",
     "internship_service_role", "auth_schema", "USAGE"),
    ("GRANT CREATE ON SCHEMA user_schema TO user_service_role",
     "user_service_role", "user_schema", "CREATE"),
    ("GRANT USAGE ON SCHEMA auth_schema TO PUBLIC", "PUBLIC", "auth_schema", "USAGE"),
    ("GRANT SELECT ON user_schema.probe TO PUBLIC", "PUBLIC", "user_schema", "SELECT"),
    ("GRANT SELECT (v) ON auth_schema.probe TO user_service_role",
     "user_service_role", "auth_schema", "SELECT (v)"),
    ("GRANT SELECT (id) ON shared_schema.audit_log TO user_service_role",
     "user_service_role", "shared_schema", "SELECT (id)"),
    ("GRANT USAGE ON SCHEMA internship_schema TO application_service_role",
     "application_service_role", "internship_schema", "USAGE"),
    ("GRANT UPDATE ON shared_schema.audit_log TO auth_service_role",
     "auth_service_role", "shared_schema", "UPDATE"),
    ("ALTER DEFAULT PRIVILEGES FOR ROLE auth_service_owner IN SCHEMA auth_schema "
     "GRANT SELECT ON TABLES TO institution_service_role",
     "institution_service_role", "auth_schema", "SELECT"),
    ("ALTER DEFAULT PRIVILEGES FOR ROLE user_service_owner IN SCHEMA user_schema "
     "REVOKE DELETE ON TABLES FROM user_service_role",
     "user_service_role", "user_schema", "DELETE"),
    ("ALTER ROLE notification_service_role BYPASSRLS", "notification_service_role", "",
     "BYPASSRLS"),
    ("GRANT auth_service_owner TO auth_service_role", "auth_service_role", "",
     "MEMBER OF auth_service_owner"),
    ("GRANT pg_read_all_data TO institution_service_role", "institution_service_role", "",
     "MEMBER OF pg_read_all_data"),
    ("ALTER ROLE user_service_role SET search_path = public, user_schema",
     "user_service_role", "user_schema", "search_path"),
    ("ALTER TABLE application_schema.probe OWNER TO application_service_role",
     "application_service_role", "application_schema", "OWNER"),
    ("ALTER ROLE auth_service_role SET statement_timeout = '1h'",
     "auth_service_role", "", "statement_timeout"),
    ("ALTER ROLE auth_service_role SET lock_timeout = '1s'",
     "auth_service_role", "", "lock_timeout"),
]


@pytest.mark.parametrize(("change", "role", "schema", "privilege"), CASES,
                         ids=[c[0][:60] for c in CASES])
def test_hand_made_change_is_named(
    provisioned: dict[str, Any], change: str, role: str, schema: str, privilege: str
) -> None:
    topology = default_topology()
    assert verify(provisioned, topology).ok
    _run(provisioned, change)
    try:
        report = verify(provisioned, topology)
        assert not report.ok
        named = [(p.role, p.schema, p.privilege) for p in report.problems]
        assert (role, schema, privilege) in named, report.problems
    finally:
        # Cluster-wide changes must not leak into other tests.
        for undo in (
            "ALTER ROLE notification_service_role NOBYPASSRLS",
            "REVOKE auth_service_owner FROM auth_service_role",
            "REVOKE pg_read_all_data FROM institution_service_role",
            "ALTER ROLE user_service_role SET search_path = user_schema, shared_schema",
            "ALTER ROLE auth_service_role SET statement_timeout = '30s'",
            "ALTER ROLE auth_service_role RESET lock_timeout",
        ):
            _run(provisioned, undo)


def test_matrix_for_the_default_topology(provisioned: dict[str, Any]) -> None:
    report = verify(provisioned, default_topology())
    # Readers hold USAGE, and column grants once the exposed tables exist (none here:
    # no migrations ran; see test_exposure.py).  Services exposing nothing give nothing.
    assert report.matrix["user_service_role"] == {
        "auth_schema": "usage", "user_schema": "rw", "institution_schema": "usage",
        "notification_schema": "-", "application_schema": "-", "internship_schema": "-",
        "shared_schema": "append",
    }
    assert report.matrix["notification_service_role"]["internship_schema"] == "-"
    assert set(report.matrix["notification_service_role"].values()) == {
        "usage", "rw", "append", "-"}


def test_catalog_is_read_in_a_constant_number_of_queries(
    provisioned: dict[str, Any], fresh_db: dict[str, Any], unique_topology_7: Topology
) -> None:
    six = verify(provisioned, default_topology()).catalog_queries
    do_provision(provisioned, unique_topology_7)
    create_probe_tables(provisioned, unique_topology_7)
    seven = verify(provisioned, unique_topology_7)
    assert seven.ok, seven.problems
    assert seven.catalog_queries == six


def test_missing_provisioning_is_reported_not_crashed(fresh_db: dict[str, Any]) -> None:
    topo = default_topology()
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        for schema in topo.schemas:  # roles may exist cluster-wide; the schemas do not
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))
    report = verify(fresh_db, topo)
    assert not report.ok
    assert any("does not exist" in p.message for p in report.problems)
