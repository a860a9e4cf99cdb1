"""The linter's own rules, output formats, markers and false-alarm filter (issue 28).
The corpora are in tests/test_lint_corpus.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from microservices.shared.database.core.errors import MigrationFileError
from microservices.shared.database.migrations import contracts, files
from microservices.shared.database.migrations.findings import rule_url
from microservices.shared.database.migrations.lint import lint
from microservices.shared.database.topology import default_topology

TOPOLOGY = default_topology()
CLI = [sys.executable, "-m", "microservices.shared.database"]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "lint-rules.md"


def run_lint(tmp_path: Path, text: str, service: str = "auth",
             name: str = "V2__case.sql") -> list[tuple[int, int, str]]:
    path = tmp_path / name
    path.write_text(text)
    found = lint(TOPOLOGY, [(TOPOLOGY.service(service), files.parse_file(path))])
    return [(f.line, f.column, f.rule) for f in found]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


# -- lint/session-setting ----------------------------------------------------------------

def test_session_settings_are_refused_with_line_and_column(tmp_path: Path) -> None:
    text = ("-- pasted from pg_dump\n"
            "SET statement_timeout = 0;\n"
            "  SET LOCAL lock_timeout TO '10min';\n"
            "SELECT pg_catalog.set_config('search_path', '', false);\n"
            "SET SESSION AUTHORIZATION DEFAULT;\n"
            "RESET ROLE;\n"
            "RESET ALL;\n"
            "DO $$\nBEGIN\n  PERFORM set_config('statement_timeout', '0', true);\nEND $$;\n")
    assert run_lint(tmp_path, text) == [
        (2, 1, "lint/session-setting"), (3, 3, "lint/session-setting"),
        (4, 8, "lint/session-setting"), (5, 1, "lint/session-setting"),
        (6, 1, "lint/session-setting"), (7, 1, "lint/session-setting"),
        (10, 3, "lint/session-setting")]


def test_settings_that_do_not_leak_are_not_flagged(tmp_path: Path) -> None:
    text = ("SET client_encoding = 'UTF8';\nSET check_function_bodies = false;\n"
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = '' "
            "SET statement_timeout = '1s' AS $$ SELECT 1 $$;\n"
            "ALTER FUNCTION f() SET lock_timeout = '1s';\n"
            "ALTER ROLE auth_service_role SET statement_timeout = '5s';\n"
            "SELECT current_setting('search_path');\n")
    assert run_lint(tmp_path, text) == []


# -- lint/psql-meta-command ------------------------------------------------------------

def test_each_meta_command_is_reported_at_its_own_line(tmp_path: Path) -> None:
    text = ("--\n-- PostgreSQL database dump\n--\n\n\\restrict AbC123\n\n"
            "CREATE TABLE t (id int);\n\\connect other\n  \\set x 1\n"
            "CREATE FUNCTION g() RETURNS text LANGUAGE sql AS $$\nSELECT 'a'\n$$;\n"
            "\\unrestrict AbC123\n")
    assert run_lint(tmp_path, text) == [
        (5, 1, "lint/psql-meta-command"), (8, 1, "lint/psql-meta-command"),
        (9, 3, "lint/psql-meta-command"), (13, 1, "lint/psql-meta-command")]
    # The runner refuses the file too, naming the command's line (not the header's).
    with pytest.raises(MigrationFileError, match=r"line 5: psql meta-commands \(\\restrict\)"):
        files.parse_file(tmp_path / "V2__case.sql").statements  # noqa: B018 (parses)


def test_backslash_lines_inside_bodies_and_strings_are_sql(tmp_path: Path) -> None:
    text = ("CREATE FUNCTION h() RETURNS text LANGUAGE sql SET search_path = '' AS $$\n"
            "\\not_a_command\n$$;\n")
    assert "lint/psql-meta-command" not in {r for *_, r in run_lint(tmp_path, text)}


# -- lint/security-definer-search-path -------------------------------------------------

def test_security_definer_needs_search_path(tmp_path: Path) -> None:
    bad = ("SELECT 1;\nCREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER\n"
           "  AS $$ SELECT 1 $$;\nALTER FUNCTION f() SECURITY DEFINER;\n")
    assert run_lint(tmp_path, bad) == [(2, 1, "lint/security-definer-search-path"),
                                       (4, 1, "lint/security-definer-search-path")]
    good = ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER "
            "SET search_path = '' AS $$ SELECT 1 $$;\n"
            "ALTER FUNCTION f() SECURITY DEFINER SET search_path = pg_catalog;\n"
            "CREATE FUNCTION g() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n")
    assert run_lint(tmp_path, good) == []


# -- false alarms -----------------------------------------------------------------------

def test_revoke_from_public_is_not_a_contract_break() -> None:
    def rules(text: str) -> list[str]:
        found, _ = contracts.analyse_migration(TOPOLOGY, TOPOLOGY.service("auth"), "x", text)
        return [f.rule for f in found]
    assert rules("REVOKE ALL ON SCHEMA auth_schema FROM PUBLIC;\n"
                 "REVOKE EXECUTE ON FUNCTION f() FROM PUBLIC;\n"
                 "ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;\n") == []
    assert rules("GRANT SELECT ON t TO PUBLIC;") == ["contract/grant-outside-topology"]
    assert rules("REVOKE SELECT ON t FROM user_service_role;") == [
        "contract/grant-outside-topology"]


def test_squawk_is_quiet_on_objects_the_file_created(tmp_path: Path) -> None:
    text = ("CREATE DOMAIN score AS int CHECK (VALUE >= 0);\n"
            "ALTER DOMAIN score ADD CONSTRAINT score_max CHECK (VALUE <= 100);\n"
            "CREATE TABLE draft (id bigint PRIMARY KEY, name varchar(40));\n"
            "ALTER TABLE draft RENAME TO final;\n"
            "ALTER TABLE final ADD CONSTRAINT final_name CHECK (name <> '');\n"
            "ALTER TABLE final ALTER COLUMN name TYPE varchar(80);\n"
            "CREATE MATERIALIZED VIEW totals AS SELECT 1 AS n WITH NO DATA;\n"
            "CREATE UNIQUE INDEX totals_n ON totals (n);\n")
    assert run_lint(tmp_path, text) == []
    # The same statements on objects that existed before the file are still hazards.
    existing = ("ALTER DOMAIN old_score ADD CONSTRAINT m CHECK (VALUE <= 100);\n"
                "ALTER TABLE orders RENAME TO purchases;\n"
                "CREATE UNIQUE INDEX old_totals_n ON old_totals (n);\n")
    assert [r for _, _, r in run_lint(tmp_path, existing)] == [
        "squawk/ban-alter-domain-with-add-constraint", "squawk/renaming-table",
        "squawk/require-concurrent-index-creation"]


# -- contracts: trigger functions ------------------------------------------------------

def test_exposed_column_dropped_in_a_fired_trigger_function(tmp_path: Path) -> None:
    text = ("CREATE FUNCTION tidy() RETURNS trigger LANGUAGE plpgsql\n"
            "  SET search_path = auth_schema AS $$\nBEGIN\n"
            "  ALTER TABLE authentication_user DROP COLUMN email;\n  RETURN NEW;\nEND $$;\n"
            "CREATE TRIGGER tidy AFTER INSERT ON audit FOR EACH ROW EXECUTE FUNCTION tidy();\n")
    assert (4, 3, "contract/drop-exposed-column") in run_lint(tmp_path, text)
    event = text.replace("RETURNS trigger", "RETURNS event_trigger").replace(
        "  RETURN NEW;\n", "").replace(
        "CREATE TRIGGER tidy AFTER INSERT ON audit FOR EACH ROW",
        "CREATE EVENT TRIGGER tidy ON ddl_command_end")
    assert (4, 3, "contract/drop-exposed-column") in run_lint(tmp_path, event)


# -- markers --------------------------------------------------------------------------

def test_ignore_marker_new_and_old_forms(tmp_path: Path) -> None:
    stmt = "CREATE INDEX u_login ON authentication_user (last_login);\n"
    assert run_lint(tmp_path, stmt) == [(1, 1, "squawk/require-concurrent-index-creation")]
    for marker in ("-- edulink-db: ignore squawk/require-concurrent-index-creation 40 rows\n",
                   "-- edulink:ignore squawk/require-concurrent-index-creation reason: 40 "
                   "rows\n"):
        assert run_lint(tmp_path, marker + stmt) == []
    assert run_lint(tmp_path, "-- edulink-db: ignore squawk/require-concurrent-index-creation"
                    "\n" + stmt) == [(1, 1, "lint/marker-without-reason"),
                                     (2, 1, "squawk/require-concurrent-index-creation")]
    assert run_lint(tmp_path, "-- edulink-db: ignore lint/session-setting a one-off backfill\n"
                    "SET statement_timeout = '2h';\n") == []
    assert [r for *_, r in run_lint(
        tmp_path, "-- edulink-db: ignore contract/drop-exposed-column no\n"
        "ALTER TABLE authentication_user DROP COLUMN email;\n")] == [
        "lint/invalid-marker", "contract/drop-exposed-column", "squawk/ban-drop-column"]


# -- the command ----------------------------------------------------------------------

def test_lint_reports_every_file_with_formats_and_exit_codes(tmp_path: Path) -> None:
    root = tmp_path / "migrations" / "auth"
    root.mkdir(parents=True)
    (root / "V1__dump.sql").write_text("\\restrict k\nCREATE TABLE t (id int);\n")
    (root / "V1.0__same_version.sql").write_text("SELECT 1;\n")
    (root / "bad name.sql").write_text("SELECT 1;\n")
    (root / "V3__latin1.sql").write_bytes(b"SELECT '\xe9';\n")
    (root / "V4__timeouts.sql").write_text("SELECT 1;\nSET lock_timeout = 0;\n")
    (root / "V5__index.sql").write_text("CREATE INDEX i ON authentication_user (email);\n")
    result = cli("lint", "--dir", str(tmp_path / "migrations"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "lint: 6 file(s), 5 error(s), 1 warning(s)"
    assert f"{root}/V1__dump.sql:1:1: error [lint/psql-meta-command]" in result.stdout
    assert f"{root}/V4__timeouts.sql:2:1: error [lint/session-setting]" in result.stdout
    assert "(docs/lint-rules.md#lint-session-setting)" in result.stdout
    for name in ("bad name.sql", "V3__latin1.sql"):
        assert f"{root}/{name}:1:1: error [lint/migration-file]" in result.stdout
    assert (f"{root}/V1__dump.sql:1:1: error [lint/migration-file] V1.0__same_version.sql has "
            "the same version 1") in result.stdout
    assert "(https://squawkhq.com/docs/require-concurrent-index-creation)" in result.stdout

    github = cli("migrations", "lint", "--dir", str(tmp_path / "migrations"), "--format",
                 "github", cwd=tmp_path)
    assert github.returncode == 2
    assert (f"::error file={root}/V4__timeouts.sql,line=2,col=1,title=lint/session-setting::"
            "SET lock_timeout") in github.stdout
    assert f"::warning file={root}/V5__index.sql,line=1,col=1," in github.stdout
    assert all(line.startswith("::") for line in github.stdout.splitlines())

    data = json.loads(cli("lint", "--dir", str(tmp_path / "migrations"), "--format", "json",
                          cwd=tmp_path).stdout)
    assert {d["rule"] for d in data} >= {"lint/psql-meta-command", "lint/migration-file"}
    assert all(set(d) == {"file", "line", "column", "rule", "severity", "message", "url"}
               for d in data)


def test_help_has_an_example(tmp_path: Path) -> None:
    for args in (["lint"], ["migrations", "lint"]):
        shown = cli(*args, "--help", cwd=tmp_path).stdout
        assert "Example:" in shown and f"edulink-db {' '.join(args)} " in shown


def test_every_rule_has_a_docs_anchor() -> None:
    from microservices.shared.database.migrations import hazards, markers
    from microservices.shared.database.migrations import lint as lint_module
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', DOCS.read_text()))
    rules = {v for m in (contracts, hazards, markers, lint_module) for k, v in vars(m).items()
             if k.isupper() and isinstance(v, str) and re.fullmatch(r"(contract|lint)/[a-z-]+",
                                                                    v)}
    assert len(rules) >= 20
    for rule in rules:
        assert rule_url(rule).split("#")[1] in anchors, rule


def test_every_transaction_control_statement_is_reported(tmp_path: Path) -> None:
    text = "-- sqlmigrate output\nBEGIN;\nCREATE TABLE t (id int);\nCOMMIT;\n"
    assert [(line, rule) for line, _, rule in run_lint(tmp_path, text)
            if rule.startswith("lint/")] == [(2, "lint/migration-file"),
                                             (4, "lint/migration-file")]
    # The new marker spelling is not one the runner reads for its own directive: said so.
    assert [r for *_, r in run_lint(tmp_path, "-- edulink-db: transaction=off\nSELECT 1;\n")
            ] == ["lint/invalid-marker"]
