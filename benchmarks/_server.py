"""A provisioned database for benchmarks: the configured server or a fresh embedded one."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from microservices.shared.database.config import derive_service_conninfo
from microservices.shared.database.privileges.provisioning import provision
from microservices.shared.database.server.embedded import EmbeddedServer
from microservices.shared.database.topology import Topology, default_topology

warnings.filterwarnings("ignore", module="platformdirs")

BENCH_USER_CONNECTIONS = 120


@contextlib.contextmanager
def bench_database(rows: int = 10_000) -> Iterator[tuple[dict[str, Any], Topology, str]]:
    """Yield (admin params, topology, service password) for a freshly provisioned database
    with ``user_schema.bench_items`` (*rows* rows, primary key ``id``).

    Uses EDULINK_BENCH_DATABASE_URL (a superuser URL) if set, else an embedded server.
    """
    url = os.environ.get("EDULINK_BENCH_DATABASE_URL")
    server: EmbeddedServer | None = None
    base: dict[str, Any]
    if url:
        base = dict(conninfo_to_dict(url))
    else:
        scratch = Path(tempfile.mkdtemp(prefix="edulink-bench-"))
        scratch.chmod(0o711)  # as root, the server's OS user must pass through (not list)
        server = EmbeddedServer(scratch / ".edulink-db")
        base = server.admin_params(server.start())
    dbname = f"edulink_bench_{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(16)
    # The benchmarks open many connections as user_service_role at once (every path's
    # pool, 16 threads each): give it a budget of its own instead of the derived share.
    topology = default_topology()
    topology = replace(topology, services=tuple(
        replace(s, connection_limit=BENCH_USER_CONNECTIONS) if s.name == "user" else s
        for s in topology.services))
    with psycopg.connect(**base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    admin = {**base, "dbname": dbname}
    try:
        provision(admin, topology, lambda _svc: password, migrator_passwords=lambda _svc: password,
                  rotate=topology.service_names())
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute("SET ROLE user_service_owner")
            conn.execute("CREATE TABLE user_schema.bench_items (id int PRIMARY KEY,"
                         " payload text NOT NULL)")
            conn.execute("INSERT INTO user_schema.bench_items"
                         " SELECT i, md5(i::text) FROM generate_series(1, %s) i", [rows])
            conn.execute("RESET ROLE")
            conn.execute("ANALYZE user_schema.bench_items")
        yield admin, topology, password
    finally:
        with psycopg.connect(**base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(dbname)))
        if server is not None:
            server.stop()


def service_params(admin: dict[str, Any], topology: Topology, password: str,
                   service: str = "user") -> dict[str, Any]:
    return derive_service_conninfo(admin, topology.service(service), password)


def export_passwords(topology: Topology, password: str) -> None:
    """Let settings find *password* for every runtime and migrator role of *topology*."""
    for svc in topology.services:
        os.environ[f"EDULINK_DB_{svc.name.upper()}_PASSWORD"] = password
        os.environ[f"EDULINK_DB_{svc.name.upper()}_MIGRATOR_PASSWORD"] = password
