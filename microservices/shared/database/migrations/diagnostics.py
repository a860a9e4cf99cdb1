"""PostgreSQL's full diagnostic of an error, for a migration's failure message.

The primary message alone does not say *which* trigger or function objected: when a
trigger the file fires, or a platform event trigger (Supabase installs several),
raises, the culprit is only in the error's CONTEXT.  So the runner shows every
field the server sent (psycopg's ``exc.diag``): message, detail, hint, context, and
the query and position inside a function body when the error is there.
"""

from __future__ import annotations

import psycopg


def server_diagnostic(exc: psycopg.Error) -> str:
    """The message, then one indented line per further field the server sent."""
    diag = exc.diag
    text = diag.message_primary or str(exc).strip()
    if diag.sqlstate:
        text += f" [SQLSTATE {diag.sqlstate}]"
    for label, value in (("detail", diag.message_detail), ("hint", diag.message_hint),
                         ("inside", _internal_query(diag)), ("context", diag.context)):
        if value:
            text += f"\n  {label}: " + value.strip().replace("\n", "\n    ")
    return text


def _internal_query(diag: psycopg.errors.Diagnostic) -> str | None:
    # A query PL/pgSQL (or SQL built at run time) ran, and where in it the error is.
    if not diag.internal_query:
        return None
    where = f" (at character {diag.internal_position})" if diag.internal_position else ""
    return f"{diag.internal_query}{where}"
