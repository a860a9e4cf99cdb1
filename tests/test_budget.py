"""The connection budget (connections/budget.py) on real servers: a fresh ``up`` is healthy
on max_connections 60, 100 and 200, and stays healthy while every process of every
service holds its pool full; explicit pools that cannot fit are refused at start."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import django
import psycopg
import pytest

from microservices.shared.database.config import load_settings
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.connections import budget
from microservices.shared.database.core.errors import ConfigError
from microservices.shared.database.topology import default_topology

from .clusters import Cluster, debian_bin_dir
from .conftest import do_provision, reachable_tempdir, service_env
from .test_cli import configured_env, run

PG15 = debian_bin_dir(15)
needs_pg15 = pytest.mark.skipif(PG15 is None, reason="Debian PostgreSQL 15 not installed")


@pytest.fixture(params=[60, 100, 200], ids=lambda n: f"max_connections={n}")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if PG15 is None:
        pytest.skip("Debian PostgreSQL 15 not installed")
    root = reachable_tempdir("budget-")
    with Cluster.create(root, "b", bin_dir=PG15,
                        settings={"max_connections": request.param}) as made:
        yield made


def _health(project: Path, env: dict[str, str]) -> dict[str, Any]:
    result = run(["health", "--json"], project, env)
    assert result.stdout, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _not_ok(report: dict[str, Any]) -> dict[str, Any]:
    return {k: c for k, c in report["checks"].items() if c["status"] != "ok"}


def _held(admin: dict[str, Any]) -> dict[str, int]:
    with psycopg.connect(**admin) as conn:
        return dict(conn.execute(
            "SELECT usename::text, count(*)::int FROM pg_stat_activity"
            " WHERE usename LIKE '%%_service_role' GROUP BY 1").fetchall())


@needs_pg15
def test_fresh_up_is_healthy_and_stays_so_with_every_pool_full(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = default_topology()
    admin = cluster.params
    env = configured_env(admin, tmp_path / "home", topology)
    up = run(["up"], tmp_path, env)
    assert up.returncode == 0, up.stderr + up.stdout
    report = _health(tmp_path, env)
    assert report["overall_status"] == "healthy", _not_ok(report)

    # The table, as the CLI prints it, for 1, 2 and 4 processes per service.
    for procs in (1, 2, 4):
        table = run(["budget", "--processes", str(procs)], tmp_path, env)
        assert table.returncode == 0, table.stderr + table.stdout
        print(f"\n$ edulink-db budget --processes {procs}   # max_connections "
              f"{report['checks']['connections']['message'].split()[-1]}\n{table.stdout}")

    # Every process of every service (EDULINK_DB_PROCESSES_PER_SERVICE, default 2) holds
    # its pool full: real connections, one ConnectionManager per process.
    plan = json.loads(run(["budget", "--json"], tmp_path, env).stdout)
    service_env(monkeypatch, admin)
    procs = load_settings().edulink_db_processes_per_service
    assert procs == 2
    with ExitStack() as stack:
        for _ in range(procs):
            manager = ConnectionManager(load_settings())
            stack.callback(manager.close_all)
            for svc in topology.services:
                stack.enter_context(manager.get_connection(svc.name))
                for _ in range(manager.get_pool_stats(svc.name)["max_size"] - 1):  # type: ignore[operator]
                    stack.enter_context(manager.get_connection(svc.name))
        want = {r["role"]: r["total"] for r in plan["roles"]}
        assert _held(admin) == want
        assert all(want[r["role"]] <= r["limit"] for r in plan["roles"])
        full = _health(tmp_path, env)
        assert full["overall_status"] == "healthy", _not_ok(full)
        # Other sessions eating half the headroom still degrade the connections check,
        # before it turns unhealthy.
        warn, mc = full["checks"]["connections"]["threshold"], plan["server"]["max_connections"]
        assert warn >= 0.8 and math.ceil(round(warn * mc, 6)) < math.ceil(0.95 * mc)
        with psycopg.connect(**admin) as conn:
            now = conn.execute("SELECT count(*)::int FROM pg_stat_activity"
                               " WHERE backend_type = 'client backend'").fetchone()
        assert now is not None  # counts itself; the health check's session takes its place
        for _ in range(math.ceil(round(warn * mc, 6)) - now[0]):
            stack.enter_context(psycopg.connect(**admin))
        crowded = _health(tmp_path, env)
        assert crowded["checks"]["connections"]["status"] == "degraded", crowded["checks"]


def _fit_env(**extra: str) -> dict[str, str]:
    return {"EDULINK_DB_PROCESSES_PER_SERVICE": "4", **extra}


def test_explicit_pool_that_cannot_fit_is_refused_at_start(
    fresh_db: dict[str, Any], manager_for: Any
) -> None:
    from microservices.shared.database.monitoring.monitor import get_database_health

    do_provision(fresh_db, default_topology())
    with psycopg.connect(**fresh_db) as conn:
        limit = budget.read_budget(conn, default_topology(), load_settings()).roles[0].limit
    size = limit // 4 + 1  # 4 processes x size > limit
    manager = manager_for(fresh_db, **_fit_env(EDULINK_DB_USER_POOL_SIZE=str(size),
                                               EDULINK_DB_USER_MAX_OVERFLOW="0"))
    with pytest.raises(ConfigError) as caught:
        manager.get_connection("user").__enter__()
    message = str(caught.value)
    assert "\n" not in message
    assert (f"service user: 4 process(es) x pool max {size} = {4 * size} connections, but "
            f"role user_service_role has CONNECTION LIMIT {limit}") in message
    assert "fewer processes" in message and "transaction pooler" in message
    with manager.get_connection("auth") as conn:  # derived: fits
        conn.execute("SELECT 1")
    assert manager.get_pool_stats("auth")["max_size"] == (limit - 1) // 4
    check = get_database_health(manager.settings)["checks"]["connection_limit:user"]
    assert (check["status"], check["value"], check["threshold"]) == (
        "degraded", 4 * size, limit)
    assert "connection_limit:auth" not in get_database_health(manager.settings)["checks"]


def test_explicit_pool_behind_a_transaction_pooler_is_not_refused(
    fresh_db: dict[str, Any], manager_for: Any
) -> None:
    do_provision(fresh_db, default_topology())
    manager = manager_for(fresh_db, **_fit_env(EDULINK_DB_USER_POOL_SIZE="40",
                                               DATABASE_POOLER="transaction"))
    with manager.get_connection("user") as conn:
        conn.execute("SELECT 1")
    assert manager.get_pool_stats("user")["min_size"] == 40


@pytest.mark.parametrize(("variable", "value"), [
    ("DATABASE_POOL_SIZE", "0"), ("DATABASE_POOL_SIZE", "-3"),
    ("DATABASE_MAX_OVERFLOW", "-1"), ("EDULINK_DB_PROCESSES_PER_SERVICE", "0"),
])
def test_zero_or_negative_setting_is_one_line_naming_it(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert variable in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("key", "value"), [
    ("POOL_SIZE", "0"), ("POOL_SIZE", "-2"), ("POOL_SIZE", "ten"), ("MAX_OVERFLOW", "-1"),
    ("PROCESSES", "0"),
])
def test_zero_or_negative_service_setting_is_one_line_naming_it(
    key: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = default_topology().services[0]
    variable = f"EDULINK_DB_{svc.name.upper()}_{key}"
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        budget.pool_size(load_settings(), svc, 100)
    assert variable in str(caught.value) and "\n" not in str(caught.value)
    assert repr(value) in str(caught.value)


def test_python_model_matches_the_sql_that_provisioning_runs(server: dict[str, Any]) -> None:
    topology = default_topology()
    with psycopg.connect(**server) as conn:
        row = conn.execute(budget.connection_budget_query(topology)).fetchone()
        srv = budget.read_server(conn)
    assert row is not None
    assert (row[3], row[4], row[5]) == (srv.usable, srv.headroom,
                                        budget.derived_limit(srv, topology))


@pytest.mark.parametrize(("max_connections", "limit", "pools"), [
    (60, 7, {1: 6, 2: 3, 4: 1}), (100, 14, {1: 13, 2: 6, 4: 3}),
    (200, 31, {1: 30, 2: 15, 4: 7}),
])
def test_budget_numbers(max_connections: int, limit: int, pools: dict[int, int]) -> None:
    srv = budget.Server(max_connections, 3)
    assert budget.derived_limit(srv, default_topology()) == limit
    for procs, top in pools.items():
        assert budget.derived_pool(limit, procs).max_size == top
        assert top * procs < limit  # one connection stays free for the probe


def test_cli_help_has_an_example() -> None:
    result = run(["budget", "--help"], Path.cwd(), {**os.environ, "COLUMNS": "200"})
    assert "Example:" in result.stdout and "edulink-db budget --processes 4" in result.stdout


_DJANGO_POOL = ("import django, json; django.setup(); from django.db import connection; "
                "connection.ensure_connection(); p = connection.pool; "
                "print(json.dumps([p.min_size, p.max_size]))")


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's pool needs Django 5.1")
def test_django_pool_is_sized_from_the_budget(fresh_db: dict[str, Any]) -> None:
    from .test_django import env_for
    from .test_django import run as django_run

    do_provision(fresh_db, default_topology())
    with psycopg.connect(**fresh_db) as conn:
        limit = budget.read_budget(conn, default_topology(), load_settings()).roles[1].limit
    env = {**env_for(fresh_db, "user"), "EDULINK_DJANGO_POOL": "1"}
    sized = django_run(["-c", _DJANGO_POOL], env)
    assert sized.returncode == 0, sized.stderr
    derived = budget.derived_pool(limit, 2)
    assert json.loads(sized.stdout) == [derived.min_size, derived.max_size]
    refused = django_run(["-c", _DJANGO_POOL], {**env, "EDULINK_DB_USER_POOL_SIZE": str(limit)})
    assert refused.returncode != 0
    assert (f"2 process(es) x pool max {limit} = {2 * limit} connections, but role "
            f"user_service_role has CONNECTION LIMIT {limit}") in refused.stderr
