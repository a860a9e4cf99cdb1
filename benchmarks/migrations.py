"""Migration runner costs, side by side.

    python benchmarks/migrations.py [--files 100] [--rounds 3] [--schemas 300]

1. Six services x --files small migrations (CREATE TABLE + INSERT each), applied by this
   runner and by yoyo-migrations (psycopg 3 backend, one yoyo history per service schema,
   like ours) into two fresh, provisioned databases. Rounds alternate which goes first;
   the ratio is ours / yoyo's median wall time.  Goal: <= 0.5.
2. status/validate for up to --schemas service schemas: round trips (counted from libpq's
   protocol trace) and time, to show the round trips do not grow with the services.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from benchmarks._server import bench_database, export_passwords
from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.core.tracing import protocol_trace, round_trips
from microservices.shared.database.migrations.history import read_histories
from microservices.shared.database.migrations.manager import MigrationManager
from microservices.shared.database.privileges.provisioning import provision
from microservices.shared.database.topology import Topology, parse_topology


def write_migrations(root: Path, topology: Topology, files: int, *,
                     name: str = "V{i}__step_{i}.sql") -> None:
    """--files small migrations per service; *name* follows the runner's naming
    (yoyo applies files in lexical order, so it gets zero-padded names)."""
    for svc in topology.services:
        folder = root / svc.name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, files + 1):
            (folder / name.format(i=i)).write_text(
                f"CREATE TABLE step_{i} (id int PRIMARY KEY, v text NOT NULL);\n"
                f"INSERT INTO step_{i} VALUES ({i}, 'row {i}');\n")


def fresh_db(base: dict[str, Any], topology: Topology, password: str) -> dict[str, Any]:
    name = f"bench_mig_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    with psycopg.connect(**base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    admin = {**base, "dbname": name}
    provision(admin, topology, lambda _s: password, migrator_passwords=lambda _s: password)
    export_passwords(topology, password)
    return admin


def drop_db(base: dict[str, Any], admin: dict[str, Any]) -> None:
    with psycopg.connect(**base, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
            sql.Identifier(admin["dbname"])))


def run_ours(admin: dict[str, Any], root: Path) -> float:
    os.environ["DATABASE_URL"] = to_url(admin)
    started = time.perf_counter()
    results = MigrationManager(load_settings(), root).run_all_migrations()
    elapsed = time.perf_counter() - started
    assert all(r["applied"] for r in results.values())
    return elapsed


def run_yoyo(admin: dict[str, Any], root: Path, topology: Topology) -> float:
    from yoyo import get_backend, read_migrations

    started = time.perf_counter()
    for svc in topology.services:
        url = (f"postgresql+psycopg://{quote(str(admin['user']), safe='')}:"
               f"{quote(str(admin['password']), safe='')}@{admin['host']}:{admin['port']}/"
               f"{admin['dbname']}?schema={svc.schema}")
        backend = get_backend(url)
        migrations = read_migrations(str(root / svc.name))
        with backend.lock():
            backend.apply_migrations(backend.to_apply(migrations))
        backend.connection.close()
    return time.perf_counter() - started


def status_scaling(base: dict[str, Any], password: str, schemas: int) -> None:
    text = "\n".join(f"[services.s{i}]" for i in range(schemas))
    topology = parse_topology(text, source=f"{schemas}-service benchmark topology")
    admin = fresh_db(base, topology, password)
    try:
        root = Path(tempfile.mkdtemp(prefix="edulink-bench-mig-"))
        write_migrations(root, topology, 2)
        os.environ["DATABASE_URL"] = to_url(admin)
        os.environ["EDULINK_DB_TOPOLOGY"] = str(root / "topology.toml")
        (root / "topology.toml").write_text(text)
        manager = MigrationManager(load_settings(), root)
        manager.run_all_migrations()
        print("\nstatus / validate over N service schemas (each with a history of 2 files)")
        print(f"  {'N':>5} {'history round trips':>20} {'statuses() ms':>14} {'validate() ms':>14}")
        with psycopg.connect(**admin, autocommit=True) as conn:
            for n in sorted({n for n in (1, 10, 100, schemas) if n <= schemas}):
                chosen = list(topology.services[:n])
                with protocol_trace(conn) as sent:
                    read_histories(conn, chosen)
                trips = round_trips(sent)
                names = [s.name for s in chosen]
                t0 = time.perf_counter()
                statuses = manager.statuses(names)
                t1 = time.perf_counter()
                manager.validate(names)
                t2 = time.perf_counter()
                assert all(not st.pending for st in statuses)
                print(f"  {n:>5} {trips:>20} {(t1 - t0) * 1000:>14.0f} {(t2 - t1) * 1000:>14.0f}")
    finally:
        os.environ.pop("EDULINK_DB_TOPOLOGY", None)
        drop_db(base, admin)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100, help="migrations per service")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--schemas", type=int, default=300)
    args = parser.parse_args()

    with bench_database(rows=1) as (bench_admin, topology, password):
        base = {**bench_admin, "dbname": "postgres"}
        export_passwords(topology, password)
        ours_dir = Path(tempfile.mkdtemp(prefix="edulink-bench-ours-"))
        yoyo_dir = Path(tempfile.mkdtemp(prefix="edulink-bench-yoyo-"))
        write_migrations(ours_dir, topology, args.files)
        write_migrations(yoyo_dir, topology, args.files, name="{i:04d}_step_{i}.sql")
        ours: list[float] = []
        yoyo: list[float] = []
        for round_no in range(args.rounds):
            a, b = fresh_db(base, topology, password), fresh_db(base, topology, password)
            try:
                if round_no % 2 == 0:
                    ours.append(run_ours(a, ours_dir))
                    yoyo.append(run_yoyo(b, yoyo_dir, topology))
                else:
                    yoyo.append(run_yoyo(b, yoyo_dir, topology))
                    ours.append(run_ours(a, ours_dir))
            finally:
                drop_db(base, a)
                drop_db(base, b)
        total = len(topology.services) * args.files
        o, y = statistics.median(ours), statistics.median(yoyo)
        print(f"{len(topology.services)} services x {args.files} migrations = {total} files "
              f"({args.rounds} rounds, medians)")
        print(f"  yoyo-migrations (baseline)  {y:7.2f} s   {total / y:7.0f} files/s   1.00")
        print(f"  edulink-db                  {o:7.2f} s   {total / o:7.0f} files/s   "
              f"{o / y:.2f}")
        print(f"  goal: <= 0.50 of yoyo's time: {'met' if o / y <= 0.5 else 'MISSED'}")
        status_scaling(base, password, args.schemas)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
