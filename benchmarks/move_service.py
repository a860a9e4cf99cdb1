"""Benchmark of `edulink-db move-service`: write pause under ~200 writes/s over repeated
moves (there and back), and the copy rate against `pg_dump | pg_restore` of the same schema.

    .venv/bin/python -m benchmarks.move_service [--rows 100000] [--moves 6] [--rate 200]

Two throwaway clusters on loopback (tests/clusters.py). The pause is measured by the writer
(the longest gap between two of its commits around each cutover) and by the cutover itself.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import threading
import time
from typing import Any

from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.relocation import MoveContext, run_move
from microservices.shared.database.server.pg_tools import find_tool, libpq_env
from microservices.shared.database.topology import default_topology
from tests.clusters import Cluster
from tests.conftest import SERVICE_PASSWORD, do_provision, reachable_tempdir

TOPOLOGY = default_topology()
SVC = TOPOLOGY.service("institution")


def _p(c: Cluster) -> dict[str, Any]:
    return {k: v for k, v in c.params.items() if k != "connect_timeout"}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _baseline(a: Cluster, b: Cluster) -> float:
    """pg_dump -Fc of the schema (DDL + data) piped into pg_restore of a fresh, empty
    database on b; seconds.  Raises if either exits non-zero: a failed baseline is no
    baseline.  --no-owner/--no-acl: the service roles do not exist in that database."""
    with b.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS dumpcopy")
        conn.execute("CREATE DATABASE dumpcopy")
    dump, restore = find_tool("pg_dump", 18), find_tool("pg_restore", 18)
    t0 = time.perf_counter()
    d = subprocess.Popen([str(dump), "-Fc", "-n", SVC.schema, "-d", "postgres"],
                         env=libpq_env(_p(a)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    r = subprocess.run([str(restore), "--no-owner", "--no-acl", "--exit-on-error",
                        "-d", "dumpcopy"], env=libpq_env({**_p(b), "dbname": "dumpcopy"}),
                       stdin=d.stdout, capture_output=True, text=True, check=False)
    d.wait()
    seconds = time.perf_counter() - t0
    if d.returncode or r.returncode:
        raise SystemExit(f"baseline failed: pg_dump rc {d.returncode}, pg_restore rc "
                         f"{r.returncode}: {r.stderr.strip()[-500:]}")
    with b.connect() as conn:
        conn.execute("DROP DATABASE dumpcopy")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the copied table")
    parser.add_argument("--moves", type=int, default=6, help="cutovers (there and back)")
    parser.add_argument("--rate", type=float, default=200.0, help="target writes per second")
    args = parser.parse_args()
    root = reachable_tempdir("edulink-bench-move-")
    settings = {"max_slot_wal_keep_size": "1GB"}
    a = Cluster.create(root, "a", settings=settings)
    b = Cluster.create(root, "b", settings=settings)
    try:
        do_provision(_p(a), TOPOLOGY)
        with a.connect() as conn:
            conn.execute("SET ROLE institution_service_owner")
            conn.execute("CREATE TABLE institution_schema.events (id bigserial PRIMARY KEY,"
                         " body text NOT NULL)")
            conn.execute("CREATE TABLE institution_schema.big (id bigint PRIMARY KEY,"
                         " payload text NOT NULL)")
            conn.execute("INSERT INTO institution_schema.big SELECT i, md5(i::text)"
                         " FROM generate_series(1, %s) i", [args.rows])
            conn.execute("RESET ROLE")
            conn.execute("GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA institution_schema"
                         " TO institution_service_role")
            conn.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA institution_schema"
                         " TO institution_service_role")
            conn.execute("VACUUM ANALYZE institution_schema.big")
        dump_s = _baseline(a, b)
        os.environ["DATABASE_URL"] = to_url(_p(a))
        # One writer thread: a small pool, within the role's CONNECTION LIMIT.
        os.environ["DATABASE_POOL_SIZE"], os.environ["DATABASE_MAX_OVERFLOW"] = "2", "2"
        for s in TOPOLOGY.services:
            os.environ[f"EDULINK_DB_{s.name.upper()}_PASSWORD"] = SERVICE_PASSWORD
        manager = ConnectionManager(load_settings())
        commits: list[float] = []
        failures: list[str] = []
        stop = threading.Event()

        def writer() -> None:
            # Paced on an absolute schedule: a stall is followed by catching up, not
            # by a lower rate.
            interval, start = 1.0 / args.rate, time.monotonic()
            for i in itertools.count():
                if stop.is_set():
                    return
                try:
                    with manager.get_connection("institution") as conn:
                        conn.execute("INSERT INTO institution_schema.events (body)"
                                     " VALUES ('x')")
                    commits.append(time.monotonic())
                except Exception as exc:
                    failures.append(type(exc).__name__)
                delay = start + (i + 1) * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(1)
        cutovers: list[float] = []
        steps: list[dict[str, float]] = []
        phases: dict[str, float] = {}
        where = [a, b]
        for i in range(args.moves):
            src, dst = where[i % 2], where[(i + 1) % 2]
            ctx = MoveContext(topology=TOPOLOGY, service=SVC, home=_p(a), source=_p(src),
                              target=_p(dst), passwords=lambda _s: SERVICE_PASSWORD,
                              migrator_passwords=lambda _s: SERVICE_PASSWORD)
            run_move(ctx)
            if i == 0:
                phases = dict(ctx.phase_s)
            cutovers.extend(ctx.pauses)
            steps.extend(ctx.steps)
            time.sleep(0.5)
        stop.set()
        thread.join()
        gaps = [y - x for x, y in itertools.pairwise(commits)]
        worst = sorted(gaps)[-args.moves:]
        rate = len(commits) / (commits[-1] - commits[0]) if len(commits) > 1 else 0
        print(f"writer: {len(commits)} commits at {rate:.0f}/s (target {args.rate:g}/s), "
              f"{len(failures)} failed {sorted(set(failures))}")

        def summary(values: list[float]) -> str:
            return (f"p50 {statistics.median(values) * 1e3:.0f} ms, p95 "
                    f"{_pct(values, 0.95) * 1e3:.0f} ms, max {max(values) * 1e3:.0f} ms")

        print(f"cutover pause over {len(cutovers)} moves (freeze announced -> routing "
              f"flipped): {summary(cutovers)}")
        print(f"writer-observed pause (longest gap between commits, one per move): "
              f"{summary(worst)}")
        for name in steps[0]:
            print(f"  step {name:8s} {summary([s[name] for s in steps])}")
        copy_s = phases.get("copy", 0.0)
        print(f"copy of {args.rows} rows ({SVC.schema}): move-service copy phase "
              f"{copy_s:.2f} s (+ prepare {phases.get('prepare', 0.0):.2f} s) vs "
              f"pg_dump -Fc | pg_restore {dump_s:.2f} s: ratio {copy_s / dump_s:.2f}x "
              f"(with prepare {(copy_s + phases.get('prepare', 0.0)) / dump_s:.2f}x)")
        manager.close_all()
    finally:
        a.destroy()
        b.destroy()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
