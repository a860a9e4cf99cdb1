"""What OpenTelemetry tracing costs: get_connection + one statement, traced off and on.

    python benchmarks/tracing.py [--ops 4000] [--threads 4]

Three ConnectionManagers on the same database, same settings but for tracing:

- baseline: the pool's cursor classes forced to the ones it used before tracing
  existed (no tracing code on the statement path);
- off: DATABASE_TRACING_ENABLED=false, as configured (the default);
- on: DATABASE_TRACING_ENABLED=true, with the OpenTelemetry SDK's tracer provider
  (spans are created, timed and ended; no exporter, so no I/O is measured).

As in benchmarks/monitoring.py, a shared 2-core machine is noisier between two timed
slices than the effect measured, so every worker runs one operation of each side in
turn (in a shuffled order) and adds each one's time to its side. Goal: off/baseline
throughput >= 0.98 (tracing off is free); on is printed for information. The workers'
own CPU time per operation is printed too: on a loaded machine it is steadier than the
wall clock, which includes the server's and other programs' share.
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

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from benchmarks._server import bench_database
from benchmarks.connections import QUERIES
from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.connections.request_context import (
    AsyncContextServerCursor,
    ContextServerCursor,
)

SIDES = ("baseline", "off", "on")


def manager(threads: int, tracing: bool) -> ConnectionManager:
    os.environ["DATABASE_TRACING_ENABLED"] = "true" if tracing else "false"
    os.environ["EDULINK_DB_USER_POOL_SIZE"] = str(threads)
    os.environ["EDULINK_DB_USER_MAX_OVERFLOW"] = "0"
    return ConnectionManager(load_settings())


def baseline(threads: int) -> ConnectionManager:
    """A manager whose user pool has the cursor classes chosen before tracing existed."""
    mgr = manager(threads, False)
    entry = mgr._entry("user")
    if os.environ.get("DATABASE_MONITORING_ENABLED", "true").lower() in ("1", "true"):
        from microservices.shared.database.monitoring import instrumentation as ins

        entry.cursor, entry.context_cursor = ins.InstrumentedCursor, \
            ins.InstrumentedContextCursor
    else:
        from microservices.shared.database.connections import request_context as rc

        entry.cursor, entry.context_cursor = rc.CleanCursor, rc.ContextCursor
    entry.server_cursor, entry.async_server_cursor = ContextServerCursor, \
        AsyncContextServerCursor
    return mgr


def measure(managers: dict[str, ConnectionManager], threads: int, ops: int, query: str,
            make_args: object) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds spent by all workers on each side: wall clock, and the workers' own CPU
    time (what the client code costs, without the server's and the scheduler's share)."""
    totals = dict.fromkeys(SIDES, 0.0)
    cpu_totals = dict.fromkeys(SIDES, 0.0)
    lock = threading.Lock()
    per_thread = max(ops // threads, 1)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        spent = dict.fromkeys(SIDES, 0.0)
        cpu = dict.fromkeys(SIDES, 0.0)
        order = list(SIDES)
        for i in range(per_thread + 20):
            # Shuffled, not rotated: a rotation keeps the cyclic order, so the side after
            # "on" would always pay for collecting the garbage of its spans.
            rng.shuffle(order)
            for name in order:
                started, cpu_started = time.perf_counter(), time.thread_time()
                with managers[name].get_connection("user") as conn:
                    conn.execute(query, make_args(rng)).fetchall()  # type: ignore[operator]
                if i >= 20:  # the first 20 warm pools and statement caches
                    spent[name] += time.perf_counter() - started
                    cpu[name] += time.thread_time() - cpu_started
        with lock:
            for name in SIDES:
                totals[name] += spent[name]
                cpu_totals[name] += cpu[name]

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return totals, cpu_totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=4000, help="per side, per case")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    trace.set_tracer_provider(TracerProvider())
    failures = []
    with bench_database() as (admin, _topology, password):
        os.environ["DATABASE_URL"] = to_url(admin)
        os.environ["EDULINK_DB_USER_PASSWORD"] = password
        for threads in (1, args.threads):
            managers = {"baseline": baseline(threads), "off": manager(threads, False),
                        "on": manager(threads, True)}
            assert managers["off"]._entry("user").cursor is \
                managers["baseline"]._entry("user").cursor
            for qname, (query, make_args) in QUERIES.items():
                spent, cpu = measure(managers, threads, args.ops, query, make_args)
                n = max(args.ops // threads, 1) * threads
                us = {name: spent[name] / n * 1e6 for name in SIDES}
                cpu_us = {name: cpu[name] / n * 1e6 for name in SIDES}
                off_ratio = spent["baseline"] / spent["off"]
                on_ratio = spent["baseline"] / spent["on"]
                label = f"{threads} thread{'s' if threads > 1 else ''}"
                print(f"{qname:13} {label:10} baseline {us['baseline']:7.1f} us/op   "
                      f"off {us['off']:7.1f}   on {us['on']:7.1f}   "
                      f"off/baseline throughput {off_ratio:.3f}   "
                      f"on/baseline {on_ratio:.3f} (+{us['on'] - us['baseline']:.1f} us/op)")
                print(f"{'':13} {'':10} client CPU us/op: baseline {cpu_us['baseline']:6.1f}"
                      f"   off {cpu_us['off']:6.1f}   on {cpu_us['on']:6.1f}   "
                      f"off/baseline {cpu['baseline'] / cpu['off']:.3f}")
                if off_ratio < 0.98:
                    failures.append(f"{qname}, {label}: {off_ratio:.3f}")
            for mgr in managers.values():
                mgr.close_all()
    print("goal (off/baseline >= 0.98): " + ("met" if not failures else "MISSED: "
                                             + "; ".join(failures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
