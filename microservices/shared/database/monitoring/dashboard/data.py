"""What the dashboard shows, and the samples behind its charts.

Live figures (sessions, statements, sizes, long-running and blocked queries) come from
:func:`..health.collect` on every page view: it reads statistics views and
``pg_class.relpages`` only, never a size function that locks, so a migration holding
ACCESS EXCLUSIVE on a table does not stall the page.  The dashboard's own session also
runs with ``lock_timeout`` as a safety net.

Panels that change rarely and cost logins (migration status as each migrator, the
privilege matrix, backups) are cached for ``slow_refresh`` seconds.

Statement texts are shown only as fingerprints (:mod:`..fingerprint`): literals become
``?`` before anything reaches a template or a JSON answer.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ...config import Settings, admin_conninfo, pooler_mode
from ...connections import budget
from ...core.errors import EdulinkDBError
from ...topology import Topology
from ..fingerprint import fingerprint
from ..health import DatabaseStats, collect, evaluate

log = logging.getLogger(__name__)

TOP_STATEMENTS = 5
WINDOW_S = 3600.0
# The dashboard never waits on a lock for long: it shows the last good figures instead.
# Read-only by default, so no code path of the dashboard can write by mistake (a guard,
# not a privilege boundary: the role could still SET it off).
SESSION_OPTIONS = ("-c lock_timeout=1000 -c statement_timeout=10000"
                   " -c default_transaction_read_only=on")
# Page views within this many seconds share one read of the live figures: however many
# requests arrive, the dashboard holds at most one session for them.
LIVE_TTL_S = 1.0
STATS_ROLE_NOTE = (
    "the dashboard's database role lacks pg_read_all_stats (or pg_monitor): other roles' "
    "session states, lock waits and statement texts are hidden from it, so sessions show "
    "as 'other' and blocked queries are missing; GRANT pg_read_all_stats TO the role of "
    "DATABASE_URL")


def _admin_params(settings: Settings) -> dict[str, Any]:
    params = dict(admin_conninfo(settings))
    params["options"] = " ".join(filter(None, [params.get("options"), SESSION_OPTIONS]))
    params.setdefault("application_name", "edulink-db dashboard")
    return params


@dataclass(frozen=True)
class Sample:
    at: float  # Unix time
    calls: int | None  # cumulative pg_stat_statements calls of the role (None: unavailable)
    total_s: float | None  # cumulative execution time
    sessions: int  # the role's client sessions, any state


class Sampler:
    """Per-role ring buffers over the last *window_s* seconds, fed from :func:`collect`
    every *interval* seconds by a daemon thread (and by page views in between)."""

    def __init__(self, source: Callable[[], DatabaseStats], roles: list[str], *,
                 interval: float = 10.0, window_s: float = WINDOW_S) -> None:
        if interval <= 0:
            raise ValueError("the sampling interval must be positive")
        self.interval = interval
        self._source = source
        size = int(window_s / interval) + 2
        self._samples: dict[str, deque[Sample]] = {r: deque(maxlen=size) for r in roles}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def record(self, stats: DatabaseStats, at: float | None = None) -> None:
        at = time.time() if at is None else at
        with self._lock:
            for role, buf in self._samples.items():
                # Page views also feed samples; keep them at least half an interval apart
                # so the hour stays covered by the buffer.
                if buf and at - buf[-1].at < self.interval / 2:
                    continue
                st = (stats.statements or {}).get(role)
                conns = stats.roles.get(role, {})
                buf.append(Sample(at, st["calls"] if st else None,
                                  st["total_time_s"] if st else None,
                                  sum(int(conns.get(k, 0)) for k in
                                      ("active", "idle", "idle_in_transaction", "other"))))

    def series(self, role: str) -> dict[str, list[Any]]:
        """Columns for a chart: time, calls per second and mean ms (from deltas between
        consecutive samples; None where unknown or after a statistics reset), sessions."""
        with self._lock:
            samples = list(self._samples.get(role, ()))
        out: dict[str, list[Any]] = {"t": [], "calls_per_s": [], "mean_ms": [], "sessions": []}
        for before, after in itertools.pairwise(samples):
            rate = mean = None
            if (before.calls is not None and after.calls is not None
                    and before.total_s is not None and after.total_s is not None):
                calls = after.calls - before.calls
                if calls >= 0 and after.at > before.at:  # a reset makes it negative
                    rate = round(calls / (after.at - before.at), 3)
                    mean = (round((after.total_s - before.total_s) * 1000 / calls, 3)
                            if calls else None)
            out["t"].append(round(after.at, 3))
            out["calls_per_s"].append(rate)
            out["mean_ms"].append(mean)
            out["sessions"].append(after.sessions)
        return out

    def sample_once(self) -> None:
        try:
            self.record(self._source())
            self.last_error = None
        except (EdulinkDBError, psycopg.Error) as exc:
            self.last_error = type(exc).__name__
            log.warning("dashboard sample failed: %s", type(exc).__name__)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.is_set():
                self.sample_once()
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=run, name="edulink-db-dashboard-sampler",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _statements_ext(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_catalog.pg_extension"
                       " WHERE extname = 'pg_stat_statements'").fetchone()
    return row[0] if row else None


def top_statements(conn: psycopg.Connection[Any], roles: list[str],
                   limit: int = TOP_STATEMENTS) -> dict[str, list[dict[str, Any]]]:
    """Each role's slowest statements by mean time, as value-free fingerprints."""
    out: dict[str, list[dict[str, Any]]] = {r: [] for r in roles}
    ext = _statements_ext(conn)
    if ext is None:
        return out
    try:
        with conn.transaction():
            rows = conn.execute(sql.SQL(
                "SELECT rolname, query, calls, mean_exec_time, total_exec_time FROM ("
                " SELECT r.rolname::text AS rolname, s.query, s.calls, s.mean_exec_time,"
                "  s.total_exec_time, row_number() OVER (PARTITION BY r.rolname"
                "   ORDER BY s.mean_exec_time DESC) AS n"
                " FROM {}.pg_stat_statements s JOIN pg_catalog.pg_roles r ON r.oid = s.userid"
                " WHERE r.rolname = ANY(%s) AND s.dbid = (SELECT oid FROM"
                "  pg_catalog.pg_database WHERE datname = current_database())) t"
                " WHERE n <= %s ORDER BY rolname, mean_exec_time DESC").format(
                    sql.Identifier(ext)), [roles, limit]).fetchall()
    except psycopg.Error:
        return out
    for role, query, calls, mean_ms, total_ms in rows:
        digest, kind, text = fingerprint(query or "")
        out[role].append({"fingerprint": digest, "type": kind, "query": text[:300],
                          "calls": int(calls), "mean_ms": round(float(mean_ms), 3),
                          "total_s": round(float(total_ms) / 1000, 3)})
    return out


def blocked_queries(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Sessions waiting for a lock, with who blocks them; statements as fingerprints."""
    out = []
    for role, pid, seconds, event, query, blockers in conn.execute(
        "SELECT usename::text, pid, extract(epoch FROM now() - query_start)::float8,"
        " wait_event, query, pg_catalog.pg_blocking_pids(pid)"
        " FROM pg_catalog.pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid()"
        " ORDER BY 3 DESC NULLS LAST LIMIT 20"
    ).fetchall():
        digest, _kind, text = fingerprint(query or "")
        out.append({"role": role, "pid": pid, "seconds": round(seconds or 0.0, 1),
                    "wait": event, "fingerprint": digest, "query": text[:200],
                    "blocked_by": list(blockers or [])})
    return out


class DashboardData:
    """Collects the figures for the pages; thread-safe (the server is threaded)."""

    def __init__(self, settings: Settings, *, interval: float = 10.0,
                 slow_refresh: float = 60.0) -> None:
        self.settings = settings
        self.topology: Topology = settings.topology()
        self.slow_refresh = slow_refresh
        self.sampler = Sampler(self._collect_stats, self.topology.runtime_roles,
                               interval=interval)
        self._slow: dict[str, Any] | None = None
        self._slow_at = 0.0
        self._slow_lock = threading.Lock()
        self._live: tuple[float, dict[str, Any]] | None = None
        self._live_lock = threading.Lock()

    def _collect_stats(self) -> DatabaseStats:
        from ...connections.direct import connect

        with connect(_admin_params(self.settings), purpose="sample for the dashboard") as c:
            return collect(c, self.topology, self.settings)

    def live(self) -> dict[str, Any]:
        """One round of live figures, at most LIVE_TTL_S old; raises EdulinkDBError if
        the database is away.  Concurrent callers wait for one read and share it."""
        from ...connections.direct import connect

        with self._live_lock:
            if self._live is not None and time.monotonic() - self._live[0] < LIVE_TTL_S:
                return self._live[1]
            with connect(_admin_params(self.settings),
                         purpose="render the dashboard") as conn:
                stats = collect(conn, self.topology, self.settings)
                top = top_statements(conn, self.topology.runtime_roles)
                blocked = blocked_queries(conn)
                row = conn.execute("SELECT pg_catalog.pg_has_role("
                                   "'pg_read_all_stats', 'USAGE')").fetchone()
            self.sampler.record(stats)
            health = evaluate(stats, self.settings, self.topology, [])
            note = None if row is None or row[0] else STATS_ROLE_NOTE
            result = {"stats": stats, "health": health, "top": top, "blocked": blocked,
                      "replication": getattr(stats, "replication", None),
                      "privilege_note": note, "budget": self._budget(stats)}
            self._live = (time.monotonic(), result)
            return result

    def _budget(self, stats: DatabaseStats) -> budget.Budget | None:
        """The connection budget from the figures just read (no query of its own)."""
        server = budget.Server(stats.max_connections, stats.reserved_connections)
        try:
            return budget.plan(server, self.topology, self.settings,
                               catalog=stats.connection_limits,
                               pooler=pooler_mode(self.settings, _admin_params(self.settings)))
        except EdulinkDBError:  # a bad processes setting: the pools report it themselves
            return None

    def slow(self) -> dict[str, Any]:
        """Migrations, backups and privileges, at most *slow_refresh* seconds old."""
        with self._slow_lock:
            if self._slow is None or time.monotonic() - self._slow_at > self.slow_refresh:
                self._slow = {"migrations": self._migrations(), "backups": self._backups(),
                              "privileges": self._privileges()}
                self._slow_at = time.monotonic()
            return self._slow

    def _migrations(self) -> dict[str, dict[str, Any]]:
        from ...migrations import MigrationManager

        manager = MigrationManager(self.settings)
        out: dict[str, dict[str, Any]] = {}
        for svc in self.topology.services:
            try:
                status = manager.statuses([svc.name])[0].as_dict()
                problems = [f"checksum differs: {m['script']}"
                            for m in status["checksum_mismatches"]]
                problems += [f"file missing: {s}" for s in status["missing_files"]]
                problems += [f"out of order: {s}" for s in status["out_of_order"]]
                problems += [f"failed: {s}" for s in status["failed"]]
                out[svc.name] = {"applied": status["applied_count"],
                                 "pending": status["pending_migrations"],
                                 "last": status["last_applied_version"],
                                 "problems": problems, "error": None}
            except (EdulinkDBError, psycopg.Error) as exc:
                out[svc.name] = {"applied": None, "pending": [], "last": None,
                                 "problems": [], "error": error_reason(exc)}
        return out

    def _backups(self) -> dict[str, Any]:
        from ...backup.schedule import backup_freshness, read_state, store_for

        try:
            fresh = backup_freshness(self.settings, self.topology.schemas)
            drill = read_state(store_for(self.settings, create_key=False).root).get(
                "last_drill")
        except (EdulinkDBError, psycopg.Error, OSError) as exc:
            return {"error": error_reason(exc), "schemas": {}, "drill": None}
        schemas = {f.schema: {"newest": f.newest, "age_h": None if f.age_s is None
                              else round(f.age_s / 3600, 1),
                              "policy_h": None if f.interval_s is None
                              else round(f.interval_s / 3600, 1),
                              "overdue": f.overdue, "message": f.message} for f in fresh}
        if isinstance(drill, dict):
            drill = {k: drill.get(k) for k in ("at", "ok", "restore_seconds")}
        else:
            drill = None
        return {"error": None, "schemas": schemas, "drill": drill}

    def _privileges(self) -> dict[str, Any]:
        from ...privileges.verify import verify

        try:
            report = verify(_admin_params(self.settings), self.topology)
        except (EdulinkDBError, psycopg.Error) as exc:
            return {"error": error_reason(exc), "matrix": {}, "schemas": [], "exposure": [],
                    "problems": 0}
        return {"error": None, "matrix": report.matrix, "schemas": self.topology.schemas,
                "exposure": [e.as_dict() for e in report.exposure],
                "problems": len(report.problems)}


def error_reason(exc: BaseException) -> str:
    """An error for the page: EdulinkDBError messages mask DSNs already; a driver error
    shows only its primary message (never the statement or its parameters)."""
    if isinstance(exc, psycopg.Error):
        return f"{type(exc).__name__}: {exc.diag.message_primary or 'database error'}"
    if isinstance(exc, OSError):
        # Not str(exc): it names the file, and backup paths are not for the page.
        return f"{type(exc).__name__}: {exc.strerror or 'file system error'}"
    return str(exc)
