"""Benchmark of `edulink-db move-service`: write pause under ~200 writes/s over repeated
moves (there and back), and the copy rate against `pg_dump | pg_restore` of the same schema.

    .venv/bin/python -m benchmarks.move_service [--rows 100000] [--moves 4]

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--moves", type=int, default=4)
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
        # Baseline: pg_dump | pg_restore of the same schema into a scratch database of b.
        with b.connect() as conn:
            conn.execute("CREATE DATABASE dumpcopy")
        do_provision({**_p(b), "dbname": "dumpcopy"}, TOPOLOGY)
        major = 18
        dump, restore = find_tool("pg_dump", major), find_tool("pg_restore", major)
        t0 = time.perf_counter()
        d = subprocess.Popen([str(dump), "-Fc", "-n", "institution_schema", "--no-acl",
                              "-d", "postgres"], env=libpq_env(_p(a)), stdout=subprocess.PIPE)
        r = subprocess.run([str(restore), "--no-acl", "-d", "dumpcopy"],
                           env=libpq_env({**_p(b), "dbname": "dumpcopy"}), stdin=d.stdout,
                           capture_output=True, check=False)
        d.wait()
        dump_s = time.perf_counter() - t0
        os.environ["DATABASE_URL"] = to_url(_p(a))
        for s in TOPOLOGY.services:
            os.environ[f"EDULINK_DB_{s.name.upper()}_PASSWORD"] = SERVICE_PASSWORD
        manager = ConnectionManager(load_settings())
        commits: list[float] = []
        failures = [0]
        stop = threading.Event()

        def writer() -> None:
            while not stop.is_set():
                try:
                    with manager.get_connection("institution") as conn:
                        conn.execute("INSERT INTO institution_schema.events (body)"
                                     " VALUES ('x')")
                    commits.append(time.monotonic())
                except Exception:
                    failures[0] += 1
                time.sleep(0.005)  # ~200 writes/s with the round trip

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(1)
        cutovers: list[float] = []
        copy_s = 0.0
        where = [a, b]
        for i in range(args.moves):
            src, dst = where[i % 2], where[(i + 1) % 2]
            ctx = MoveContext(topology=TOPOLOGY, service=SVC, home=_p(a), source=_p(src),
                              target=_p(dst), passwords=lambda _s: SERVICE_PASSWORD,
                              migrator_passwords=lambda _s: SERVICE_PASSWORD)
            t0 = time.perf_counter()
            run_move(ctx)
            if i == 0:
                copy_s = time.perf_counter() - t0 - ctx.pauses[0]
            cutovers.extend(ctx.pauses)
            time.sleep(0.5)
        stop.set()
        thread.join()
        gaps = [y - x for x, y in itertools.pairwise(commits)]
        worst = sorted(gaps)[-args.moves:]
        rate = len(commits) / (commits[-1] - commits[0]) if len(commits) > 1 else 0
        print(f"writer: {len(commits)} commits at {rate:.0f}/s, {failures[0]} failed")
        p50 = statistics.median(cutovers) * 1e3
        print(f"cutover pause over {len(cutovers)} moves: p50 {p50:.0f}"
              f" ms, p95 {_pct(cutovers, 0.95) * 1e3:.0f} ms, max {max(cutovers) * 1e3:.0f} ms")
        print("longest writer gaps (one per move): "
              + ", ".join(f"{g * 1e3:.0f} ms" for g in worst))
        print(f"copy of {args.rows} rows: move-service (prepare + copy) {copy_s:.2f} s vs "
              f"pg_dump | pg_restore {dump_s:.2f} s (rc {r.returncode}): ratio "
              f"{copy_s / dump_s:.2f}x")
        manager.close_all()
    finally:
        a.destroy()
        b.destroy()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
