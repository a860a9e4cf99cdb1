"""Runs one schema's migrations under its advisory lock, as its migrator role
(:class:`SchemaMigrator`); how a run works is described in :mod:`.manager`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..config import Settings
from ..connections.direct import connect
from ..core.errors import (
    MigrationError,
    MigrationLockTimeout,
    MigrationValidationError,
)
from ..topology import Service, Topology
from .concurrent import user_code
from .diagnostics import server_diagnostic
from .files import MigrationFile, SqlStatement, parse_version
from .guard import CatalogGuard, Facts
from .history import (
    HISTORY_TABLE,
    LOCK_CLASS,
    LOCK_RETRIES,
    Progress,
    ServiceStatus,
    first_code_line,
    no_notice,
    switch_hint,
)
from .markers import read_markers


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


class _NeedsNoTransaction(Exception):
    """The statement refused to run inside a transaction block (and did nothing)."""


# After every statement: who we are, and which shared catalogs of roles this
# transaction has written (ALTER ROLE, COMMENT ON ROLE, GRANT role, ALTER ROLE SET:
# each takes RowExclusiveLock, held until the transaction ends).  Shared catalogs
# have database 0 in pg_locks; pg_shdepend is written by ordinary DDL (owners, ACLs).
# It also puts back the runner's timeouts: a file (a pasted pg_dump header: SET
# statement_timeout = 0; SET lock_timeout = 0; ...) may not switch them off for the
# statements after it.  A statement's own timeout is armed when it starts, so a change
# inside one statement (a DO block) does not reach past it either.
_AFTER_STATEMENT = """
SELECT current_user, ARRAY(
  SELECT DISTINCT c.relname::text FROM pg_catalog.pg_locks l
    JOIN pg_catalog.pg_class c ON c.oid = l.relation
   WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation'
     AND l.database = 0 AND l.mode <> 'AccessShareLock' AND c.relisshared
     AND c.relname <> 'pg_shdepend'
   ORDER BY 1),
  pg_catalog.set_config('lock_timeout', %(lock)s, %(local)s),
  pg_catalog.set_config('statement_timeout', %(statement)s, %(local)s),
  pg_catalog.set_config('idle_in_transaction_session_timeout', %(idle)s, %(local)s)
"""


# The exposed columns of one schema that exist but that a reader cannot SELECT.
_MISSING_EXPOSURE = """
SELECT c.relname::text, a.attname::text
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  CROSS JOIN pg_catalog.pg_roles r
 WHERE n.nspname = %(schema)s AND c.relkind = ANY('{r,p,v,m,f}'::"char"[])
   AND c.relname::text || '.' || a.attname::text = ANY(%(exposed)s::text[])
   AND r.rolname = ANY(%(readers)s)
   AND NOT pg_catalog.has_column_privilege(r.oid, c.oid, a.attnum, 'SELECT')
 GROUP BY c.relname, a.attname, a.attnum ORDER BY c.relname, a.attnum
"""


def grant_exposed_columns(conn: psycopg.Connection[Any], topology: Topology,
                          service: Service) -> list[str]:
    """Grant *service*'s readers the exposed columns that exist but that they cannot read
    yet; return the tables granted on.

    Provisioning runs before the tables exist, and column grants never cover columns
    added later, so whatever creates tables (a migration file, Django's ``migrate``)
    calls this afterwards.  It must run as the owner role, which may GRANT on its own
    tables, and costs one catalog query when nothing is missing.
    """
    readers = [s.runtime_role for s in topology.readers_of(service)]
    if not readers or not service.exposes:
        return []
    exposed = [f"{table}.{column}" for table, columns in service.exposes for column in columns]
    missing = conn.execute(_MISSING_EXPOSURE, {
        "schema": service.schema, "exposed": exposed, "readers": readers}).fetchall()
    by_table: dict[str, list[str]] = {}
    for table, column in missing:
        by_table.setdefault(table, []).append(column)
    for table, columns in by_table.items():
        conn.execute(sql.SQL("GRANT SELECT ({}) ON TABLE {} TO {}").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.Identifier(service.schema, table),
            sql.SQL(", ").join(map(sql.Identifier, readers))))
    return list(by_table)


class SchemaMigrator:
    """Applies one service's migrations (the runtime context, in Alembic's terms).

    *login* are the connection parameters of the service's migrator role
    (:func:`~.config.service_conninfo` with ``kind='migrator'``), never the admin's.
    """

    def __init__(self, login: dict[str, Any], topology: Topology, service: Service,
                 files: list[MigrationFile], settings: Settings,
                 progress: Progress = no_notice) -> None:
        self.login = login
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
        self._timeouts: dict[str, Any] = {}
        self.guard = CatalogGuard(topology, service)

    # -- pieces ----------------------------------------------------------------
    def _apply_settings(self, conn: psycopg.Connection[Any], local: bool) -> None:
        """Set the runner's settings for one file (local=True: for its transaction).

        A transactional file first gets the session's defaults back (RESET ALL, in
        the same round trip): whatever an earlier file set for the session
        (search_path, check_function_bodies, row_security, custom settings) does not
        reach it.  RESET ALL leaves role and session_authorization alone; a file
        that changes those is refused (see _run_statement).
        """
        # Non-transactional files (local=False) get no lock_timeout: CREATE INDEX
        # CONCURRENTLY must wait for every older transaction in the database, which is
        # expected and blocks nobody's reads or writes; statement_timeout still bounds it.
        lock_timeout = self.settings.database_migration_lock_timeout if local else "0"
        statement_timeout = self.settings.database_migration_statement_timeout
        query = sql.SQL(
            "SELECT pg_catalog.set_config('lock_timeout', {lock}, {l}),"
            " pg_catalog.set_config('statement_timeout', {statement}, {l}),"
            " pg_catalog.set_config('search_path', {path}, {l}),"
            # A killed runner's backend notices within a second and releases the lock.
            " pg_catalog.set_config('client_connection_check_interval', '1s', {l}),"
            " pg_catalog.set_config('role', {role}, {l}),"
            " pg_catalog.current_setting('idle_in_transaction_session_timeout')").format(
            lock=sql.Literal(lock_timeout), statement=sql.Literal(statement_timeout),
            path=sql.Literal(self.search_path), role=sql.Literal(self.service.owner_role),
            l=sql.Literal(local))
        if local:
            query = sql.SQL("RESET ALL; ") + query
        cur = conn.execute(query)  # no parameters: one simple-protocol round trip
        if local:
            cur.nextset()
        row = cur.fetchone()
        assert row is not None
        # Put back after every statement of the file (_AFTER_STATEMENT); the idle
        # timeout is the session's own (role, database or server setting).
        self._timeouts = {"lock": lock_timeout, "statement": statement_timeout,
                          "idle": str(row[-1]), "local": local}

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

    def _failure(self, file: MigrationFile, stmt: SqlStatement, line: int,
                 reason: str) -> MigrationError:
        first, first_line = first_code_line(stmt.text, stmt.line)
        return MigrationError(
            f"{self.service.name}: {file.script} failed at line {line}: {reason}\n"
            f"  statement (line {first_line}): {first}\n"
            + ("  The file was rolled back; the history is unchanged. Fix it and run "
               "migrate again." if file.transactional else
               "  This file runs without a transaction: statements before this one "
               "stay applied. Fix the cause and run migrate again (the file runs "
               "again, so keep its statements idempotent).")
        )

    def _run_statements(self, conn: psycopg.Connection[Any], file: MigrationFile,
                        before: Facts) -> Facts:
        """Run *file*'s statements; return the catalog snapshot a non-transactional
        file left after its last statement (*before* for a transactional one)."""
        for stmt in file.statements:
            if file.transactional:
                self._run_statement(conn, file, stmt, in_own_transaction=False)
                continue
            # Statement by statement, yet each in a transaction of its own wherever
            # PostgreSQL allows one, so that the checks after it can still roll it back.
            try:
                with conn.transaction():
                    self._run_statement(conn, file, stmt, in_own_transaction=True)
                    after = self.guard.snapshot(conn)
                    self._judge(file, before, after, stmt)
                    before = after
            except _NeedsNoTransaction:
                # CREATE INDEX CONCURRENTLY and the like change no privileges of their
                # own, but nothing can roll back what the schema's own code they
                # evaluate does (an index expression's function may GRANT): refuse it.
                called = user_code(conn, stmt.text)
                if called:
                    raise self._failure(
                        file, stmt, stmt.line,
                        "the statement must run outside a transaction, where the "
                        "migration guard cannot roll back what it does, and it would run "
                        f"the schema's own code: {', '.join(called)}. Build the index "
                        "without CONCURRENTLY in a transactional file (the guard then "
                        "checks it), or index columns and built-in functions only") from None
                self._run_statement(conn, file, stmt, in_own_transaction=False)
        return before

    def _run_statement(self, conn: psycopg.Connection[Any], file: MigrationFile,
                       stmt: SqlStatement, *, in_own_transaction: bool) -> None:
        try:
            conn.execute(stmt.text)  # runs with the owner role's authority, no more
            row = conn.execute(_AFTER_STATEMENT, self._timeouts).fetchone()
        except psycopg.errors.ActiveSqlTransaction:
            # CREATE INDEX CONCURRENTLY and the like refuse a transaction block before
            # doing anything; they run on their own (and cannot hide other statements).
            if in_own_transaction:
                raise _NeedsNoTransaction from None
            raise
        except psycopg.errors.LockNotAvailable:
            raise
        except psycopg.Error as exc:
            line = stmt.line
            position = exc.diag.statement_position
            if position and position.isdigit():
                line += stmt.text.count("\n", 0, int(position) - 1)
            reason = server_diagnostic(exc)
            if exc.diag.sqlstate == "42501":
                reason += (f"\n  Migrations of {self.service.name} run as "
                           f"{self.service.owner_role}, which may change only "
                           f"{self.service.schema}.")
            raise self._failure(file, stmt, line, reason) from None
        # The migrator can only be its owner role or itself (NOINHERIT: no
        # privileges); either way a file that switches roles is refused, so
        # nothing it did after the switch is ever committed.
        if row is None or row[0] != self.service.owner_role:
            raise self._failure(
                file, stmt, stmt.line,
                f"the statement switched the role to {row[0] if row else None!r}; "
                f"migrations of {self.service.name} run as {self.service.owner_role} "
                "and must not change role (SET ROLE, RESET ROLE, SET SESSION "
                "AUTHORIZATION, set_config('role', ...))")
        # Inside one statement (a DO block) a file may still become the migrator
        # (SET ROLE to the session user is always allowed) and switch back; an
        # ordinary role may change its own password and role-level settings.  Any
        # such write leaves a lock on a shared role catalog until the transaction ends.
        if row[1]:
            raise self._failure(
                file, stmt, stmt.line,
                f"the statement changed roles (it wrote {', '.join(row[1])}): migrations "
                "may not alter roles, their passwords, settings, comments or memberships "
                "(not even their own migrator's); 'edulink-db provision' manages roles")

    def _grant_exposure(self, conn: psycopg.Connection[Any]) -> None:
        grant_exposed_columns(conn, self.topology, self.service)

    def _run_file(self, conn: psycopg.Connection[Any], file: MigrationFile) -> None:
        """Run *file*'s statements, then judge it by the catalog it leaves
        (:mod:`.guard`) before anything commits."""
        before = self._run_statements(conn, file, self.guard.snapshot(conn))
        self._grant_exposure(conn)
        # Deferred triggers and constraints would fire at COMMIT, after the last look:
        # fire them now, while the guard can still see what they did (and roll it back).
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        self._judge(file, before, self.guard.snapshot(conn))

    def _judge(self, file: MigrationFile, before: Facts, after: Facts,
               stmt: SqlStatement | None = None) -> None:
        problems = self.guard.problems(
            before, after,
            allow_reader_policy=read_markers(str(file.path), file.text).allow_reader_policy
            is not None)
        if not problems:
            return
        where = f" (statement at line {stmt.line})" if stmt is not None else ""
        rolled_back = file.transactional or stmt is not None
        raise MigrationError(
            f"{self.service.name}: {file.script}{where} "
            + "; ".join(problems[:8])
            + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
            + f". The topology does not declare that: only {self.service.runtime_role} "
            f"may use {self.service.schema}, and the services whose 'reads' name "
            f"{self.service.name} may read its exposed columns, which must stay as they "
            "are. "
            + (("The file was rolled back; the history is unchanged." if file.transactional
                else "That statement was rolled back; the statements before it stay "
                "applied.")
               + " Declare access in the topology (exposes, reads) instead, and change "
               "exposed columns by expand/contract (docs/migrations.md)."
               if rolled_back else
               "This file runs without a transaction, so the change stays: undo it (or "
               "run 'edulink-db provision', which removes undeclared grants).")
        )

    # -- applying ---------------------------------------------------------------
    def _apply_transactional(self, conn: psycopg.Connection[Any], file: MigrationFile) -> str:
        attempt = 1
        while True:
            self._wait_for_lock(conn, session=False)
            try:
                with conn.transaction():
                    if not self._try_lock(conn, session=False):
                        raise _LostRace
                    self._apply_settings(conn, local=True)
                    self._ensure_history(conn)
                    rank, state, _dirty = self._state_under_lock(conn, file)
                    if state == "applied":
                        return "skipped"
                    started = time.perf_counter()
                    self._run_file(conn, file)
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
        with connect(self.login, purpose="run a non-transactional migration", primary=True) as conn:
            self._wait_for_lock(conn, session=True)
            self._apply_settings(conn, local=False)
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
            self._run_file(conn, file)
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
                + "\n  ".join(status.problems) + switch_hint([status]))
        if dry_run or not status.pending:
            return report
        for file in status.pending:
            file.parsed  # noqa: B018 - every pending file's SQL is checked before any runs
        started = time.perf_counter()
        self._history_ready = status.history_exists
        with connect(self.login, purpose=f"migrate {self.service.name}", primary=True) as conn:
            for file in status.pending:
                self.progress(f"{self.service.name}: applying {file.script}")
                try:
                    outcome = (self._apply_transactional(conn, file) if file.transactional
                               else self._apply_non_transactional(file))
                except psycopg.Error as exc:
                    # Outside the file's own statements (history, locks): still a clear
                    # error, never a raw driver traceback.
                    raise MigrationError(
                        f"{self.service.name}: {file.script} could not be recorded: "
                        f"{exc.diag.message_primary or str(exc).strip()}. The file was "
                        "rolled back if it ran in a transaction; run 'edulink-db verify' "
                        "to check the service's roles."
                    ) from None
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
        with connect(self.login, purpose="repair migration history", primary=True) as conn:
            self._wait_for_lock(conn, session=True)
            with conn.transaction():
                self._repair_locked(conn, status, by_script, done)
        return done

    def _repair_locked(self, conn: psycopg.Connection[Any], status: ServiceStatus,
                       by_script: dict[str, MigrationFile], done: list[str]) -> None:
        conn.execute("SELECT pg_catalog.set_config('role', %s, true)",
                     [self.service.owner_role])
        for mismatch in status.mismatches:
            # By version, as compute_status matched them: a replacing file may have another
            # name than the one applied (V1__init.sql for V1__profiles_....sql).
            file = by_script[mismatch["script"]]
            conn.execute(sql.SQL("UPDATE {} SET checksum = %s, script = %s, description = %s"
                                 " WHERE version = %s AND type = 'versioned' AND success"
                                 ).format(self.history),
                         [file.checksum, file.script, file.description, file.version_text])
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
        with connect(self.login, purpose="baseline migrations", primary=True) as conn:
            self._wait_for_lock(conn, session=True)
            with conn.transaction():
                self._baseline_locked(conn, parsed, description)

    def _baseline_locked(self, conn: psycopg.Connection[Any], parsed: tuple[int, ...],
                         description: str) -> None:
        self._apply_settings(conn, local=True)
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
