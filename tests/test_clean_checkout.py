"""Pooled connections come back clean: nothing a checkout does to its session
reaches the next checkout (issue 11, part 3).

Every test uses a pool of ONE connection, so the second checkout gets the very
connection the first one dirtied; each asserts the backend pid stayed the same
(the reset worked, rather than a reconnect hiding the state).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.connections.session_state import statement_is_clean
from microservices.shared.database.core.errors import RequestContextError
from microservices.shared.database.core.tracing import protocol_trace, round_trips

ONE = {"EDULINK_DB_USER_POOL_SIZE": "1", "EDULINK_DB_USER_MAX_OVERFLOW": "0"}


@dataclass(frozen=True)
class State:
    """One kind of session state: how to create it, and how to see it."""

    statement: str  # creates the state (cursor.execute / conn.execute)
    do_body: str | None  # the same from inside a DO block (plpgsql), if possible
    # (user_id for the checkout, query, value when clean); None user_id = no context
    checks: tuple[tuple[str | None, str, Any], ...]
    on_admin: bool = False  # run the checks on another (admin) connection


STATES = {
    "custom GUC": State(
        "SET app.leak = 'secret'",
        "PERFORM set_config('app.leak', 'secret', false)",
        ((None, "SELECT coalesce(current_setting('app.leak', true), '')", ""),)),
    "RLS user via SET": State(
        "SET app.current_user_id = 'u1'",
        "EXECUTE 'SET app.current_user_id = ''u1'''",
        ((None, "SELECT count(*) FROM notes", 0),
         ("u2", "SELECT count(*) FROM notes WHERE owner_id <> 'u2'", 0),
         (None, "SELECT shared_schema.current_user_id()", None))),
    "RLS user via set_config": State(
        "SELECT set_config('app.current_user_id', 'u1', false)",
        "PERFORM set_config('app.current_user_id', 'u1', false)",
        ((None, "SELECT count(*) FROM notes", 0),
         ("u2", "SELECT count(*) FROM notes WHERE owner_id <> 'u2'", 0))),
    "search_path": State(
        "SET search_path = pg_catalog",
        "PERFORM set_config('search_path', 'pg_catalog', false)",
        ((None, "SELECT current_setting('search_path')", "user_schema, shared_schema"),)),
    "read-only default": State(
        "SET default_transaction_read_only = on",
        "PERFORM set_config('default_transaction_read_only', 'on', false)",
        ((None, "SELECT current_setting('default_transaction_read_only')", "off"),)),
    "advisory lock": State(
        "SELECT pg_advisory_lock(4242)",
        "PERFORM pg_advisory_lock(4242)",
        ((None, "SELECT pg_try_advisory_lock(4242) AND pg_advisory_unlock(4242)", True),),
        on_admin=True),
    "cursor WITH HOLD": State(
        "DECLARE leak CURSOR WITH HOLD FOR SELECT owner_id FROM notes",
        None,  # plpgsql cannot DECLARE a holdable cursor
        ((None, "SELECT count(*) FROM pg_cursors", 0),)),
    "temp table": State(
        "CREATE TEMP TABLE leak AS SELECT 'secret' AS v",
        "EXECUTE 'CREATE TEMP TABLE leak AS SELECT ''secret'' AS v'",
        ((None, "SELECT count(*) FROM pg_class WHERE relpersistence = 't'", 0),)),
    "LISTEN": State(
        "LISTEN leak",
        "EXECUTE 'LISTEN leak'",
        ((None, "SELECT count(*) FROM pg_listening_channels()", 0),)),
    # Custom settings whose first name part is a keyword (issue 28): session-level,
    # though they read like SET LOCAL / SET TRANSACTION / SET SESSION.
    "SET local.*": State(
        "SET local.leak = 'secret'", "EXECUTE 'SET local.leak = ''secret'''",
        ((None, "SELECT coalesce(current_setting('local.leak', true), '')", ""),)),
    "SET transaction.*": State(
        "SET transaction.leak = 'secret'", "EXECUTE 'SET transaction.leak = ''secret'''",
        ((None, "SELECT coalesce(current_setting('transaction.leak', true), '')", ""),)),
    "SET session.*": State(
        "SET session.leak = 'secret'", None,
        ((None, "SELECT coalesce(current_setting('session.leak', true), '')", ""),)),
    "SET quoted name": State(
        """SET "local"."leak" = 'secret'""", None,
        ((None, "SELECT coalesce(current_setting('local.leak', true), '')", ""),)),
    "PREPARE": State(
        "PREPARE leak AS SELECT 'secret'",
        "EXECUTE 'PREPARE leak AS SELECT ''secret'''",
        ((None, "SELECT count(*) FROM pg_prepared_statements WHERE from_sql", 0),)),
}


def _via_cursor(conn: Any, state: State) -> None:
    with conn.cursor() as cur:
        cur.execute(state.statement)


def _via_conn(conn: Any, state: State) -> None:
    conn.execute(state.statement)


def _via_do(conn: Any, state: State) -> None:
    assert state.do_body is not None
    conn.execute(f"DO $$ BEGIN {state.do_body}; END $$")


HOW: dict[str, Callable[[Any, State], None]] = {
    "cursor.execute": _via_cursor, "conn.execute": _via_conn, "DO block": _via_do}
CASES = [pytest.param(state, how, id=f"{state}-{how}")
         for state in STATES for how in HOW
         if not (how == "DO block" and STATES[state].do_body is None)]


def _pid(conn: Any) -> int:
    pid: int = conn.info.backend_pid
    return pid


def _check(manager: ConnectionManager, admin: dict[str, Any], state: State,
           pid: int) -> None:
    for user_id, query, clean in state.checks:
        if state.on_admin:
            with psycopg.connect(**admin, autocommit=True) as other:
                assert other.execute(query).fetchone() == (clean,), query
        with manager.get_connection("user", user_id=user_id) as conn:
            assert _pid(conn) == pid  # the same connection, reset rather than replaced
            if not state.on_admin:
                assert conn.execute(query).fetchone() == (clean,), query


@pytest.mark.parametrize(("state", "how"), CASES)
def test_session_state_does_not_reach_the_next_checkout(
        provisioned_db: dict[str, Any], manager_for: Any, state: str, how: str) -> None:
    manager: ConnectionManager = manager_for(provisioned_db, **ONE)
    with manager.get_connection("user", user_id="u1") as conn:
        pid = _pid(conn)
        HOW[how](conn, STATES[state])
    _check(manager, provisioned_db, STATES[state], pid)


@pytest.mark.parametrize("state", list(STATES))
def test_async_checkout_comes_back_clean(provisioned_db: dict[str, Any], manager_for: Any,
                                         state: str) -> None:
    manager: ConnectionManager = manager_for(provisioned_db, **ONE)
    spec = STATES[state]

    async def main() -> None:
        async with manager.get_async_connection("user", user_id="u1") as conn:
            pid = _pid(conn)
            await conn.execute(spec.statement)
        for user_id, query, clean in spec.checks:
            if spec.on_admin:
                with psycopg.connect(**provisioned_db, autocommit=True) as other:
                    assert other.execute(query).fetchone() == (clean,), query
            async with manager.get_async_connection("user", user_id=user_id) as conn:
                assert _pid(conn) == pid
                if not spec.on_admin:
                    cur = await conn.execute(query)
                    assert await cur.fetchone() == (clean,), query
        await manager.aclose_all()

    asyncio.run(main())


def _raw_client_cursor(conn: Any) -> None:
    psycopg.ClientCursor(conn).execute("SET app.leak = 'secret'")


def _plain_psycopg_cursor(conn: Any) -> None:
    psycopg.Cursor(conn).execute("SELECT set_config('app.leak', 'secret', false)")


def _autocommit_off(conn: Any) -> None:
    conn.autocommit = False
    conn.execute("SET app.leak = 'secret'")
    conn.commit()


def _in_transaction(conn: Any) -> None:
    with conn.transaction():
        conn.execute("SELECT 1")
        conn.execute("SET app.leak = 'secret'")


def _pipeline(conn: Any) -> None:
    with conn.pipeline():
        conn.execute("SELECT 1")
        conn.execute("SELECT set_config('app.leak', 'secret', false)")


def _executemany(conn: Any) -> None:
    conn.cursor().executemany("SELECT set_config('app.leak', %s, false)", [("secret",)])


def _stream(conn: Any) -> None:
    list(conn.cursor().stream("SELECT set_config('app.leak', 'secret', false)"))


def _copy(conn: Any) -> None:
    with conn.cursor().copy(
            "COPY (SELECT set_config('app.leak', 'secret', false)) TO STDOUT") as copy:
        list(copy)


def _composed(conn: Any) -> None:
    conn.execute(sql.SQL("SET {} = 'secret'").format(sql.Identifier("app", "leak")))


def _bytes(conn: Any) -> None:
    conn.execute(b"SET app.leak = 'secret'")


def _quoted_function(conn: Any) -> None:
    conn.execute("SELECT pg_catalog.\"set_config\"('app.leak', 'secret', false)")


def _temp_function(conn: Any) -> None:
    conn.execute("CREATE FUNCTION pg_temp.f() RETURNS text LANGUAGE sql AS "
                 "$$ SELECT set_config('app.leak', 'secret', false) $$")
    conn.execute("SELECT pg_temp.f()")


def _multi_statement(conn: Any) -> None:
    conn.execute("SELECT 1; SET app.leak = 'secret'")


def _named_cursor(conn: Any) -> None:
    with conn.transaction(), conn.cursor("c") as cur:
        cur.execute("SELECT set_config('app.leak', 'secret', false)")
        cur.fetchall()


def _row_factory(conn: Any) -> None:
    conn.execute("SET app.leak = 'secret'")
    conn.row_factory = psycopg.rows.dict_row


BYPASSES: dict[str, Callable[[Any], None]] = {
    "ClientCursor": _raw_client_cursor, "psycopg.Cursor(conn)": _plain_psycopg_cursor,
    "autocommit off": _autocommit_off, "inside transaction()": _in_transaction,
    "pipeline": _pipeline, "executemany": _executemany, "stream": _stream, "copy": _copy,
    "sql.Composed": _composed, "bytes": _bytes, "quoted function": _quoted_function,
    "pg_temp function": _temp_function, "two statements": _multi_statement,
    "named cursor": _named_cursor, "row_factory": _row_factory,
}


@pytest.mark.parametrize("bypass", list(BYPASSES))
def test_other_paths_to_session_state_are_reset_too(
        provisioned_db: dict[str, Any], manager_for: Any, bypass: str) -> None:
    manager: ConnectionManager = manager_for(provisioned_db, **ONE)
    with manager.get_connection("user") as conn:
        pid = _pid(conn)
        BYPASSES[bypass](conn)
    with manager.get_connection("user") as conn:
        assert _pid(conn) == pid
        assert conn.autocommit is True
        assert conn.execute(
            "SELECT coalesce(current_setting('app.leak', true), '')").fetchone() == ("",)
        assert conn.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = "
                            "pg_my_temp_schema()").fetchone() == (0,)


def test_temp_table_cannot_shadow_a_table_for_the_next_user(
        provisioned_db: dict[str, Any], manager_for: Any) -> None:
    # pg_temp is searched first for relation names: a leftover temp table called
    # "notes" would answer the next user's "SELECT ... FROM notes".
    manager: ConnectionManager = manager_for(provisioned_db, **ONE)
    with manager.get_connection("user", user_id="u1") as conn:
        conn.execute("CREATE TEMP TABLE notes AS SELECT * FROM user_schema.notes")
    with manager.get_connection("user", user_id="u2") as conn:
        rows = conn.execute("SELECT DISTINCT owner_id FROM notes").fetchall()
    assert rows == [("u2",)]


def test_dirty_state_and_a_read_only_default_together(
        provisioned_db: dict[str, Any], manager_for: Any) -> None:
    # With read-only as the session default, the reset itself would start read-only.
    manager: ConnectionManager = manager_for(provisioned_db, **ONE)
    with manager.get_connection("user") as conn:
        pid = _pid(conn)
        conn.execute("CREATE TEMP TABLE leak (v text)")
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("SELECT pg_advisory_lock(7)")
        conn.execute("BEGIN")  # and a transaction left open
    with manager.get_connection("user", user_id="u1") as conn:
        assert _pid(conn) == pid
        conn.execute("INSERT INTO notes (owner_id, body) VALUES ('u1', 'writable')")
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relpersistence = 't'"
                            ).fetchone() == (0,)
        assert conn.execute("SELECT pg_try_advisory_lock(7) AND pg_advisory_unlock(7)"
                            ).fetchone() == (True,)


def test_failed_reset_closes_the_connection(provisioned_db: dict[str, Any],
                                            manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db, **ONE)
    with manager.get_connection("user") as conn:
        pid = _pid(conn)
        conn.execute("SET app.leak = 'secret'")
        with psycopg.connect(**provisioned_db, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])  # the reset will fail
    with manager.get_connection("user") as conn:
        assert _pid(conn) != pid
        assert conn.execute(
            "SELECT coalesce(current_setting('app.leak', true), '')").fetchone() == ("",)
    lost = manager.get_pool_stats("user")["connections_lost"]
    assert isinstance(lost, int) and lost >= 1


# -- what the common path costs -------------------------------------------------------

def _clean_work(conn: Any, user_id: str | None) -> None:
    conn.execute("SELECT id FROM notes WHERE id = %s", [1]).fetchall()
    if user_id is not None:
        conn.execute("INSERT INTO notes (owner_id, body) VALUES (%s, 'x')", [user_id])
    with conn.transaction():
        conn.execute("UPDATE notes SET body = 'y' WHERE id = %s", [1])
    with conn.transaction(), conn.cursor("named") as cur:
        cur.execute("SELECT id FROM notes")
        cur.fetchall()


def test_clean_checkouts_pay_no_reset(provisioned_db: dict[str, Any],
                                      manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db, **ONE)
    with manager.get_connection("user") as conn:
        conn.execute("SELECT 1")
    for user_id in (None, "u1"):
        # The trace is read when its block ends: once around the work only, once
        # around the whole checkout including the return to the pool.
        with manager.get_connection("user", user_id=user_id) as same, \
                protocol_trace(conn) as work:
            assert same is conn
            _clean_work(conn, user_id)
        with protocol_trace(conn) as checkout, \
                manager.get_connection("user", user_id=user_id) as same:
            assert same is conn
            _clean_work(conn, user_id)
        assert round_trips(checkout) == round_trips(work), (checkout, work)


def test_dirty_checkout_costs_one_round_trip_on_return(
        provisioned_db: dict[str, Any], manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db, **ONE)
    with manager.get_connection("user") as conn:
        conn.execute("SELECT 1")
    with protocol_trace(conn) as sent, manager.get_connection("user") as same:
        assert same is conn
        conn.execute("SET app.leak = 'secret'")
    assert round_trips(sent) == 2, sent


# -- named cursors carry the request context -----------------------------------------

def test_named_cursor_sees_only_its_users_rows(provisioned_db: dict[str, Any],
                                               manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db)
    with manager.get_connection("user", user_id="u4") as conn:
        with conn.transaction(), conn.cursor("mine") as cur:
            cur.execute("SELECT owner_id FROM notes")
            assert [r[0] for r in cur] == ["u4"] * 3
        held = conn.cursor("held", withhold=True)
        with conn.transaction():
            held.execute("SELECT owner_id FROM notes")
        assert {r[0] for r in held.fetchall()} == {"u4"}  # read after the commit
        held.close()
        with pytest.raises(RequestContextError, match="transaction"), \
                conn.cursor("outside", withhold=True) as cur:
            cur.execute("SELECT owner_id FROM notes")


def test_readonly_named_cursor_cannot_write(provisioned_db: dict[str, Any],
                                            manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db)
    with manager.get_connection("user", user_id="u1", readonly=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), conn.transaction(), \
                conn.cursor("w") as cur:
            cur.execute("SELECT nextval('user_schema.notes_id_seq')")
            cur.fetchall()
        with conn.transaction(), conn.cursor("r") as cur:
            cur.execute("SELECT current_setting('transaction_read_only')")
            assert cur.fetchall() == [("on",)]


def test_async_named_cursor_carries_the_context(provisioned_db: dict[str, Any],
                                                manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db)

    async def main() -> None:
        async with manager.get_async_connection("user", user_id="u5", readonly=True) \
                as conn, conn.transaction(), conn.cursor("mine") as cur:
            await cur.execute("SELECT owner_id, current_setting('transaction_read_only')"
                              " FROM notes")
            assert {tuple(r) async for r in cur} == {("u5", "on")}
        await manager.aclose_all()

    asyncio.run(main())


# -- the classifier ---------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "SELECT 1", "", "SELECT id, payload FROM t WHERE id = %s", "select count(*) from notes",
    "INSERT INTO user_schema.notes (owner_id, body) VALUES (%s, %s) RETURNING id",
    "UPDATE t SET (a, b) = (1, 2) WHERE id IN (SELECT id FROM x)", "BEGIN", "COMMIT",
    "SELECT * FROM generate_series(1, 3) AS g(i)", "SELECT '$$'; SELECT 2",
    "SELECT $q$ set_config( $q$", "WITH x AS (SELECT 1) SELECT * FROM x",
    "SET LOCAL search_path = user_schema", "SELECT CAST(x AS varchar(10)) FROM t",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET LOCAL statement_timeout = 5",
    "SELECT E'a\\'b'", "DELETE FROM notes WHERE owner_id = ANY(%s)",
    "SELECT /* nested /* comment */ set_config( */ 1",
])
def test_classifier_lets_plain_statements_through(text: str) -> None:
    assert statement_is_clean(text)


@pytest.mark.parametrize("text", [
    "SET app.x = 'a'", "SELECT set_config('a', 'b', false)",
    "SELECT pg_catalog.set_config('a', 'b', false)", "SELECT pg_advisory_lock(1)",
    "SET search_path = public", "DO $$ BEGIN END $$", "DECLARE c CURSOR FOR SELECT 1",
    "CREATE TEMP TABLE t (a int)", "LISTEN x", "PREPARE p AS SELECT 1", "EXECUTE p",
    "SELECT 1 INTO t", "SELECT 1; SET a.b = 1", "SELECT \"set_config\"('a', 'b', false)",
    "SELECT U&\"\\0073et_config\"('a', 'b', false)",
    "INSERT INTO t (a) SELECT set_config('a', 'b', false)", "SELECT user_schema.f()",
    "SELECT pg_temp.f()", "SELECT f (1)", "SELECT 1 /* unterminated", "SELECT 'open",
    "COMMIT PREPARED 'x'", "SELECT setseed(0.5)", "CALL p()", "RESET ALL",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SELECT nextval('s')",
    "SELECT 1 OPERATOR(pg_catalog.=) 1", "SELECT 1 \\g", "SELECT $a$ unterminated",
    # Custom settings, whatever the first part of the name (issue 28): session-level.
    "SET local.x = 1", "SET transaction.y = 1", "SET session.z = 1", 'SET "local.x" = 1',
    "SET LOCAL local.x = 1", "SET LOCAL app.current_user_id = 'u1'", 'SET LOCAL "a" = 1',
    "RESET local.x",
])
def test_classifier_flags_anything_that_may_touch_the_session(text: str) -> None:
    assert not statement_is_clean(text)


def test_dirty_statement_is_marked_even_while_another_is_vouched_for(
        provisioned_db: dict[str, Any], manager_for: Any) -> None:
    # Another thread's clean statement may be in flight on the same connection (its
    # vouch still counted) when this one reaches wait(): our cursors mark it anyway.
    manager: ConnectionManager = manager_for(provisioned_db, **ONE)
    with manager.get_connection("user") as conn:
        conn.vouched += 1
        try:
            conn.execute("SET app.leak = 'secret'")
        finally:
            conn.vouched -= 1
    with manager.get_connection("user") as conn:
        assert conn.execute(
            "SELECT coalesce(current_setting('app.leak', true), '')").fetchone() == ("",)


def test_swapped_cursor_factories_do_not_reach_the_next_checkout(
        provisioned_db: dict[str, Any], manager_for: Any) -> None:
    manager: ConnectionManager = manager_for(provisioned_db, **ONE)
    with manager.get_connection("user") as conn:
        conn.server_cursor_factory = psycopg.ServerCursor  # skips user_id
        conn.cursor_factory = psycopg.ClientCursor
    with manager.get_connection("user", user_id="u6") as conn, conn.transaction(), \
            conn.cursor("mine") as cur:
        cur.execute("SELECT DISTINCT owner_id FROM notes")
        assert cur.fetchall() == [("u6",)]
    with manager.get_connection("user") as conn:
        assert type(conn.cursor()) is not psycopg.ClientCursor
