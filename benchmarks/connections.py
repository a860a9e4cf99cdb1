"""Connection paths side by side: ops/s and the ratio of each to one held connection.

    python benchmarks/connections.py [--seconds 0.5] [--rounds 5] [--threads 16]

Paths, all logged in as user_service_role, autocommit where the library allows;
the connection manager runs with monitoring ON (its default, as users run it):
  (a) one held psycopg connection (per thread)     -- the baseline
  (b) raw psycopg_pool, autocommit=True             -- what we build on
  (c) SQLAlchemy QueuePool, defaults (rollback on return)
  (d) connection_manager.get_connection('user')
  (e) connection_manager.get_connection('user', user_id=...)
  (f) raw psycopg_pool with reset= running session_state.RESET_SESSION on every
      return (in psycopg_pool's worker): the "always reset" design that the
      connection manager does NOT use; it resets only checkouts that may have
      changed their session (see session_state.py), so a clean one pays nothing.
Queries: SELECT 1, and a primary-key read from a 10,000-row table.

The asyncio variant runs --tasks concurrent tasks (default 50) in one event loop
over --async-connections connections (default 10: a role's connection limit is
shared by every process of a service):
  (a) held psycopg AsyncConnections, handed to tasks through an asyncio.Queue
  (d) connection_manager.get_async_connection('user')
  (e) connection_manager.get_async_connection('user', user_id=...)

Rounds are interleaved (a b c d e, then the next round in another order) so that
machine noise hits every path alike. Each round gives every path's rate and its
ratio to (a) *in that round*; the table shows the medians over rounds, which
cancels the slow drifts of a shared machine.
Goals (issue "Connection manager"): d/a >= 0.8 single-threaded, e/a >= 0.5,
d never below b.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool
from sqlalchemy.pool import QueuePool

from benchmarks._server import bench_database, service_params
from microservices.shared.database.config import load_settings, to_url
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.connections.session_state import RESET_SESSION

QUERIES = {
    "SELECT 1": ("SELECT 1", lambda rng: None),
    "indexed read": ("SELECT id, payload FROM bench_items WHERE id = %s",
                     lambda rng: (rng.randint(1, 10_000),)),
}
Op = Callable[[random.Random], None]


def build_paths(params: dict[str, Any], manager: ConnectionManager, threads: int,
                query: str, make_args: Callable[[random.Random], Any]
                ) -> tuple[dict[str, Callable[[], Op]], Callable[[], None]]:
    """Per path, a factory giving each thread its operation; plus a cleanup."""
    conninfo = make_conninfo(**{k: str(v) for k, v in params.items()})
    size = max(threads, 1)
    pool = ConnectionPool(conninfo, min_size=size, max_size=size, open=True,
                          kwargs={"autocommit": True})
    pool.wait()

    def reset(conn: psycopg.Connection[Any]) -> None:
        conn.execute(RESET_SESSION, prepare=False)

    rpool = ConnectionPool(conninfo, min_size=size, max_size=size, open=True,
                           kwargs={"autocommit": True}, reset=reset)
    rpool.wait()

    def creator() -> Any:  # a DBAPI connection, as QueuePool expects
        return psycopg.connect(conninfo)

    qpool = QueuePool(creator, pool_size=size, max_overflow=10)
    # One connection per thread, made once and reused by every round.
    held = [psycopg.connect(conninfo, autocommit=True) for _ in range(size)]
    next_held = [0]

    def held_factory() -> Op:
        conn = held[next_held[0] % size]
        next_held[0] += 1

        def op(rng: random.Random) -> None:
            conn.execute(query, make_args(rng)).fetchall()
        return op

    def pool_factory() -> Op:
        def op(rng: random.Random) -> None:
            with pool.connection() as conn:
                conn.execute(query, make_args(rng)).fetchall()
        return op

    def reset_pool_factory() -> Op:
        def op(rng: random.Random) -> None:
            with rpool.connection() as conn:
                conn.execute(query, make_args(rng)).fetchall()
        return op

    def sqlalchemy_factory() -> Op:
        def op(rng: random.Random) -> None:
            conn = qpool.connect()
            try:
                cur = conn.cursor()
                cur.execute(query, make_args(rng))
                cur.fetchall()
                cur.close()
            finally:
                conn.close()  # back to the pool, with its default rollback
        return op

    def manager_factory() -> Op:
        def op(rng: random.Random) -> None:
            with manager.get_connection("user") as conn:
                conn.execute(query, make_args(rng)).fetchall()
        return op

    def manager_user_factory() -> Op:
        def op(rng: random.Random) -> None:
            with manager.get_connection("user", user_id=f"u{rng.randrange(1000)}") as conn:
                conn.execute(query, make_args(rng)).fetchall()
        return op

    def cleanup() -> None:
        for conn in held:
            conn.close()
        pool.close()
        rpool.close()
        qpool.dispose()

    return {
        "a held connection": held_factory,
        "b psycopg_pool": pool_factory,
        "c SQLAlchemy QueuePool": sqlalchemy_factory,
        "d get_connection": manager_factory,
        "e get_connection(user_id)": manager_user_factory,
        "f psycopg_pool, always reset": reset_pool_factory,
    }, cleanup


def run_path(factory: Callable[[], Op], threads: int, seconds: float) -> tuple[int, float]:
    """Run *threads* workers for *seconds*; return (operations, elapsed)."""
    ops = [factory() for _ in range(threads)]
    counts = [0] * threads
    start_line = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        rng = random.Random(i)
        op = ops[i]
        op(rng)  # warm: first checkout, statement preparation
        start_line.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            op(rng)
            n += 1
        counts[i] = n

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    stop_at[0] = time.perf_counter() + seconds + 3600  # provisional, set below
    start_line.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for w in workers:
        w.join()
    return sum(counts), time.perf_counter() - t0


AsyncOp = Callable[[random.Random], Any]  # returns an awaitable


async def run_async_path(op: AsyncOp, tasks: int, seconds: float) -> tuple[int, float]:
    """Run *tasks* concurrent tasks doing *op* for *seconds*; return (operations, elapsed)."""
    counts = [0] * tasks
    for i in range(tasks):  # warm every connection
        await op(random.Random(i))
    t0 = time.perf_counter()
    stop_at = t0 + seconds

    async def task(i: int) -> None:
        rng = random.Random(i)
        n = 0
        while time.perf_counter() < stop_at:
            await op(rng)
            n += 1
        counts[i] = n

    await asyncio.gather(*(task(i) for i in range(tasks)))
    return sum(counts), time.perf_counter() - t0


async def async_variant(params: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The asyncio variant: e/a with --tasks tasks over --async-connections connections."""
    size = args.async_connections
    os.environ["EDULINK_DB_USER_POOL_SIZE"] = str(size)
    os.environ["EDULINK_DB_USER_MAX_OVERFLOW"] = "0"
    manager = ConnectionManager(load_settings())
    conninfo = make_conninfo(**{k: str(v) for k, v in params.items()})
    held: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
    for _ in range(size):
        held.put_nowait(await psycopg.AsyncConnection.connect(conninfo, autocommit=True))
    failures: list[str] = []
    try:
        for qname, (query, make_args) in QUERIES.items():
            async def held_op(rng: random.Random, query: str = query,
                              make_args: Any = make_args) -> None:
                conn = await held.get()
                try:
                    await (await conn.execute(query, make_args(rng))).fetchall()
                finally:
                    held.put_nowait(conn)

            async def manager_op(rng: random.Random, query: str = query,
                                 make_args: Any = make_args) -> None:
                async with manager.get_async_connection("user") as conn:
                    await (await conn.execute(query, make_args(rng))).fetchall()

            async def manager_user_op(rng: random.Random, query: str = query,
                                      make_args: Any = make_args) -> None:
                async with manager.get_async_connection(
                        "user", user_id=f"u{rng.randrange(1000)}") as conn:
                    await (await conn.execute(query, make_args(rng))).fetchall()

            paths: dict[str, AsyncOp] = {
                "a held connections": held_op,
                "d get_async_connection": manager_op,
                "e get_async_connection(user_id)": manager_user_op,
            }
            rates: dict[str, list[float]] = {name: [] for name in paths}
            names = list(paths)
            order = random.Random(size)
            for _ in range(args.rounds):
                order.shuffle(names)
                for name in names:
                    n, t = await run_async_path(paths[name], args.tasks, args.seconds)
                    rates[name].append(n / t)
            base = rates["a held connections"]
            print(f"\n{qname}, asyncio: {args.tasks} tasks over {size} connections "
                  f"({args.rounds} rounds x {args.seconds}s per path; medians)")
            print(f"  {'path':32} {'ops/s':>10} {'ratio to (a)':>13}")
            ratio = {}
            for name, r in rates.items():
                ratio[name] = statistics.median(x / y for x, y in zip(r, base, strict=True))
                print(f"  {name:32} {statistics.median(r):10,.0f} {ratio[name]:13.2f}")
            e = ratio["e get_async_connection(user_id)"]
            if e < 0.5:
                failures.append(f"{qname}, asyncio {args.tasks} tasks: e/a = {e:.2f} < 0.5")
    finally:
        while not held.empty():
            await held.get_nowait().close()
        await manager.aclose_all()
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.15, help="per path per round")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=16, help="the multi-threaded case")
    parser.add_argument("--tasks", type=int, default=50, help="the asyncio case's tasks")
    parser.add_argument("--async-connections", type=int, default=10,
                        help="connections the asyncio case's tasks share")
    args = parser.parse_args()

    with bench_database() as (admin, topology, password):
        params = service_params(admin, topology, password)
        os.environ["DATABASE_URL"] = to_url(admin)
        os.environ["EDULINK_DB_USER_PASSWORD"] = password
        # As users run it: monitoring is on by default; make sure no stray setting
        # measures the cheaper unmonitored path instead.
        os.environ["DATABASE_MONITORING_ENABLED"] = "true"
        failures = []
        for threads in (1, args.threads):
            # Pools as large as the thread count, like (b): psycopg_pool hands out
            # connections FIFO, so a larger pool would rotate through cold backends.
            os.environ["EDULINK_DB_USER_POOL_SIZE"] = str(threads)
            os.environ["EDULINK_DB_USER_MAX_OVERFLOW"] = "0"
            manager = ConnectionManager(load_settings())
            assert manager.settings.database_monitoring_enabled
            for qname, (query, make_args) in QUERIES.items():
                paths, cleanup = build_paths(params, manager, threads, query, make_args)
                rates: dict[str, list[float]] = {name: [] for name in paths}
                names = list(paths)
                order = random.Random(threads)
                for _ in range(args.rounds):
                    order.shuffle(names)
                    for name in names:
                        n, t = run_path(paths[name], threads, args.seconds)
                        rates[name].append(n / t)
                cleanup()
                base = rates["a held connection"]
                rate = {name: statistics.median(r) for name, r in rates.items()}
                ratio = {name: statistics.median(x / y for x, y in zip(r, base, strict=True))
                         for name, r in rates.items()}
                d_over_b = statistics.median(
                    x / y for x, y in zip(rates["d get_connection"], rates["b psycopg_pool"],
                                          strict=True))
                label = f"{threads} thread{'s' if threads > 1 else ''}"
                print(f"\n{qname}, {label} ({args.rounds} rounds x {args.seconds}s per path; "
                      "medians)")
                print(f"  {'path':28} {'ops/s':>10} {'ratio to (a)':>13}")
                for name in paths:
                    print(f"  {name:28} {rate[name]:10,.0f} {ratio[name]:13.2f}")
                print(f"  d/b = {d_over_b:.2f}")
                d, e = ratio["d get_connection"], ratio["e get_connection(user_id)"]
                if threads == 1 and d < 0.8:
                    failures.append(f"{qname}, {label}: d/a = {d:.2f} < 0.8")
                if e < 0.5:
                    failures.append(f"{qname}, {label}: e/a = {e:.2f} < 0.5")
                if d_over_b < 1:
                    failures.append(f"{qname}, {label}: d/b = {d_over_b:.2f} < 1")
            manager.close_all()
        failures += asyncio.run(async_variant(params, args))
    print("\ngoals: " + ("all met" if not failures else "MISSED: " + "; ".join(failures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
