"""A provisioning statement, and the SQL fragments that roles, schemas and grants build
statements from."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from psycopg import sql


@dataclass(frozen=True)
class Statement:
    """One provisioning statement and a one-line description of why it is there."""

    comment: str
    query: sql.Composed  # always composed from constants and sql.Identifier/sql.Literal


def id_list(names: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def privilege_list(privileges: Iterable[str]) -> sql.Composable:
    # Privilege keywords come from the constants in model.py, never from config.
    return sql.SQL(", ").join(sql.SQL(p) for p in privileges)
