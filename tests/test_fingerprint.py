"""Fingerprints never carry a value, however the value is spelled (PostgreSQL's lexer)."""

from __future__ import annotations

import pytest

from microservices.shared.database.monitoring.fingerprint import fingerprint, normalise

SECRET = "s3cr3t-Zoë"


@pytest.mark.parametrize("query", [
    "SELECT * FROM t WHERE note = E'it\\'s @'",  # backslash-escaped quote
    "SELECT * FROM t WHERE note = U&'@'",
    "SELECT * FROM t WHERE note = $tag$@$tag$",
    "SELECT * FROM t WHERE note = 'a''@'",
    "SELECT * FROM t WHERE note = '@' -- @",
    "SELECT * FROM t /* @ */ WHERE note = 'x'",
    "SELECT * FROM t WHERE note = '@",  # cut off mid-literal (pg_stat_activity)
    "SELECT * FROM t WHERE note = E'\\'@",
])
def test_no_part_of_a_literal_survives(query: str) -> None:
    text = normalise(query.replace("@", SECRET))
    assert SECRET not in text and "s3cr3t" not in text and "Zo" not in text, text
    assert text.startswith("SELECT * FROM t")


def test_numbers_and_lists_are_collapsed_and_identifiers_kept() -> None:
    assert normalise('SELECT "Col1", b FROM t2 WHERE id IN (1, 2, 3) AND x = -4.5e3') == \
        'SELECT "Col1", b FROM t2 WHERE id IN (?) AND x = -?'
    assert normalise("INSERT INTO t VALUES ($1, $2)") == "INSERT INTO t VALUES ($1, $2)"


def test_same_shape_same_fingerprint() -> None:
    a = fingerprint("SELECT * FROM t WHERE id = 42 AND name = 'bob'")
    b = fingerprint("select *  from t where id = 7 and name = E'al\\'ice'")
    assert a[0] == b[0] and a[1] == "SELECT"
