"""Connection budget: each runtime role gets a CONNECTION LIMIT, verify checks the limits
and their sum, and a pool larger than its role's limit is refused (and health reports it).
The per-process pools and the whole table: tests/test_budget.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.core.errors import ConfigError, TopologyError
from microservices.shared.database.privileges.model import HEADROOM_MIN, HEADROOM_PERCENT
from microservices.shared.database.privileges.verify import verify
from microservices.shared.database.topology import Topology, parse_topology

from .conftest import do_provision, drop_roles, unique_topology_text


def _limits(admin: dict[str, Any], roles: list[str]) -> dict[str, int]:
    with psycopg.connect(**admin) as conn:
        return dict(conn.execute("SELECT rolname, rolconnlimit FROM pg_roles"
                                 " WHERE rolname = ANY(%s)", [roles]).fetchall())


def _usable(admin: dict[str, Any]) -> tuple[int, int]:
    """(max_connections, usable) read independently of the code under test."""
    with psycopg.connect(**admin) as conn:
        rows = dict(conn.execute(
            "SELECT name, setting::int FROM pg_settings WHERE name IN ('max_connections',"
            " 'superuser_reserved_connections', 'reserved_connections')").fetchall())
    return rows["max_connections"], (rows["max_connections"]
                                     - rows["superuser_reserved_connections"]
                                     - rows.get("reserved_connections", 0))


@pytest.fixture
def budget_topology(server: dict[str, Any]) -> Iterator[Any]:
    made: list[Topology] = []

    def make(extra: dict[int, str], defaults: str = "", services: int = 3) -> Topology:
        text = unique_topology_text(services=services)
        for index, line in extra.items():
            marker = text.split("[services.")[index + 1].split("]")[0]
            text = text.replace(f"[services.{marker}]\n", f"[services.{marker}]\n{line}\n")
        topo = parse_topology((f"[defaults]\n{defaults}\n" if defaults else "") + text,
                              source="budget topology")
        made.append(topo)
        return topo

    yield make
    for topo in made:
        drop_roles(server, topo.runtime_roles + topo.owner_roles)


@pytest.mark.parametrize("value", ["0", "-1", '"5"', "true", "1.5", "300000"])
def test_connection_limit_must_be_a_positive_integer(value: str) -> None:
    with pytest.raises(TopologyError, match="connection_limit"):
        parse_topology(f"[services.x]\nconnection_limit = {value}\n", source="t")
    with pytest.raises(TopologyError, match="connection_limit"):
        parse_topology(f"[defaults]\nconnection_limit = {value}\n[services.x]\n", source="t")


def test_defaults_and_per_service_limits() -> None:
    topo = parse_topology("[defaults]\nconnection_limit = 4\n[services.a]\n"
                          "[services.b]\nconnection_limit = 9\n", source="t")
    assert [s.connection_limit for s in topo.services] == [4, 9]


def test_derived_limits_split_the_usable_connections(
    fresh_db: dict[str, Any], budget_topology: Any
) -> None:
    topo = budget_topology({0: "connection_limit = 3"})
    do_provision(fresh_db, topo)
    _max, usable = _usable(fresh_db)
    headroom = max(HEADROOM_MIN, -(-usable * HEADROOM_PERCENT // 100))
    derived = max(1, (usable - headroom - 3) // 2)
    limits = _limits(fresh_db, topo.runtime_roles)
    assert limits == {topo.runtime_roles[0]: 3, topo.runtime_roles[1]: derived,
                      topo.runtime_roles[2]: derived}
    assert sum(limits.values()) <= usable - headroom
    report = verify(fresh_db, topo)
    assert report.ok, report.problems
    assert not do_provision(fresh_db, topo).changed


def test_limits_beyond_max_connections_are_reported_with_numbers(
    fresh_db: dict[str, Any], budget_topology: Any
) -> None:
    max_conn, usable = _usable(fresh_db)
    each = usable // 2 + 1  # two of them already exceed what the server allows
    topo = budget_topology({}, defaults=f"connection_limit = {each}")
    do_provision(fresh_db, topo)
    report = verify(fresh_db, topo)
    budget = [p for p in report.problems if p.object == "connection budget"]
    assert len(budget) == 1, report.problems
    message = budget[0].message
    assert f"add up to {3 * each}" in message
    assert f"max_connections {max_conn}" in message and f"= {usable}" in message


def test_unlimited_runtime_role_is_reported(
    fresh_db: dict[str, Any], budget_topology: Any
) -> None:
    topo = budget_topology({})
    do_provision(fresh_db, topo)
    role = topo.runtime_roles[1]
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT -1").format(sql.Identifier(role)))
    report = verify(fresh_db, topo)
    messages = [p.message for p in report.problems]
    assert any(f"{role} may open unlimited connections" in m for m in messages), messages
    assert any("connection limit is unlimited, expected" in m for m in messages), messages
    do_provision(fresh_db, topo)  # repairs it
    assert verify(fresh_db, topo).ok


def test_pool_larger_than_the_role_limit_is_refused_and_health_reports_it(
    fresh_db: dict[str, Any], manager_for: Any,
) -> None:
    from microservices.shared.database.monitoring.monitor import get_database_health
    from microservices.shared.database.topology import default_topology

    do_provision(fresh_db, default_topology())
    limit = _limits(fresh_db, ["user_service_role"])["user_service_role"]
    assert limit > 0
    overflow = limit + 5
    manager = manager_for(fresh_db, EDULINK_DB_USER_POOL_SIZE="1",
                          EDULINK_DB_USER_MAX_OVERFLOW=str(overflow),
                          EDULINK_DB_USER_PROCESSES="1",
                          EDULINK_DB_AUTH_POOL_SIZE="1", EDULINK_DB_AUTH_MAX_OVERFLOW="0")
    refused = (rf"service user: 1 process\(es\) x pool max {overflow + 1} = {overflow + 1} "
               rf"connections, but role user_service_role has CONNECTION LIMIT {limit}\.")
    with pytest.raises(ConfigError, match=refused), manager.get_connection("user"):
        pass
    with manager.get_connection("auth") as conn:  # within its limit
        conn.execute("SELECT 1")
    health = get_database_health(manager.settings)
    check = health["checks"]["connection_limit:user"]
    assert (check["value"], check["threshold"], check["status"]) == (overflow + 1, limit,
                                                                    "degraded")
    assert "connection_limit:auth" not in health["checks"]
