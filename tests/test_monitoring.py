"""Monitoring: automatic per-service query metrics, database health, exposition."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY, generate_latest

from microservices.shared.database.config import load_settings
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.connections.request_context import CleanCursor
from microservices.shared.database.monitoring.monitor import (
    ServiceMonitor,
    get_database_health,
    get_service_performance,
    monitors,
    record_query_execution,
)
from microservices.shared.database.topology import default_topology

from .conftest import do_provision, service_params
from .ports import PortTaken, start_on_free_port

CLI = [sys.executable, "-m", "microservices.shared.database"]


def test_queries_are_recorded_automatically_without_values(
    provisioned_db: dict[str, Any], manager_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    manager: ConnectionManager = manager_for(provisioned_db,
                                             EDULINK_DB_USER_SLOW_QUERY_LOG_MS="0")
    before = get_service_performance("user")
    logger = "microservices.shared.database.monitoring.monitor"
    with caplog.at_level(logging.WARNING, logger=logger), \
            manager.get_connection("user", user_id="u1") as conn:
        for _ in range(5):
            conn.execute("SELECT count(*) FROM notes WHERE body <> 'secret-value-xyz'")
        conn.execute("SELECT * FROM notes WHERE owner_id = %s", ["secret-param"])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM notification_schema.missing_grant")
    after = get_service_performance("user")
    assert after["calls"] - before["calls"] == 7
    assert after["errors"] - before["errors"] == 1
    assert after["p95_execution_time"] > 0 and after["avg_execution_time"] > 0
    assert after["queries_per_second"] > 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "slow query in user" in logged and "fingerprint" in logged
    assert "secret-value-xyz" not in logged and "secret-param" not in logged
    assert "body <> ?" in logged
    exposed = generate_latest(REGISTRY).decode()
    assert 'edulink_db_query_duration_seconds_bucket{le="0.001",query_type="SELECT",' \
           'service="user"}' in exposed
    assert 'edulink_db_permission_errors_total{service="user"}' in exposed
    assert 'edulink_db_pool_connections{service="user",state="size"}' in exposed
    assert "secret" not in exposed


def test_seed_record_api_and_performance_shape() -> None:
    before = get_service_performance("internship")
    record_query_execution(service_name="internship_service", schema_name="internship_schema",
                           query_hash="abc123", execution_time=0.05, success=True,
                           query_type="SELECT")
    record_query_execution("internship", "internship_schema", "abc123", 0.2, False, "UPDATE")
    after = get_service_performance("internship_service")
    assert after["calls"] == before["calls"] + 2
    assert after["errors"] == before["errors"] + 1
    for key in ("calls", "avg_execution_time", "p50_execution_time", "p95_execution_time",
                "p99_execution_time", "errors", "slow_queries", "queries_per_second"):
        assert key in after


def test_monitoring_can_be_switched_off(provisioned_db: dict[str, Any],
                                        manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db,
                                             DATABASE_MONITORING_ENABLED="false")
    before = get_service_performance("auth")["calls"]
    with manager.get_connection("auth") as conn:
        # Not the instrumented cursor: only the session-state accounting remains.
        assert type(conn.cursor()) is CleanCursor
        conn.execute("SELECT 1")
    record_query_execution("auth", "auth_schema", "x", 0.1, True, "SELECT")
    assert get_service_performance("auth")["calls"] == before


def test_suspicious_latency_and_error_jumps() -> None:
    monitor = ServiceMonitor("application", slow_threshold_s=10)
    now = time.monotonic()
    for i in range(100):  # a quiet baseline two to ten minutes ago
        monitor.samples.append((now - 600 + i * 4, 0.002, True))
    for _ in range(30):  # the last minute: slow and failing
        monitor.samples.append((now - 5, 0.05, False))
    patterns = {s["pattern"] for s in monitor.suspicious(permission_threshold=5)}
    assert patterns == {"latency_jump", "error_rate_jump"}
    quiet = ServiceMonitor("application", slow_threshold_s=10)
    for i in range(100):
        quiet.samples.append((now - 600 + i * 6, 0.002, True))
    assert quiet.suspicious(permission_threshold=5) == []


def test_health_is_healthy_with_values_and_thresholds(provisioned_db: dict[str, Any],
                                                      manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db)
    with manager.get_connection("user", user_id="u1") as conn:
        for _ in range(3):
            conn.execute("SELECT count(*) FROM notes")
    health = get_database_health(load_settings())
    assert health["overall_status"] == "healthy", health["checks"]
    for name in ("connection", "connections", "cache_hit_ratio", "transaction_id_age",
                 "pg_stat_statements"):
        check = health["checks"][name]
        assert {"status", "value", "threshold", "message"} <= set(check)
    assert health["checks"]["pg_stat_statements"]["value"] is True
    assert health["services"]["user"]["statements"]["calls"] >= 3
    assert health["services"]["user"]["schema"]["size_bytes"] > 0
    assert health["catalog_queries"] == 6


def test_health_flags_each_pattern_naming_the_service(
    provisioned_db: dict[str, Any], manager_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager: ConnectionManager = manager_for(
        provisioned_db, DATABASE_IDLE_IN_TRANSACTION_SECONDS="0.3",
        DATABASE_LONG_QUERY_SECONDS="1", DATABASE_CONNECTIONS_WARN_RATIO="0.01",
        DATABASE_PERMISSION_ERROR_THRESHOLD="5")
    topology = default_topology()
    idle = psycopg.connect(**service_params(provisioned_db, topology.service("user")))
    idle.execute("SELECT 1")  # leaves a transaction open: idle in transaction
    locker = psycopg.connect(**provisioned_db)
    locker.execute("LOCK TABLE user_schema.notes IN ACCESS EXCLUSIVE MODE")
    blocked_done = threading.Event()

    def blocked() -> None:
        with psycopg.connect(**service_params(provisioned_db, topology.service("user")),
                             autocommit=True) as conn:
            conn.execute("SELECT count(*) FROM notes")
        blocked_done.set()

    def long_running() -> None:
        with psycopg.connect(**service_params(provisioned_db, topology.service("application")),
                             autocommit=True) as conn:
            conn.execute("SELECT pg_sleep(3)")

    threads = [threading.Thread(target=blocked), threading.Thread(target=long_running)]
    for t in threads:
        t.start()
    try:
        for _ in range(6):  # institution probing another service's schema
            with pytest.raises(psycopg.errors.InsufficientPrivilege), \
                    manager.get_connection("institution") as conn:
                conn.execute("SELECT * FROM auth_schema.auth_things")
        time.sleep(1.5)
        health = get_database_health(load_settings())
    finally:
        locker.rollback()
        locker.close()
        idle.close()
        for t in threads:
            t.join()
    checks = health["checks"]
    assert health["overall_status"] == "degraded"
    assert checks["idle_in_transaction:user"]["service"] == "user"
    assert checks["blocked:user"]["value"] >= 1
    assert checks["long_running:application"]["value"] >= 1
    assert checks["connections"]["status"] == "degraded"
    patterns = {(s["pattern"], s["service"]) for s in health["suspicious"]}
    assert ("permission_errors", "institution") in patterns
    assert ("idle_in_transaction", "user") in patterns
    assert ("connections_near_max", "*") in patterns
    assert any(q["seconds"] >= 1 and "pg_sleep(?)" in q["query"]
               for q in health["long_running_queries"])
    assert blocked_done.is_set()


def test_health_degrades_gracefully_without_pg_stat_statements(
    createrole_admin: dict[str, Any], unique_topology: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from .conftest import service_env

    report = do_provision(createrole_admin, unique_topology)
    assert any("pg_stat_statements not installed" in n for n in report.notes)
    topo_file = tmp_path / "topology.toml"
    from .conftest import unique_topology_text  # noqa: F401 - same generator as the fixture

    topo_file.write_text(_toml_of(unique_topology))
    service_env(monkeypatch, createrole_admin, unique_topology,
                extra={"EDULINK_DB_TOPOLOGY": str(topo_file)})
    health = get_database_health(load_settings())
    assert health["overall_status"] == "healthy"
    assert health["checks"]["pg_stat_statements"]["value"] is False
    assert "not installed" in health["checks"]["pg_stat_statements"]["message"]


def _toml_of(topology: Any) -> str:
    lines = ["[shared]", f'schema = "{topology.shared.schema}"',
             f'owner_role = "{topology.shared.owner_role}"', ""]
    for svc in topology.services:
        reads = ", ".join(f'"{r}"' for r in svc.reads)
        lines += [f"[services.{svc.name}]", f"reads = [{reads}]", ""]
    return "\n".join(lines)


def _env(admin: dict[str, Any], **extra: str) -> dict[str, str]:
    from microservices.shared.database.config import to_url

    from .conftest import SERVICE_PASSWORD

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "EDULINK_"))}
    env["DATABASE_URL"] = to_url(admin)
    for svc in default_topology().services:
        env[f"EDULINK_DB_{svc.name.upper()}_PASSWORD"] = SERVICE_PASSWORD
    env.update(extra)
    return env


def test_cli_health_top_and_metrics(provisioned_db: dict[str, Any], tmp_path: Path) -> None:
    env = _env(provisioned_db)
    healthy = subprocess.run([*CLI, "health", "--json"], env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    assert healthy.returncode == 0, healthy.stderr
    assert json.loads(healthy.stdout)["overall_status"] == "healthy"
    degraded = subprocess.run([*CLI, "health"], env=_env(
        provisioned_db, DATABASE_CONNECTIONS_WARN_RATIO="0.0001"), capture_output=True,
        text=True, timeout=60, check=False)
    assert degraded.returncode == 1 and "degraded" in degraded.stdout
    down = subprocess.run([*CLI, "health"], env=_env({**provisioned_db, "port": "1"}),
                          capture_output=True, text=True, timeout=60, check=False)
    assert down.returncode == 3 and "unhealthy" in down.stdout
    assert str(provisioned_db["password"]) not in down.stdout + down.stderr
    top = subprocess.run([*CLI, "top", "--once"], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert top.returncode == 0 and "notification" in top.stdout

    def start_exporter(port: int) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen([*CLI, "metrics", "--port", str(port)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=5) as response:
                    return proc, response.read().decode()
            except OSError:
                if proc.poll() is not None:
                    stderr = proc.communicate()[1]
                    if "Address already in use" in " ".join(stderr.split()):
                        raise PortTaken(port) from None
                    raise AssertionError(f"exporter exited: {stderr}") from None
                time.sleep(0.2)
        proc.terminate()
        raise AssertionError("exporter did not answer within 30 s")

    _port, (server, body) = start_on_free_port(start_exporter)
    try:
        assert "edulink_db_up 1.0" in body
        assert 'edulink_db_connections{service="user",state="idle"}' in body
        assert 'edulink_db_schema_size_bytes{service="user"}' in body
        assert "edulink_db_health_status 0.0" in body
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_metrics_mount_in_a_service_process() -> None:
    from microservices.shared.database.monitoring.metrics import (
        metrics_wsgi_app,
        start_metrics_server,
    )

    assert callable(metrics_wsgi_app())
    def start(port: int) -> Any:
        try:
            return start_metrics_server(port, addr="127.0.0.1")
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortTaken(port) from None
            raise

    port, server = start_on_free_port(start)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=5) as response:
            assert b"edulink_db_query_duration_seconds" in response.read()
    finally:
        if isinstance(server, tuple):
            server[0].shutdown()
    assert monitors.all()  # this process's monitors feed the same registry
