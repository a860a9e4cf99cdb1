"""Direct (unpooled) connections for administrative work, with clear errors.

Provisioning, verification and status use one short-lived connection each;
pooling is for services (``connection_manager``).

Commands that change the database (provision, migrate) connect with
``primary=True``: with several hosts in the URL, libpq is asked for the writable one
(``target_session_attrs=read-write`` unless the URL says otherwise), and a server in
recovery -- a standby -- is refused with a :class:`StandbyServerError` naming it.  A
standby would reject the first write anyway, but only after part of the work (locks,
status reads) ran against a copy that may lag; refusing at the door says why.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ..config import host_label, mask_dsn
from ..core.errors import DatabaseUnavailableError, StandbyServerError
from ..core.tls import explain

CONNECT_TIMEOUT_S = 15

# What libpq says when target_session_attrs rules out every host it reached.
_STANDBY_REASONS = ("session is read-only", "server is in hot standby mode",
                    "server is not in hot standby mode")
_PRIMARY_HINT = ("Point DATABASE_URL at the primary, or list every server with "
                 "target_session_attrs=read-write (postgresql://USER:PASSWORD@HOST1:5432,"
                 "HOST2:5432/DB?target_session_attrs=read-write) so libpq finds it.")


def want_primary(params: dict[str, Any]) -> dict[str, Any]:
    """*params* asking libpq for the writable server when they list several hosts and
    say nothing themselves (``target_session_attrs=read-write``); else unchanged."""
    if "," in str(params.get("host", "")) and "target_session_attrs" not in params:
        return {**params, "target_session_attrs": "read-write"}
    return params


def require_primary(conn: psycopg.Connection[Any], purpose: str) -> None:
    """Raise StandbyServerError if *conn* is connected to a server in recovery."""
    row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
    if row is not None and row[0]:
        where = host_label({"host": conn.info.host, "port": conn.info.port})
        raise StandbyServerError(
            f"Refusing to {purpose}: {where} is a standby server (pg_is_in_recovery() is "
            f"true), which is read-only and replays the primary's changes; {purpose} must "
            f"run on the primary. {_PRIMARY_HINT}")


def connect(params: dict[str, Any], *, purpose: str, autocommit: bool = True,
            primary: bool = False, prefer_primary: bool = False) -> psycopg.Connection[Any]:
    """Connect with *params*; on failure raise DatabaseUnavailableError naming the
    (masked) target and *purpose*, never the password.  With *primary*, refuse a
    standby (StandbyServerError).  With *prefer_primary* (monitoring), a multi-host
    URL's writable server when one is up, else whichever host answers (libpq has no
    ``prefer-primary``): health must still report when only a standby is left."""
    if prefer_primary and not primary and want_primary(params) is not params:
        try:
            return connect(params, purpose=purpose, autocommit=autocommit, primary=True)
        except StandbyServerError:
            pass  # no writable host: report from a standby
    if primary:
        params = want_primary(params)
    try:
        # A connect_timeout in the URL wins (it used to collide with ours: TypeError).
        conn = psycopg.connect(**{"connect_timeout": CONNECT_TIMEOUT_S, **params},
                               autocommit=autocommit)
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        if primary and any(text in reason for text in _STANDBY_REASONS):
            raise StandbyServerError(
                f"Refusing to {purpose}: no server of {host_label(params)} accepts writes "
                f"(each one reached is a standby or read-only: {reason}). {_PRIMARY_HINT}"
            ) from None
        raise DatabaseUnavailableError(
            f"Cannot connect to {mask_dsn(params)} to {purpose}: {explain(reason, params)}"
        ) from None
    if primary:
        try:
            require_primary(conn, purpose)
            if not autocommit:
                conn.rollback()  # the check's transaction: callers start clean
        except BaseException:
            conn.close()
            raise
    return conn
