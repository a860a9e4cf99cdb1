"""A backup policy that runs itself: what is due, ``backup auto``, and freshness.

    EDULINK_DB_BACKUP_FULL_EVERY=24h       a full backup (every schema) this often
    EDULINK_DB_BACKUP_SCHEMA_EVERY=1h      each topology schema backed up this often
    EDULINK_DB_<SERVICE>_BACKUP_SCHEMA_EVERY=15m   one service's schema, more or less often

Only *verified*, signed backups count. A full backup covers every schema, so when
one is due nothing else is taken; otherwise the schemas that are due go into one
schema backup (one snapshot). ``backup auto`` verifies what it takes, so ``restore``
and ``backups drill`` accept it as is, then prunes by retention.

It is meant to run from cron every minute: a run takes only what is due, and a
file lock in the backup folder makes a run that overlaps another do nothing.

Freshness: a schema is overdue when its newest verified backup is older than twice
its interval. PostgreSQL does not record when a schema was created; a schema's age is
taken from its first migration (``edulink_schema_history``) and from when edulink-db
first saw it (``.policy-state.json`` in the backup folder): a schema younger than two
intervals is not overdue without a backup.

Outages: when the server goes away during a run (a restart, a failover), ``backup
auto`` waits and starts over for up to ``EDULINK_DB_BACKUP_RETRY_FOR`` seconds (an
interrupted dump leaves nothing behind), so a Patroni failover costs a run some time,
not its backup.

Moves: a schema counts as backed up only by a verified backup taken from where it
lives now (the location registry), after it moved there (``moved_at``); a backup
of it taken at home before the move no longer counts, and a moved schema without
a backup since is dated from the move.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from ..config import Settings, admin_conninfo
from ..connections.direct import connect
from ..connections.location import location_string
from ..core.errors import (
    BackupInterruptedError,
    ConfigError,
    DatabaseUnavailableError,
    EdulinkDBError,
)
from ..core.secrets_store import ensure_private_dir
from .placement import Placement, placements, same_server
from .store import BackupStore, Manifest, backup_key, now_utc

STATE_FILE = ".policy-state.json"
LOCK_FILE = ".auto.lock"
POLICY_KINDS = ("full", "schema")  # prerestore backups hold replaced data: not current
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "": 3600}
_INTERVAL = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*")
# backup auto's waits across an outage: 0.5 s, doubling up to 5 s (a Patroni failover
# takes ttl + a loop, 10-40 s; a restart a few seconds).
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0


def parse_interval(text: str, name: str) -> float | None:
    """Seconds of an interval like ``24h``, ``90m``, ``30s``, ``2d`` (a bare number is
    hours); None for ``off``. Raises ConfigError naming *name*."""
    if text.strip().lower() == "off":
        return None
    match = _INTERVAL.fullmatch(text)
    seconds = float(match.group(1)) * _UNITS[match.group(2) or ""] if match else 0.0
    if seconds < 60:
        raise ConfigError(f"{name}={text!r} is not a backup interval: use e.g. 24h, 90m, 2d "
                          "(at least 1m), or 'off'.")
    return seconds


@dataclass
class Policy:
    full_every: float | None
    schema_every: dict[str, float | None]  # per topology schema


def load_policy(settings: Settings) -> Policy:
    topology = settings.topology()
    default = parse_interval(settings.edulink_db_backup_schema_every,
                             "EDULINK_DB_BACKUP_SCHEMA_EVERY")
    every: dict[str, float | None] = {}
    for svc in topology.services:
        override = settings.service_override(svc, "BACKUP_SCHEMA_EVERY")
        every[svc.schema] = default if override is None else parse_interval(
            override, f"EDULINK_DB_{svc.name.upper()}_BACKUP_SCHEMA_EVERY")
    every[topology.shared.schema] = default
    return Policy(full_every=parse_interval(settings.edulink_db_backup_full_every,
                                            "EDULINK_DB_BACKUP_FULL_EVERY"),
                  schema_every=every)


def _started(m: Manifest) -> datetime:
    # The start, not the end: a long backup does not push the next one later.
    return datetime.fromisoformat(m.started_at) if m.started_at else m.finished


@dataclass
class Where:
    """Where the policy's schemas live now: *placed* by schema (from the registry),
    *home* the home server's location string (None: unknown, e.g. server down)."""

    placed: dict[str, Placement] = field(default_factory=dict)
    home: str | None = None


def covers(m: Manifest, placement: Placement | None, home: str | None) -> bool:
    """Whether backup *m* may stand for its schema at *placement*: taken from where
    the schema lives now, after it moved there. Without a placement, any backup does;
    a manifest without a source (older edulink-db) was taken at home."""
    if placement is None:
        return True
    if placement.moved_at is not None and _started(m) < placement.moved_at:
        return False
    if placement.location is None:
        return not m.source or home is None or same_server(m.source, home)
    return bool(m.source) and same_server(m.source, placement.location)


def newest_verified(backups: list[Manifest], schema: str | None,
                    where: Where | None = None) -> Manifest | None:
    """The newest verified full/schema backup (holding *schema*, if given; with
    *where*, only one that covers the schema where it lives now: see :func:`covers`)."""
    placement = where.placed.get(schema) if where is not None and schema else None
    found = [m for m in backups if m.kind in POLICY_KINDS and m.verified.get("ok")
             and (schema is None or schema in m.schemas)
             and covers(m, placement, where.home if where is not None else None)]
    return max(found, key=_started, default=None)


@dataclass
class Plan:
    full: bool
    schemas: list[str]
    reasons: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.full and not self.schemas


def plan(backups: list[Manifest], policy: Policy, present: list[str], now: datetime,
         where: Where | None = None) -> Plan:
    """What is due at *now* (injected, so tests need no clock). A moved schema whose
    backups all predate its move (or come from elsewhere) is due at once."""
    if policy.full_every is not None:
        last = max((_started(m) for m in backups
                    if m.kind == "full" and m.verified.get("ok")), default=None)
        if last is None or (now - last).total_seconds() >= policy.full_every:
            why = "no verified full backup" if last is None else (
                f"last full backup started {(now - last).total_seconds() / 3600:.1f} h ago")
            return Plan(full=True, schemas=[], reasons=[why])
    due, reasons = [], []
    for schema in present:
        every = policy.schema_every.get(schema)
        if every is None:
            continue
        newest = newest_verified(backups, schema, where)
        if newest is None or (now - _started(newest)).total_seconds() >= every:
            due.append(schema)
            reasons.append(f"{schema}: " + ("no verified backup" if newest is None else
                                            f"newest is {newest.backup_id}"))
    return Plan(full=False, schemas=due, reasons=reasons)


# -- state: first sighting of schemas, last drill ---------------------------------
@contextlib.contextmanager
def _state_lock(root: Path) -> Iterator[None]:
    ensure_private_dir(root)
    fd = os.open(root / ".policy-state.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_state(root: Path) -> dict[str, Any]:
    try:
        fd = os.open(root / STATE_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_state(root: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    with _state_lock(root):
        data = read_state(root)
        change(data)
        tmp = root / f"{STATE_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, root / STATE_FILE)
        return data


def note_schemas(root: Path, present: list[str], now: datetime, *,
                 create: bool = True) -> dict[str, str]:
    """Record when each present schema was first seen; return every first sighting.
    Without *create*, a backup folder that does not exist yet is left alone."""
    def change(data: dict[str, Any]) -> None:
        seen = data.setdefault("first_seen", {})
        for schema in present:
            seen.setdefault(schema, now.isoformat())

    if not create and not root.is_dir():
        return {}
    try:
        return dict(update_state(root, change).get("first_seen", {}))
    except OSError:  # a read-only backup folder: sightings are not recorded
        return dict(read_state(root).get("first_seen", {}))


@dataclass
class Freshness:
    schema: str
    interval_s: float | None
    newest: str | None
    age_s: float | None
    overdue: bool
    message: str
    location: str | None = None  # where the schema lives, when it moved off home


def freshness(backups: list[Manifest], policy: Policy, present: list[str],
              first_seen: dict[str, datetime], now: datetime,
              where: Where | None = None) -> list[Freshness]:
    """Per present schema: the newest verified backup's age, and whether it is overdue:
    older than twice the interval, or, without a backup, the schema known for longer
    than that (*first_seen*: the earliest evidence of the schema; none = new). With
    *where*, only backups that cover a schema where it lives now count, and a moved
    schema without one is dated from its move."""
    out = []
    for schema in present:
        every = policy.schema_every.get(schema)
        placement = where.placed.get(schema) if where is not None else None
        newest = newest_verified(backups, schema, where)
        moved_at = placement.moved_at if placement is not None else None
        location = placement.location if placement is not None else None
        age = (now - newest.finished).total_seconds() if newest else None
        if every is None:
            out.append(Freshness(schema, None, newest.backup_id if newest else None, age,
                                 False, f"{schema}: backups off"))
            continue
        since = age if age is not None else (
            now - (moved_at or first_seen.get(schema, now))).total_seconds()
        # A moved schema that no backup covers where it lives now is a problem at once:
        # its data was in backups before the move, and is in none since.
        overdue = since > 2 * every or (newest is None and moved_at is not None)
        if newest is None and moved_at is not None:
            at = f" on {location}" if location else " at home"
            msg = (f"{schema}: in no backup since it moved{at} {since / 3600:.1f} h ago;"
                   " run 'edulink-db backup auto' (from cron)")
        elif newest is None:
            msg = (f"{schema}: no verified backup, schema first seen {since / 3600:.1f} h ago"
                   + ("; run 'edulink-db backup auto' (from cron)" if overdue else ""))
        else:
            msg = f"{schema}: newest verified backup {newest.backup_id}, {since / 3600:.1f} h old"
        out.append(Freshness(schema, every, newest.backup_id if newest else None, age,
                             overdue, msg, location))
    return out


def store_for(settings: Settings, *, create_key: bool) -> BackupStore:
    root = settings.edulink_db_backup_dir or (settings.home / "backups")
    return BackupStore(Path(root).expanduser().resolve(),
                       key=backup_key(settings, create=create_key))


def current_where(settings: Settings, root: Path | None = None) -> Where:
    """Where the schemas live now, from the registry on the home server; when it cannot
    be read (server down), the last placements recorded in the backup folder's state
    (*root*), so the exporter still judges a moved schema by its own backups."""
    try:
        home = admin_conninfo(settings)
        where = Where(placements(settings, home), location_string(home))
    except (EdulinkDBError, psycopg.Error):
        if root is None:
            raise
        return _where_from_state(read_state(root))
    if root is not None and root.is_dir():
        saved = {"home": where.home, "placed": {
            s: {"service": p.service, "location": p.location,
                "moved_at": p.moved_at.isoformat() if p.moved_at else None}
            for s, p in where.placed.items()}}
        if read_state(root).get("placements") != saved:
            with contextlib.suppress(OSError):  # a read-only backup folder
                update_state(root, lambda data: data.__setitem__("placements", saved))
    return where


def _where_from_state(state: dict[str, Any]) -> Where:
    saved = state.get("placements")
    if not isinstance(saved, dict):
        return Where()
    placed = {}
    for schema, p in (saved.get("placed") or {}).items():
        with contextlib.suppress(KeyError, TypeError, ValueError):
            placed[schema] = Placement(
                str(p["service"]), schema, p.get("location"),
                datetime.fromisoformat(p["moved_at"]) if p.get("moved_at") else None)
    return Where(placed, saved.get("home"))


def backup_freshness(
    settings: Settings, present: list[str],
    first_migration: Callable[[list[str]], dict[str, datetime]] | None = None,
    now: datetime | None = None,
) -> list[Freshness]:
    """Freshness of *present* schemas, for health checks and the exporter. A schema
    without a verified backup is dated by the earlier of its first sighting by
    edulink-db and *first_migration* (asked only for those schemas; PostgreSQL records
    no creation time). Creates neither a signing key (no key: no trusted backups) nor
    the backup folder."""
    now = now or now_utc()
    store = store_for(settings, create_key=False)
    backups = store.backups() if store.has_key else []
    where = current_where(settings, store.root)
    unbacked = [s for s in present if newest_verified(backups, s, where) is None]
    evidence = first_migration(unbacked) if first_migration and unbacked else {}
    for schema, at in note_schemas(store.root, present, now, create=False).items():
        seen = datetime.fromisoformat(at)
        evidence[schema] = min(seen, evidence.get(schema, seen))
    return freshness(backups, load_policy(settings), present, evidence, now, where)


# -- backup auto ----------------------------------------------------------------------
@dataclass
class AutoReport:
    busy: bool = False
    plan: Plan | None = None
    taken: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"busy": self.busy, "taken": self.taken, "pruned": self.pruned,
                "reasons": self.plan.reasons if self.plan else []}


def present_schemas(settings: Settings) -> list[str]:
    schemas = settings.topology().schemas
    with connect(admin_conninfo(settings), purpose="plan backups") as conn:
        found = {r[0] for r in conn.execute(
            "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY(%s)",
            [schemas]).fetchall()}
    return [s for s in schemas if s in found]


# Why a failed run may succeed in a moment: the server is restarting, or a failover
# manager is promoting another one (libpq's and our own wording, lower case).
_OUTAGE_MARKS = ("connection refused", "server closed the connection", "timeout expired",
                 "the database system is", "terminating connection", "no leader",
                 "is a standby", "read-only", "accepts writes", "could not receive data",
                 "connection timed out", "no route to host")


def transient(exc: BaseException) -> bool:
    """Whether *exc* says the server is away for now (worth another attempt), not that
    something is wrong (a password, a missing schema, a full disk)."""
    if isinstance(exc, BackupInterruptedError):
        return True
    if isinstance(exc, DatabaseUnavailableError | psycopg.OperationalError):
        text = str(exc).lower()
        return any(mark in text for mark in _OUTAGE_MARKS)
    return False


def run_auto(manager: Any, now: datetime | None = None) -> AutoReport:
    """Take what is due, verify it, prune. Returns at once (busy) when another run holds
    the backup folder's lock. *manager* is a BackupManager.

    When the server goes away meanwhile (a restart, a failover: see :func:`transient`),
    the run waits and starts over, for up to EDULINK_DB_BACKUP_RETRY_FOR seconds; an
    interrupted dump leaves nothing behind (store.abandon), so a retry starts clean."""
    store: BackupStore = manager.store
    ensure_private_dir(store.root)
    fd = os.open(store.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return AutoReport(busy=True)
        settings: Settings = manager.settings
        deadline = time.monotonic() + settings.edulink_db_backup_retry_for
        delay = RETRY_FIRST_S
        while True:
            try:
                return _auto_once(manager, store, now or now_utc())
            except (EdulinkDBError, psycopg.OperationalError) as exc:
                if not transient(exc) or time.monotonic() + delay > deadline:
                    raise
                manager.progress(f"backup auto: {' '.join(str(exc).split())}; trying "
                                 f"again in {delay:.1f} s")
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
    finally:
        os.close(fd)  # releases the lock


def _auto_once(manager: Any, store: BackupStore, now: datetime) -> AutoReport:
    settings: Settings = manager.settings
    present = present_schemas(settings)
    note_schemas(store.root, present, now)
    where = current_where(settings, store.root)
    todo = plan(store.backups(), load_policy(settings), present, now, where)
    report = AutoReport(plan=todo)
    if todo.full:
        info = manager.create_full_backup()
    elif todo.schemas:
        info = manager.create_schema_backup(todo.schemas)
    else:
        info = None
    if info is not None:
        report.taken.append(info.backup_id)
        # Parts first: the set's home backup is the one that is listed as taken.
        for backup_id in [*info.parts, info.backup_id]:
            if not store.load(backup_id).verified.get("ok"):
                manager.verify(backup_id)  # so restore and drill accept it as is
    report.pruned = manager.prune()
    return report
