"""Red team: a hostile service (its runtime role) against the others (issue 11)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.topology import Topology, parse_topology

from .conftest import do_provision, drop_roles, service_params, unique_topology_text


@pytest.fixture
def world(fresh_db: dict[str, Any], server: dict[str, Any]) -> Iterator[Topology]:
    topology = parse_topology(unique_topology_text(services=2), source="runtime attacks")
    try:
        do_provision(fresh_db, topology)
        yield topology
    finally:
        drop_roles(server, topology.runtime_roles + topology.owner_roles
                   + topology.migrator_roles)


REFUSED = [
    ("read-audit-log", "SELECT * FROM {audit}"),
    ("rewrite-audit-log", "UPDATE {audit} SET action = 'nothing happened'"),
    ("forge-audit-db-role",
     "INSERT INTO {audit} (service_name, action, resource_type, db_role)"
     " VALUES ('x', 'y', 'z', 'postgres')"),
    ("read-other-schema", "SELECT * FROM {other_history}"),
    ("own-connection-limit", "ALTER ROLE {me} CONNECTION LIMIT -1"),
    ("forge-marker", "COMMENT ON ROLE {me} IS 'edulink-db managed: forged'"),
    ("grant-self-to-other", "GRANT {me} TO {other}"),
    ("ddl-in-own-schema", "CREATE TABLE {my_schema}.planted (x int)"),
]


@pytest.mark.parametrize("statement", [s for _i, s in REFUSED], ids=[i for i, _s in REFUSED])
def test_runtime_role_is_refused(world: Topology, fresh_db: dict[str, Any],
                                 statement: str) -> None:
    me, other = world.services
    names = {"audit": sql.Identifier(world.shared.schema, world.shared.audit_table),
             "other_history": sql.Identifier(other.schema, "edulink_schema_history"),
             "me": sql.Identifier(me.runtime_role), "other": sql.Identifier(other.runtime_role),
             "my_schema": sql.Identifier(me.schema)}
    with psycopg.connect(**service_params(fresh_db, me), autocommit=True) as conn, \
            pytest.raises((psycopg.errors.InsufficientPrivilege,
                           psycopg.errors.UndefinedTable)):
        conn.execute(sql.SQL(statement).format(**names))


def test_own_role_settings_changed_by_the_service_are_reported(
        world: Topology, fresh_db: dict[str, Any]) -> None:
    """PostgreSQL lets any role change its own role-level settings (it could as well
    SET them per session); what it leaves behind for the next login is drift that
    verify names and provision undoes."""
    me = world.services[0]
    with psycopg.connect(**service_params(fresh_db, me), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} SET search_path = pg_temp").format(
            sql.Identifier(me.runtime_role)))
        conn.execute(sql.SQL("ALTER ROLE {} SET statement_timeout = 0").format(
            sql.Identifier(me.runtime_role)))
    found = {p.privilege for p in verify(fresh_db, world).problems if p.role == me.runtime_role}
    assert {"search_path", "statement_timeout"} <= found
    do_provision(fresh_db, world)
    assert verify(fresh_db, world).ok
