"""Row-level security scenarios run in a subprocess by tests/test_django_rls.py.

    python rls_scenarios.py NAME [ARG ...]   (DJANGO_SETTINGS_MODULE=edulink_site.settings)

Prints one JSON line with what each request and query saw.
"""

import asyncio
import json
import sys
import threading

import django

django.setup()

from django.db import connection, connections, transaction  # noqa: E402
from django.test import AsyncClient, Client  # noqa: E402
from profiles.models import Profile  # noqa: E402

from microservices.shared.database.django_rls import rls_user  # noqa: E402

HEADER = "X-Edulink-User"  # headers= reaches META in both clients (AsyncClient ignores **extra)


def _as(user_id: str) -> dict:
    return {"headers": {HEADER: user_id}}


def _setting(alias: str = "default") -> object:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT shared_schema.current_user_id()")  # NULL: no user
        return cursor.fetchone()[0]


def _visible() -> list[str]:
    return sorted(str(u) for u in Profile.objects.values_list("user_id", flat=True))


def seed(*user_ids: str) -> dict:
    for user_id in user_ids:
        with rls_user(user_id):
            Profile.objects.create(user_id=user_id, display_name=f"user {user_id[:8]}")
    return {"after": _visible()}


def middleware_sync(*user_ids: str) -> dict:
    client = Client()
    out: dict = {"requests": {}, "atomic": {}}
    for user_id in user_ids:
        out["requests"][user_id] = client.get("/visible", **_as(user_id)).json()["visible"]
        out["atomic"][user_id] = client.get("/visible-atomic", **_as(user_id)).json()
        # Right after the request, on the same (persistent) Django connection:
        out.setdefault("after_request", []).append(
            {"visible": _visible(), "setting": _setting()})
    out["anonymous"] = client.get("/visible").json()["visible"]
    out["anonymous_atomic"] = client.get("/visible-atomic").json()
    out["pid_stable"] = connection.connection is not None  # the connection outlived requests
    return out


def middleware_async(*user_ids: str) -> dict:
    async def run() -> dict:
        client = AsyncClient()
        out: dict = {"requests": {}}
        for user_id in user_ids:
            response = await client.get("/visible-async", **_as(user_id))
            out["requests"][user_id] = response.json()
        out["anonymous"] = (await client.get("/visible-async")).json()
        # Concurrent requests of different users on one event loop: one context per task.
        responses = await asyncio.gather(*[
            AsyncClient().get("/visible-async", **_as(u)) for u in user_ids * 3])
        out["concurrent"] = [[u, r.json()["visible"]]
                             for u, r in zip(user_ids * 3, responses, strict=True)]
        return out

    result = asyncio.run(run())
    result["after"] = _visible()
    return result


def async_orm(rounds: str, *user_ids: str) -> dict:
    """Concurrent asyncio tasks, one user each, using Django's async ORM (aget, aexists,
    async for) inside rls_user, yielding to each other between queries."""
    async def task(user_id: str) -> dict:
        counts = {"own": 0, "leaks": 0, "missing": 0}
        others = [u for u in user_ids if u != user_id]
        for i in range(int(rounds)):
            with rls_user(user_id):
                mine = await Profile.objects.aget(user_id=user_id)
                await asyncio.sleep(0)
                counts["own"] += mine.user_id is not None
                counts["leaks"] += await Profile.objects.filter(
                    user_id=others[i % len(others)]).aexists()
                listed = [str(p.user_id) async for p in Profile.objects.all()]
                counts["leaks"] += len(set(listed) - {user_id})
                counts["missing"] += user_id not in listed
            await asyncio.sleep(0)
            counts["leaks"] += await Profile.objects.acount()  # outside: no user
        return counts

    async def run() -> list[dict]:
        return await asyncio.gather(*[task(u) for u in user_ids])

    results = asyncio.run(run())
    return {key: sum(r[key] for r in results) for key in ("own", "leaks", "missing")}


def context_manager(first: str, second: str) -> dict:
    out: dict = {}
    with rls_user(first):
        out["outside_atomic"] = _visible()
        with rls_user(second):
            out["nested"] = _visible()
        out["restored"] = _visible()
    out["after"] = _visible()
    with transaction.atomic():
        with rls_user(first):
            out["in_atomic"] = _visible()
        # Same transaction, the block has ended: nothing may survive it.
        out["in_atomic_after_block"] = _visible()
        out["in_atomic_after_block_setting"] = _setting()
        with rls_user(second):
            try:  # a savepoint rolled back undoes a set_config made inside it
                with transaction.atomic():
                    out["in_savepoint"] = _visible()
                    raise RuntimeError("roll back the savepoint")
            except RuntimeError:
                pass
            out["after_savepoint_rollback"] = _visible()
        out["after_savepoint_block"] = _visible()
    with rls_user(first), transaction.atomic():
        out["atomic_inside_block"] = _visible()
    out["after_all"] = _visible()
    out["setting_after_all"] = _setting()
    # Django's server-side cursors (.iterator()) cannot be pipelined.
    with rls_user(first):
        out["iterator"] = sorted(str(p.user_id) for p in Profile.objects.iterator(chunk_size=1))
        with transaction.atomic():
            out["iterator_atomic"] = sorted(
                str(p.user_id) for p in Profile.objects.iterator(chunk_size=1))
    # Writes obey WITH CHECK: another user's row cannot be created.
    from django.db.utils import ProgrammingError

    with rls_user(first):
        try:
            Profile.objects.create(user_id=second, display_name="forged")
            out["forged"] = "allowed"
        except ProgrammingError as exc:
            out["forged"] = str(exc).splitlines()[0]
        try:  # a query error still arrives as Django's own exception class
            Profile.objects.create(user_id=first, display_name="duplicate")
            out["duplicate"] = "allowed"
        except django.db.IntegrityError as exc:
            out["duplicate"] = type(exc).__module__ + "." + type(exc).__name__
        out["after_errors"] = _visible()
    with rls_user(first, readonly=True):
        out["readonly_read"] = _visible()
        from django.db.utils import InternalError, OperationalError

        try:
            Profile.objects.filter(user_id=first).update(display_name="changed")
            out["readonly_write"] = "allowed"
        except (InternalError, OperationalError, ProgrammingError) as exc:
            out["readonly_write"] = str(exc).splitlines()[0]
    Profile.objects.filter(user_id=first).update(display_name="no user")  # matches nothing
    with rls_user(first):
        out["unchanged"] = Profile.objects.get(user_id=first).display_name
    out["thread"] = _in_new_thread(first)
    out["raw_sql"] = _raw_sql(first)
    return out


def _raw_sql(user_id: str) -> dict:
    """Raw SQL on Django's cursor, every parameter style, carries the user too."""
    out: dict = {}
    with rls_user(user_id), connection.cursor() as cursor:
        cursor.execute("SELECT 'a%b', shared_schema.current_user_id()")  # no params
        out["no_params"] = list(cursor.fetchone())
        cursor.execute("SELECT %s || '%%', shared_schema.current_user_id()", ["x"])
        out["list_params"] = list(cursor.fetchone())
        cursor.execute("SELECT %(v)s::text, shared_schema.current_user_id()", {"v": "y"})
        out["dict_params"] = list(cursor.fetchone())
        cursor.execute("UPDATE profiles_profile SET display_name = display_name")
        out["rowcount"] = cursor.rowcount
        if connection.settings_dict["OPTIONS"].get("server_side_binding"):
            out["multi"] = [user_id]  # the extended protocol takes one statement only
        else:
            cursor.execute("SELECT shared_schema.current_user_id(); SELECT 2")
            out["multi"] = list(cursor.fetchone())
        cursor.executemany(  # executemany: pipelined instead
            "UPDATE profiles_profile SET display_name = display_name WHERE user_id = %s",
            [[user_id], [user_id]])
        out["executemany_rowcount"] = cursor.rowcount
    return out


def _in_new_thread(user_id: str) -> list[str]:
    """A thread started inside the block does not inherit the context (fail closed)."""
    seen: list[str] = []
    with rls_user(user_id):
        worker = threading.Thread(target=lambda: seen.extend(_visible()))
        worker.start()
        worker.join()
    return seen


def careless() -> dict:
    """What a careless caller gets: clear errors, no query run as anybody."""
    from django.core.exceptions import ImproperlyConfigured
    from django.http import HttpRequest

    from microservices.shared.database.core.errors import RequestContextError
    from microservices.shared.database.django_rls import RLSUserMiddleware

    out: dict = {}
    for name, bad in {"empty": "", "bool": True, "object": object(), "nul": "a\x00b"}.items():
        try:
            with rls_user(bad):
                out[name] = "allowed"
        except RequestContextError as exc:
            out[name] = str(exc)
    try:
        with rls_user("u", using="nope"):
            out["alias"] = "allowed"
    except RequestContextError as exc:
        out["alias"] = str(exc)
    if "local_cache" in connections.settings:
        try:
            with rls_user("u", using="local_cache"):
                out["sqlite_alias"] = "allowed"
        except RequestContextError as exc:
            out["sqlite_alias"] = str(exc)
    try:  # placed before authentication: request.user is missing
        RLSUserMiddleware(lambda request: None)(HttpRequest())
        out["no_user"] = "allowed"
    except ImproperlyConfigured as exc:
        out["no_user"] = str(exc)
    # Quotes, percent signs and placeholders in a user id are data, never SQL or format.
    tricky = "x'); SELECT set_config('app.current_user_id', 'y', false); --%s%%"
    with rls_user(tricky), connection.cursor() as cursor:
        cursor.execute("SELECT shared_schema.current_user_id()")
        out["tricky"] = cursor.fetchone()[0]
        cursor.execute("SELECT shared_schema.current_user_id(), %s", ["p"])
        out["tricky_params"] = list(cursor.fetchone())
    out["tricky_after"] = _setting()
    return out


def mirror(user_id: str) -> dict:
    """The application service: the cross-service read-only alias carries the user."""
    client = Client()
    out = {"request": client.get("/visible-mirror", **_as(user_id)).json(),
           "anonymous": client.get("/visible-mirror").json()}
    with rls_user(user_id):
        from user_mirror.models import ProfileMirror

        out["rls_user"] = sorted(
            str(u) for u in ProfileMirror.objects.values_list("user_id", flat=True))
    with rls_user(user_id, using="default"):  # limited to another alias: no user here
        out["other_alias"] = sorted(
            str(u) for u in ProfileMirror.objects.values_list("user_id", flat=True))
    out["after_setting"] = _setting("user")
    return out


def behaves_like_django(user_id: str) -> dict:
    """What Django itself and other code see under a user context: logged SQL, other
    execute wrappers, statements that refuse transaction blocks, a deferred constraint
    failing at commit, pg_cursors, a raw psycopg cursor, COPY, what Django's tests check."""
    from django.db import IntegrityError
    from django.test.utils import CaptureQueriesContext

    out: dict = {}
    seen: list = []

    def spy(execute, sql, params, many, context):
        seen.append((sql, list(params) if isinstance(params, (list, tuple)) else params))
        return execute(sql, params, many, context)

    with rls_user(user_id):
        with CaptureQueriesContext(connection) as captured:
            Profile.objects.filter(user_id=user_id).count()
        out["logged"] = [q["sql"] for q in captured.captured_queries]
        with connection.execute_wrapper(spy), connection.cursor() as cursor:
            cursor.execute("SELECT %s::text", ["p"])
            out["last_executed"] = connection.ops.last_executed_query(
                cursor.cursor, "SELECT %s::text", ["p"])
        out["wrapped"] = seen
        # .iterator(): a named cursor where server-side cursors are on. The log shows
        # psycopg's DECLARE (or the SELECT), never the prologue; the cursor is closed.
        with CaptureQueriesContext(connection) as captured:
            out["iterated"] = [str(p.user_id) for p in Profile.objects.iterator(chunk_size=1)]
            first = next(Profile.objects.iterator(chunk_size=1), None)  # abandoned early
            out["iterated_first"] = None if first is None else str(first.user_id)
        out["iterator_logged"] = [q["sql"] for q in captured.captured_queries]
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_cursors")
            out["pg_cursors"] = cursor.fetchone()[0]
            # A statement that cannot run in a transaction block (the runtime role
            # may not vacuum the table: PostgreSQL skips it with a warning).
            cursor.execute("VACUUM edulink_rls_probe")
            out["non_transactional"] = "ok"
            # A deferred constraint that fails at COMMIT, then the same connection again.
            try:
                with transaction.atomic():
                    cursor.execute("INSERT INTO edulink_rls_probe_child (parent) VALUES (999)")
                out["deferred"] = "allowed"
            except IntegrityError as exc:
                out["deferred"] = type(exc).__name__
            try:  # and in autocommit: the implicit commit fails
                cursor.execute("INSERT INTO edulink_rls_probe_child (parent) VALUES (998)")
                out["deferred_autocommit"] = "allowed"
            except IntegrityError as exc:
                out["deferred_autocommit"] = type(exc).__name__
            cursor.execute("SELECT shared_schema.current_user_id()")
            out["after_deferred"] = cursor.fetchone()[0]
        raw = connection.connection
        with raw.cursor() as cur:  # SQL on the raw psycopg connection: no user (closed)
            out["raw_cursor"] = cur.execute("SELECT shared_schema.current_user_id()"
                                            ).fetchone()[0]
        with connection.cursor() as cursor, cursor.copy(
                "COPY (SELECT shared_schema.current_user_id()) TO STDOUT") as copy:
            out["copy"] = [bytes(row).decode().strip() for row in copy]
        # What Django's own tests check is left as Django made it.
        out["cursor_factory"] = raw.cursor_factory.__module__ + "." + raw.cursor_factory.__name__
        out["execute_wrappers"] = len(connection.execute_wrappers)
    out["visible_after"] = _visible()
    return out


def concurrent_index(user_id: str) -> dict:
    """As the migrator (EDULINK_DB_DJANGO_MIGRATE=1): index DDL that refuses transaction
    blocks, under a user context."""
    with rls_user(user_id), connection.cursor() as cursor:
        cursor.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS rls_probe_idx"
                       " ON edulink_rls_probe (n)")
        cursor.execute("REINDEX INDEX CONCURRENTLY rls_probe_idx")
        cursor.execute("DROP INDEX CONCURRENTLY IF EXISTS rls_probe_idx")
        cursor.execute("SELECT shared_schema.current_user_id()")
        return {"ok": True, "user": cursor.fetchone()[0]}


def leak(rounds: str, *user_ids: str) -> dict:
    """One thread per user (the last ones anonymous), *rounds* requests each.

    Each request must see exactly its own profile; anything else is counted.
    """
    results: dict[str, dict[str, int]] = {}
    errors: list[str] = []
    start = threading.Barrier(len(user_ids))

    def worker(user_id: str) -> None:
        client = Client()
        expected = [] if user_id.startswith("anon") else [user_id]
        extra = {} if user_id.startswith("anon") else _as(user_id)
        counts = {"requests": 0, "leaks": 0, "missing": 0, "after_leaks": 0}
        start.wait()
        try:
            for _ in range(int(rounds)):
                for path in ("/visible", "/visible-atomic"):
                    seen = client.get(path, **extra).json()["visible"]
                    counts["requests"] += 1
                    counts["leaks"] += len(set(seen) - set(expected))
                    counts["missing"] += len(set(expected) - set(seen))
                counts["after_leaks"] += len(_visible())  # a query after the request
        except Exception as exc:  # reported, not swallowed
            errors.append(repr(exc))
        finally:
            connections.close_all()
        results[user_id] = counts

    threads = [threading.Thread(target=worker, args=(u,)) for u in user_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = {key: sum(c[key] for c in results.values())
             for key in ("requests", "leaks", "missing", "after_leaks")}
    return {**total, "threads": len(results), "errors": errors}


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    print(json.dumps(globals()[name](*args)))
