"""Per-service schema migrations: history and lock per schema, safe under concurrent deploys.

    from microservices.shared.database.migrations import MigrationManager

    migration_manager = MigrationManager()
    migration_manager.run_service_migrations('user_service', './migrations/user')
    migration_manager.run_all_migrations('./migrations')      # one subfolder per service
    status = migration_manager.get_migration_status('user_service')

How a run works, per service (see :mod:`.files` for the files):

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
  and the others skip it.  The runner logs in as the service's **migrator
  role**, never as the admin: its only membership is the owner role, which it
  becomes at login, so no statement in a file can act with more than the
  owner's authority.  A statement that leaves the owner role (SET ROLE, RESET
  ROLE, SET SESSION AUTHORIZATION, set_config('role', ...), also inside DO
  blocks) or a file that grants its schema's objects to a role the topology
  does not name is refused and rolled back.  Statements run as the owner role with
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

from ..config import Settings, load_settings, pooler_mode, service_conninfo
from ..connections.direct import connect
from ..core.errors import (
    ConfigError,
    MigrationError,
    MigrationFileError,
    MigrationLockTimeout,
    MigrationValidationError,
)
from ..topology import Service, Topology
from .files import MigrationFile, SqlStatement, load_directory, parse_version

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


class _NeedsNoTransaction(Exception):
    """The statement refused to run inside a transaction block (and did nothing)."""


# After every statement: who we are, and which shared catalogs of roles this
# transaction has written (ALTER ROLE, COMMENT ON ROLE, GRANT role, ALTER ROLE SET:
# each takes RowExclusiveLock, held until the transaction ends).  Shared catalogs
# have database 0 in pg_locks; pg_shdepend is written by ordinary DDL (owners, ACLs).
_AFTER_STATEMENT = """
SELECT current_user, ARRAY(
  SELECT DISTINCT c.relname::text FROM pg_catalog.pg_locks l
    JOIN pg_catalog.pg_class c ON c.oid = l.relation
   WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation'
     AND l.database = 0 AND l.mode <> 'AccessShareLock' AND c.relisshared
     AND c.relname <> 'pg_shdepend'
   ORDER BY 1)
"""


# Explicit ACL entries in a service's schema (the schema, its relations, columns,
# functions and types), the owner's default privileges, and its large objects.
# Entries the topology allows are filtered out; whatever remains was granted to a
# role the topology does not name for this schema.
_FOREIGN_GRANTS = """
SELECT kind, object, CASE WHEN grantee = 0 THEN 'PUBLIC'
                          ELSE pg_catalog.pg_get_userbyid(grantee)::text END, privilege
FROM (
  SELECT 'schema' AS kind, n.nspname::text AS object, a.grantee, a.privilege_type AS privilege,
         NULL::text AS rel_col
    FROM pg_catalog.pg_namespace n, aclexplode(n.nspacl) a WHERE n.oid = %(ns)s::oid
  UNION ALL
  SELECT CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END, c.oid::regclass::text,
         a.grantee, a.privilege_type, NULL
    FROM pg_catalog.pg_class c, aclexplode(c.relacl) a WHERE c.relnamespace = %(ns)s::oid
  UNION ALL
  SELECT 'column', c.oid::regclass::text || '.' || pg_catalog.quote_ident(att.attname),
         a.grantee, a.privilege_type, c.relname::text || '.' || att.attname::text
    FROM pg_catalog.pg_attribute att
    JOIN pg_catalog.pg_class c ON c.oid = att.attrelid, aclexplode(att.attacl) a
   WHERE c.relnamespace = %(ns)s::oid AND NOT att.attisdropped
  UNION ALL
  SELECT 'function', p.oid::regprocedure::text, a.grantee, a.privilege_type, NULL
    FROM pg_catalog.pg_proc p, aclexplode(p.proacl) a WHERE p.pronamespace = %(ns)s::oid
  UNION ALL
  SELECT 'type', t.oid::regtype::text, a.grantee, a.privilege_type, NULL
    FROM pg_catalog.pg_type t, aclexplode(t.typacl) a WHERE t.typnamespace = %(ns)s::oid
  UNION ALL
  SELECT 'default privileges on ' || d.defaclobjtype::text, coalesce(dn.nspname::text, '*'),
         a.grantee, a.privilege_type, NULL
    FROM pg_catalog.pg_default_acl d
    LEFT JOIN pg_catalog.pg_namespace dn ON dn.oid = d.defaclnamespace,
         aclexplode(d.defaclacl) a
   WHERE d.defaclrole = %(owner)s::oid
  UNION ALL
  SELECT 'large object', l.oid::text, a.grantee, a.privilege_type, NULL
    FROM pg_catalog.pg_largeobject_metadata l, aclexplode(l.lomacl) a
   WHERE l.lomowner = %(owner)s::oid
) acl
WHERE NOT (grantee <> 0 AND pg_catalog.pg_get_userbyid(grantee) = ANY(%(own)s))
  -- PostgreSQL's own default for types.  Not for routines: provisioning revokes
  -- PUBLIC's EXECUTE (provisioning.routine_statements), and a file granting it back
  -- would let readers of exposed tables run this service's code.
  AND NOT (grantee = 0 AND kind IN ('type', 'default privileges on T')
           AND privilege = 'USAGE')
  -- The topology's cross-service reads: USAGE on the schema when the service exposes
  -- something, and SELECT on exactly the exposed columns.  Never a table-level SELECT
  -- or a default privilege: those would cover columns nobody exposed.
  AND NOT (grantee <> 0 AND pg_catalog.pg_get_userbyid(grantee) = ANY(%(readers)s)
           AND ((kind = 'schema' AND privilege = 'USAGE' AND %(exposes)s)
                OR (kind = 'column' AND privilege = 'SELECT'
                    AND rel_col = ANY(%(exposed)s::text[]))))
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


class SchemaMigrator:
    """Applies one service's migrations (the runtime context, in Alembic's terms).

    *login* are the connection parameters of the service's migrator role
    (:func:`~.config.service_conninfo` with ``kind='migrator'``), never the admin's.
    """

    def __init__(self, login: dict[str, Any], topology: Topology, service: Service,
                 files: list[MigrationFile], settings: Settings,
                 progress: Progress = _quiet) -> None:
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

    def _failure(self, file: MigrationFile, stmt: SqlStatement, line: int,
                 reason: str) -> MigrationError:
        first, first_line = _first_code_line(stmt.text, stmt.line)
        return MigrationError(
            f"{self.service.name}: {file.script} failed at line {line}: {reason}\n"
            f"  statement (line {first_line}): {first}\n"
            + ("  The file was rolled back; the history is unchanged. Fix it and run "
               "migrate again." if file.transactional else
               "  This file runs without a transaction: statements before this one "
               "stay applied. Fix the cause and run migrate again (the file runs "
               "again, so keep its statements idempotent).")
        )

    def _run_statements(self, conn: psycopg.Connection[Any], file: MigrationFile) -> None:
        for stmt in file.statements:
            if file.transactional:
                self._run_statement(conn, file, stmt, in_own_transaction=False)
                continue
            # Statement by statement, yet each in a transaction of its own wherever
            # PostgreSQL allows one, so that the checks after it can still roll it back.
            try:
                with conn.transaction():
                    self._run_statement(conn, file, stmt, in_own_transaction=True)
            except _NeedsNoTransaction:
                self._run_statement(conn, file, stmt, in_own_transaction=False)

    def _run_statement(self, conn: psycopg.Connection[Any], file: MigrationFile,
                       stmt: SqlStatement, *, in_own_transaction: bool) -> None:
        try:
            conn.execute(stmt.text)  # runs with the owner role's authority, no more
            row = conn.execute(_AFTER_STATEMENT).fetchone()
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
            detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
            reason = f"{exc.diag.message_primary or str(exc).strip()}{detail}"
            if exc.diag.sqlstate == "42501":
                reason += (f". Migrations of {self.service.name} run as "
                           f"{self.service.owner_role}, which may change only "
                           f"{self.service.schema}")
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

    def _foreign_grants(self, conn: psycopg.Connection[Any]) -> set[tuple[str, str, str, str]]:
        """ACL entries in the service's schema for roles the topology does not name."""
        own = [self.service.owner_role, self.service.runtime_role]
        readers = [s.runtime_role for s in self.topology.readers_of(self.service)]
        rows = conn.execute(
            "SELECT n.oid, r.oid FROM pg_catalog.pg_namespace n, pg_catalog.pg_roles r"
            " WHERE n.nspname = %s AND r.rolname = %s",
            [self.service.schema, self.service.owner_role]).fetchone()
        if rows is None:
            return set()
        found = conn.execute(_FOREIGN_GRANTS, {
            "ns": rows[0], "owner": rows[1], "own": own, "readers": readers,
            "exposes": bool(self.service.exposes), "exposed": self._exposed_names()}).fetchall()
        return {(str(k), str(o), str(g), str(p)) for k, o, g, p in found}

    def _exposed_names(self) -> list[str]:
        # 'table.column'; names are validated identifiers, so the dot is unambiguous.
        return [f"{table}.{column}" for table, columns in self.service.exposes
                for column in columns]

    def _grant_exposure(self, conn: psycopg.Connection[Any]) -> None:
        """Grant the readers the exposed columns a file just created (or re-created).

        Provisioning runs before the tables exist, and column grants never cover
        columns added later, so this step is what makes a new exposed column
        readable.  It runs as the owner role, which may GRANT on its own tables, and
        costs one catalog query when nothing is missing.
        """
        readers = [s.runtime_role for s in self.topology.readers_of(self.service)]
        if not readers or not self.service.exposes:
            return
        missing = conn.execute(_MISSING_EXPOSURE, {
            "schema": self.service.schema, "exposed": self._exposed_names(),
            "readers": readers}).fetchall()
        by_table: dict[str, list[str]] = {}
        for table, column in missing:
            by_table.setdefault(table, []).append(column)
        for table, columns in by_table.items():
            conn.execute(sql.SQL("GRANT SELECT ({}) ON TABLE {} TO {}").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.Identifier(self.service.schema, table),
                sql.SQL(", ").join(map(sql.Identifier, readers))))

    def _run_file(self, conn: psycopg.Connection[Any], file: MigrationFile) -> None:
        """Run *file*'s statements; refuse it if it granted access the topology does
        not declare (to another service, to PUBLIC, to an unrelated role)."""
        before = self._foreign_grants(conn)
        self._run_statements(conn, file)
        self._grant_exposure(conn)
        added = sorted(self._foreign_grants(conn) - before)
        if added:
            grants = "; ".join(f"{priv} on {kind} {obj} to {grantee}"
                               for kind, obj, grantee, priv in added)
            raise MigrationError(
                f"{self.service.name}: {file.script} grants {grants}, which the topology "
                f"does not declare: only {self.service.runtime_role} (and, read-only, the "
                f"services whose 'reads' name {self.service.name}) may access "
                f"{self.service.schema}. "
                + ("The file was rolled back; the history is unchanged. Declare the access "
                   "in the topology (reads) instead." if file.transactional else
                   "This file runs without a transaction, so the grant stays: revoke it "
                   "(or run 'edulink-db provision', which removes undeclared grants).")
            )

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
        with connect(self.login, purpose="run a non-transactional migration") as conn:
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
                + "\n  ".join(status.problems) + _switch_hint([status]))
        if dry_run or not status.pending:
            return report
        for file in status.pending:
            file.parsed  # noqa: B018 - every pending file's SQL is checked before any runs
        started = time.perf_counter()
        self._history_ready = status.history_exists
        with connect(self.login, purpose=f"migrate {self.service.name}") as conn:
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
        with connect(self.login, purpose="repair migration history") as conn:
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
        with connect(self.login, purpose="baseline migrations") as conn:
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
        if self._root is None:
            from .scaffold import default_migrations_root  # EDULINK_DB_MIGRATIONS, ./migrations

            self._root = default_migrations_root(self.settings)
        return self._root

    def _topology(self) -> Topology:
        return self.settings.topology()

    def _login(self, service: Service) -> dict[str, Any]:
        """The migrator role's connection parameters: migrations never log in as the
        admin, so no migration file can use the admin's authority."""
        login = service_conninfo(service, self.settings, kind="migrator")
        if pooler_mode(self.settings, login) == "transaction":
            raise MigrationError(
                "Migrations need a direct (or session-mode) connection, but DATABASE_URL "
                "points at a transaction pooler (port 6543 or DATABASE_POOLER=transaction): "
                "its connections change between transactions, which breaks session locks "
                "and CREATE INDEX CONCURRENTLY. Use the direct connection string "
                "(Supabase: port 5432, db.<project>.supabase.co)."
            )
        return login

    def _dir_for(self, service: Service, directory: str | Path | None) -> Path:
        if directory is not None:
            path = Path(directory)
            if not path.exists():  # a typo must not read as "no migrations"
                raise _missing_dir(service, path)
            self._service_dirs[service.name] = path
            return path
        if service.name in self._service_dirs:
            return self._service_dirs[service.name]
        if not self.root.exists():  # e.g. a mistyped EDULINK_DB_MIGRATIONS
            raise _missing_dir(None, self.root)
        for name in (service.name, f"{service.name}_service"):
            if (self.root / name).is_dir():
                return self.root / name
        return self.root / service.name

    def _check_root(self, root: Path, topology: Topology) -> None:
        if not root.exists():
            raise _missing_dir(None, root)
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
        """Status of several services; each history is read as its service's migrator
        (the history is the owner role's alone), in two queries per service."""
        topology = self._topology()
        if directory is not None:
            self._root = Path(directory)
            self._check_root(self._root, topology)
        chosen = [topology.service(s) for s in services] if services else list(
            topology.services)
        dirs = {s.name: self._dir_for(s, None) for s in chosen}
        files = {s.name: load_directory(dirs[s.name]) for s in chosen}
        return [self._status_for(s, files[s.name], dirs[s.name]) for s in chosen]

    def _status_for(self, service: Service, files: list[MigrationFile],
                    directory: Path) -> ServiceStatus:
        with connect(self._login(service),
                     purpose=f"read the migration history of {service.name}") as conn:
            exists, rows = read_histories(conn, [service])[service.schema]
        if not directory.exists() and any(r.kind == "versioned" and r.success for r in rows):
            # Not "every applied file is gone": the folder itself is missing.
            raise _missing_dir(service, directory)
        return compute_status(service, files, rows, exists)

    def _status_one(self, service: Service, directory: str | Path | None) -> ServiceStatus:
        path = self._dir_for(service, directory)
        return self._status_for(service, load_directory(path), path)

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
        migrator = SchemaMigrator(self._login(svc), topology, svc, status.files,
                                  self.settings, self.progress)
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
                + "\n  ".join(problems) + _switch_hint(statuses))
        _check_contracts(topology, statuses, strict)
        results: dict[str, dict[str, Any]] = {}
        for st in statuses:
            svc = topology.service(st.service)
            migrator = SchemaMigrator(self._login(svc), topology, svc, st.files, self.settings,
                                      self.progress)
            results[svc.name] = migrator.migrate(st, dry_run=dry_run).as_dict()
        return results

    def validate(self, services: Iterable[str] | None = None,
                 directory: str | Path | None = None) -> list[ServiceStatus]:
        """Raise MigrationValidationError listing every disagreement; else the statuses."""
        statuses = self.statuses(services, directory)
        problems = [f"{st.service}: {p}" for st in statuses for p in st.problems]
        if problems:
            raise MigrationValidationError("\n".join(problems) + _switch_hint(statuses))
        return statuses

    def repair(self, services: Iterable[str] | None = None,
               directory: str | Path | None = None) -> dict[str, list[str]]:
        topology = self._topology()
        return {
            st.service: SchemaMigrator(self._login(topology.service(st.service)), topology,
                                       topology.service(st.service), st.files,
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
        SchemaMigrator(self._login(svc), topology, svc, [], self.settings,
                       self.progress).baseline(version)


def _missing_dir(service: Service | None, path: Path) -> MigrationFileError:
    where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    whose = f"{service.name}: migrations" if service else "Migrations"
    return MigrationFileError(
        f"{whose} directory {path}{where} does not exist. 'edulink-db init' in the project "
        "directory creates migrations/<service>/ for every service, holding the reference "
        "migrations that 'edulink-db up' applies (it never overwrites); or give the folder "
        "that holds the V<version>__<description>.sql files.")


def _switch_hint(statuses: list[ServiceStatus]) -> str:
    """How to get out of the commonest disagreement: a database migrated from one set of
    files (e.g. the reference schema 'up' applies) now pointed at another."""
    if not any(st.missing or st.mismatches for st in statuses):
        return ""
    return (
        "\nIf these files are meant to replace the ones applied (e.g. the reference schema "
        "'edulink-db up' applied before you pointed it at your own migrations):\n"
        "  - to build on what is applied: 'edulink-db init' copies the reference files into "
        "./migrations (never overwriting); keep them and add yours as newer versions;\n"
        "  - if the schema already holds what your files create: 'edulink-db migrations "
        "repair' records your files as they are (it runs nothing; a removed file is marked "
        "deleted), then 'edulink-db migrate' runs only newer versions;\n"
        "  - for a schema edulink-db never migrated, 'edulink-db migrations baseline SERVICE "
        "--version V' counts your files up to V as applied.\n"
        "See README.md, 'Your own migrations'.")


def _check_contracts(topology: Topology, statuses: list[ServiceStatus], strict: bool) -> None:
    """Service contracts (issue 12): refuse before anything runs if a pending file
    breaks what another service reads (or, with *strict*, has lint warnings)."""
    from .lint import check_pending

    check_pending(topology, [(topology.service(st.service), f)
                             for st in statuses for f in st.pending], strict=strict)
