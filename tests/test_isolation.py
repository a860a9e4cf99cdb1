"""Isolation enforced by PostgreSQL: every runtime role, every schema, every operation."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.topology import Topology, default_topology

from .conftest import do_provision, service_params
from .probes import OPERATIONS, create_probe_tables, expected_operations, probe


def probe_matrix(admin: dict[str, Any], topology: Topology) -> dict[tuple[str, str], set[str]]:
    """(runtime role, schema) -> operations that really succeeded."""
    got: dict[tuple[str, str], set[str]] = {}
    for svc in topology.services:
        with psycopg.connect(**service_params(admin, svc), autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (svc.runtime_role,)
            for schema in topology.schemas:
                got[(svc.runtime_role, schema)] = {
                    op for op in OPERATIONS if probe(conn, op, schema, topology)}
    return got


def assert_matrix(admin: dict[str, Any], topology: Topology) -> None:
    got = probe_matrix(admin, topology)
    diffs = []
    for (role, schema), ops in sorted(got.items()):
        want = expected_operations(topology, role, schema)
        if ops != want:
            diffs.append(f"{role} on {schema}: allowed {sorted(ops)}, expected {sorted(want)}")
    assert not diffs, "\n".join(diffs)


def test_every_role_can_do_exactly_what_the_topology_grants(fresh_db: dict[str, Any]) -> None:
    topology = default_topology()
    do_provision(fresh_db, topology)
    create_probe_tables(fresh_db, topology)  # after provisioning: default privileges at work
    assert_matrix(fresh_db, topology)


def test_runtime_roles_cannot_do_ddl_anywhere(fresh_db: dict[str, Any]) -> None:
    topology = default_topology()
    do_provision(fresh_db, topology)
    create_probe_tables(fresh_db, topology)
    for svc in topology.services:
        with psycopg.connect(**service_params(fresh_db, svc), autocommit=True) as conn:
            for stmt in (
                "CREATE TABLE public.intruder (x int)",
                "CREATE SCHEMA intruder",
                sql.SQL("DROP TABLE {}.probe").format(sql.Identifier(svc.schema)),
                sql.SQL("CREATE INDEX ON {}.probe (v)").format(sql.Identifier(svc.schema)),
                sql.SQL("ALTER TABLE {}.probe DISABLE ROW LEVEL SECURITY").format(
                    sql.Identifier(svc.schema)),
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(stmt)
            # A non-owner's GRANT is only a WARNING ("no privileges were granted"): check
            # its effect instead.
            probe_table = sql.Identifier(svc.schema, "probe")
            conn.execute(sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(probe_table))
            assert conn.execute(
                "SELECT has_table_privilege('public', %s, 'SELECT')",
                [f"{svc.schema}.probe"]).fetchone() == (False,)


def test_runtime_roles_have_no_dangerous_attributes(fresh_db: dict[str, Any]) -> None:
    topology = default_topology()
    do_provision(fresh_db, topology)
    with psycopg.connect(**fresh_db) as conn:
        rows = conn.execute(
            "SELECT rolname, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolcanlogin"
            " FROM pg_roles WHERE rolname = ANY(%s)", [topology.runtime_roles]).fetchall()
    assert len(rows) == len(topology.services)
    for name, sup, bypass, crole, cdb, login in rows:
        assert (sup, bypass, crole, cdb, login) == (False, False, False, False, True), name


def test_rls_applies_to_runtime_roles_and_fails_closed(fresh_db: dict[str, Any]) -> None:
    """The runtime role is not the table owner, so RLS applies without FORCE."""
    topology = default_topology()
    do_provision(fresh_db, topology)
    user = topology.service("user")
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(user.owner_role)))
        conn.execute("CREATE TABLE user_schema.notes (owner_id text NOT NULL, body text)")
        conn.execute("ALTER TABLE user_schema.notes ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY own_notes ON user_schema.notes"
                     " USING (owner_id = shared_schema.current_user_id())"
                     " WITH CHECK (owner_id = shared_schema.current_user_id())")
        conn.execute("INSERT INTO user_schema.notes VALUES ('alice', 'a1'), ('bob', 'b1')")
    with psycopg.connect(**service_params(fresh_db, user), autocommit=True) as conn:
        # No user id set: the helper returns NULL and the policy matches nothing.
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
        with conn.transaction():
            conn.execute("SELECT set_config('app.current_user_id', 'alice', true)")
            assert conn.execute("SELECT body FROM notes").fetchall() == [("a1",)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute("INSERT INTO notes VALUES ('bob', 'forged')")
        # Transaction-scoped: after COMMIT the setting is '' and the helper NULL again.
        assert conn.execute("SELECT shared_schema.current_user_id()").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_audit_log_is_append_only_and_records_the_real_role(fresh_db: dict[str, Any]) -> None:
    topology = default_topology()
    do_provision(fresh_db, topology)
    svc = topology.service("application")
    with psycopg.connect(**service_params(fresh_db, svc), autocommit=True) as conn:
        conn.execute("INSERT INTO audit_log (service_name, action, resource_type, resource_id)"
                     " VALUES ('user', 'forged', 'x', '1')")  # claims to be another service
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO audit_log (service_name, action, resource_type, db_role)"
                         " VALUES ('user', 'forged', 'x', 'user_service_role')")
    with psycopg.connect(**fresh_db) as conn:
        row = conn.execute("SELECT service_name, db_role FROM shared_schema.audit_log").fetchone()
    assert row == ("user", svc.runtime_role)  # the database knows who really wrote it


def test_custom_seven_service_topology_end_to_end(
    fresh_db: dict[str, Any], unique_topology_7: Topology
) -> None:
    topology = unique_topology_7
    assert len(topology.services) == 7
    do_provision(fresh_db, topology)
    create_probe_tables(fresh_db, topology)
    assert_matrix(fresh_db, topology)
    from microservices.shared.database.privileges.verify import verify

    assert verify(fresh_db, topology).ok
