"""What automatic query monitoring costs: get_connection with monitoring on vs off.

    python benchmarks/monitoring.py [--seconds 0.15] [--rounds 30] [--threads 16]

Two ConnectionManagers on the same database, one with DATABASE_MONITORING_ENABLED
false (plain psycopg cursors: the baseline), one with it on (instrumented cursors:
timing, fingerprint lookup, histogram observation). Rounds interleave the two;
the ratio is the median of per-round on/off rates.  Goal: >= 0.95 (<= 5% overhead).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._server import bench_database
from benchmarks.connections import QUERIES, run_path
from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.connection_manager import ConnectionManager


def manager(threads: int, enabled: bool) -> ConnectionManager:
    os.environ["DATABASE_MONITORING_ENABLED"] = "true" if enabled else "false"
    os.environ["EDULINK_DB_USER_POOL_SIZE"] = str(threads)
    os.environ["EDULINK_DB_USER_MAX_OVERFLOW"] = "0"
    return ConnectionManager(load_settings())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.15)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    failures = []
    with bench_database() as (admin, _topology, password):
        os.environ["DATABASE_URL"] = to_url(admin)
        os.environ["EDULINK_DB_USER_PASSWORD"] = password
        for threads in (1, args.threads):
            managers = {"off": manager(threads, False), "on": manager(threads, True)}
            for qname, (query, make_args) in QUERIES.items():
                def factory(m: ConnectionManager, q: str = query, mk: Any = make_args) -> Any:
                    def make() -> Any:
                        def op(rng: random.Random) -> None:
                            with m.get_connection("user") as conn:
                                conn.execute(q, mk(rng)).fetchall()
                        return op
                    return make

                rates: dict[str, list[float]] = {"off": [], "on": []}
                order = ["off", "on"]
                for round_no in range(args.rounds):
                    for name in order if round_no % 2 == 0 else reversed(order):
                        n, t = run_path(factory(managers[name]), threads, args.seconds)
                        rates[name].append(n / t)
                ratio = statistics.median(a / b for a, b in zip(rates["on"], rates["off"],
                                                                strict=True))
                label = f"{threads} thread{'s' if threads > 1 else ''}"
                print(f"{qname:13} {label:10} off {statistics.median(rates['off']):8,.0f}/s"
                      f"   on {statistics.median(rates['on']):8,.0f}/s   on/off {ratio:.3f}")
                if ratio < 0.95:
                    failures.append(f"{qname}, {label}: {ratio:.3f}")
            for m in managers.values():
                m.close_all()
    print("goal (on/off >= 0.95): " + ("met" if not failures else "MISSED: "
                                        + "; ".join(failures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
