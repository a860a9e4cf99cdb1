"""Migration files are validated before anything runs (no database needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from microservices.shared.database.core.errors import MigrationFileError
from microservices.shared.database.migrations.files import (
    checksum,
    load_directory,
    parse_file,
    split_statements,
)


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_numeric_version_order_then_repeatables(tmp_path: Path) -> None:
    for name in ("V10__ten.sql", "V2__two.sql", "V1.5__one_five.sql", "V1__one.sql",
                 "R__views.sql", "README.md"):
        write(tmp_path, name, "SELECT 1;")
    assert [f.script for f in load_directory(tmp_path)] == [
        "V1__one.sql", "V1.5__one_five.sql", "V2__two.sql", "V10__ten.sql", "R__views.sql"]


@pytest.mark.parametrize(("names", "message"), [
    (["V1__a.sql", "V1__b.sql"], "same version 1"),
    (["V1__a.sql", "V1.0__b.sql"], "same version 1"),
    (["V1_1__a.sql", "V1.1__b.sql"], "same version 1.1"),
    (["create_users.sql"], "cannot parse the file name"),
    (["V1_create.sql"], "cannot parse the file name"),
    (["Vx__a.sql"], "cannot parse the file name"),
])
def test_bad_directories(tmp_path: Path, names: list[str], message: str) -> None:
    for name in names:
        write(tmp_path, name, "SELECT 1;")
    with pytest.raises(MigrationFileError, match=message):
        load_directory(tmp_path)


@pytest.mark.parametrize(("content", "message"), [
    ("", "no SQL statements"),
    ("-- only a comment\n", "no SQL statements"),
    (b"SELECT '\xff';", "not valid UTF-8"),
    ("CREATE TABLE a (x int);\nCOMMIT;\n", "line 2: COMMIT"),
    ("BEGIN;\nCREATE TABLE a (x int);\n", "line 1: BEGIN"),
    ("\\i other.sql\n", "psql meta-commands"),
    ("-- edulink:transaction=on\nCREATE INDEX CONCURRENTLY i ON t (x);\n",
     "cannot run inside a transaction"),
])
def test_bad_files(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = write(tmp_path, "V1__x.sql", content)
    with pytest.raises(MigrationFileError, match=message) as exc:
        parse_file(path).parsed  # noqa: B018 - parsing is what raises
    assert "V1__x.sql" in str(exc.value)


def test_line_endings_do_not_change_the_checksum() -> None:
    text = "CREATE TABLE a (x int);\nINSERT INTO a VALUES (1);\n"
    assert checksum(text) == checksum(text.replace("\n", "\r\n"))
    assert checksum(text) == checksum("\ufeff" + text)
    assert checksum(text) != checksum(text.replace("1", "2"))


def test_non_transactional_statements_are_detected(tmp_path: Path) -> None:
    for sql, transactional in [
        ("CREATE INDEX CONCURRENTLY i ON t (x);", False),
        ("create unique index concurrently i on t (x);", False),
        ("DROP INDEX CONCURRENTLY IF EXISTS i;", False),
        ("REINDEX (VERBOSE) INDEX CONCURRENTLY i;", False),
        ("VACUUM ANALYZE t;", False),
        ("-- edulink:transaction=off\nUPDATE t SET x = 1;", False),
        ("CREATE INDEX i ON t (x);", True),
        ("SELECT 'CREATE INDEX CONCURRENTLY';", True),
        ("-- CREATE INDEX CONCURRENTLY in a comment\nSELECT 1;", True),
    ]:
        assert parse_file(write(tmp_path, "V1__x.sql", sql)).transactional is transactional, sql


def test_statements_keep_their_lines_and_dollar_quotes() -> None:
    text = ("-- header\nCREATE TABLE a (x int);\n\nCREATE FUNCTION f() RETURNS int\n"
            "LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END; $$;\nINSERT INTO a VALUES (1);\n")
    stmts = split_statements(text)
    assert [s.line for s in stmts] == [1, 4, 6]
    assert "RETURN 1; END; $$" in stmts[1].text
