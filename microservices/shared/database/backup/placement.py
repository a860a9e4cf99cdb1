"""Where each schema lives now, and how the backup admin reaches it there.

After ``edulink-db move-service`` a service's data is on another server; its home
server keeps an empty re-provisioned schema and, in the location registry
(``edulink_db_meta.service_location``), where the service lives now and since when
(``moved_at``). Backups follow the registry: a moved schema is dumped from its
location, and a restore of it goes there.

The admin credential for a location comes from, in this order:

* ``EDULINK_DB_LOCATION_ADMIN_URLS``: comma-separated admin URLs, each matched to a
  location by host, port and dbname;
* the secrets store, entry ``location_admin:<location string>``, which
  ``move-service`` writes when a move completes.

Without one, the backup or restore of that schema fails with a one-line error that
names the service, its location and the setting. Credentials never leave this
module except as connection parameters; messages show locations (no secrets).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..config import Settings, apply_tls, parse_connection_urls, to_url
from ..connections.direct import connect
from ..connections.location import (
    LOCATION_TABLE,
    META_SCHEMA,
    TRUSTED_OWNER_CHECK,
    location_string,
    server_key,
)
from ..core.errors import BackupError
from ..topology import Topology

log = logging.getLogger(__name__)

JOURNAL_TABLE = "service_move"  # relocation.mover's journal: a row = a move under way
LOCATION_ADMIN_KEY = "location_admin:"
LOCATION_ADMIN_SETTING = "EDULINK_DB_LOCATION_ADMIN_URLS"


@dataclass(frozen=True)
class Placement:
    """Where *schema* (of *service*) lives: *location* None means on the home server.
    *moved_at*: when it last moved (to wherever it is now); None if it never did."""

    service: str
    schema: str
    location: str | None = None
    moved_at: datetime | None = None


def same_server(a: str | dict[str, Any] | None, b: str | dict[str, Any] | None) -> bool:
    """True when *a* and *b* are the same server; None (home) only equals None."""
    if a is None or b is None:
        return a is None and b is None
    return server_key(a) == server_key(b)


def read_placements(conn: psycopg.Connection[Any], topology: Topology,
                    home: dict[str, Any]) -> dict[str, Placement]:
    """Every topology schema's placement, from the registry on the home server *conn*.

    A registry not owned by an admin-class role is ignored (logged), as running pools
    ignore it: they then use the home copies, so those are what a backup must take.
    A row naming the home server itself (a service moved back) counts as home."""
    out = {svc.schema: Placement(svc.name, svc.schema) for svc in topology.services}
    out[topology.shared.schema] = Placement("shared", topology.shared.schema)
    try:
        rows = conn.execute(sql.SQL("SELECT service, location, moved_at, {} FROM {}").format(
            TRUSTED_OWNER_CHECK, sql.Identifier(META_SCHEMA, LOCATION_TABLE))).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        if not conn.autocommit:
            conn.rollback()
        return out
    if any(not r[3] for r in rows):
        log.error("location registry %s.%s is not owned by an admin role: ignored, every "
                  "service is taken to be at home", META_SCHEMA, LOCATION_TABLE)
        return out
    by_name = {svc.name: svc.schema for svc in topology.services}
    for service, location, moved_at, _trusted in rows:
        schema = by_name.get(service)
        if schema is None:
            continue
        where = location if location and not same_server(location, home) else None
        out[schema] = Placement(service, schema, where, moved_at)
    return out


def placements(settings: Settings, home: dict[str, Any]) -> dict[str, Placement]:
    """read_placements on a connection of its own to *home*."""
    with connect(home, purpose="read the location registry") as conn:
        return read_placements(conn, settings.topology(), home)


def moves_in_progress(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """{service: target location} of every move the journal on *conn* has under way."""
    try:
        rows = conn.execute(sql.SQL("SELECT service, target FROM {}").format(
            sql.Identifier(META_SCHEMA, JOURNAL_TABLE))).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return {}
    return {r[0]: r[1] for r in rows}


def location_admin(settings: Settings, placement: Placement) -> dict[str, Any]:
    """Admin connection parameters for the server *placement* names (not home).
    Raises BackupError, in one line, when no credential is configured for it."""
    assert placement.location is not None
    wanted = server_key(placement.location)
    if settings.edulink_db_location_admin_urls is not None:
        for params in parse_connection_urls(
                settings.edulink_db_location_admin_urls.get_secret_value(),
                LOCATION_ADMIN_SETTING):
            if server_key(params) == wanted:
                return apply_tls(_with_location_sslmode(params, placement.location),
                                     settings)
    saved = settings.secret_store.get(LOCATION_ADMIN_KEY + placement.location)
    if saved is not None:
        return apply_tls(_with_location_sslmode(dict(conninfo_to_dict(saved)),
                                                    placement.location), settings)
    raise BackupError(
        f"{placement.service} ({placement.schema}) lives on {placement.location} now, and "
        f"there is no admin credential for it: add its admin URL to {LOCATION_ADMIN_SETTING} "
        "(comma-separated postgresql://ADMIN:PASSWORD@HOST:PORT/DBNAME); move-service "
        "saves it for the moves it completes.")


def _with_location_sslmode(params: dict[str, Any], location: str) -> dict[str, Any]:
    # The registry's sslmode is what move-service was given: keep it unless the URL
    # says otherwise.
    where = dict(conninfo_to_dict(location))
    if "sslmode" in where and "sslmode" not in params:
        params = {**params, "sslmode": where["sslmode"]}
    return params


def remember_location_admin(settings: Settings, admin: dict[str, Any]) -> str:
    """Save *admin* (a moved service's new server) in the secrets store, for backups and
    restores of the schemas that live there; returns its location string."""
    location = location_string(admin)
    settings.secret_store.set(LOCATION_ADMIN_KEY + location, to_url(admin))
    return location
