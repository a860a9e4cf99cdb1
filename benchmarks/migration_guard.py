"""What judging a migration file by its catalog costs (issue 28).

    python benchmarks/migration_guard.py [--rounds 200] [--files 20]

On the reference topology with the reference migrations applied (a fresh embedded
server, or EDULINK_BENCH_DATABASE_URL):

1. the catalog snapshot the runner reads before and after every file
   (migrations/guard.py), per service, as the service's migrator inside a
   transaction, like the runner: median and 95th percentile over --rounds;
2. end to end, --files trivial files per service (CREATE TABLE + INSERT), applied by
   the runner: milliseconds per file, of which two snapshots and one comparison are
   the guard's share.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from benchmarks._server import bench_database, export_passwords
from microservices.shared.database.config import load_settings, service_conninfo, to_url
from microservices.shared.database.migrations.guard import CatalogGuard
from microservices.shared.database.migrations.history import reference_migrations_dir
from microservices.shared.database.migrations.manager import MigrationManager


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="snapshots per service")
    parser.add_argument("--files", type=int, default=20, help="trivial files per service")
    args = parser.parse_args()

    with bench_database(rows=1) as (admin, topology, password):
        export_passwords(topology, password)
        os.environ["DATABASE_URL"] = to_url(admin)
        settings = load_settings()
        MigrationManager(settings, reference_migrations_dir()).run_all_migrations()

        print(f"catalog snapshot per service ({args.rounds} rounds; two per file)")
        print(f"  {'service':<14} {'facts':>6} {'median ms':>10} {'p95 ms':>8} {'compare ms':>11}")
        medians: list[float] = []
        for svc in topology.services:
            guard = CatalogGuard(topology, svc)
            with psycopg.connect(**service_conninfo(svc, settings, kind="migrator")) as conn:
                times: list[float] = []
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    facts = guard.snapshot(conn)
                    times.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                assert guard.problems(facts, dict(facts)) == []
                compare = (time.perf_counter() - t0) * 1000
                conn.rollback()
            times.sort()
            medians.append(statistics.median(times))
            print(f"  {svc.name:<14} {len(facts):>6} {medians[-1]:>10.2f} "
                  f"{times[int(len(times) * 0.95) - 1]:>8.2f} {compare:>11.3f}")
        print(f"  guard per file (2 snapshots, median over services): "
              f"{2 * statistics.median(medians):.2f} ms")

        root = Path(tempfile.mkdtemp(prefix="edulink-bench-guard-"))
        for svc in topology.services:
            (root / svc.name).mkdir(parents=True)
            for i in range(1, args.files + 1):
                (root / svc.name / f"V{1000 + i}__guard_bench_{i}.sql").write_text(
                    f"CREATE TABLE guard_bench_{i} (id int PRIMARY KEY, v text);\n"
                    f"INSERT INTO guard_bench_{i} VALUES ({i}, 'row');\n")
        # The reference files, then ours on top of them.
        reference = reference_migrations_dir()
        for svc in topology.services:
            for f in (reference / svc.name).glob("*.sql"):
                (root / svc.name / f.name).write_text(f.read_text())
        t0 = time.perf_counter()
        MigrationManager(settings, root).run_all_migrations()
        elapsed = time.perf_counter() - t0
        files = args.files * len(topology.services)
        print(f"end to end: {files} trivial files in {elapsed:.2f} s = "
              f"{elapsed * 1000 / files:.2f} ms per file (the guard's share included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
