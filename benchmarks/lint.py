"""Cost of the migration linter and of the contract check inside ``migrate``.

    python benchmarks/lint.py [--files 300] [--rounds 3]

1. Per typical file (the 7 reference migrations): contract analysis alone, and the full
   lint (contracts + squawk), against the baseline "squawk alone" (one squawk run per file,
   as a CI step would).  Goal: lint <= 10 ms per file.
2. --files files at once (copies of the reference migrations): the full lint against the
   baseline "squawk alone" on the same files.  Goal: <= 1 s.
2b. The lint corpus (tests/data/lint_corpus: Django sqlmigrate output, a pg_dump, Supabase-
   style files, the hazard files), all at once, in ms per file, against squawk alone on
   the same files.  Goal: <= 10 ms per file.
3. ``migrate`` of the reference schema into fresh provisioned databases, with the contract
   check and without it (the baseline: the hook replaced by a no-op), rounds alternating
   which goes first; plus the check alone on the same pending files.  Goal: the check
   costs <= 10 % of the migrate time.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from benchmarks._server import bench_database, export_passwords
from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.migrations import manager as migrations
from microservices.shared.database.migrations.contracts import analyse_migration
from microservices.shared.database.migrations.files import MigrationFile, parse_file
from microservices.shared.database.migrations.history import reference_migrations_dir
from microservices.shared.database.migrations.lint import check_pending, lint, squawk_binary
from microservices.shared.database.privileges.provisioning import provision
from microservices.shared.database.topology import Service, Topology, default_topology


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def reference_items(topology: Topology, root: Path) -> list[tuple[Service, MigrationFile]]:
    return [(svc, parse_file(p)) for svc in topology.services
            for p in sorted((root / svc.name).glob("*.sql"))]


def squawk_alone(paths: list[Path]) -> None:
    subprocess.run([squawk_binary(), "--reporter", "json", *map(str, paths)],
                   capture_output=True, check=False)


def per_file(topology: Topology, items: list[tuple[Service, MigrationFile]],
             rounds: int) -> None:
    n = len(items)

    def contracts_only() -> None:
        for svc, f in items:
            analyse_migration(topology, svc, str(f.path), f.text)

    def lint_each() -> None:
        for item in items:
            lint(topology, [item])

    def own_each() -> None:
        for item in items:
            lint(topology, [item], squawk=False)

    def squawk_each() -> None:
        for _, f in items:
            squawk_alone([f.path])

    # Rounds alternate between the two, so that a busy machine slows both alike.
    fulls, bases = [], []
    for _ in range(rounds * 3):
        fulls.append(median_ms(lint_each, 1))
        bases.append(median_ms(squawk_each, 1))
    c, full, base = (median_ms(contracts_only, rounds * 5) / n,
                     statistics.median(fulls) / n, statistics.median(bases) / n)
    print(f"1. per typical file ({n} reference migrations, median of rounds)")
    print(f"   squawk alone, one run per file (baseline)  {base:7.2f} ms")
    print(f"   contract analysis alone                     {c:7.2f} ms   "
          f"ratio {c / base:.2f}x baseline")
    own = median_ms(own_each, rounds * 5) / n
    print(f"   lint without squawk (contracts + own rules) {own:7.2f} ms   "
          f"ratio {own / base:.2f}x baseline")
    print(f"   lint (contracts + own rules + squawk)       {full:7.2f} ms   "
          f"ratio {full / base:.2f}x baseline   goal <= 10 ms")


def many_files(topology: Topology, items: list[tuple[Service, MigrationFile]], count: int,
               rounds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="edulink-bench-lint-"))
    try:
        many: list[tuple[Service, MigrationFile]] = []
        for i in range(count):
            svc, f = items[i % len(items)]
            path = tmp / svc.name / f"V{i + 1}__copy.sql"
            path.parent.mkdir(exist_ok=True)
            path.write_text(f.text)
            many.append((svc, parse_file(path)))
        base = median_ms(lambda: squawk_alone([f.path for _, f in many]), rounds)
        full = median_ms(lambda: lint(topology, many), rounds)
        print(f"\n2. {count} files at once")
        print(f"   squawk alone, one run (baseline)            {base:7.1f} ms")
        print(f"   lint (contracts + own rules + squawk)       {full:7.1f} ms   "
              f"ratio {full / base:.2f}x baseline   goal <= 1000 ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def corpus(topology: Topology, rounds: int) -> None:
    from microservices.shared.database.migrations.lint import collect_directory

    root = Path(__file__).resolve().parent.parent / "tests" / "data" / "lint_corpus"
    items = [(topology.service(folder.name), f) for tree in ("safe", "hazard")
             for folder in sorted((root / tree).iterdir())
             for f in collect_directory(folder)[0]]
    n = len(items)
    base = median_ms(lambda: squawk_alone([f.path for _, f in items]), rounds) / n
    full = median_ms(lambda: lint(topology, items), rounds) / n
    print(f"\n2b. the lint corpus ({n} files at once), per file")
    print(f"   squawk alone, one run (baseline)            {base:7.2f} ms")
    print(f"   lint (contracts + own rules + squawk)       {full:7.2f} ms   "
          f"ratio {full / base:.2f}x baseline   goal <= 10 ms")


def migrate_cost(topology: Topology, rounds: int) -> None:
    root = reference_migrations_dir()
    with bench_database(rows=1) as (admin, _topology, password):
        base = {k: v for k, v in admin.items() if k != "dbname"} | {"dbname": "postgres"}

        def run(check: bool) -> float:
            dbname = f"edulink_bench_lint_{secrets.token_hex(3)}"
            with psycopg.connect(**base, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            target = {**admin, "dbname": dbname}
            try:
                provision(target, topology, lambda _svc: password,
                          migrator_passwords=lambda _svc: password)
                export_passwords(topology, password)
                os.environ["DATABASE_URL"] = to_url(target)
                original = migrations._check_contracts
                if not check:
                    migrations._check_contracts = lambda *_a: None
                try:
                    started = time.perf_counter()
                    migrations.MigrationManager(load_settings(), root).run_all_migrations()
                    return time.perf_counter() - started
                finally:
                    migrations._check_contracts = original
            finally:
                with psycopg.connect(**base, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                        sql.Identifier(dbname)))

        with_check: list[float] = []
        without: list[float] = []
        for r in range(rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for check in order:
                (with_check if check else without).append(run(check))
    items = reference_items(topology, root)
    alone = median_ms(lambda: check_pending(topology, items), rounds * 5)
    w, wo = statistics.median(with_check) * 1000, statistics.median(without) * 1000
    print("\n3. migrate of the reference schema (7 files, fresh provisioned database)")
    print(f"   migrate without the contract check (baseline) {wo:7.1f} ms")
    print(f"   migrate with the contract check               {w:7.1f} ms   "
          f"ratio {w / wo:.2f}x baseline")
    print(f"   the check alone on the same 7 files           {alone:7.2f} ms   "
          f"= {alone / wo * 100:.1f} % of the baseline migrate   goal <= 10 %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-migrate", action="store_true",
                        help="Skip part 3 (needs a PostgreSQL server).")
    args = parser.parse_args()
    os.environ.pop("EDULINK_DB_TOPOLOGY", None)
    topology = default_topology()
    items = reference_items(topology, reference_migrations_dir())
    per_file(topology, items, args.rounds)
    many_files(topology, items, args.files, args.rounds)
    corpus(topology, args.rounds)
    if not args.no_migrate:
        migrate_cost(topology, args.rounds)


if __name__ == "__main__":
    main()
