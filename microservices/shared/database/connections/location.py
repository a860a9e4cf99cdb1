"""Where each service's schema lives: the location registry that running pools follow.

``edulink-db move-service`` keeps one row per moved service in
``edulink_db_meta.service_location`` on the service's *home* server (the one its
pool connects to by configuration): the new location as a connection string
without secrets (host, port, dbname, sslmode), an epoch that grows with every
move, and ``frozen_until`` while a cutover is under way.

A process reads the registry at most once per :data:`IDLE_TTL_S` per home server
(once per :data:`TTL_S` while a cutover is announced: ``watch_until`` in the future
or a freeze), with one query on a connection borrowed from a service's own pool at
home (no connection of its own: the role's CONNECTION LIMIT budget is unchanged), so
a checkout normally costs a clock read and a dict lookup.  A service that was never
moved has no row (or no table): its pool stays where its configuration points.

Trust: the registry redirects pools, so a row is believed only when the schema and
the table are owned by an admin-class role (superuser or CREATEROLE), or by the
project's meta owner role :data:`META_OWNER` while it is NOLOGIN and every member of
it is admin-class.  A registry
that anybody else created -- e.g. a service role with CREATE on the database,
racing the first move -- is ignored (logged), and every service stays at home.

Credentials are never stored: a pool at a new location logs in with the same
role and password as at home (``move-service`` provisions them there), and with
``require_auth=scram-sha-256`` so the new location cannot ask for the password
in clear text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..core.identifiers import validate_identifier

log = logging.getLogger(__name__)

META_SCHEMA = "edulink_db_meta"
LOCATION_TABLE = "service_location"
# The project's NOLOGIN role that owns the meta schema and its tables (relocation/meta.py);
# the admin running a move is a member.
META_OWNER = validate_identifier("edulink_db_meta_owner", "meta owner role")
# How stale a process's view of the registry may be while a cutover is announced.
# The cutover waits longer than this between announcing a freeze and taking its
# locks, so every process has seen the freeze before any write could be refused (see
# relocation.mover.cutover).
TTL_S = 0.05
# How stale it may be otherwise: a registry that nobody is about to change is read
# once a second, not twenty times (a query per process and home server each time).
# The cutover first sets watch_until and waits IDLE_TTL_S + TTL_S, so every process
# has switched to TTL_S before the freeze is announced.
IDLE_TTL_S = 1.0
# While a home server has no registry table (nothing ever moved), look for one this
# often: a checkout then costs no round trip at all.  move-service creates the table
# when a move starts, and the cutover's watch period covers it as well.
PROBE_S = IDLE_TTL_S
# After a failed read (home unreachable, pool exhausted), keep the last known
# locations this long before trying again, so checkouts do not each pay a timeout.
RETRY_S = 1.0
# How long a registry read may wait for a pooled connection.
BORROW_TIMEOUT_S = 2.0
# While a service is frozen its own checkouts wait, re-reading the registry this often.
POLL_S = 0.01
# A connection string for a location may carry only these keys: never a password.
LOCATION_KEYS = ("host", "port", "dbname", "sslmode", "hostaddr")
# A located connection insists on SCRAM unless the home conninfo chose otherwise.
REQUIRE_AUTH = "scram-sha-256"

# Whether the registry's schema and table are owned by admin-class roles (superuser,
# CREATEROLE, or META_OWNER while it cannot log in and every role that is a member of it,
# directly or through other roles, is a superuser or CREATEROLE: a service role granted
# membership could otherwise write the registry and redirect pools); NULL when there
# is no registry table.  Runs once per IDLE_TTL_S (TTL_S in a cutover), never per checkout.
TRUSTED_OWNER_CHECK = sql.SQL(
    "(SELECT bool_and(c.relkind = 'r' AND (r.rolsuper OR r.rolcreaterole"
    "  OR (r.rolname = {owner} AND NOT r.rolcanlogin AND NOT EXISTS ("
    "   WITH RECURSIVE m(oid) AS (SELECT a.member FROM pg_catalog.pg_auth_members a"
    "     WHERE a.roleid = r.oid UNION SELECT a.member FROM pg_catalog.pg_auth_members a"
    "     JOIN m ON a.roleid = m.oid)"
    "   SELECT FROM m JOIN pg_catalog.pg_roles x ON x.oid = m.oid"
    "   WHERE NOT (x.rolsuper OR x.rolcreaterole)))))"
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_catalog.pg_roles r ON r.oid IN (c.relowner, n.nspowner)"
    " WHERE c.oid = pg_catalog.to_regclass({}))").format(
    sql.Literal(sql.Identifier(META_SCHEMA, LOCATION_TABLE).as_string(None)),
    owner=sql.Literal(META_OWNER))
# Run while the table is not known to exist: never raises on a server that has none
# (a read every TTL_S that failed would fill the server log with errors).
PROBE = sql.SQL("SELECT {}").format(TRUSTED_OWNER_CHECK)
READ = sql.SQL("SELECT service, location, epoch, coalesce(frozen_until > now(), false), {},"
               " coalesce(watch_until > now(), false) FROM {}").format(
    TRUSTED_OWNER_CHECK, sql.Identifier(META_SCHEMA, LOCATION_TABLE))

Rows = Sequence[Sequence[Any]]
Runner = Callable[[sql.Composed], Rows]
AsyncRunner = Callable[[sql.Composed], Awaitable[Rows]]


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


def server_key(location: str | dict[str, Any]) -> tuple[str, str, str]:
    """(host or hostaddr, port, dbname) of a location string or connection parameters:
    what makes two locations the same server (sslmode may be written differently in
    two URLs of one server)."""
    params = dict(conninfo_to_dict(location)) if isinstance(location, str) else location
    return (str(params.get("host") or params.get("hostaddr") or ""),
            str(params.get("port") or "5432"), str(params.get("dbname") or ""))


def located_params(home: dict[str, Any], where: str) -> dict[str, Any]:
    """*home*'s connection parameters (role, password, options) at location *where*.

    Adds ``require_auth=scram-sha-256`` unless *home* sets require_auth: whoever
    controls the new location must not be able to have the password sent in clear
    text (``password`` in pg_hba.conf) or skip authentication.  The sslmode is the
    stronger of home's and the location's: a move never weakens TLS."""
    params = dict(home)
    for key in LOCATION_KEYS:
        params.pop(key, None)
    moved = dict(conninfo_to_dict(where))
    params.update({k: v for k, v in moved.items() if k in LOCATION_KEYS})
    # The location's sslmode comes from the admin's --to URL (often absent: libpq's
    # prefer): a pool that verifies its server at home must not lose that by moving.
    sslmode = _stronger_sslmode(home.get("sslmode"), moved.get("sslmode"))
    if sslmode is not None:
        params["sslmode"] = sslmode
    params.setdefault("require_auth", REQUIRE_AUTH)
    return params


# libpq's sslmodes, weakest first.
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _stronger_sslmode(home: Any, moved: Any) -> str | None:
    """The stronger of two sslmodes (None when neither is set); an unknown value
    is kept as given, for libpq to reject."""
    modes = [str(m) for m in (home, moved) if m not in (None, "")]
    if not modes:
        return None
    if any(m not in _SSLMODES for m in modes):
        return next(m for m in modes if m not in _SSLMODES)
    return max(modes, key=_SSLMODES.index)


class Registry:
    """The cached registry of one home server.  It has no connection: callers pass a
    *run* function that executes a query on one of their pooled connections there."""

    def __init__(self, name: str) -> None:
        self.name = name  # the home server, for logs
        self._rows: dict[str, Location] = {}
        self._due = float("-inf")
        self._exists = False  # until a probe finds the table
        self.lock = threading.Lock()  # one thread reads at a time

    def query(self) -> sql.Composed:
        return READ if self._exists else PROBE

    def absorb(self, query: sql.Composed, rows: Rows | BaseException) -> bool:
        """Take a query's result; True when READ must follow a successful PROBE."""
        now = time.monotonic()
        if isinstance(rows, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
            self._exists, self._rows, self._due = False, {}, now + PROBE_S
            return False
        if isinstance(rows, BaseException):
            # Home unreachable or the pool busy: keep the last known locations (a moved
            # service keeps working while its old server is down) and retry later.
            log.warning("location registry on %s unreadable (%s); using the last known "
                        "locations for %g s", self.name, type(rows).__name__, RETRY_S)
            self._due = now + RETRY_S
            return False
        if query is PROBE:
            trusted = rows[0][0] if rows else None
            if trusted is None:
                self._rows, self._due = {}, now + PROBE_S
                return False
            self._exists = True
            return True
        if any(not r[4] for r in rows):
            log.error("location registry %s.%s on %s is not owned by an admin role "
                      "(superuser, CREATEROLE, or %s with admin members only): ignored, "
                      "every service stays at home; drop it and let move-service recreate it",
                      META_SCHEMA, LOCATION_TABLE, self.name, META_OWNER)
            self._rows = {}
        else:
            self._rows = {r[0]: Location(r[1], int(r[2]), bool(r[3])) for r in rows}
        watched = any(r[3] or r[5] for r in rows)
        self._due = now + (TTL_S if watched else IDLE_TTL_S)
        return False

    def due(self) -> bool:
        return time.monotonic() >= self._due

    def cached(self, service: str) -> Location:
        return self._rows.get(service, HOME)

    def postpone(self, error: BaseException) -> None:
        """The home server could not be reached to read the registry (*error*): keep
        the last known locations and retry after RETRY_S, as a failed read does."""
        with self.lock:
            self.absorb(self.query(), error)


_REGISTRIES: dict[str, Registry] = {}
_REGISTRIES_LOCK = threading.Lock()


def registry_for(home: dict[str, Any]) -> Registry:
    """The process-wide registry cache of the home server *home* (connection params);
    shared by every service whose home it is."""
    key = location_string(home)
    registry = _REGISTRIES.get(key)
    if registry is None:
        with _REGISTRIES_LOCK:
            registry = _REGISTRIES.setdefault(key, Registry(key))
    return registry
