"""PostgreSQL parse trees (pglast's JSON) as Python data, at any depth the parser takes.

PostgreSQL's own parser accepts expressions far deeper than Python's default recursion
limit lets :func:`json.loads` decode: 900 terms joined with ``||`` (a generated seed
file) is a tree about 1,800 levels deep, and pglast parses some 10,000 such terms before
its own ``stack depth limit exceeded``.  A linter that crashed on a statement the server
runs would also stop ``migrate``, so decoding raises the limit for its own duration.

Contract: :func:`sql_tree` and :func:`plpgsql_tree` return what ``json.loads`` of
pglast's output returns, or raise :class:`pglast.parser.ParseError` -- also for a tree
too deep even for the raised limit -- never :class:`RecursionError`.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pglast import parser as pg

__all__ = ["DEEP_RECURSION_LIMIT", "deep_recursion", "plpgsql_tree", "sql_tree"]

# Twice the depth of the deepest tree pglast produces (about 20,000 levels), and well
# inside the C stack of a thread: json's decoder recurses in C, one small frame a level.
DEEP_RECURSION_LIMIT = 50_000

_lock = threading.Lock()
_holders = 0
_saved_limit = 0


@contextmanager
def deep_recursion() -> Iterator[None]:
    """Run the block with the recursion limit at least :data:`DEEP_RECURSION_LIMIT`.

    The limit is process-wide, so nested and concurrent holders share one raise: the
    first one in raises it, the last one out puts back the limit it found.
    """
    global _holders, _saved_limit
    with _lock:
        if _holders == 0:
            _saved_limit = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_saved_limit, DEEP_RECURSION_LIMIT))
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                sys.setrecursionlimit(_saved_limit)


def _decoded(parse: Callable[[str], str], text: str) -> Any:
    encoded = parse(text)
    try:
        with deep_recursion():
            return json.loads(encoded)
    except RecursionError:
        raise pg.ParseError("the statement is nested too deeply to analyse; split it "
                            "into smaller statements", 0) from None


def sql_tree(text: str) -> Any:
    """The parse tree of SQL *text* (``{"stmts": [...]}``); raises ParseError."""
    return _decoded(pg.parse_sql_json, text)


def plpgsql_tree(text: str) -> Any:
    """The parse tree of a PL/pgSQL ``CREATE FUNCTION``/``DO`` *text*; raises ParseError."""
    return _decoded(pg.parse_plpgsql_json, text)
