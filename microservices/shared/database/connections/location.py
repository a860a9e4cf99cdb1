"""Where each service's schema lives: the location registry that running pools follow.

``edulink-db move-service`` keeps one row per moved service in
``edulink_db_meta.service_location`` on the service's *home* server (the one its
pool connects to by configuration): the new location as a connection string
without secrets (host, port, dbname, sslmode), an epoch that grows with every
move, and ``frozen_until`` while a cutover is under way.  A process reads the
whole table at most once per :data:`TTL_S` per home server (one query on a
connection of its own), so a checkout normally costs a clock read and a dict
lookup.  A service that was never moved has no row (or no table): its pool
stays where its configuration points.

Credentials are never stored: a pool at a new location logs in with the same
role and password as at home (``move-service`` provisions them there).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

log = logging.getLogger(__name__)

META_SCHEMA = "edulink_db_meta"
LOCATION_TABLE = "service_location"
# How stale a process's view of the registry may be.  The cutover waits longer than
# this between announcing a freeze and taking its locks, so every process has seen
# the freeze before any write could be refused (see relocation.cutover).
TTL_S = 0.1
# While a service is frozen its own checkouts wait, re-reading the registry this often.
POLL_S = 0.01
# A connection string for a location may carry only these keys: never a password.
LOCATION_KEYS = ("host", "port", "dbname", "sslmode", "hostaddr")

_QUERY = sql.SQL("SELECT service, location, epoch, coalesce(frozen_until > now(), false)"
                 " FROM {}").format(sql.Identifier(META_SCHEMA, LOCATION_TABLE))


@dataclass(frozen=True)
class Location:
    """Where *service*'s schema is: ``where`` None means at home."""

    where: str | None = None
    epoch: int = 0
    frozen: bool = False


HOME = Location()


def location_string(params: dict[str, Any]) -> str:
    """The registry's form of a server: its non-secret connection keys, sorted."""
    return " ".join(f"{k}={params[k]}" for k in LOCATION_KEYS if params.get(k) not in (None, ""))


def located_params(home: dict[str, Any], where: str) -> dict[str, Any]:
    """*home*'s connection parameters (role, password, options) at location *where*."""
    params = dict(home)
    for key in LOCATION_KEYS:
        params.pop(key, None)
    moved = dict(conninfo_to_dict(where))
    params.update({k: v for k, v in moved.items() if k in LOCATION_KEYS})
    return params


class Registry:
    """The cached registry of one home server, read with one service's credentials."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.Connection[Any] | None = None
        self._rows: dict[str, Location] = {}
        self._fetched = float("-inf")
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._conninfo, autocommit=True,
                                             connect_timeout=5)
            rows = self._conn.execute(_QUERY).fetchall()
            self._rows = {r[0]: Location(r[1], int(r[2]), bool(r[3])) for r in rows}
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            self._rows = {}  # never moved anything: everything is at home
        except psycopg.Error as exc:
            # Home unreachable: keep the last known locations (a moved service keeps
            # working while its old server is down), and try again after TTL_S.
            log.warning("location registry unreadable (%s); using the last known locations",
                        type(exc).__name__)
            if self._conn is not None:
                self._conn.close()
            self._conn = None
        self._fetched = time.monotonic()

    def get(self, service: str, *, fresh: bool = False) -> Location:
        """*service*'s location, at most TTL_S old (``fresh``: read now)."""
        if fresh or time.monotonic() - self._fetched > TTL_S:
            with self._lock:
                if fresh or time.monotonic() - self._fetched > TTL_S:
                    self._refresh()
        return self._rows.get(service, HOME)

    def wait_unfrozen(self, service: str, limit_s: float) -> Location:
        """Block while *service* is frozen (a cutover holds its writes), at most
        *limit_s*; the freeze itself expires on the server, so a killed cutover
        cannot hold writers for longer than it announced."""
        deadline = time.monotonic() + limit_s
        loc = self.get(service, fresh=True)
        while loc.frozen and time.monotonic() < deadline:
            time.sleep(POLL_S)
            loc = self.get(service, fresh=True)
        return loc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


_REGISTRIES: dict[str, Registry] = {}
_REGISTRIES_LOCK = threading.Lock()


def registry_for(conninfo: str) -> Registry:
    """The process-wide registry reader of the home server at *conninfo*."""
    registry = _REGISTRIES.get(conninfo)
    if registry is None:
        with _REGISTRIES_LOCK:
            registry = _REGISTRIES.setdefault(conninfo, Registry(conninfo))
    return registry
