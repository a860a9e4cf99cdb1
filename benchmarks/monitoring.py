"""What automatic query monitoring costs: get_connection with monitoring on vs off.

    python benchmarks/monitoring.py [--ops 4000] [--threads 16]

Two ConnectionManagers on the same database: one with DATABASE_MONITORING_ENABLED
false (plain psycopg cursors: the baseline), one with it on (instrumented cursors:
timing, fingerprint lookup, histogram and counters). On a shared 2-core machine the
noise between two timed slices (±6%) exceeds the effect being measured (~1 us on a
~140 us statement), so the pairing is per operation: every worker alternates one
monitored and one unmonitored checkout+query (swapping which goes first) and adds
each one's time to its side. Drift and interference hit both sides alike.
Goal: on/off >= 0.95 (<= 5% overhead).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._server import bench_database
from benchmarks.connections import QUERIES
from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.connection_manager import ConnectionManager


def manager(threads: int, enabled: bool) -> ConnectionManager:
    os.environ["DATABASE_MONITORING_ENABLED"] = "true" if enabled else "false"
    os.environ["EDULINK_DB_USER_POOL_SIZE"] = str(threads)
    os.environ["EDULINK_DB_USER_MAX_OVERFLOW"] = "0"
    return ConnectionManager(load_settings())


def measure(off: ConnectionManager, on: ConnectionManager, threads: int, ops: int,
            query: str, make_args: object) -> tuple[float, float]:
    """Seconds spent by all workers in monitored and unmonitored operations."""
    totals = {"off": 0.0, "on": 0.0}
    lock = threading.Lock()
    per_thread = max(ops // threads, 1)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        spent = {"off": 0.0, "on": 0.0}
        pair = [("off", off), ("on", on)]
        for i in range(per_thread + 20):
            for name, mgr in pair if i % 2 else reversed(pair):
                started = time.perf_counter()
                with mgr.get_connection("user") as conn:
                    conn.execute(query, make_args(rng)).fetchall()  # type: ignore[operator]
                if i >= 20:  # the first 20 warm pools and statement caches
                    spent[name] += time.perf_counter() - started
        with lock:
            totals["off"] += spent["off"]
            totals["on"] += spent["on"]

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return totals["off"], totals["on"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=4000, help="per side, per case")
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    failures = []
    with bench_database() as (admin, _topology, password):
        os.environ["DATABASE_URL"] = to_url(admin)
        os.environ["EDULINK_DB_USER_PASSWORD"] = password
        for threads in (1, args.threads):
            off, on = manager(threads, False), manager(threads, True)
            for qname, (query, make_args) in QUERIES.items():
                t_off, t_on = measure(off, on, threads, args.ops, query, make_args)
                n = max(args.ops // threads, 1) * threads
                ratio = t_off / t_on
                label = f"{threads} thread{'s' if threads > 1 else ''}"
                print(f"{qname:13} {label:10} off {t_off / n * 1e6:7.1f} us/op   on "
                      f"{t_on / n * 1e6:7.1f} us/op   on/off throughput {ratio:.3f}   "
                      f"(+{(t_on - t_off) / n * 1e6:.1f} us/op)")
                if ratio < 0.95:
                    failures.append(f"{qname}, {label}: {ratio:.3f}")
            off.close_all()
            on.close_all()
    print("goal (on/off >= 0.95): " + ("met" if not failures else "MISSED: "
                                        + "; ".join(failures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
