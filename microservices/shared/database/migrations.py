"""Per-service schema migrations: history and lock per schema, safe under concurrent deploys.

    from microservices.shared.database.migrations import MigrationManager

    migration_manager = MigrationManager()
    migration_manager.run_service_migrations('user_service', './migrations/user')
    migration_manager.run_all_migrations('./migrations')      # one subfolder per service
    status = migration_manager.get_migration_status('user_service')

How a run works, per service (see :mod:`.migration_files` for the files):

* **History** lives in the service's own schema, ``<schema>.edulink_schema_history``,
  owned by the service's owner role; runtime roles have no access to it.
* **Validate first.** Before anything runs, the history is compared with the
  files: an applied file that was edited (checksums differ), an applied file
  that disappeared, or a pending file older than the newest applied one stops
  the run with every problem listed.  ``repair`` accepts edits deliberately.
* **One transaction per file**, holding a transaction-level advisory lock keyed
  on the schema's history table (so another service's migration never waits on
  it, and a transaction pooler cannot strand it).  Under the lock the history
  is read again, so of several processes racing, exactly one applies each file
  and the others skip it.  Statements run as the owner role with
  ``search_path`` = the service schema, ``lock_timeout`` (default 2s; a file
  that hits it is retried) and ``statement_timeout`` (default 15min).  On
  failure the file is rolled back, the history is unchanged, and the error
  names the file, the statement and its line.
* **Non-transactional files** (CREATE INDEX CONCURRENTLY...) run statement by
  statement under a session-level lock on a dedicated connection.  They are
  recorded as in progress first; a run killed midway leaves that mark, and the
  next run drops the invalid indexes such an interruption leaves behind and
  runs the file again (so write such files with IF NOT EXISTS).
* Migrations need a direct or session-mode connection: pointed at a
  transaction pooler, the runner refuses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .config import Settings, admin_conninfo, load_settings, pooler_mode
from .direct import connect
from .errors import (
    ConfigError,
    MigrationError,
    MigrationFileError,
    MigrationLockTimeout,
    MigrationValidationError,
)
from .migration_files import MigrationFile, load_directory, parse_version
from .topology import Service, Topology

HISTORY_TABLE = "edulink_schema_history"
# First key of every migration advisory lock ('EDLK'); the second is the hash of
# the quoted history table name, as Flyway keys its lock.
LOCK_CLASS = 0x45444C4B
LOCK_RETRIES = 5
Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def reference_migrations_dir() -> Path:
    """The reference Edulink schema shipped with the package (one folder per service)."""
    return Path(str(resources.files(__package__) / "reference_migrations"))


@dataclass(frozen=True)
class AppliedRow:
    """One row of a schema's migration history."""

    rank: int
    version: tuple[int, ...] | None
    description: str
    kind: str  # versioned | repeatable | baseline | deleted
    script: str
    checksum: str | None
    success: bool


@dataclass
class ServiceStatus:
    """Files versus history for one service; computed without changing anything."""

    service: str
    schema: str
    history_exists: bool
    rows: list[AppliedRow]
    files: list[MigrationFile]
    pending: list[MigrationFile] = field(default_factory=list)
    resumable: list[MigrationFile] = field(default_factory=list)
    mismatches: list[dict[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)

    @property
    def applied(self) -> list[AppliedRow]:
        return [r for r in self.rows if r.success and r.kind in ("versioned", "baseline")]

    @property
    def failed(self) -> list[AppliedRow]:
        return [r for r in self.rows if not r.success]

    @property
    def last_version(self) -> tuple[int, ...] | None:
        versions = [r.version for r in self.applied if r.version is not None]
        return max(versions) if versions else None

    @property
    def problems(self) -> list[str]:
        out = [f"{m['script']}: applied with checksum {m['applied']}, file now has "
               f"{m['current']} (edited after it was applied; revert the edit, or run "
               "'edulink-db migrations repair' to accept it)" for m in self.mismatches]
        out += [f"{s}: applied, but the file is gone (restore it, or 'migrations repair' "
                "to mark it deleted)" for s in self.missing]
        out += [f"{s}: never applied, but older than the last applied version "
                f"{_vtext(self.last_version)} (give it a newer version)" for s in self.out_of_order]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "schema": self.schema,
            "history_exists": self.history_exists,
            "applied_count": len(self.applied),
            "pending_count": len(self.pending),
            "pending_migrations": [f.script for f in self.pending],
            "last_applied_version": _vtext(self.last_version),
            "checksum_mismatches": self.mismatches,
            "missing_files": self.missing,
            "out_of_order": self.out_of_order,
            "failed": [r.script for r in self.failed],
            "resumable": [f.script for f in self.resumable],
            "ok": not self.problems,
        }


def _first_code_line(text: str, line: int) -> tuple[str, int]:
    """The first line of a statement that is not a comment, and its line number."""
    for offset, content in enumerate(text.splitlines()):
        stripped = content.strip()
        if stripped and not stripped.startswith("--"):
            return stripped[:100], line + offset
    return text[:100], line


def _vtext(version: tuple[int, ...] | None) -> str | None:
    return None if version is None else ".".join(map(str, version))


def compute_status(service: Service, files: list[MigrationFile], rows: list[AppliedRow],
                   history_exists: bool) -> ServiceStatus:
    status = ServiceStatus(service=service.name, schema=service.schema,
                           history_exists=history_exists, rows=rows, files=files)
    by_version = {f.version: f for f in files if f.kind == "versioned"}
    baseline = max((r.version for r in rows if r.kind == "baseline" and r.version), default=None)
    applied_versions: set[tuple[int, ...]] = set()
    for row in rows:
        if row.kind != "versioned" or row.version is None:
            continue
        file = by_version.get(row.version)
        if not row.success:
            if file is not None:
                status.resumable.append(file)
            continue
        applied_versions.add(row.version)
        if file is None:
            status.missing.append(row.script)
        elif row.checksum != file.checksum:
            status.mismatches.append({"script": file.script, "version": _vtext(row.version) or "",
                                      "applied": row.checksum or "", "current": file.checksum})
    last = status.last_version
    for file in files:
        if file.kind != "versioned":
            continue
        assert file.version is not None
        if file.version in applied_versions or (baseline and file.version <= baseline):
            continue
        if file in status.resumable:
            status.pending.append(file)
        elif last is not None and file.version < last:
            status.out_of_order.append(file.script)
        else:
            status.pending.append(file)
    last_repeatable = {}
    for row in rows:
        if row.kind == "repeatable" and row.success:
            last_repeatable[row.description] = row.checksum
    status.pending += [f for f in files if f.kind == "repeatable"
                       and last_repeatable.get(f.description) != f.checksum]
    return status


def read_histories(conn: psycopg.Connection[Any], services: list[Service]
                   ) -> dict[str, tuple[bool, list[AppliedRow]]]:
    """The history of every service, in two queries whatever the number of services."""
    exists = {r[0] for r in conn.execute(
        "SELECT n.nspname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = %s AND n.nspname = ANY(%s)",
        [HISTORY_TABLE, [s.schema for s in services]]).fetchall()}
    out: dict[str, tuple[bool, list[AppliedRow]]] = {
        s.schema: (s.schema in exists, []) for s in services}
    with_history = [s.schema for s in services if s.schema in exists]
    if not with_history:
        return out
    union = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT %s::text, installed_rank, version, description, type, script,"
                " checksum, success FROM {}").format(sql.Identifier(schema, HISTORY_TABLE))
        for schema in with_history)
    rows = conn.execute(sql.SQL("{} ORDER BY 1, 2").format(union), with_history).fetchall()
    for schema, rank, version, description, kind, script, checksum, success in rows:
        out[schema][1].append(AppliedRow(
            rank=rank, version=parse_version(version) if version else None,
            description=description, kind=kind, script=script, checksum=checksum,
            success=success))
    return out


@dataclass
class MigrateReport:
    service: str
    schema: str
    dry_run: bool
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.service, "schema": self.schema, "dry_run": self.dry_run,
                "applied": self.applied, "skipped": self.skipped, "resumed": self.resumed,
                "pending": self.pending, "duration_s": round(self.duration_s, 3)}


class _LostRace(Exception):
    """The migration lock was taken by another process between looking and grabbing."""


class SchemaMigrator:
    """Applies one service's migrations (the runtime context, in Alembic's terms)."""

    def __init__(self, admin: dict[str, Any], topology: Topology, service: Service,
                 files: list[MigrationFile], settings: Settings,
                 progress: Progress = _quiet) -> None:
        self.admin = admin
        self.topology = topology
        self.service = service
        self.files = files
        self.settings = settings
        self.progress = progress
        self.history = sql.Identifier(service.schema, HISTORY_TABLE)
        self.lock_key = f'"{service.schema}"."{HISTORY_TABLE}"'
        self.search_path = ", ".join(
            sql.Identifier(s).as_string(None) for s in (service.schema, topology.shared.schema))
        self._history_ready = False

    # -- pieces ----------------------------------------------------------------
    def _session_settings(self, local: bool) -> tuple[str, list[Any]]:
        # Non-transactional files (local=False) get no lock_timeout: CREATE INDEX
        # CONCURRENTLY must wait for every older transaction in the database, which is
        # expected and blocks nobody's reads or writes; statement_timeout still bounds it.
        lock_timeout = self.settings.database_migration_lock_timeout if local else "0"
        return (
            "SELECT pg_catalog.set_config('lock_timeout', %s, {l}),"
            " pg_catalog.set_config('statement_timeout', %s, {l}),"
            " pg_catalog.set_config('search_path', %s, {l}),"
            # A killed runner's backend notices within a second and releases the lock.
            " pg_catalog.set_config('client_connection_check_interval', '1s', {l}),"
            " pg_catalog.set_config('role', %s, {l})".replace("{l}", "true" if local else "false"),
            [lock_timeout,
             self.settings.database_migration_statement_timeout,
             self.search_path, self.service.owner_role],
        )

    def _try_lock(self, conn: psycopg.Connection[Any], session: bool) -> bool:
        fn = "pg_try_advisory_lock" if session else "pg_try_advisory_xact_lock"
        row = conn.execute(f"SELECT pg_catalog.{fn}(%s, pg_catalog.hashtext(%s))",
                           [LOCK_CLASS, self.lock_key]).fetchone()
        return bool(row and row[0])

    def _wait_for_lock(self, conn: psycopg.Connection[Any], session: bool) -> None:
        """Wait until the schema's migration lock is ours (session) or free (xact).

        For the transaction-level lock this runs *before* the transaction starts
        and only reports that the lock was free a moment ago (in autocommit the
        try-lock ends with its statement); the caller then takes it inside its
        transaction and comes back here if it lost the race.  Waiting outside a
        transaction matters: an open transaction, even an idle one, makes every
        CREATE INDEX CONCURRENTLY in the database wait for it (flyway#1654).
        """
        deadline = time.monotonic() + self.settings.database_migration_lock_wait
        delay, announced = 0.02, False
        while not self._try_lock(conn, session):
            if time.monotonic() > deadline:
                raise MigrationLockTimeout(
                    f"{self.service.name}: another process has been migrating "
                    f"{self.service.schema} for over "
                    f"{self.settings.database_migration_lock_wait:g}s"
                    " (DATABASE_MIGRATION_LOCK_WAIT). Check pg_stat_activity for it."
                )
            if not announced:
                self.progress(f"{self.service.name}: waiting for another process migrating "
                              f"{self.service.schema}")
                announced = True
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _ensure_history(self, conn: psycopg.Connection[Any]) -> None:
        if self._history_ready:
            return
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " installed_rank integer PRIMARY KEY,"
            " version text,"
            " description text NOT NULL,"
            " type text NOT NULL CHECK (type IN"
            "  ('versioned', 'repeatable', 'baseline', 'deleted')),"
            " script text NOT NULL,"
            " checksum text,"
            " installed_by name NOT NULL DEFAULT session_user,"
            " installed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),"
            " execution_ms integer NOT NULL DEFAULT 0,"
            " success boolean NOT NULL)").format(self.history))
        # Default privileges would give the runtime roles access: the history is
        # the owner's business only.
        conn.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM PUBLIC, {}").format(
            self.history, sql.SQL(", ").join(
                sql.Identifier(r) for r in self.topology.runtime_roles)))
        self._history_ready = True

    def _state_under_lock(self, conn: psycopg.Connection[Any], file: MigrationFile
                          ) -> tuple[int, str, int | None]:
        """(next rank, 'applied'|'dirty'|'pending', rank of the dirty row)."""
        if file.kind == "versioned":
            row = conn.execute(sql.SQL(
                "SELECT coalesce(max(installed_rank), 0),"
                " bool_or(version = %s AND success),"
                " max(installed_rank) FILTER (WHERE version = %s AND NOT success)"
                " FROM {}").format(self.history), [file.version_text] * 2).fetchone()
        else:
            row = conn.execute(sql.SQL(
                "SELECT coalesce(max(installed_rank), 0),"
                " (SELECT checksum FROM {h} WHERE type = 'repeatable' AND description = %s"
                "  AND success ORDER BY installed_rank DESC LIMIT 1) = %s, NULL::int"
                " FROM {h}").format(h=self.history), [file.description, file.checksum]
            ).fetchone()
        assert row is not None
        rank, applied, dirty_rank = row
        state = "applied" if applied else ("dirty" if dirty_rank else "pending")
        return int(rank) + 1, state, dirty_rank

    def _record(self, conn: psycopg.Connection[Any], rank: int, file: MigrationFile,
                ms: int, success: bool) -> None:
        conn.execute(sql.SQL(
            "INSERT INTO {} (installed_rank, version, description, type, script, checksum,"
            " execution_ms, success) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)").format(
            self.history),
            [rank, file.version_text, file.description, file.kind, file.script, file.checksum,
             ms, success])

    def _run_statements(self, conn: psycopg.Connection[Any], file: MigrationFile) -> None:
        for stmt in file.statements:
            try:
                conn.execute(stmt.text)  # trusted: the migration file's own SQL
            except psycopg.errors.LockNotAvailable:
                raise
            except psycopg.Error as exc:
                line = stmt.line
                position = exc.diag.statement_position
                if position and position.isdigit():
                    line += stmt.text.count("\n", 0, int(position) - 1)
                first, first_line = _first_code_line(stmt.text, stmt.line)
                detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
                raise MigrationError(
                    f"{self.service.name}: {file.script} failed at line {line}: "
                    f"{exc.diag.message_primary or str(exc).strip()}{detail}\n"
                    f"  statement (line {first_line}): {first}\n"
                    + ("  The file was rolled back; the history is unchanged. Fix it and run "
                       "migrate again." if file.transactional else
                       "  This file runs without a transaction: statements before this one "
                       "stay applied. Fix the cause and run migrate again (the file runs "
                       "again, so keep its statements idempotent).")
                ) from None

    # -- applying ---------------------------------------------------------------
    def _apply_transactional(self, conn: psycopg.Connection[Any], file: MigrationFile) -> str:
        settings_sql, settings_params = self._session_settings(local=True)
        attempt = 1
        while True:
            self._wait_for_lock(conn, session=False)
            try:
                with conn.transaction():
                    if not self._try_lock(conn, session=False):
                        raise _LostRace
                    conn.execute(settings_sql, settings_params)
                    self._ensure_history(conn)
                    rank, state, _dirty = self._state_under_lock(conn, file)
                    if state == "applied":
                        return "skipped"
                    started = time.perf_counter()
                    self._run_statements(conn, file)
                    self._record(conn, rank, file,
                                 int((time.perf_counter() - started) * 1000), True)
                return "applied"
            except _LostRace:
                continue  # another process took the lock between our look and our grab
            except psycopg.errors.LockNotAvailable as exc:
                self._history_ready = False  # its creation may have been rolled back
                if attempt == LOCK_RETRIES:
                    raise MigrationError(
                        f"{self.service.name}: {file.script} could not get a table lock within "
                        f"lock_timeout {self.settings.database_migration_lock_timeout} in "
                        f"{LOCK_RETRIES} attempts ({exc.diag.message_primary}). Long "
                        "transactions are holding it; retry when they are done."
                    ) from None
                self.progress(f"{self.service.name}: {file.script} hit lock_timeout; "
                              f"retrying ({attempt}/{LOCK_RETRIES})")
                time.sleep(0.2 * attempt)
                attempt += 1
            except BaseException:
                self._history_ready = False
                raise

    def _apply_non_transactional(self, file: MigrationFile) -> str:
        # A dedicated connection: session lock and settings die with it.
        with connect(self.admin, purpose="run a non-transactional migration") as conn:
            self._wait_for_lock(conn, session=True)
            settings_sql, settings_params = self._session_settings(local=False)
            conn.execute(settings_sql, settings_params)
            self._history_ready = False
            self._ensure_history(conn)
            rank, state, dirty_rank = self._state_under_lock(conn, file)
            if state == "applied":
                return "skipped"
            if state == "dirty":
                self._drop_invalid_indexes(conn)
                rank = int(dirty_rank or rank)
                self.progress(f"{self.service.name}: resuming {file.script}, interrupted "
                              "by an earlier run")
            else:
                self._record(conn, rank, file, 0, False)  # in progress: a crash leaves this
            started = time.perf_counter()
            self._run_statements(conn, file)
            conn.execute(sql.SQL(
                "UPDATE {} SET success = true, execution_ms = %s, checksum = %s,"
                " installed_at = pg_catalog.now() WHERE installed_rank = %s").format(self.history),
                [int((time.perf_counter() - started) * 1000), file.checksum, rank])
            return "resumed" if state == "dirty" else "applied"

    def _drop_invalid_indexes(self, conn: psycopg.Connection[Any]) -> None:
        """An interrupted CREATE INDEX CONCURRENTLY leaves an INVALID index that
        IF NOT EXISTS would then skip: drop such leftovers before running again."""
        rows = conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_index i"
            " JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE NOT i.indisvalid AND n.nspname = %s", [self.service.schema]).fetchall()
        for (name,) in rows:
            self.progress(f"{self.service.name}: dropping invalid index {name} left by the "
                          "interrupted run")
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                sql.Identifier(self.service.schema, name)))

    def migrate(self, status: ServiceStatus, *, dry_run: bool = False) -> MigrateReport:
        report = MigrateReport(service=self.service.name, schema=self.service.schema,
                               dry_run=dry_run, pending=[f.script for f in status.pending])
        if status.problems:
            raise MigrationValidationError(
                f"{self.service.name}: migration history and files disagree; nothing was run:\n  "
                + "\n  ".join(status.problems))
        if dry_run or not status.pending:
            return report
        for file in status.pending:
            file.parsed  # noqa: B018 - every pending file's SQL is checked before any runs
        started = time.perf_counter()
        self._history_ready = status.history_exists
        with connect(self.admin, purpose=f"migrate {self.service.name}") as conn:
            for file in status.pending:
                self.progress(f"{self.service.name}: applying {file.script}")
                outcome = (self._apply_transactional(conn, file) if file.transactional
                           else self._apply_non_transactional(file))
                {"applied": report.applied, "skipped": report.skipped,
                 "resumed": report.resumed}[outcome].append(file.script)
        report.duration_s = time.perf_counter() - started
        return report

    # -- repair and baseline -------------------------------------------------------
    def repair(self, status: ServiceStatus) -> list[str]:
        """Accept the files as they are: re-record checksums of edited files, mark
        applied-but-missing files deleted, remove failed (in-progress) entries."""
        done: list[str] = []
        if not status.history_exists:
            return done
        by_script = {f.script: f for f in status.files}
        # Rare, deliberate operations: the session-level lock on a connection of their
        # own, then one short transaction (the lock dies with the connection).
        with connect(self.admin, purpose="repair migration history") as conn:
            self._wait_for_lock(conn, session=True)
            with conn.transaction():
                self._repair_locked(conn, status, by_script, done)
        return done

    def _repair_locked(self, conn: psycopg.Connection[Any], status: ServiceStatus,
                       by_script: dict[str, MigrationFile], done: list[str]) -> None:
        conn.execute("SELECT pg_catalog.set_config('role', %s, true)",
                     [self.service.owner_role])
        for mismatch in status.mismatches:
            conn.execute(sql.SQL("UPDATE {} SET checksum = %s WHERE script = %s AND success"
                                 ).format(self.history),
                         [by_script[mismatch["script"]].checksum, mismatch["script"]])
            done.append(f"{mismatch['script']}: checksum re-recorded")
        for script in status.missing:
            conn.execute(sql.SQL("UPDATE {} SET type = 'deleted' WHERE script = %s"
                                 " AND type = 'versioned'").format(self.history), [script])
            done.append(f"{script}: marked deleted")
        for row in status.failed:
            conn.execute(sql.SQL("DELETE FROM {} WHERE installed_rank = %s").format(
                self.history), [row.rank])
            done.append(f"{row.script}: failed entry removed")

    def baseline(self, version: str, description: str = "<< baseline >>") -> None:
        """Record that the schema already holds everything up to *version*."""
        parsed = parse_version(version)
        with connect(self.admin, purpose="baseline migrations") as conn:
            self._wait_for_lock(conn, session=True)
            with conn.transaction():
                self._baseline_locked(conn, parsed, description)

    def _baseline_locked(self, conn: psycopg.Connection[Any], parsed: tuple[int, ...],
                         description: str) -> None:
        settings_sql, settings_params = self._session_settings(local=True)
        conn.execute(settings_sql, settings_params)
        self._history_ready = False
        self._ensure_history(conn)
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.history)
                             ).fetchone()
        if count and count[0]:
            raise MigrationError(
                f"{self.service.name}: {self.service.schema} already has a migration "
                "history; baseline is only for a schema that was never migrated by "
                "edulink-db.")
        conn.execute(sql.SQL(
            "INSERT INTO {} (installed_rank, version, description, type, script, success)"
            " VALUES (1, %s, %s, 'baseline', %s, true)").format(self.history),
            [".".join(map(str, parsed)), description, description])


class MigrationManager:
    """The seed's migration API; one instance can serve every service.

    *directory* is the root with one folder per service (default:
    ``EDULINK_DB_MIGRATIONS``, else the reference migrations in the package).
    """

    def __init__(self, settings: Settings | None = None, directory: str | Path | None = None,
                 progress: Progress = _quiet) -> None:
        self._settings = settings
        self._root = Path(directory) if directory is not None else None
        self._service_dirs: dict[str, Path] = {}
        self.progress = progress

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def root(self) -> Path:
        if self._root is not None:
            return self._root
        return self.settings.edulink_db_migrations or reference_migrations_dir()

    def _topology(self) -> Topology:
        return self.settings.topology()

    def _admin(self) -> dict[str, Any]:
        admin = admin_conninfo(self.settings)
        if pooler_mode(self.settings, admin) == "transaction":
            raise MigrationError(
                "Migrations need a direct (or session-mode) connection, but DATABASE_URL "
                "points at a transaction pooler (port 6543 or DATABASE_POOLER=transaction): "
                "its connections change between transactions, which breaks session locks "
                "and CREATE INDEX CONCURRENTLY. Use the direct connection string "
                "(Supabase: port 5432, db.<project>.supabase.co)."
            )
        return admin

    def _dir_for(self, service: Service, directory: str | Path | None) -> Path:
        if directory is not None:
            path = Path(directory)
            self._service_dirs[service.name] = path
            return path
        if service.name in self._service_dirs:
            return self._service_dirs[service.name]
        for name in (service.name, f"{service.name}_service"):
            if (self.root / name).is_dir():
                return self.root / name
        return self.root / service.name

    def _check_root(self, root: Path, topology: Topology) -> None:
        if not root.exists():
            raise MigrationFileError(f"Migrations directory {root} does not exist.")
        known = {n for s in topology.services for n in (s.name, f"{s.name}_service")}
        strays = sorted(p.name for p in root.iterdir()
                        if p.is_dir() and not p.name.startswith((".", "_"))
                        and p.name not in known)
        if strays:
            raise MigrationFileError(
                f"{root}: folder(s) {', '.join(strays)} match no service in the topology "
                f"(services: {', '.join(topology.service_names())}); rename or remove them.")

    def statuses(self, services: Iterable[str] | None = None,
                 directory: str | Path | None = None) -> list[ServiceStatus]:
        """Status of several services, reading all histories in two queries."""
        topology = self._topology()
        if directory is not None:
            self._root = Path(directory)
            self._check_root(self._root, topology)
        chosen = [topology.service(s) for s in services] if services else list(
            topology.services)
        files = {s.name: load_directory(self._dir_for(s, None)) for s in chosen}
        with connect(self._admin(), purpose="read migration history") as conn:
            histories = read_histories(conn, chosen)
        return [compute_status(s, files[s.name], histories[s.schema][1],
                               histories[s.schema][0]) for s in chosen]

    def _status_one(self, service: Service, directory: str | Path | None) -> ServiceStatus:
        files = load_directory(self._dir_for(service, directory))
        with connect(self._admin(), purpose="read migration history") as conn:
            exists, rows = read_histories(conn, [service])[service.schema]
        return compute_status(service, files, rows, exists)

    def get_migration_status(self, service: str, directory: str | Path | None = None
                             ) -> dict[str, Any]:
        """applied_count, pending_count, pending_migrations, last_applied_version,
        checksum_mismatches, missing_files, out_of_order, failed, resumable, ok."""
        svc = self._topology().service(service)
        return self._status_one(svc, directory).as_dict()

    def run_service_migrations(self, service: str, directory: str | Path | None = None, *,
                               dry_run: bool = False, strict: bool = False) -> dict[str, Any]:
        """Apply *service*'s pending migrations from *directory*; returns the report.

        Every pending file is checked against the service contracts first (and, with
        *strict*, for lock hazards); any finding refuses the whole run."""
        topology = self._topology()
        svc = topology.service(service)
        status = self._status_one(svc, directory)
        _check_contracts(topology, [status], strict)
        migrator = SchemaMigrator(self._admin(), topology, svc, status.files, self.settings,
                                  self.progress)
        return migrator.migrate(status, dry_run=dry_run).as_dict()

    def run_all_migrations(self, directory: str | Path | None = None, *,
                           services: Iterable[str] | None = None,
                           dry_run: bool = False,
                           strict: bool = False) -> dict[str, dict[str, Any]]:
        """Every service in turn (one subfolder per service). Services are migrated
        sequentially; parallel processes are safe thanks to the per-schema locks.
        Every pending file of every service is contract-checked before any runs."""
        topology = self._topology()
        statuses = self.statuses(services, directory)
        problems = [p for st in statuses for p in
                    (f"{st.service}: {x}" for x in st.problems)]
        if problems:
            raise MigrationValidationError(
                "Migration history and files disagree; nothing was run:\n  "
                + "\n  ".join(problems))
        _check_contracts(topology, statuses, strict)
        admin = self._admin()
        results: dict[str, dict[str, Any]] = {}
        for st in statuses:
            svc = topology.service(st.service)
            migrator = SchemaMigrator(admin, topology, svc, st.files, self.settings,
                                      self.progress)
            results[svc.name] = migrator.migrate(st, dry_run=dry_run).as_dict()
        return results

    def validate(self, services: Iterable[str] | None = None,
                 directory: str | Path | None = None) -> list[ServiceStatus]:
        """Raise MigrationValidationError listing every disagreement; else the statuses."""
        statuses = self.statuses(services, directory)
        problems = [f"{st.service}: {p}" for st in statuses for p in st.problems]
        if problems:
            raise MigrationValidationError("\n".join(problems))
        return statuses

    def repair(self, services: Iterable[str] | None = None,
               directory: str | Path | None = None) -> dict[str, list[str]]:
        topology = self._topology()
        admin = self._admin()
        return {
            st.service: SchemaMigrator(admin, topology, topology.service(st.service), st.files,
                                       self.settings, self.progress).repair(st)
            for st in self.statuses(services, directory)
        }

    def baseline(self, service: str, version: str) -> None:
        topology = self._topology()
        svc = topology.service(service)
        try:
            parse_version(version)
        except ValueError:
            raise ConfigError(f"Baseline version {version!r} is not a version like 3 or 1.2."
                              ) from None
        SchemaMigrator(self._admin(), topology, svc, [], self.settings,
                       self.progress).baseline(version)


def _check_contracts(topology: Topology, statuses: list[ServiceStatus], strict: bool) -> None:
    """Service contracts (issue 12): refuse before anything runs if a pending file
    breaks what another service reads (or, with *strict*, has lint warnings)."""
    from .lint import check_pending

    check_pending(topology, [(topology.service(st.service), f)
                             for st in statuses for f in st.pending], strict=strict)
