"""Validation of names that end up as SQL identifiers.

Every schema, role and table name that comes from configuration passes through
:func:`validate_identifier` before any SQL is built.  The rules are stricter
than PostgreSQL's own so that a valid name is also safe to write *unquoted* in
hand-written migrations: lower case ASCII letters, digits and underscores,
starting with a letter or underscore, at most 63 bytes (NAMEDATALEN - 1, beyond
which PostgreSQL silently truncates), no ``pg_`` prefix (reserved for system
schemas and roles), and not ``public``, ``information_schema`` or a name PostgreSQL keeps for role
specifications (``none``, ``current_user``, ``session_user``, ``current_role``).

SQL is still always composed with ``psycopg.sql.Identifier``; validation is
the first line of defence, quoting the second.
"""

from __future__ import annotations

import re

from .errors import TopologyError

MAX_IDENTIFIER_BYTES = 63
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_RESERVED_NAMES = frozenset({"public", "information_schema"})
# Names PostgreSQL's grammar keeps for itself in role positions: CREATE ROLE refuses them
# (ReservedName), so a topology that uses one would fail only at provisioning time.
_ROLE_SPEC_NAMES = frozenset({"none", "current_user", "session_user", "current_role"})


def identifier_problem(name: object) -> str | None:
    """Return why *name* is not a safe identifier, or None if it is."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not name:
        return "must not be empty"
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        return (
            f"is {len(name.encode('utf-8'))} bytes long; PostgreSQL truncates identifiers "
            f"longer than {MAX_IDENTIFIER_BYTES} bytes"
        )
    if not _IDENTIFIER.fullmatch(name):
        return (
            "may contain only lower-case letters a-z, digits and underscores, "
            "and must start with a letter or underscore (no quotes, spaces, semicolons "
            "or upper case)"
        )
    if name.startswith("pg_"):
        return "must not start with 'pg_', which PostgreSQL reserves for system objects"
    if name in _RESERVED_NAMES:
        return f"'{name}' is reserved; choose a name of your own"
    if name in _ROLE_SPEC_NAMES:
        return (f"'{name}' is reserved by PostgreSQL (CREATE ROLE refuses none, "
                "current_user, session_user and current_role); choose a name of your own")
    return None


def validate_identifier(name: object, what: str) -> str:
    """Return *name* unchanged if it is a safe identifier, else raise TopologyError.

    *what* describes where the name came from (``"schema of service 'user'"``)
    so the message tells the user which setting to fix.
    """
    problem = identifier_problem(name)
    if problem is not None:
        raise TopologyError(f"Invalid {what}: {name!r} {problem}.")
    assert isinstance(name, str)
    return name
