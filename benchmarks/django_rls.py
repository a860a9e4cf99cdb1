"""Django ORM primary-key reads with and without the RLS user context, side by side.

    python benchmarks/django_rls.py [--seconds 0.2] [--rounds 15]

One process, one Django connection as user_service_role (settings from
configure_service_database('user'), persistent connection), autocommit:
  (a) Item.objects.get(pk=...), django_rls not installed      -- the baseline
  (b) the same, wrapper installed, no user (anonymous requests)
  (c) the same inside one rls_user(...) block (a request's queries)
  (d) rls_user(...) entered and left around every read
  (e) as (c), on a FORCE ROW LEVEL SECURITY table whose policy reads
      shared_schema.current_user_id() (PostgreSQL's policy work included)
  (f) .iterator() over 1,000 rows (a server-side cursor), no RLS layer -- baseline of (g)
  (g) the same inside one rls_user(...) block
Each round interleaves short batches of all paths, reshuffled every time, until each
path has run --seconds; each round gives each path's ratio to its baseline ((a), or (f)
for (g)) in that round, and the table shows the medians over rounds.
Goals (issue 26): (c)/(a) <= 1.10 and (g)/(f) <= 1.10 -- time per operation, Django's
own overhead included.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from benchmarks._server import bench_database
from microservices.shared.database.config import to_url

ROWS = 10_000
USER = "bench-user-1"
GOAL = 1.10
ITER_ROWS = 1_000


def _prepare_rls_table(admin: dict[str, Any]) -> None:
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute("SET ROLE user_service_owner")
        conn.execute("CREATE TABLE user_schema.bench_owned (id int PRIMARY KEY,"
                     " owner text NOT NULL, payload text NOT NULL)")
        conn.execute("INSERT INTO user_schema.bench_owned"
                     " SELECT i, %s, md5(i::text) FROM generate_series(1, %s) i", [USER, ROWS])
        conn.execute("ALTER TABLE user_schema.bench_owned ENABLE ROW LEVEL SECURITY")
        conn.execute("ALTER TABLE user_schema.bench_owned FORCE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY owner_only ON user_schema.bench_owned"
                     " USING (owner = shared_schema.current_user_id())")
        conn.execute("RESET ROLE")
        conn.execute("ANALYZE user_schema.bench_owned")


def _setup_django(admin: dict[str, Any], password: str) -> tuple[Any, Any]:
    for key in [k for k in os.environ if k.startswith(("DATABASE_", "EDULINK_DB_"))]:
        del os.environ[key]
    os.environ["DATABASE_URL"] = to_url(admin)
    os.environ["EDULINK_DB_USER_PASSWORD"] = password

    import django
    from django.conf import settings

    from microservices.shared.database.django_settings import configure_service_database

    databases = configure_service_database("user")
    databases["default"]["CONN_MAX_AGE"] = None  # one held connection: measure the query path
    settings.configure(DATABASES=databases, INSTALLED_APPS=["django.contrib.contenttypes"],
                       USE_TZ=True, DEFAULT_AUTO_FIELD="django.db.models.BigAutoField")
    django.setup()
    from django.db import models

    class Item(models.Model):  # type: ignore[misc]
        payload = models.TextField()

        class Meta:
            app_label = "contenttypes"  # any installed app: the table is not managed
            db_table = "bench_items"
            managed = False

    class Owned(models.Model):  # type: ignore[misc]
        owner = models.TextField()
        payload = models.TextField()

        class Meta:
            app_label = "contenttypes"
            db_table = "bench_owned"
            managed = False

    return Item, Owned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.2, help="per path and round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    with bench_database(ROWS) as (admin, _topology, password):
        _prepare_rls_table(admin)
        item, owned = _setup_django(admin, password)
        from django.db import connection

        from microservices.shared.database.django_support import rls as django_rls

        rng = random.Random(14)

        def without_wrapper() -> None:
            django_rls._uninstall_on(connection)

        def with_wrapper() -> None:
            django_rls.install()
            django_rls._install_on(connection)

        def read(model: Any) -> Callable[[], None]:
            def op() -> None:
                model.objects.get(pk=rng.randint(1, ROWS))
            return op

        def iterate() -> None:
            for _row in item.objects.filter(pk__lte=ITER_ROWS).iterator(chunk_size=2000):
                pass

        def per_read_context() -> None:
            with django_rls.rls_user(USER):
                item.objects.get(pk=rng.randint(1, ROWS))

        # name -> (setup, context user or None, operation, baseline path)
        base, iter_base = "a plain Django (baseline)", "f iterator, plain Django"
        paths: dict[str, tuple[Callable[[], None], str | None, Callable[[], None], str]] = {
            base: (without_wrapper, None, read(item), base),
            "b wrapper, no user": (with_wrapper, None, read(item), base),
            "c rls_user block": (with_wrapper, USER, read(item), base),
            "d rls_user per read": (with_wrapper, None, per_read_context, base),
            "e rls_user, FORCE RLS table": (with_wrapper, USER, read(owned), base),
            iter_base: (without_wrapper, None, iterate, iter_base),
            "g iterator, rls_user block": (with_wrapper, USER, iterate, iter_base),
        }
        with django_rls.rls_user(USER):  # warm up and check the RLS table answers
            owned.objects.get(pk=1)
        rates: dict[str, list[float]] = {name: [] for name in paths}
        ratios: dict[str, list[float]] = {name: [] for name in paths}
        order = list(paths)
        for name in order:  # warm every path up once
            paths[name][0]()
            _timed(paths[name], 50)
        for _ in range(args.rounds):
            # A round interleaves short batches of every path (shuffled each time) for
            # --seconds per path, so that the machine's drifts hit all paths alike.
            spent = dict.fromkeys(paths, 0.0)
            done = dict.fromkeys(paths, 0)
            while min(spent.values()) < args.seconds:
                rng.shuffle(order)
                for name in order:
                    batch = BATCH[paths[name][2] is iterate]
                    spent[name] += _timed(paths[name], batch)
                    done[name] += batch
            this_round = {name: done[name] / spent[name] for name in paths}
            for name, rate in this_round.items():
                rates[name].append(rate)
                ratios[name].append(this_round[paths[name][3]] / rate)
        connection.close()

    print(f"Django ORM, {args.rounds} rounds x {args.seconds}s per path (median ops/s; "
          "time per operation relative to its baseline in the same round)")
    for name, path in paths.items():
        print(f"  {name:<30} {statistics.median(rates[name]):>9,.0f}/s   "
              f"time ratio to ({path[3][0]}) {statistics.median(ratios[name]):.3f}")
    read_ratio = statistics.median(ratios["c rls_user block"])
    iter_ratio = statistics.median(ratios["g iterator, rls_user block"])
    print(f"goals: (c)/(a) = {read_ratio:.3f} <= {GOAL} "
          f"{'met' if read_ratio <= GOAL else 'NOT met'}; (g)/(f) = {iter_ratio:.3f} <= "
          f"{GOAL} {'met' if iter_ratio <= GOAL else 'NOT met'}")


# Operations per batch: (a pk read, an .iterator() over 1,000 rows).
BATCH = {False: 20, True: 2}


def _timed(path: tuple[Callable[[], None], str | None, Callable[[], None], str],
           count: int) -> float:
    """Seconds *count* runs of *path*'s operation take, after its setup, inside its
    rls_user block if it has a user (one block, many operations: a request)."""
    setup, user, op, _baseline = path
    setup()
    if user is None:
        start = time.perf_counter()
        for _ in range(count):
            op()
        return time.perf_counter() - start
    with _rls_user(user):
        start = time.perf_counter()
        for _ in range(count):
            op()
        return time.perf_counter() - start


def _rls_user(user: str) -> Any:
    from microservices.shared.database.django_rls import rls_user

    return rls_user(user)


if __name__ == "__main__":
    main()
