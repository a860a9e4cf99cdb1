"""How long the dashboard takes to render, against ``edulink-db health --json``.

    python benchmarks/dashboard.py [--rounds 15]

The six-service reference database (every service provisioned, the reference
migrations applied), with traffic from two services (user, institution).  Measured
side by side, interleaved round by round in one process:

* baseline: ``get_database_health(settings)``, the collection behind
  ``edulink-db health --json`` (one admin connection, the statistics, the backup check);
* the main page (``/``) and the user service's page (``/service/user``), rendered by the
  WSGI app in-process (no HTTP): warm = migrations, privileges and backups served from
  the dashboard's cache (the usual case: they are refreshed once a minute), cold = those
  re-read on this render (what the first view after a refresh costs); both read the
  live figures (sessions, statements, sizes) on every render, as views more than a
  second apart do;
* the main page within a second of another view: the live figures are shared (one
  database session for a burst of views), so only the rendering is left.

Prints medians in milliseconds and each as a ratio to the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from benchmarks._server import bench_database, export_passwords, service_params
from microservices.shared.database.config import _dotenv, load_settings, to_url
from microservices.shared.database.migrations import MigrationManager
from microservices.shared.database.migrations.history import reference_migrations_dir
from microservices.shared.database.monitoring.dashboard import DashboardApp, make_app
from microservices.shared.database.topology import Topology

TRAFFIC_SERVICES = ("user", "institution")


def traffic(admin: dict[str, Any], topology: Topology, password: str, rounds: int) -> None:
    """Reads and writes of two services, each as its own runtime role."""
    for name in TRAFFIC_SERVICES:
        with psycopg.connect(**service_params(admin, topology, password, name),
                             autocommit=True) as conn:
            for i in range(rounds):
                conn.execute("SELECT count(*) FROM pg_catalog.pg_class WHERE relpages > %s",
                             [i % 7])
                if name == "user":
                    conn.execute("SELECT payload FROM user_schema.bench_items WHERE id = %s",
                                 [i + 1])
                    conn.execute("SELECT pg_catalog.pg_sleep(0.002)")


@contextlib.contextmanager
def reference_dashboard(home: Path) -> Iterator[tuple[dict[str, Any], Topology, str]]:
    """The provisioned six-service database with the reference migrations applied, and
    the environment pointed at it (DATABASE_URL, every service's passwords)."""
    with bench_database(rows=20_000) as (admin, topology, password):
        for key in list(os.environ):
            if key.startswith(("DATABASE_", "EDULINK_DB_")):
                del os.environ[key]
        os.environ["DATABASE_URL"] = to_url(admin)
        os.environ["EDULINK_DB_HOME"] = str(home)
        os.environ["EDULINK_DB_MIGRATIONS"] = str(reference_migrations_dir())
        export_passwords(topology, password)
        _dotenv.cache_clear()
        MigrationManager(load_settings()).run_all_migrations()
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute("ANALYZE")
        yield admin, topology, password


def render(app: DashboardApp, path: str) -> None:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
               "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1", "SCRIPT_NAME": "",
               "wsgi.input": io.BytesIO()}
    status: list[str] = []
    body = b"".join(app(environ, lambda s, _h: status.append(s)))
    if not status[0].startswith("200") or len(body) < 1000:
        raise SystemExit(f"{path}: {status[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    import tempfile

    from microservices.shared.database.monitoring.monitor import get_database_health

    with reference_dashboard(Path(tempfile.mkdtemp(prefix="edulink-dash-bench-"))) as (
            admin, topology, password):
        traffic(admin, topology, password, 200)
        settings = load_settings()
        warm_app = make_app(settings, token=None, start_sampler=False)
        cold_app = make_app(settings, token=None, start_sampler=False)
        cold_app.data.slow_refresh = -1.0  # re-read migrations, privileges, backups
        shared_app = make_app(settings, token=None, start_sampler=False)

        def fresh(path: str) -> None:
            # Views more than LIVE_TTL_S apart: each one reads the live figures.
            warm_app.data._live = None
            render(warm_app, path)

        cases: dict[str, Callable[[], Any]] = {
            "health --json collection (baseline)": lambda: get_database_health(settings),
            "main page, warm": lambda: fresh("/"),
            "service page, warm": lambda: fresh("/service/user"),
            "main page, within 1 s of another view": lambda: render(shared_app, "/"),
            "main page, cold": lambda: render(cold_app, "/"),
            "service page, cold": lambda: render(cold_app, "/service/user"),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for round_ in range(args.rounds + 2):
            order = list(cases.items())
            if round_ % 2:
                order.reverse()
            for name, run in order:
                started = time.perf_counter()
                run()
                if round_ >= 2:  # the first two warm caches and connections
                    times[name].append(time.perf_counter() - started)
        base = statistics.median(times["health --json collection (baseline)"])
        print(f"six-service reference database, {args.rounds} interleaved rounds, "
              f"traffic from {' and '.join(TRAFFIC_SERVICES)}")
        print(f"{'case':40} {'median ms':>10} {'ratio to baseline':>18}")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name:40} {median * 1000:10.1f} {median / base:18.2f}")


if __name__ == "__main__":
    main()
