"""The Django router with a read replica (real primary + streaming standby): reads go to
the replica outside transactions, a write pins the rest of the request to the primary,
and a lagging replica is skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from microservices.shared.database.config import to_url
from microservices.shared.database.topology import default_topology

from .clusters import Cluster
from .conftest import SERVICE_PASSWORD
from .test_failover import DB, make_pair

pytest.importorskip("django")

SCRIPT = textwrap.dedent('''
    import json, sys, types
    import django
    from django.conf import settings
    from microservices.shared.database.django_settings import (
        ReplicaPinningMiddleware, configure_service_database, get_database_router,
        pin_to_primary)
    dbs = configure_service_database("user")
    settings.configure(DATABASES=dbs, DATABASE_ROUTERS=[get_database_router()],
                       INSTALLED_APPS=[], USE_TZ=True)
    django.setup()
    from django.db import connections, transaction
    router = settings.DATABASE_ROUTERS[0]
    model = types.SimpleNamespace(_meta=types.SimpleNamespace(app_label="profiles",
                                                               label="profiles.X"))
    def port(alias):
        with connections[alias].cursor() as cur:
            cur.execute("SELECT inet_server_port()")
            return cur.fetchone()[0]
    out = {"aliases": sorted(dbs), "replica_options": dbs["replica"]["OPTIONS"]}
    out["read"] = port(router.db_for_read(model))
    with transaction.atomic():
        out["read_in_atomic"] = port(router.db_for_read(model))
    def request(_req):
        first = port(router.db_for_read(model))
        router.db_for_write(model)
        return [first, port(router.db_for_read(model))]
    out["request"] = ReplicaPinningMiddleware(request)(None)
    out["next_request"] = ReplicaPinningMiddleware(
        lambda _r: port(router.db_for_read(model)))(None)
    with pin_to_primary():
        out["pinned_task"] = port(router.db_for_read(model))
    out["after_task"] = port(router.db_for_read(model))
    try:
        with connections["replica"].cursor() as cur:
            cur.execute("CREATE TEMP TABLE nope (id int)")
        out["replica_write"] = "allowed"
    except Exception as exc:
        out["replica_write"] = type(exc).__name__
    if len(sys.argv) > 1:  # the replica's replay is paused: reads stay on the primary
        import psycopg, time
        time.sleep(2.5)
        out["lagging_read"] = port(router.db_for_read(model))
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Cluster, Cluster]]:
    primary, (standby,) = make_pair("edulink-django-replicas-")
    try:
        yield primary, standby
    finally:
        standby.destroy()
        primary.destroy()


def run(primary: Cluster, standby: Cluster, *args: str, **extra: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "EDULINK_", "DJANGO_"))}
    env["DATABASE_URL"] = to_url({**primary.params, "dbname": DB})
    env["DATABASE_REPLICA_URLS"] = to_url({**standby.params, "dbname": DB})
    for svc in default_topology().services:
        env[f"EDULINK_DB_{svc.name.upper()}_PASSWORD"] = SERVICE_PASSWORD
    env.update(extra)
    result = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert primary.password not in result.stdout + result.stderr
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def test_router_reads_replica_outside_transactions_and_pins_after_writes(
        pair: tuple[Cluster, Cluster]) -> None:
    primary, standby = pair
    out = run(primary, standby)
    assert out["aliases"] == ["default", "replica"]
    assert "default_transaction_read_only=on" in out["replica_options"]["options"]
    assert out["read"] == standby.port
    assert out["read_in_atomic"] == primary.port
    assert out["request"] == [standby.port, primary.port]  # read-your-writes
    assert out["next_request"] == standby.port  # the pin ended with the request
    assert out["pinned_task"] == primary.port
    assert out["after_task"] == standby.port
    assert out["replica_write"] != "allowed"


def test_router_skips_a_lagging_replica(pair: tuple[Cluster, Cluster]) -> None:
    primary, standby = pair
    with standby.connect() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        try:
            with primary.connect(dbname=DB) as writer:
                writer.execute("INSERT INTO user_schema.ticks DEFAULT VALUES")
            out = run(primary, standby, "lag", DATABASE_REPLICA_MAX_LAG="1")
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")
    assert out["lagging_read"] == primary.port
