"""Provisioning manages only the roles it created (or was told to adopt), and every
repair statement verify proposes is valid SQL that really removes the drift."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.core.errors import ForeignRoleError, TopologyError
from microservices.shared.database.privileges.catalog import read_catalog
from microservices.shared.database.privileges.model import MANAGED_MARKER
from microservices.shared.database.privileges.verify import compare, verify
from microservices.shared.database.topology import Topology, parse_topology

from .conftest import do_provision, drop_roles, unique_topology_text
from .probes import create_probe_tables


def _exec(params: dict[str, Any], *statements: str | sql.Composed) -> None:
    with psycopg.connect(**params, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt)


def role_snapshot(server: dict[str, Any], roles: list[str]) -> list[tuple[Any, ...]]:
    """Everything about *roles* that provisioning could change (read as superuser)."""
    with psycopg.connect(**server) as conn:
        return conn.execute(
            "SELECT a.rolname, a.rolsuper, a.rolinherit, a.rolcreaterole, a.rolcreatedb,"
            " a.rolcanlogin, a.rolreplication, a.rolbypassrls, a.rolconnlimit, a.rolpassword,"
            " a.rolvaliduntil, pg_catalog.shobj_description(a.oid, 'pg_authid'),"
            " ARRAY(SELECT g.rolname || ':' || m.admin_option FROM pg_auth_members m"
            "       JOIN pg_authid g ON g.oid = m.roleid WHERE m.member = a.oid ORDER BY 1),"
            " ARRAY(SELECT x.rolname FROM pg_auth_members m"
            "       JOIN pg_authid x ON x.oid = m.member WHERE m.roleid = a.oid ORDER BY 1),"
            " ARRAY(SELECT s.setdatabase || ':' || array_to_string(s.setconfig, ',')"
            "       FROM pg_db_role_setting s WHERE s.setrole = a.oid ORDER BY 1)"
            " FROM pg_authid a WHERE a.rolname = ANY(%s) ORDER BY 1", [roles]).fetchall()


@pytest.fixture
def platform_roles(server: dict[str, Any]) -> Iterator[list[str]]:
    """Two Supabase-like foreign roles: a NOLOGIN group and a LOGIN member with a
    password, a comment, settings and a connection limit."""
    tag = secrets.token_hex(3)
    group, login = f"plat_group_{tag}", f"plat_login_{tag}"
    _exec(server,
          sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group)),
          sql.SQL("CREATE ROLE {} LOGIN NOINHERIT CONNECTION LIMIT 7 PASSWORD 'platform-pw'")
          .format(sql.Identifier(login)),
          sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(login)),
          sql.SQL("COMMENT ON ROLE {} IS 'owned by the platform'").format(sql.Identifier(login)),
          sql.SQL("ALTER ROLE {} SET statement_timeout = '8s'").format(sql.Identifier(login)))
    try:
        yield [group, login]
    finally:
        drop_roles(server, [login, group])


def _topology_with_runtime_role(role: str) -> Topology:
    """A one-service topology whose runtime role is *role* (unique other names)."""
    tag = secrets.token_hex(3)
    return parse_topology(
        f'[shared]\nschema = "sh_{tag}"\nowner_role = "sh_owner_{tag}"\n'
        f'[services.svc_{tag}]\nruntime_role = "{role}"\n', source="test topology")


def _cleanup(server: dict[str, Any], topology: Topology, keep: list[str]) -> None:
    drop_roles(server, [r for r in topology.runtime_roles + topology.owner_roles
                        if r not in keep])


@pytest.mark.parametrize("admin_kind", ["superuser", "createrole"])
def test_foreign_role_is_refused_and_left_exactly_as_it_was(
    request: pytest.FixtureRequest, server: dict[str, Any], platform_roles: list[str],
    admin_kind: str,
) -> None:
    admin = request.getfixturevalue("fresh_db" if admin_kind == "superuser"
                                    else "createrole_admin")
    group, login = platform_roles
    topology = _topology_with_runtime_role(login)
    before = role_snapshot(server, [group, login])
    try:
        with pytest.raises(ForeignRoleError) as exc:
            do_provision(admin, topology)
        message = str(exc.value)
        assert login in message and f"--adopt {login}" in message
        assert "platform-pw" not in message
        assert role_snapshot(server, [group, login]) == before
        # Nothing else happened either: no role created, no schema.
        with psycopg.connect(**server) as conn:
            assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
                                [topology.owner_roles]).fetchone() == (0,)
        with psycopg.connect(**admin) as conn:
            assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = ANY(%s)",
                                [topology.schemas]).fetchone() == (0,)
        report = verify(admin, topology)
        assert ("NOT MANAGED" in {p.privilege for p in report.problems if p.role == login})
    finally:
        _cleanup(server, topology, keep=[login])


def test_psql_script_refuses_a_foreign_role_too(
    fresh_db: dict[str, Any], server: dict[str, Any], platform_roles: list[str]
) -> None:
    from microservices.shared.database.privileges.provisioning import render_postgresql_script

    _group, login = platform_roles
    topology = _topology_with_runtime_role(login)
    before = role_snapshot(server, [login])
    try:
        with psycopg.connect(**fresh_db) as conn, pytest.raises(
                psycopg.errors.RaiseException, match="did not create"):
            # The script as psql would run it, statement by statement, in one transaction.
            conn.execute(render_postgresql_script(topology).replace("BEGIN;", "", 1)
                         .replace("COMMIT;", ""))
        assert role_snapshot(server, [login]) == before
    finally:
        _cleanup(server, topology, keep=[login])


def test_adopt_marks_the_role_and_then_manages_it(
    createrole_admin: dict[str, Any], server: dict[str, Any]
) -> None:
    """A role made by hand earlier, by the same admin (the usual Supabase story)."""
    tag = secrets.token_hex(3)
    group, login = f"hand_group_{tag}", f"hand_login_{tag}"
    _exec(createrole_admin,
          sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group)),
          sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'old-pw'").format(sql.Identifier(login)),
          sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(login)))
    topology = _topology_with_runtime_role(login)
    with pytest.raises(ForeignRoleError):
        do_provision(createrole_admin, topology)
    try:
        report = do_provision(createrole_admin, topology, adopt=[login])
        assert report.adopted_roles == [login]
        with psycopg.connect(**server) as conn:
            comment = conn.execute("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles"
                                   " WHERE rolname = %s", [login]).fetchone()
        assert comment is not None and comment[0].startswith(MANAGED_MARKER)
        create_probe_tables(createrole_admin, topology)
        result = verify(createrole_admin, topology)
        assert result.ok, result.problems  # managed now: membership in the group revoked
        again = do_provision(createrole_admin, topology)  # no --adopt needed any more
        assert again.adopted_roles == [] and again.created_roles == []
    finally:
        _cleanup(server, topology, keep=[])
        drop_roles(server, [group])


FORBIDDEN = {
    "superuser": "SUPERUSER", "bypassrls": "BYPASSRLS", "replication": "REPLICATION",
    "createrole": "CREATEROLE", "createdb": "CREATEDB",
}


@pytest.mark.parametrize("attribute", sorted(FORBIDDEN))
def test_adopting_a_powerful_role_is_refused(
    fresh_db: dict[str, Any], server: dict[str, Any], attribute: str
) -> None:
    role = f"powerful_{secrets.token_hex(3)}"
    _exec(server, sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD 'x-pw'").format(
        sql.Identifier(role), sql.SQL(FORBIDDEN[attribute])))
    topology = _topology_with_runtime_role(role)
    before = role_snapshot(server, [role])
    try:
        with pytest.raises(ForeignRoleError, match=f"{role}: cannot be adopted.*"
                           f"{FORBIDDEN[attribute]}"):
            do_provision(fresh_db, topology, adopt=[role])
        assert role_snapshot(server, [role]) == before
    finally:
        _cleanup(server, topology, keep=[])


def test_the_admin_itself_is_never_taken_over(
    createrole_admin: dict[str, Any], server: dict[str, Any]
) -> None:
    admin_role = createrole_admin["user"]
    topology = _topology_with_runtime_role(admin_role)
    before = role_snapshot(server, [admin_role])
    try:
        for adopt in ([], [admin_role]):
            with pytest.raises(ForeignRoleError, match="provisioning admin itself"):
                do_provision(createrole_admin, topology, adopt=adopt)
        assert role_snapshot(server, [admin_role]) == before
    finally:
        _cleanup(server, topology, keep=[admin_role])


def test_adopting_a_role_outside_the_topology_is_refused(
    fresh_db: dict[str, Any], unique_topology: Topology
) -> None:
    with pytest.raises(ForeignRoleError, match="not a role of this topology"):
        do_provision(fresh_db, unique_topology, adopt=["postgres"])


@pytest.mark.parametrize("line", [
    'runtime_role = "authenticator"', 'owner_role = "service_role"',
    'runtime_role = "supabase_auth_admin"', 'runtime_role = "postgres"',
    'owner_role = "pg_monitor"',
])
def test_platform_roles_are_rejected_by_the_topology(line: str) -> None:
    with pytest.raises(TopologyError, match=r"platform|pg_"):
        parse_topology(f"[services.x]\n{line}\n", source="t")


def test_createrole_admin_provisions_beside_foreign_roles(
    createrole_admin: dict[str, Any], unique_topology: Topology, server: dict[str, Any],
    platform_roles: list[str],
) -> None:
    """A Supabase-like server: other software's roles exist; provisioning leaves them be."""
    before = role_snapshot(server, platform_roles)
    report = do_provision(createrole_admin, unique_topology)
    assert report.created_roles and not report.adopted_roles
    assert role_snapshot(server, platform_roles) == before
    assert verify(createrole_admin, unique_topology).ok


# -- repairs: every statement verify proposes runs, and removes the drift ----------------

# (drift, expected problem privilege); {rt}/{own}/{s} are service 0's runtime role, owner
# and schema, {rt1}/{own1}/{s1} service 1's (which service 0 may not read), {db} the db.
DRIFTS = [
    ("ALTER ROLE {rt} SUPERUSER", "SUPERUSER"),
    ("ALTER ROLE {rt} CREATEROLE", "CREATEROLE"),
    ("ALTER ROLE {rt} CREATEDB", "CREATEDB"),
    ("ALTER ROLE {rt} REPLICATION", "REPLICATION"),
    ("ALTER ROLE {rt} BYPASSRLS", "BYPASSRLS"),
    ("ALTER ROLE {rt} NOLOGIN", "LOGIN"),
    ("ALTER ROLE {own} LOGIN", "LOGIN"),
    ("ALTER ROLE {own} SUPERUSER", "SUPERUSER"),
    ("ALTER ROLE {own} CREATEDB", "CREATEDB"),
    ("ALTER ROLE {own} REPLICATION", "REPLICATION"),
    ("ALTER ROLE {rt} CONNECTION LIMIT 999", "CONNECTION LIMIT"),
    ("GRANT {own} TO {rt}", "MEMBER OF {own}"),
    ("GRANT pg_read_all_data TO {rt}", "MEMBER OF pg_read_all_data"),
    ("GRANT SELECT ON {s1}.probe TO {rt}", "SELECT"),
    ("GRANT TRUNCATE ON {s}.probe TO {rt}", "TRUNCATE"),
    ("GRANT UPDATE ON SEQUENCE {s}.probe_id_seq TO {rt}", "UPDATE"),
    ("GRANT USAGE ON SCHEMA {s1} TO {rt}", "USAGE"),
    ("GRANT CREATE ON SCHEMA {s} TO {rt}", "CREATE"),
    ("GRANT USAGE ON SCHEMA {s} TO PUBLIC", "USAGE"),
    ("GRANT SELECT ON {s}.probe TO PUBLIC", "SELECT"),
    ("GRANT USAGE ON SEQUENCE {s}.probe_id_seq TO PUBLIC", "USAGE"),
    ("ALTER DEFAULT PRIVILEGES FOR ROLE {own} IN SCHEMA {s} GRANT SELECT ON TABLES TO {rt1}",
     "SELECT"),
    ("ALTER DEFAULT PRIVILEGES FOR ROLE {own} IN SCHEMA {s} GRANT UPDATE ON SEQUENCES TO {rt}",
     "UPDATE"),
    ("ALTER DEFAULT PRIVILEGES FOR ROLE {own} GRANT SELECT ON TABLES TO PUBLIC", "SELECT"),
    ("ALTER TABLE {s}.probe OWNER TO {own1}", "OWNER"),
    ("ALTER SCHEMA {s} OWNER TO {own1}", "OWNER"),
    ("ALTER ROLE {rt} SET statement_timeout = '1h'", "statement_timeout"),
    ("ALTER ROLE {rt} IN DATABASE {db} SET lock_timeout = '1s'", "lock_timeout"),
    ("ALTER ROLE {rt} SET search_path = public", "search_path"),
    ("ALTER ROLE {rt} IN DATABASE {db} SET search_path = public", "search_path"),
    ("GRANT CREATE ON DATABASE {db} TO {rt}", "CREATE"),
]


def _names(topology: Topology, db: str) -> dict[str, str]:
    a, b = topology.services[0], topology.services[1]
    assert a.name not in b.reads and b.name not in a.reads
    return {k: sql.Identifier(v).as_string(None) for k, v in {
        "rt": a.runtime_role, "own": a.owner_role, "s": a.schema, "rt1": b.runtime_role,
        "own1": b.owner_role, "s1": b.schema, "db": db}.items()}


@pytest.fixture
def two_services(server: dict[str, Any]) -> Iterator[Topology]:
    # auth and institution: neither reads the other.
    topo = parse_topology(unique_topology_text(services=3), source="repair topology")
    topo = Topology(services=(topo.services[0], topo.services[2]), shared=topo.shared)
    try:
        yield topo
    finally:
        drop_roles(server, topo.runtime_roles + topo.owner_roles)


@pytest.mark.parametrize(("drift", "privilege"), DRIFTS, ids=[d[0][:55] for d in DRIFTS])
def test_every_repair_statement_is_valid_and_removes_the_drift(
    fresh_db: dict[str, Any], two_services: Topology, drift: str, privilege: str
) -> None:
    topology = two_services
    do_provision(fresh_db, topology)
    create_probe_tables(fresh_db, topology)
    assert verify(fresh_db, topology).ok
    names = _names(topology, fresh_db["dbname"])
    _exec(fresh_db, drift.format(**names))
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        problems = compare(read_catalog(conn, topology), topology).problems
        wanted = privilege.format(**{k: v.strip('"') for k, v in names.items()})
        assert wanted in {p.privilege for p in problems}, problems
        repairs = [p.repair for p in problems if p.repair is not None]
        assert repairs, problems
        for repair in repairs:  # as the superuser admin; each must be valid SQL
            conn.execute(repair)
        after = compare(read_catalog(conn, topology), topology)
    assert after.ok, after.problems


@pytest.mark.parametrize("attribute", ["SUPERUSER", "BYPASSRLS", "REPLICATION"])
def test_unrepairable_attribute_is_reported_as_needing_a_superuser(
    createrole_admin: dict[str, Any], server: dict[str, Any], unique_topology: Topology,
    attribute: str,
) -> None:
    do_provision(createrole_admin, unique_topology)
    role = unique_topology.services[0].runtime_role
    _exec(server, sql.SQL("ALTER ROLE {} {}").format(sql.Identifier(role), sql.SQL(attribute)))
    report = verify(createrole_admin, unique_topology)
    assert attribute in {p.privilege for p in report.problems if p.role == role}
    with psycopg.connect(**server) as conn:
        version = conn.info.server_version
    if attribute == "SUPERUSER" or (attribute == "REPLICATION" and version < 160000):
        # Only a superuser may alter such a role at all: refuse up front, clearly.
        with pytest.raises(ForeignRoleError, match=f"ALTER ROLE {role} NO{attribute}"):
            do_provision(createrole_admin, unique_topology)
    else:
        prov = do_provision(createrole_admin, unique_topology)
        assert any(f"NO{attribute}" in u and "needs a superuser" in u for u in prov.unrepaired)
    do_provision({**server, "dbname": createrole_admin["dbname"]}, unique_topology)
    assert verify(createrole_admin, unique_topology).ok
