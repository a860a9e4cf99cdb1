"""Backup and restore through edulink-db versus plain pg_dump / pg_restore.

    python benchmarks/backup.py [--mb 200] [--rounds 2]

A user_schema table of at least --mb MB (heap + index), plus the test fixture schema
(tests/data/sample_schema.sql: partitions, inheritance, an unlogged table, materialized
views, a split view, RLS) in institution_schema, is backed up with
BackupManager.create_schema_backup and with `pg_dump -Fc -Z6 -n user_schema -n
institution_schema` (the same binary, format and compression), then restored with
BackupManager.restore
into a fresh database and with `pg_restore --single-transaction` into another
(the API restores in one transaction too, and
checks row counts before it commits). Rounds alternate which goes first;
the ratios are of median wall times.  Goal: <= 1.1 for both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from benchmarks._server import bench_database
from microservices.shared.database.backup.manager import BackupManager
from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.server.pg_tools import find_tool, libpq_env, tool_version
from tests.sample_schema import load_sample_schema, snapshot

SCHEMAS = ["user_schema", "institution_schema"]


def fill(admin: dict[str, Any], megabytes: int) -> int:
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute("SET ROLE user_service_owner")
        conn.execute("CREATE TABLE user_schema.big (id bigint PRIMARY KEY, payload text,"
                     " at timestamptz NOT NULL DEFAULT now())")
        batch, n = 200_000, 0
        while True:
            conn.execute("INSERT INTO user_schema.big (id, payload) SELECT i,"
                         " md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text)"
                         " FROM generate_series(%s, %s) i", [n + 1, n + batch])
            n += batch
            size = conn.execute("SELECT pg_total_relation_size('user_schema.big')").fetchone()
            if size and size[0] >= megabytes * 1024 * 1024:
                conn.execute("RESET ROLE")
                conn.execute("VACUUM ANALYZE user_schema.big")
                return int(size[0])


def fresh_db(base: dict[str, Any]) -> dict[str, Any]:
    name = f"bench_restore_{time.monotonic_ns() % 10**9}"
    with psycopg.connect(**base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return {**base, "dbname": name}


def drop_db(base: dict[str, Any], target: dict[str, Any]) -> None:
    with psycopg.connect(**base, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
            sql.Identifier(target["dbname"])))


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with bench_database(rows=1) as (admin, _topology, password):
        base = {**admin, "dbname": "postgres"}
        size = fill(admin, args.mb)
        print(f"user_schema.big: {size / 1e6:.0f} MB")
        load_sample_schema(admin, "institution_schema", "institution_service_owner")
        fixture = snapshot(admin, "institution_schema")
        print(f"institution_schema: the fixture, {sum(fixture.rows.values())} rows in "
              f"{len(fixture.rows)} leaf tables")
        os.environ["DATABASE_URL"] = to_url(admin)
        os.environ["EDULINK_DB_BACKUP_DIR"] = tempfile.mkdtemp(prefix="edulink-bench-bk-")
        # The manifest signing key goes to a throwaway secrets store, not the cwd's.
        os.environ["EDULINK_DB_HOME"] = tempfile.mkdtemp(prefix="edulink-bench-home-")
        for name in ("AUTH", "USER", "INSTITUTION", "NOTIFICATION", "APPLICATION", "INTERNSHIP"):
            os.environ[f"EDULINK_DB_{name}_PASSWORD"] = password
        manager = BackupManager(load_settings())
        with psycopg.connect(**admin) as conn:
            major = conn.info.server_version // 10000
        pg_dump, pg_restore = find_tool("pg_dump", major), find_tool("pg_restore", major)
        # pg_restore 18 sends SET transaction_timeout even to older servers, which reject
        # it (edulink-db filters it out); the plain baseline then uses the server's own
        # pg_restore where one is installed.
        # pg_restore 18 cannot be used as the plain baseline there, and an older pg_restore
        # cannot read pg_dump 18's archives: on an older server the plain side uses the
        # server's own pg_dump and pg_restore, where installed.
        own = Path(f"/usr/lib/postgresql/{major}/bin")
        older = tool_version(pg_restore) > major and (own / "pg_restore").exists()
        plain_dump_tool = own / "pg_dump" if older else pg_dump
        plain_restore_tool = own / "pg_restore" if older else pg_restore
        print(f"edulink-db uses {pg_dump.parent}; plain uses {plain_dump_tool.parent}")
        plain_file = Path(tempfile.mkdtemp(prefix="edulink-bench-plain-")) / "plain.dump"

        def plain_dump() -> None:
            subprocess.run([str(plain_dump_tool), "-Fc", "-Z6",
                            *(f"--schema={s}" for s in SCHEMAS),
                            "-f", str(plain_file)], env=libpq_env(admin), check=True)

        backup_ids: list[str] = []

        def api_dump() -> None:
            backup_ids.append(manager.create_schema_backup(SCHEMAS).backup_id)

        dumps: dict[str, list[float]] = {"plain": [], "api": []}
        restores: dict[str, list[float]] = {"plain": [], "api": []}
        for round_no in range(args.rounds):
            order = [("plain", plain_dump), ("api", api_dump)]
            for name, fn in order if round_no % 2 == 0 else reversed(order):
                dumps[name].append(timed(fn))
            targets = {"plain": fresh_db(base), "api": fresh_db(base)}
            try:
                def plain_restore(t: dict[str, Any] = targets["plain"]) -> None:
                    subprocess.run([str(plain_restore_tool), "--single-transaction",
                                    "--exit-on-error",
                                    "-d", t["dbname"], str(plain_file)],
                                   env=libpq_env(t), check=True)

                def api_restore(t: dict[str, Any] = targets["api"]) -> None:
                    manager.restore(backup_ids[-1], target_db=to_url(t))

                order2 = [("plain", plain_restore), ("api", api_restore)]
                for name, fn in order2 if round_no % 2 == 0 else reversed(order2):
                    restores[name].append(timed(fn))
                with psycopg.connect(**targets["api"]) as conn:
                    restored = conn.execute("SELECT count(*) FROM user_schema.big").fetchone()
                with psycopg.connect(**admin) as conn:
                    original = conn.execute("SELECT count(*) FROM user_schema.big").fetchone()
                assert restored == original, (restored, original)
                assert snapshot(targets["api"], "institution_schema").rows == fixture.rows
            finally:
                for target in targets.values():
                    drop_db(base, target)
        print(f"({args.rounds} rounds, median seconds; baseline = plain pg_dump/pg_restore, "
              "custom format, gzip 6; same binaries unless noted above)")
        for label, data in (("backup", dumps), ("restore", restores)):
            plain, api = statistics.median(data["plain"]), statistics.median(data["api"])
            print(f"  {label:8} plain {plain:6.2f} s   edulink-db {api:6.2f} s   "
                  f"ratio {api / plain:.2f}   goal <= 1.10: "
                  f"{'met' if api / plain <= 1.1 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
