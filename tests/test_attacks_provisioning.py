"""Red team: a careless operator and hostile neighbours of provisioning (issue 11)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.core.errors import ForeignRoleError
from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.topology import Topology, parse_topology

from .conftest import do_provision, drop_roles, unique_topology_text

# BREAK (fixed in verify.py): verify compared the memberships of runtime and migrator
# roles, not of owner roles.  Every migration runs as the owner, so a membership
# granted to it by hand handed every migration file that power, unreported.
POWERS = ["pg_read_all_data", "pg_execute_server_program", "pg_write_server_files",
          "pg_signal_backend", "{other_runtime}"]


@pytest.mark.parametrize("granted", POWERS)
def test_owner_membership_is_reported_and_revoked(fresh_db: dict[str, Any],
                                                  server: dict[str, Any], granted: str) -> None:
    topology = parse_topology(unique_topology_text(services=2), source="owner membership")
    me, other = topology.services
    name = granted.format(other_runtime=other.runtime_role)
    try:
        do_provision(fresh_db, topology)
        with psycopg.connect(**fresh_db, autocommit=True) as conn:
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(name),
                                                          sql.Identifier(me.owner_role)))
        found = [p for p in verify(fresh_db, topology).problems if p.role == me.owner_role]
        assert [p.privilege for p in found] == [f"MEMBER OF {name}"]
        assert do_provision(fresh_db, topology).repaired
        assert verify(fresh_db, topology).ok
    finally:
        drop_roles(server, topology.runtime_roles + topology.owner_roles
                   + topology.migrator_roles)


def test_service_roles_cannot_forge_the_marker(createrole_admin: dict[str, Any],
                                               server: dict[str, Any],
                                               unique_topology: Topology) -> None:
    """Regression: the mark is a role comment; no role edulink-db creates may write one
    (NOCREATEROLE), so none can mark a foreign role for takeover, on 15 or 16+."""
    from .conftest import migrator_params, service_params

    victim = f"victim_{unique_topology.services[0].name}"
    with psycopg.connect(**server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(victim)))
    try:
        do_provision(createrole_admin, unique_topology)
        svc = unique_topology.services[0]
        for params in (service_params(createrole_admin, svc),
                       migrator_params(createrole_admin, svc)):
            with psycopg.connect(**params, autocommit=True) as conn:
                for role in (victim, svc.runtime_role, svc.owner_role):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(
                            sql.Identifier(role), sql.Literal("edulink-db managed: forged")))
    finally:
        drop_roles(server, [victim])


def test_marked_role_given_superuser_is_not_silently_managed(
        fresh_db: dict[str, Any], server: dict[str, Any]) -> None:
    """A careless operator makes an edulink-db role a superuser: provisioning with a
    CREATEROLE admin says so and changes nothing, rather than failing halfway."""
    topology = parse_topology(unique_topology_text(services=1), source="super drift")
    svc = topology.services[0]
    admin_name = f"adm_{svc.name}"
    try:
        do_provision(fresh_db, topology)
        with psycopg.connect(**fresh_db, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} SUPERUSER").format(
                sql.Identifier(svc.runtime_role)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD 'x-adm-pw'").format(
                sql.Identifier(admin_name)))
            conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(fresh_db["dbname"]), sql.Identifier(admin_name)))
        admin = {**fresh_db, "user": admin_name, "password": "x-adm-pw"}
        with pytest.raises(ForeignRoleError) as exc:
            do_provision(admin, topology)
        assert svc.runtime_role in str(exc.value) and "SUPERUSER" in str(exc.value)
    finally:
        drop_roles(server, topology.runtime_roles + topology.owner_roles
                   + topology.migrator_roles + [admin_name])
