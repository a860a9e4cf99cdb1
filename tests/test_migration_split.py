"""Splitting migration files: same statements and line numbers as before, on big files too.

The speed (linear, not quadratic) is measured by benchmarks/split.py, which prints the
time ratio of N and 4N statements; tests never assert timings.
"""

# ruff: noqa: S608 - the generated SQL is test data for the splitter; nothing runs it

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.split import baseline_split as reference_split  # the previous splitter
from microservices.shared.database.core.errors import MigrationFileError
from microservices.shared.database.migrations.files import (
    parse_file,
    split_statements,
)

TRICKY = [
    "SELECT 1",
    "SELECT 1;",
    "\n\n  SELECT 1;\n\n\n  SELECT 2;  \n\n",
    ";;\n;SELECT 1;;\n",
    "-- only a comment\n",
    "-- leading comment\nSELECT 1; -- trailing comment\n/* block\n comment */ SELECT 2;\n",
    "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n  PERFORM 1;\n"
    "  RETURN 1;\nEND\n$$;\nSELECT f();\n",
    "CREATE FUNCTION g() RETURNS text AS $body$ SELECT 'a;b' $body$ LANGUAGE sql;\n"
    "SELECT $x$;$x$;\n",
    "INSERT INTO t VALUES ('it''s; fine', E'back\\\\slash; \\' quote');\nSELECT \"a;b\" FROM t;\n",
    "-- edulink:transaction=off\nCREATE INDEX CONCURRENTLY i ON t (a);\n\nVACUUM t;\n",
    "DO $do$\nBEGIN\n  IF true THEN\n    RAISE NOTICE 'x;y';\n  END IF;\nEND\n$do$;\nSELECT 3;",
    "CREATE FUNCTION h() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\n  SELECT 2;\n"
    "END;\nSELECT 4;\n",
    "/* a /* nested */ comment */ SELECT 5;\nSELECT 6 /* ; */;\n",
    "\tSELECT 7;\x0c\nSELECT 8;\n",
    "SELECT 'multi\nline\nliteral';\n\n\nSELECT 9;\n",
]


@pytest.mark.parametrize("text", TRICKY)
def test_same_statements_and_lines_as_the_previous_splitter(text: str) -> None:
    assert split_statements(text) == reference_split(text)


def test_large_file_keeps_every_boundary_and_line() -> None:
    """20,000 statements of varying shape: each keeps its own text and starting line."""
    parts: list[str] = []
    expected: list[tuple[str, int]] = []
    line = 1
    for i in range(20_000):
        kind = i % 4
        if kind == 0:
            stmt = f"INSERT INTO t VALUES ({i}, 'a;b');"
        elif kind == 1:
            stmt = f"CREATE FUNCTION f{i}() RETURNS int AS $$\nSELECT {i}; -- ;\n$$ LANGUAGE sql;"
        elif kind == 2:
            stmt = f"/* {i};\n */ UPDATE t SET a = {i};"
        else:
            stmt = f"SELECT 'x\n{i}';"
        comment = f"-- statement {i}\n" if i % 3 == 0 else ""
        # A statement's line is where its first character (a leading comment included) is.
        expected.append((comment + stmt, line))
        chunk = comment + stmt + "\n" + ("\n" if i % 5 == 0 else "")
        parts.append(chunk)
        line += chunk.count("\n")
    statements = split_statements("".join(parts))
    assert [(s.text, s.line) for s in statements] == expected


def test_errors_report_the_line_of_the_offending_statement_in_a_large_file(
        tmp_path: Path) -> None:
    body = "".join(f"INSERT INTO t VALUES ({i});\n\n" for i in range(10_000))
    path = tmp_path / "V1__big.sql"
    path.write_text(body + "-- done\nCOMMIT;\n")
    # The statement's text starts at its leading comment (line 20001); the error names
    # the line of COMMIT itself.
    with pytest.raises(MigrationFileError, match=r"line 20002: COMMIT"):
        _ = parse_file(path).statements


def test_concurrently_and_directives_are_still_seen_at_the_end_of_a_large_file(
        tmp_path: Path) -> None:
    body = "".join(f"INSERT INTO t VALUES ({i});\n" for i in range(10_000))
    path = tmp_path / "V1__big.sql"
    path.write_text(body + "CREATE INDEX CONCURRENTLY t_a ON t (a);\n")
    assert parse_file(path).transactional is False
    path.write_text(body + "-- edulink:transaction=on\nCREATE INDEX CONCURRENTLY t_a ON t (a);\n")
    with pytest.raises(MigrationFileError, match=r"line 10001: the file says"):
        _ = parse_file(path).statements


def test_split_benchmark_runs() -> None:
    """benchmarks/split.py keeps working (it prints timings; nothing about them is asserted)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "split.py"
    result = subprocess.run([sys.executable, str(script), "--sizes", "50", "100"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "ours/baseline" in result.stdout and "growth from 50 to 100" in result.stdout
