"""The fast path of the request context: prologue and statement in ONE simple-protocol
Query message (request_context.py).  Every test here runs against a real server."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Json, Jsonb

from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.connections.request_context import (
    AsyncContextCursor,
    AsyncServiceConnection,
    ContextCursor,
    ServiceConnection,
    make_prologue,
    quote_text,
)
from microservices.shared.database.core.errors import RequestContextError
from microservices.shared.database.core.tracing import protocol_trace, round_trips

CURRENT = "SELECT pg_catalog.current_setting('app.current_user_id', true)"


@pytest.fixture
def ctx_conn(fresh_db: dict[str, Any]) -> Iterator[ServiceConnection]:
    """A ServiceConnection whose cursors carry user 'u1' (as a checkout would)."""
    conn = ServiceConnection.connect(**fresh_db, autocommit=True, cursor_factory=ContextCursor)
    conn.request_prologue = make_prologue("u1", False)
    with conn.transaction(), psycopg.Cursor(conn) as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    try:
        yield conn
    finally:
        conn.close()


def _messages(sent: list[Any]) -> str:
    return " ".join(str(m) for m in sent)


# -- the wire: one Query message, one round trip ------------------------------------------

def test_plain_execute_is_one_simple_query_message(ctx_conn: ServiceConnection) -> None:
    with protocol_trace(ctx_conn) as sent:
        row = ctx_conn.execute("SELECT %s::int + 1, " + CURRENT[7:], (41,)).fetchone()
    assert row == (42, "u1")
    assert round_trips(sent) == 1, sent
    text = _messages(sent)
    assert "Query" in text and "Parse" not in text and "Sync" not in text, sent


# -- parameters: the client-side merge gives what server-side binding gives ------------------

PARAMS: list[Any] = [
    None, True, False, 0, 1, -1, 2**31, -(2**63), 10**30, 1.5, float("inf"), Decimal("1.10"),
    "", "plain", "it's", "back\\slash", "\\'; DROP TABLE t; --", "$$ $x$", "%s %(x)s %%",
    "üñí©ødé ✓ 𝔘", b"", b"\x00\x01'\\\xff", bytearray(b"ab"), dt.date(2024, 2, 29),
    dt.datetime(2024, 1, 1, 12, 30, tzinfo=dt.UTC), dt.timedelta(days=1, seconds=3),
    dt.time(23, 59), uuid.UUID(int=7), [1, 2, 3], ["a", "b'c", None], [], [[1, 2], [3, 4]],
    Json({"a": [1, "x'y"]}), Jsonb({"k": None}),
]


@pytest.mark.parametrize("value", PARAMS, ids=repr)
def test_param_values_match_server_side_binding(ctx_conn: ServiceConnection,
                                                value: Any) -> None:
    query = "SELECT (%s)::text, %s::text IS NULL"
    with psycopg.Cursor(ctx_conn) as ref:  # no context, server-side binding
        expected = ref.execute(query, (value, value)).fetchone()
    with ctx_conn.cursor() as cur:
        assert type(cur) is ContextCursor
        got = cur.execute(query, (value, value)).fetchone()
        assert cur.statusmessage == "SELECT 1"
    assert got == expected
    # In an expression with an operator before it (the merge writes (-1), not -1).
    reference = _outcome(psycopg.Cursor(ctx_conn), "SELECT 1-%s, %s::text", value)
    got = _outcome(ctx_conn.cursor(), "SELECT 1-%s, %s::text", value)
    if isinstance(reference, type):  # nonsense for this type: an error either way
        assert isinstance(got, type) and issubclass(got, psycopg.Error)
    else:
        assert got == reference


def _outcome(cur: psycopg.Cursor[Any], query: str, value: Any) -> Any:
    try:
        return cur.execute(query, (value, value)).fetchone()
    except psycopg.Error as exc:
        return type(exc)


def test_known_typing_differences_of_the_client_side_merge(
        ctx_conn: ServiceConnection) -> None:
    """Pinned so that a change is noticed (README, request_context docstring): merged
    literals are typed by the parser (1 -> integer, 1.5 -> numeric, 'x' -> unknown)
    where server-side binding sends psycopg's types (int2, float8) -- as with Django's
    default ClientCursor.  Untyped NULL/str parameters, which server-side binding
    rejects in some places, are accepted."""
    row = ctx_conn.execute("SELECT pg_typeof(%s)::text, pg_typeof(%s)::text, %s",
                           (1, 1.5, 1.5)).fetchone()
    assert row == ("integer", "numeric", Decimal("1.5"))
    assert ctx_conn.execute("SELECT %s IS NULL", (None,)).fetchone() == (True,)
    with pytest.raises(psycopg.errors.IndeterminateDatatype):
        psycopg.Cursor(ctx_conn).execute("SELECT %s IS NULL", (None,))


# -- the user id is a literal: no injection, whatever the session's string settings -------

NASTY_IDS = ["u1", "it's", "a\\'b", "\\", "'; DROP TABLE t; --", "\\'; DROP TABLE t; --",
             "$$; DROP TABLE t; $$", "%s", "%(x)s", "%%", "üñí 𝔘 \u202e", "E'x'", "\n\r\t",
             "x" * 500]


@pytest.mark.parametrize("user_id", NASTY_IDS, ids=repr)
@pytest.mark.parametrize("scs", ["on", "off"])
def test_user_id_arrives_verbatim(ctx_conn: ServiceConnection, user_id: str,
                                  scs: str) -> None:
    with psycopg.Cursor(ctx_conn) as raw:  # the session setting a literal depends on
        raw.execute(f"SET standard_conforming_strings = {scs}")
        raw.execute("SET backslash_quote = off")
    ctx_conn.request_prologue = make_prologue(user_id, False)
    with protocol_trace(ctx_conn) as sent:
        assert ctx_conn.execute(CURRENT).fetchone() == (user_id,)
    assert "Query" in sent and "Parse" not in sent
    assert ctx_conn.execute("SELECT count(*) FROM t").fetchone() == (0,)  # t survives


@pytest.mark.parametrize("bad", ["a\x00b", "\x00", "\ud800"], ids=repr)
def test_unstorable_user_id_is_refused_before_checkout(bad: str) -> None:
    with pytest.raises(RequestContextError, match="user id"):
        make_prologue(bad, False)
    with pytest.raises(RequestContextError):
        quote_text(bad)


def test_nul_user_id_refused_by_the_manager(provisioned_db: dict[str, Any],
                                            manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db)
    with pytest.raises(RequestContextError, match="NUL"):
        manager.get_connection("user", user_id="u1\x00")
    assert manager.get_pool_stats("user")["checked_out"] == 0


# -- transaction semantics ----------------------------------------------------------------

def test_one_query_message_is_one_transaction(ctx_conn: ServiceConnection) -> None:
    """The premise of the fast path: a failing later statement rolls back the
    earlier ones of the same Query message, the setting included."""
    with pytest.raises(psycopg.errors.DivisionByZero):
        ctx_conn.execute("INSERT INTO t VALUES (1, 'x'); SELECT 1 / 0")
    with psycopg.Cursor(ctx_conn) as raw:
        assert raw.execute("SELECT count(*) FROM t").fetchone() == (0,)
        assert raw.execute(CURRENT).fetchone() in ((None,), ("",))


def test_failing_statement_raises_its_class_and_leaves_no_setting(
        ctx_conn: ServiceConnection) -> None:
    ctx_conn.execute("INSERT INTO t VALUES (%s, %s)", (1, "a"))
    with pytest.raises(psycopg.errors.UniqueViolation) as info:
        ctx_conn.execute("INSERT INTO t VALUES (%s, %s)", (1, "b"))
    assert info.value.sqlstate == "23505"
    with pytest.raises(psycopg.errors.UndefinedTable):
        ctx_conn.execute("SELECT * FROM missing WHERE x = %s", (1,))
    with pytest.raises(psycopg.errors.SyntaxError):
        ctx_conn.execute("SELEC 1")
    with psycopg.Cursor(ctx_conn) as raw:
        assert raw.execute(CURRENT).fetchone() in ((None,), ("",))
        assert raw.execute("SELECT v FROM t").fetchall() == [("a",)]
    assert ctx_conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_inside_a_transaction_the_setting_lasts_until_it_ends(
        ctx_conn: ServiceConnection) -> None:
    with ctx_conn.transaction():
        ctx_conn.execute("INSERT INTO t VALUES (%s, %s)", (1, "a"))
        with psycopg.Cursor(ctx_conn) as raw:  # no context of its own
            assert raw.execute(CURRENT).fetchone() == ("u1",)
    with pytest.raises(psycopg.errors.UniqueViolation), ctx_conn.transaction():
        ctx_conn.execute("INSERT INTO t VALUES (%s, %s)", (2, "b"))
        ctx_conn.execute("INSERT INTO t VALUES (%s, %s)", (1, "dup"))
    with psycopg.Cursor(ctx_conn) as raw:
        assert raw.execute(CURRENT).fetchone() in ((None,), ("",))
        assert raw.execute("SELECT id FROM t").fetchall() == [(1,)]


def test_readonly_prologue_on_the_fast_path(ctx_conn: ServiceConnection) -> None:
    ctx_conn.request_prologue = make_prologue("u'2", True)
    assert ctx_conn.execute(CURRENT + ", current_setting('transaction_read_only')"
                            ).fetchone() == ("u'2", "on")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        ctx_conn.execute("INSERT INTO t VALUES (%s, %s)", (1, "a"))
    ctx_conn.request_prologue = make_prologue(None, True)
    assert ctx_conn.execute(CURRENT).fetchone() in ((None,), ("",))
    ctx_conn.request_prologue = make_prologue("u1", False)
    ctx_conn.execute("INSERT INTO t VALUES (%s, %s)", (1, "a"))  # read-write again


# -- cursor state after nextset() ---------------------------------------------------------

def test_cursor_shows_the_statements_result(ctx_conn: ServiceConnection) -> None:
    with ctx_conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (%s, %s), (%s, %s)", (1, "a", 2, "b"))
        assert (cur.rowcount, cur.statusmessage, cur.description) == (2, "INSERT 0 2", None)
        assert cur.nextset() is None
        cur.execute("UPDATE t SET v = %s WHERE id > %s RETURNING id", ("c", 0))
        assert cur.statusmessage == "UPDATE 2" and cur.rowcount == 2
        assert cur.description is not None and [d.name for d in cur.description] == ["id"]
        assert sorted(cur.fetchall()) == [(1,), (2,)]
        cur.execute("SELECT 1; SELECT 2")  # several statements: positioned on the first
        assert cur.fetchall() == [(1,)] and cur.nextset() and cur.fetchall() == [(2,)]


@pytest.mark.parametrize("empty", ["", "   ", "-- nothing", "/* nothing */"])
def test_a_statement_without_statements_behaves_as_without_context(
        ctx_conn: ServiceConnection, empty: str) -> None:
    with psycopg.Cursor(ctx_conn) as ref:
        ref.execute(empty)
        expected = (ref.pgresult.status if ref.pgresult else None, ref.description)
    with ctx_conn.cursor() as cur:
        cur.execute(empty)
        assert (cur.pgresult.status if cur.pgresult else None, cur.description) == expected
        assert cur.pgresult is not None and cur.pgresult.status == psycopg.pq.ExecStatus.EMPTY_QUERY


# -- the other paths still carry the context ----------------------------------------------

def test_non_plain_executes_keep_the_pipeline_path(ctx_conn: ServiceConnection) -> None:
    for kwargs in ({"binary": True}, {"prepare": True}):
        with protocol_trace(ctx_conn) as sent:
            row = ctx_conn.execute(CURRENT, **kwargs).fetchone()  # type: ignore[call-overload]
        assert row == ("u1",) and "Parse" in sent and "Query" not in sent, sent
    with ctx_conn.cursor() as cur:
        cur.executemany("INSERT INTO t VALUES (%s, current_setting('app.current_user_id'))",
                        [(1,), (2,)])
    assert ctx_conn.execute("SELECT DISTINCT v FROM t").fetchall() == [("u1",)]
    with ctx_conn.pipeline():
        cur = ctx_conn.execute(CURRENT)
    assert cur.fetchone() == ("u1",)


# -- session accounting -------------------------------------------------------------------

def test_session_account_judges_the_statement_not_the_prologue(
        ctx_conn: ServiceConnection) -> None:
    ctx_conn.session_dirty = False
    ctx_conn.execute("SELECT v FROM t WHERE id = %s", (1,))
    assert ctx_conn.session_dirty is False and ctx_conn.vouched == 0
    with pytest.raises(psycopg.errors.DivisionByZero):
        ctx_conn.execute("SELECT 1 / %s", (0,))
    assert ctx_conn.session_dirty is False and ctx_conn.vouched == 0
    ctx_conn.execute("SELECT set_config('x.y', %s, false)", ("1",))
    assert ctx_conn.session_dirty is True and ctx_conn.vouched == 0
    ctx_conn.session_dirty = False
    ctx_conn.execute("SELECT 1; SET search_path = public")  # the second one is dirty
    assert ctx_conn.session_dirty is True


def test_monitoring_records_the_callers_statement(provisioned_db: dict[str, Any],
                                                  manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db,
                                             DATABASE_MONITORING_ENABLED="true")
    seen: list[tuple[Any, str | None]] = []
    with manager.get_connection("user", user_id="u3") as conn:
        monitor = conn.monitor
        assert monitor is not None

        def record(query: Any, seconds: float, sqlstate: str | None, _conn: Any) -> None:
            seen.append((query, sqlstate))

        conn.monitor = type("M", (), {"record_statement": staticmethod(record)})()
        try:
            assert conn.execute("SELECT owner_id FROM notes WHERE id > %s",
                                (0,)).fetchall()[0] == ("u3",)
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1 / %s", (0,))
        finally:
            conn.monitor = monitor
    assert seen == [("SELECT owner_id FROM notes WHERE id > %s", None),
                    ("SELECT 1 / %s", "22012")]


# -- asyncio ------------------------------------------------------------------------------

def test_async_fast_path(fresh_db: dict[str, Any]) -> None:
    async def main() -> None:
        conn = await AsyncServiceConnection.connect(**fresh_db, autocommit=True,
                                                    cursor_factory=AsyncContextCursor)
        try:
            conn.request_prologue = make_prologue("a'\\b", False)
            with protocol_trace(conn) as sent:  # type: ignore[arg-type]
                cur = await conn.execute(CURRENT + ", %s::int", (7,))
                assert await cur.fetchone() == ("a'\\b", 7)
            assert round_trips(sent) == 1 and "Query" in sent, sent
            with pytest.raises(psycopg.errors.DivisionByZero):
                await conn.execute("SELECT 1 / %s", (0,))
            raw = psycopg.AsyncCursor(conn)
            await raw.execute(CURRENT)
            assert await raw.fetchone() in ((None,), ("",))
            async with conn.transaction():
                await conn.execute("SELECT 1")
                await raw.execute(CURRENT)
                assert await raw.fetchone() == ("a'\\b",)
            cur = await conn.execute("")
            assert cur.pgresult is not None
            assert cur.pgresult.status == psycopg.pq.ExecStatus.EMPTY_QUERY
        finally:
            await conn.close()

    asyncio.run(main())


def test_user_id_in_a_client_encoding_with_backslash_trail_bytes(
        ctx_conn: ServiceConnection) -> None:
    """In SJIS, '表' is 0x95 0x5C: the trail byte is a backslash.  The literal is built
    from characters and the server converts before it lexes, so it stays one char."""
    with psycopg.Cursor(ctx_conn) as raw:
        raw.execute("SET client_encoding = 'SJIS'")
    for user_id in ["表", "表'; DROP TABLE t; --", "表\\'"]:
        ctx_conn.request_prologue = make_prologue(user_id, False)
        assert ctx_conn.execute(CURRENT).fetchone() == (user_id,)
    assert ctx_conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
