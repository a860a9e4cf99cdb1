"""Red-team attacks on issue 28 (the catalog guard, the runner's timeouts, the session
classifier and the linter), against a real server where a server is involved.

A break is a test marked ``xfail(strict=True)`` with the reason; what held is a plain
test.  The guard fixture (``setup``: service auth_* exposes accounts.id/email to
user_*, accounts also holds a private password_hash) is the one of
tests/test_migration_guard.py.
"""

# ruff: noqa: S608 - the SQL built here is migration files under attack; nothing else runs it
from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.connections.session_state import statement_is_clean
from microservices.shared.database.core.errors import MigrationError
from microservices.shared.database.migrations import files
from microservices.shared.database.migrations.lint import lint
from microservices.shared.database.topology import default_topology

from .conftest import service_params
from .test_migration_guard import Setup, ident, migrate, setup

__all__ = ["setup"]  # the fixture, imported for the tests below

TOPOLOGY = default_topology()


def _lint(tmp_path: Path, text: str) -> list[tuple[int, str]]:
    path = tmp_path / "V2__case.sql"
    path.write_text(text, encoding="utf-8")
    found = lint(TOPOLOGY, [(TOPOLOGY.service("auth"), files.parse_file(path))])
    return [(f.line, f.rule) for f in found]


def _reader_rows(setup: Setup, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(**service_params(setup.admin, setup.reader), autocommit=True) as c:
        return c.execute(query).fetchall()


# -- the guard: widening that no snapshot row shows ---------------------------------------

def test_permissive_policy_on_an_exposed_rls_table_is_rolled_back(setup: Setup) -> None:
    accounts = ident(setup.me.schema, "accounts")
    with psycopg.connect(**setup.superuser, autocommit=True) as conn:
        # What provisioning-era review left: RLS on, readers see no row yet.
        conn.execute(f"ALTER TABLE {accounts} ENABLE ROW LEVEL SECURITY")
    assert _reader_rows(setup, f"SELECT id FROM {accounts}") == []
    with contextlib.suppress(MigrationError):  # the fix may refuse the file
        migrate(setup, "V2__open.sql",
                "CREATE POLICY everyone ON accounts FOR SELECT USING (true);\n")
    assert _reader_rows(setup, f"SELECT id FROM {accounts}") == []


def _rls_on(setup: Setup, *policies: str) -> str:
    accounts = ident(setup.me.schema, "accounts")
    with psycopg.connect(**setup.superuser, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {accounts} ENABLE ROW LEVEL SECURITY")
        for policy in policies:
            conn.execute(policy.format(accounts=accounts))
    return accounts


@pytest.mark.parametrize("policy", [
    "CREATE POLICY everyone ON accounts AS PERMISSIVE FOR ALL TO PUBLIC USING (true);\n",
    "CREATE POLICY mine ON accounts FOR SELECT TO {reader} USING (id > 0);\n",
])
def test_each_reader_visible_policy_on_an_rls_table_is_rolled_back(
        setup: Setup, policy: str) -> None:
    accounts = _rls_on(setup)
    with pytest.raises(MigrationError, match="allow-reader-policy"):
        migrate(setup, "V2__open.sql",
                policy.format(reader=ident(setup.reader.runtime_role)))
    assert _reader_rows(setup, f"SELECT id FROM {accounts}") == []


def test_dropping_or_loosening_a_restrictive_policy_is_rolled_back(setup: Setup) -> None:
    accounts = _rls_on(setup, "CREATE POLICY open ON {accounts} FOR SELECT USING (true)",
                       "CREATE POLICY only_one ON {accounts} AS RESTRICTIVE FOR SELECT"
                       " USING (id = 2)")
    assert _reader_rows(setup, f"SELECT id FROM {accounts}") == []
    for body in ("DROP POLICY only_one ON accounts;\n",
                 "ALTER POLICY only_one ON accounts USING (true);\n"):
        with pytest.raises(MigrationError, match="only_one"):
            migrate(setup, "V2__loosen.sql", body)
        (setup.root / setup.me.name / "V2__loosen.sql").unlink()
    assert _reader_rows(setup, f"SELECT id FROM {accounts}") == []


def test_policies_that_show_readers_nothing_more_pass(setup: Setup) -> None:
    """No false alarm: a restrictive policy, one for the service's own role, a policy on
    a table without RLS yet, and a table created with its policy in the same file."""
    _rls_on(setup)
    own = ident(setup.me.runtime_role)
    migrate(setup, "V2__narrow.sql",
            "CREATE POLICY narrow ON accounts AS RESTRICTIVE FOR SELECT USING (id < 9);\n"
            f"CREATE POLICY own ON accounts FOR ALL TO {own} USING (true);\n"
            "CREATE POLICY later ON audit FOR SELECT USING (true);\n"
            "CREATE TABLE fresh (id int);\nALTER TABLE fresh ENABLE ROW LEVEL SECURITY;\n"
            "CREATE POLICY fresh_all ON fresh FOR SELECT USING (true);\n")


def test_a_reader_visible_policy_with_the_marker_commits(setup: Setup) -> None:
    accounts = _rls_on(setup)
    migrate(setup, "V2__open.sql",
            "-- edulink-db: allow-reader-policy the user service may list every account id"
            " (agreed in review)\n"
            "CREATE POLICY everyone ON accounts FOR SELECT USING (true);\n")
    assert _reader_rows(setup, f"SELECT id FROM {accounts}") == [(1,)]


def test_a_marker_without_a_reason_is_an_error(tmp_path: Path) -> None:
    assert _lint(tmp_path, "-- edulink-db: allow-reader-policy\nSELECT 1;\n") == [
        (1, "lint/marker-without-reason")]


def test_a_function_that_turns_a_timeout_off_built_at_run_time_is_rolled_back(
        setup: Setup) -> None:
    with pytest.raises(MigrationError, match="lock_timeout"):
        migrate(setup, "V2__dyn.sql",
                "-- edulink:allow-dynamic-sql reason: maintenance\n"
                "DO $$ BEGIN EXECUTE 'CREATE FUNCTION slow() RETURNS int LANGUAGE sql '"
                " || 'SET lock_timeout = ''0.4ms'' AS ''SELECT 1'''; END $$;\n")
    with psycopg.connect(**setup.superuser, autocommit=True) as conn:
        assert conn.execute("SELECT to_regproc(%s)",
                            [f"{setup.me.schema}.slow"]).fetchone() == (None,)


@pytest.mark.parametrize("clause", ["SET lock_timeout = 0", "SET statement_timeout = '0ms'",
                                    "SET idle_in_transaction_session_timeout TO 0",
                                    "SET lock_timeout = 0.0", "SET lock_timeout = '-0'",
                                    "SET lock_timeout = ' 00 '", "SET lock_timeout = '400us'"])
def test_a_function_clause_that_turns_a_timeout_off_is_refused_before_running(
        setup: Setup, clause: str) -> None:
    with pytest.raises(MigrationError, match="function-timeout-clause"):
        migrate(setup, "V2__fn.sql", f"CREATE FUNCTION f() RETURNS int LANGUAGE sql {clause}"
                " AS $$ SELECT 1 $$;\n")


def _side_schema_attack(setup: Setup) -> str:
    return ("-- edulink:allow-dynamic-sql reason: maintenance\n"
            "CREATE SCHEMA side_attack;\n"
            "CREATE FUNCTION side_attack.leak() RETURNS SETOF text LANGUAGE sql"
            " SECURITY DEFINER SET search_path FROM CURRENT AS $f$ SELECT password_hash"
            f" FROM {ident(setup.me.schema, 'accounts')} $f$;\n"
            "DO $$ BEGIN\n"
            "  EXECUTE 'GRANT USAGE ON SCHEMA side_attack TO ' || 'PUBLIC';\n"
            "  EXECUTE 'GRANT EXECUTE ON FUNCTION side_attack.leak() TO ' || 'PUBLIC';\n"
            "END $$;\n")


def test_security_definer_function_in_a_second_schema_cannot_leak(setup: Setup) -> None:
    """The owner role cannot CREATE SCHEMA in the database, so the guard's one-schema
    view is enough here (held)."""
    with pytest.raises(MigrationError):
        migrate(setup, "V2__side.sql", _side_schema_attack(setup))
    with pytest.raises(psycopg.errors.Error):
        _reader_rows(setup, "SELECT side_attack.leak()")


def test_owner_role_granted_to_a_reader_is_refused(setup: Setup) -> None:
    """GRANT <owner role> TO <reader's runtime role>: the migrator has no ADMIN on the
    owner role, so the server refuses it (held)."""
    with pytest.raises(MigrationError):
        migrate(setup, "V2__member.sql",
                "-- edulink:allow-dynamic-sql reason: maintenance\n"
                "DO $$ BEGIN EXECUTE 'GRANT ' || quote_ident(current_user) || ' TO ' || "
                f"'{ident(setup.reader.runtime_role)}'; END $$;\n")
    assert _reader_rows(setup, "SELECT pg_has_role(current_user, "
                        f"'{setup.me.owner_role}', 'MEMBER')") == [(False,)]


# -- the runner's timeouts -----------------------------------------------------------------

def test_lock_timeout_in_a_function_set_clause_still_bounds_the_wait(setup: Setup) -> None:
    audit = ident(setup.me.schema, "audit")
    blocker = psycopg.connect(**setup.superuser)
    blocker.execute(f"LOCK TABLE {audit} IN ACCESS SHARE MODE")  # held until rollback
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(setup, "V2__grow.sql",
                    "CREATE FUNCTION grow() RETURNS void LANGUAGE sql SET lock_timeout = 0"
                    " AS $$ ALTER TABLE audit ADD COLUMN m int $$;\nSELECT grow();\n")
        except BaseException as exc:  # the wait is what is judged
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    longest = 0.0
    try:
        with psycopg.connect(**setup.superuser, autocommit=True) as watch:
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and thread.is_alive() and longest <= 4:
                row = watch.execute(
                    "SELECT coalesce(max(extract(epoch FROM now() - query_start)), 0)"
                    "  FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    "   AND query LIKE 'SELECT grow()%'").fetchone()
                assert row is not None
                longest = max(longest, float(row[0]))
                time.sleep(0.2)
    finally:
        blocker.rollback()
        blocker.close()
        thread.join(60)
    assert longest < 4, f"one statement waited {longest:.1f}s for a lock (lock_timeout 2s)"


def test_timeout_switched_off_in_a_fired_trigger_is_put_back(setup: Setup) -> None:
    """set_config('statement_timeout', '0', false) in a trigger: the runner puts its
    timeouts back after the statement, so the next statement is still bounded (held)."""
    migrate(setup, "V2__trigger.sql",
            "CREATE FUNCTION quiet() RETURNS trigger LANGUAGE plpgsql AS $t$ BEGIN\n"
            "  PERFORM set_config('statement_timeout', '0', false);\n"
            "  PERFORM set_config('lock_timeout', '0', false); RETURN NEW; END $t$;\n"
            "CREATE TRIGGER quiet AFTER INSERT ON audit FOR EACH ROW EXECUTE FUNCTION quiet();\n"
            "INSERT INTO audit VALUES (1);\n"
            "CREATE TABLE seen AS SELECT current_setting('statement_timeout') AS s,"
            " current_setting('lock_timeout') AS l;\n")
    with psycopg.connect(**setup.superuser, autocommit=True) as conn:
        row = conn.execute(f"SELECT s, l FROM {ident(setup.me.schema, 'seen')}").fetchone()
    assert row is not None and row[0] not in ("0", "0ms") and row[1] == "2s"


# -- the session classifier ----------------------------------------------------------------

# The classifier's lexer once read '||--' and '||/*' as one operator, as PostgreSQL does
# not ("--" and "/*" cannot appear in an operator name: they start a comment).  A quote in
# the comment then opens a string for the classifier that swallows the set_config call.
HIDDEN_SET_CONFIG = {
    "line comment": "SELECT 'a' ||-- it's\n pg_catalog.set_config('app.x', 'y', false) -- '\n",
    "block comment": "SELECT 'a' ||/* it's */ pg_catalog.set_config('app.x', 'y', false) /* ' */",
}


@pytest.mark.parametrize("name", list(HIDDEN_SET_CONFIG))
def test_set_config_after_a_comment_glued_to_an_operator_is_dirty(
        server: dict[str, Any], name: str) -> None:
    text = HIDDEN_SET_CONFIG[name]
    with psycopg.connect(**server, autocommit=True) as conn:
        conn.execute(text)  # the server runs the call: the session keeps app.x
        assert conn.execute("SELECT current_setting('app.x', true)").fetchone() == ("y",)
    assert not statement_is_clean(text)


@pytest.mark.parametrize("text", [
    'SET  "Local".x = 1', "SET local.x = 1", "SET transaction.y = 1",
    "SELECT set_config('a.b', 'c', false)", "SELECT 1, set_config ('a.b', 'c', false)",
    "SELECT pg_catalog.set_config('a.b', 'c', false)",
    "DO $$ BEGIN PERFORM set_config('a.b', 'c', false); END $$",
    "SELECT 1; SET app.x = 2", "SELECT * FROM set_config('a.b', 'c', false)",
    "SELECT 'x' || /* it's */ set_config('a.b', 'c', false) -- '\n",
    "SELECT my_setter()", "SELECT app.my_setter()", "SELECT \"lower\"('A')",
])
def test_session_settings_are_dirty(text: str) -> None:
    """Held: every session-level setting form tried (with the comment apart from the
    operator, the lexer reads it)."""
    assert not statement_is_clean(text)


# -- the linter ----------------------------------------------------------------------------

@pytest.mark.parametrize("comment", ["-- edulink 東京", "-- edulink ok 🚀",
                                     "-- edulink note\u00a0"])
def test_marker_reader_reads_a_comment_ending_in_non_ascii(tmp_path: Path,
                                                            comment: str) -> None:
    assert _lint(tmp_path, comment + "\nSELECT 1;\n") == []


def test_a_suppression_after_non_ascii_text_applies_to_its_line(tmp_path: Path) -> None:
    # The scanner counts characters, not bytes: read as bytes, every comment after a
    # multi-byte character was cut in the wrong place and its marker was lost.
    text = ("-- café, 東京\n"
            "-- edulink-db: ignore squawk/require-concurrent-index-creation tiny table\n"
            "CREATE INDEX i ON authentication_user (email);\n")
    assert _lint(tmp_path, text) == []


@pytest.mark.parametrize("text", [
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$\n\\connect foo\n$$;\n",
    "SELECT '\n\\connect foo\n';\n",
    "/*\n\\connect foo\n*/\nSELECT 1;\n",
])
def test_meta_command_text_inside_a_body_string_or_comment_is_not_flagged(
        tmp_path: Path, text: str) -> None:
    assert _lint(tmp_path, text) == []


@pytest.mark.parametrize("marker", [
    "/* edulink-db: ignore squawk/require-concurrent-index-creation */",
    "-- edulink:ignore squawk/require-concurrent-index-creation reason:",
    "-- edulink-db: ignore squawk/require-concurrent-index-creation    ",
])
def test_suppression_without_reason_does_not_suppress(tmp_path: Path, marker: str) -> None:
    found = _lint(tmp_path, marker + "\nCREATE INDEX i ON authentication_user (email);\n")
    assert (1, "lint/marker-without-reason") in found
    assert (2, "squawk/require-concurrent-index-creation") in found


def test_long_file_and_deep_nesting_lint_quickly(tmp_path: Path) -> None:
    text = "".join(f"CREATE TABLE t{i} (id int);\n" for i in range(3000))
    text += "SELECT " + "(" * 5000 + "1" + ")" * 5000 + ";\n"
    start = time.monotonic()
    assert _lint(tmp_path, text) == []
    assert time.monotonic() - start < 10


def test_non_utf8_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "V2__bytes.sql"
    path.write_bytes(b"SELECT '\xff';\n")
    with pytest.raises(Exception, match="not valid UTF-8") as exc:
        files.parse_file(path)
    assert "\n" not in str(exc.value)


def test_migrate_applies_a_file_whose_comment_ends_in_non_ascii(setup: Setup) -> None:
    migrate(setup, "V2__note.sql", "-- notes for edulink, 東京\nCREATE TABLE noted (n int);\n")
    assert _reader_rows(setup, "SELECT 1") == [(1,)]


# -- the topology's reserved names ---------------------------------------------------------

def _default_text_with(extra: str) -> str:
    import microservices.shared.database.topology as topology_package
    text = (Path(topology_package.__file__).parent / "default_topology.toml").read_text()
    return text.replace("[services.auth]\n", "[services.auth]\n" + extra + "\n", 1)


def test_a_role_name_postgresql_reserves_is_refused_by_the_topology(
        server: dict[str, Any]) -> None:
    from microservices.shared.database.topology import parse_topology
    with psycopg.connect(**server, autocommit=True) as conn, \
            pytest.raises(psycopg.errors.ReservedName):
        conn.execute('CREATE ROLE "none"')
    with pytest.raises(Exception, match="none"):
        parse_topology(_default_text_with('runtime_role = "none"'), source="t")


@pytest.mark.parametrize("extra", [
    'runtime_role = "Supabase_Admin"', 'runtime_role = "supabase_etl_admin"',
    'runtime_role = "pg_monitor"', 'schema = "graphql_public"', 'schema = "supabase_x"',
])
def test_platform_and_system_names_are_refused_by_the_topology(extra: str) -> None:
    from microservices.shared.database.topology import parse_topology
    with pytest.raises(Exception):  # noqa: B017 - TopologyError or a validation error
        parse_topology(_default_text_with(extra), source="t")


# -- more of what held ---------------------------------------------------------------------

def test_a_view_over_a_private_column_granted_to_a_reader_is_rolled_back(
        setup: Setup) -> None:
    with pytest.raises(MigrationError, match="hashes"):
        migrate(setup, "V2__view.sql",
                "-- edulink:allow-dynamic-sql reason: maintenance\n"
                "CREATE VIEW hashes AS SELECT password_hash FROM accounts;\n"
                "DO $$ BEGIN EXECUTE 'GRANT SELECT ON hashes TO ' || "
                f"'{ident(setup.reader.runtime_role)}'; END $$;\n")
    with pytest.raises(psycopg.errors.UndefinedTable):
        _reader_rows(setup, f"SELECT * FROM {ident(setup.me.schema, 'hashes')}")


def test_a_file_cannot_change_the_owner_roles_defaults(setup: Setup) -> None:
    """ALTER ROLE CURRENT_USER SET ...: refused, nothing recorded (held)."""
    with pytest.raises(MigrationError):
        migrate(setup, "V2__role.sql", "ALTER ROLE CURRENT_USER SET work_mem = '1GB';\n")
    with psycopg.connect(**setup.superuser, autocommit=True) as conn:
        rows = conn.execute("SELECT setconfig FROM pg_db_role_setting"
                            " WHERE setrole = %s::regrole", (setup.me.owner_role,)).fetchall()
    assert rows == []


def test_a_grant_fired_by_a_concurrent_index_build_is_rolled_back(setup: Setup) -> None:
    schema, reader = ident(setup.me.schema), ident(setup.reader.runtime_role)
    with contextlib.suppress(MigrationError):  # refused or not, nothing may stay
        migrate(setup, "V2__index.sql",
                "-- edulink:allow-dynamic-sql reason: maintenance\n"
                "CREATE FUNCTION do_grant() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN"
                f" EXECUTE 'GRANT SELECT ON {schema}.accounts TO ' || '{reader}'; END $f$;\n"
                "CREATE FUNCTION pick(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$"
                f" BEGIN PERFORM {schema}.do_grant(); RETURN i; END $f$;\n"
                f"CREATE INDEX CONCURRENTLY accounts_pick ON accounts ({schema}.pick(id));\n")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _reader_rows(setup, f"SELECT password_hash FROM {schema}.accounts")


def test_concurrent_index_builds_on_built_in_code_still_run(setup: Setup) -> None:
    """No false alarm: columns, built-in functions, operators and casts."""
    migrate(setup, "V2__indexes.sql",
            "CREATE INDEX CONCURRENTLY accounts_email ON accounts (lower(email));\n"
            "CREATE INDEX CONCURRENTLY accounts_part ON accounts (id)"
            " WHERE email LIKE '%@example.org' AND id::text <> '0';\n"
            "REINDEX INDEX CONCURRENTLY accounts_email;\n")


@pytest.mark.parametrize(("prepare", "statement", "named"), [
    ("CREATE FUNCTION rank_of(i int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT i $$;",
     "CREATE INDEX CONCURRENTLY r ON accounts (rank_of(id));", "function"),
    ("CREATE FUNCTION same(a int, b int) RETURNS bool LANGUAGE sql IMMUTABLE"
     " AS $$ SELECT a = b $$; CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int,"
     " FUNCTION = same);",
     "CREATE INDEX CONCURRENTLY r ON accounts (id) WHERE id === 1;", "operator"),
    ("CREATE FUNCTION ok(i int) RETURNS bool LANGUAGE sql IMMUTABLE AS $$ SELECT true $$;"
     " CREATE DOMAIN checked AS int CHECK (ok(VALUE));",
     "CREATE INDEX CONCURRENTLY r ON accounts ((id::checked));", "domain"),
    ("CREATE FUNCTION rank_of(i int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT i $$;"
     " CREATE INDEX r ON accounts (rank_of(id));",
     "REINDEX INDEX CONCURRENTLY r;", "function"),
    # pg_temp is pg_temp_N in the catalog; a temporary function lives as long as the
    # migration's session, long enough for the build.
    ("SELECT 1;",
     "CREATE FUNCTION pg_temp.t(i int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT i $$;\n"
     "CREATE INDEX CONCURRENTLY r ON accounts (pg_temp.t(id));", "function"),
])
def test_a_concurrent_statement_that_runs_the_schemas_code_is_refused_first(
        setup: Setup, prepare: str, statement: str, named: str) -> None:
    migrate(setup, "V2__prepare.sql", prepare + "\n")
    with pytest.raises(MigrationError, match=f"own code: {named} ") as exc:
        migrate(setup, "V3__concurrent.sql", statement + "\n")
    assert "without CONCURRENTLY" in str(exc.value)


def test_a_grant_in_a_deferred_trigger_is_rolled_back(setup: Setup) -> None:
    schema, reader = ident(setup.me.schema), ident(setup.reader.runtime_role)
    with contextlib.suppress(MigrationError):  # refused or not, nothing may stay
        migrate(setup, "V2__late.sql",
                "-- edulink:allow-dynamic-sql reason: maintenance\n"
                "CREATE FUNCTION late() RETURNS trigger LANGUAGE plpgsql AS $t$ BEGIN"
                f" EXECUTE 'GRANT SELECT ON {schema}.accounts TO ' || '{reader}';"
                " RETURN NULL; END $t$;\n"
                "CREATE CONSTRAINT TRIGGER late AFTER INSERT ON audit"
                " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION late();\n"
                "INSERT INTO audit VALUES (7);\n")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _reader_rows(setup, f"SELECT password_hash FROM {schema}.accounts")


LONG_CONCAT = "SELECT " + " || ".join(["'a'"] * 900) + ";\n"


def test_a_long_expression_chain_is_linted(server: dict[str, Any], tmp_path: Path) -> None:
    with psycopg.connect(**server, autocommit=True) as conn:
        row = conn.execute(LONG_CONCAT).fetchone()
    assert row is not None and row[0] == "a" * 900
    assert _lint(tmp_path, LONG_CONCAT) == []


@pytest.mark.parametrize("terms", [3000, 9000])
def test_a_chain_as_deep_as_the_parser_takes_is_linted_also_in_a_thread(
        tmp_path: Path, terms: int) -> None:
    # Decoding raises the recursion limit for its own duration: deep trees in a worker
    # thread (a web server's, say) must not crash the C stack either.
    text = "SELECT " + " || ".join(["'a'"] * terms) + ";\n"
    found: list[Any] = []
    worker = threading.Thread(target=lambda: found.append(_lint(tmp_path, text)))
    worker.start()
    worker.join()
    assert found == [[]]
    assert sys.getrecursionlimit() < 50_000  # put back afterwards


def test_a_chain_deeper_than_the_parser_takes_is_one_finding(tmp_path: Path) -> None:
    found = _lint(tmp_path, "SELECT " + " || ".join(["'a'"] * 30000) + ";\n")
    assert found == [(1, "contract/unparsable")]


def test_a_plain_grant_fired_at_commit_from_an_earlier_files_function_is_refused(
        setup: Setup) -> None:
    schema, reader = ident(setup.me.schema), ident(setup.reader.runtime_role)
    (setup.root / setup.me.name / "V2__fn.sql").write_text(
        "CREATE FUNCTION late() RETURNS trigger LANGUAGE plpgsql AS $t$ BEGIN"
        f" GRANT SELECT ON {schema}.accounts TO {reader}; RETURN NULL; END $t$;\n")
    with contextlib.suppress(MigrationError):  # refused or not, nothing may stay
        migrate(setup, "V3__fire.sql",
                "CREATE CONSTRAINT TRIGGER late AFTER INSERT ON audit"
                " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION late();\n"
                "INSERT INTO audit VALUES (7);\n")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _reader_rows(setup, f"SELECT password_hash FROM {schema}.accounts")


def test_a_private_column_granted_to_another_services_owner_role_is_rolled_back(
        setup: Setup) -> None:
    """Held: a role the topology names but not as a reader (another service's owner)."""
    with pytest.raises(MigrationError, match="password_hash"):
        migrate(setup, "V2__owner.sql",
                "-- edulink:allow-dynamic-sql reason: maintenance\n"
                "DO $$ BEGIN EXECUTE 'GRANT SELECT (password_hash) ON accounts TO ' || "
                f"'{ident(setup.reader.owner_role)}'; END $$;\n")
