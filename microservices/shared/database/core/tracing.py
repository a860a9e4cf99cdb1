"""Count what a piece of code sends to PostgreSQL, from libpq's own protocol trace.

    with protocol_trace(conn) as sent:
        conn.execute("SELECT 1")
    round_trips(sent)   # 1

Used by the tests to prove round-trip claims (a plain read costs one) and by the
benchmarks to show that status reads do not grow with the number of services.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg


@contextmanager
def protocol_trace(conn: psycopg.Connection[Any]) -> Iterator[list[str]]:
    """Collect the names of the protocol messages the client sends inside the block."""
    sent: list[str] = []
    with tempfile.TemporaryFile("w+") as fh:
        conn.pgconn.trace(fh.fileno())
        try:
            yield sent
        finally:
            conn.pgconn.untrace()
            fh.seek(0)
            for line in fh.read().splitlines():
                fields = line.split("\t")
                if len(fields) > 3 and fields[1] == "F":  # F = frontend (client) message
                    sent.append(fields[3].split(" ")[0])


def round_trips(messages: list[str]) -> int:
    """Messages that wait for the server: Sync (extended protocol) and Query (simple)."""
    return sum(1 for m in messages if m in ("Sync", "Query"))
