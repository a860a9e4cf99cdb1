"""Backups and restores with pg_dump / pg_restore, verified by a manifest.

    from microservices.shared.database.backup import (
        create_full_backup, create_schema_backup, restore_backup, get_backup_status)

    backup = create_full_backup(compress=True)          # backup.backup_id == 'full_20240115_143022'
    schema_backup = create_schema_backup(['user_schema', 'auth_schema'])
    success = restore_backup(backup.backup_id)          # True, or False (reason logged)
    status = get_backup_status()                        # total_backups, newest verified age, ...

**Consistent manifests.** A REPEATABLE READ transaction exports its snapshot
(``pg_export_snapshot()``); pg_dump runs with ``--snapshot`` and, at the same
time, the same transaction counts every table's rows. Counts and dump see the
same data, even while writes go on.

**Restore is atomic.** The schemas being restored are dropped and recreated in one
``psql --single-transaction`` run, fed by pg_restore. Before anything else, the
files' checksums and pg_restore's archive listing are checked, so a damaged backup
is refused untouched. Unless told otherwise, the schemas about to be replaced are
first saved in a ``prerestore_*`` backup, so a mistaken restore can be undone.

**Backup sets.** A full backup covers the topology's schemas, the project's own
metadata (``edulink_db_meta``) and large objects; never a hosting platform's schemas
(core/platform.py) unless named with ``include_schemas``. Full and schema backups
follow moves (``edulink-db move-service``): the schemas on the home server go into
one backup as before; each moved service's schema is dumped from where the location
registry says it lives now, with a snapshot of its own, into a *part*: a sibling
backup ``<set id>.<service>`` whose manifest has ``set_id`` and ``source``. The set's
home manifest lists every schema in ``set_schemas`` (its source location and the
backup holding it). Restores follow the registry too: a moved schema is restored
where it lives now.

**Clean targets.** A backup carries ``preamble.sql``: the topology's roles,
schemas, grants, default privileges and helpers, as in ``edulink-db sql``. It is
applied first when the target database lacks them, so a schema backup restores
into an empty database, or onto another server.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.conninfo import conninfo_to_dict

from ..config import Settings, admin_conninfo, apply_tls, load_settings, mask_dsn
from ..connections.direct import connect, want_primary
from ..connections.location import META_SCHEMA, location_string
from ..core.errors import BackupError, BackupNotFoundError, ConfigError, EdulinkDBError
from ..core.identifiers import validate_identifier
from ..core.platform import is_platform_schema
from ..core.tls import explain
from ..privileges.provisioning import render_postgresql_script
from ..server.pg_tools import find_tool, libpq_env, needs_tls, tool_version
from .placement import (
    Placement,
    location_admin,
    moves_in_progress,
    placements,
    read_placements,
)
from .restore import RestoreOutcomeUnknownError, count_check_sql, preamble_sql, run_restore
from .store import (
    BackupStore,
    FileEntry,
    Manifest,
    backup_key,
    file_entries,
    now_utc,
)

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
RESTORE_LOCK_TIMEOUT = "60s"
SET_KINDS = ("full", "schema")  # backups that follow moves (a prerestore saves one server)
# Settings newer pg_restore versions put in a script's header: (first major, name).
_VERSIONED_SETTINGS = [(17, "transaction_timeout")]


def _quiet(_msg: str) -> None:
    pass


def _psql_env(target: dict[str, Any]) -> dict[str, str]:
    """psql's environment: the target's credentials, and a restore that waits for locks
    only so long (it replaces whole schemas, so it needs them all)."""
    env = libpq_env(target)
    env["PGOPTIONS"] = f"-c lock_timeout={RESTORE_LOCK_TIMEOUT}"
    return env


@dataclass
class BackupInfo:
    """What create_*_backup returns (the seed reads ``backup_id``)."""

    backup_id: str
    kind: str
    schemas: list[str]
    path: Path
    size: int
    duration_s: float
    row_counts: dict[str, int] = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)  # the set's part backups (moved schemas)

    @classmethod
    def from_manifest(cls, manifest: Manifest, store: BackupStore) -> BackupInfo:
        return cls(backup_id=manifest.backup_id, kind=manifest.kind, schemas=manifest.schemas,
                   path=store.path(manifest.backup_id), size=manifest.size,
                   duration_s=manifest.duration_s, row_counts=manifest.row_counts)


@dataclass
class RestoreReport:
    backup_id: str
    schemas: list[str]
    target: str
    safety_backup: str | None
    preamble_applied: bool
    duration_s: float
    # One entry per archive and server the restore used: {backup_id, schemas, target}.
    parts: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# Entry types of a pg_restore listing that are more than one word, longest first.
# pg_dump's own names (pg_dump.c, pg_backup_archiver.c); a name of one word needs no entry.
_TOC_TYPES = sorted([
    "TABLE DATA", "TABLE ATTACH", "INDEX ATTACH", "SEQUENCE SET", "SEQUENCE OWNED BY",
    "DEFAULT ACL", "FK CONSTRAINT", "CHECK CONSTRAINT", "ROW SECURITY",
    "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW", "FOREIGN TABLE", "EVENT TRIGGER",
    "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA", "SUBSCRIPTION TABLE",
    "LARGE OBJECT", "BLOB METADATA", "BLOB DATA", "STATISTICS DATA", "SHELL TYPE",
    "PROCEDURAL LANGUAGE", "ACCESS METHOD", "OPERATOR CLASS", "OPERATOR FAMILY",
    "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER",
    "TEXT SEARCH TEMPLATE", "USER MAPPING", "FOREIGN DATA WRAPPER", "FOREIGN SERVER",
    "DATABASE PROPERTIES", "SECURITY LABEL", "DEFAULT",
], key=len, reverse=True)


def toc_entry(line: str) -> tuple[str, str | None, str] | None:
    """(DESC, NAMESPACE or None, NAME) of a ``pg_restore --list`` line, None for comments.

    The documented form is ``dumpId; tableoid oid DESC NAMESPACE NAME OWNER``: DESC may
    be several words (matched against pg_dump's list, longest first), NAMESPACE is ``-``
    for none, NAME may hold spaces, OWNER (possibly empty) is the last field.
    """
    if line.startswith(";") or ";" not in line:
        return None
    head, _, rest = line.partition("; ")
    fields = rest.split(" ", 2)
    if not head.strip().isdigit() or len(fields) < 3:
        return None
    body = fields[2]
    kind = next((k for k in _TOC_TYPES if body.startswith(k + " ")), body.split(" ")[0])
    tail = body[len(kind) + 1:]
    namespace, _, named = tail.partition(" ")
    name = named.rsplit(" ", 1)[0] if " " in named else named
    return kind, None if namespace == "-" else namespace, name


def _toc_schema(line: str) -> str | None:
    """The schema a pg_restore --list line belongs to (None for comments and globals).

    A schema's own entries have namespace ``-``: ``SCHEMA - auth_schema owner``,
    ``ACL - SCHEMA auth_schema owner``.
    """
    entry = toc_entry(line)
    if entry is None:
        return None
    kind, namespace, name = entry
    if namespace is not None:
        return namespace
    if kind == "SCHEMA":
        return name
    if kind in ("ACL", "COMMENT", "SECURITY LABEL") and name.startswith("SCHEMA "):
        return name[len("SCHEMA "):]
    return None


def _select_schemas(settings: Settings, present: list[str], schemas: list[str] | None,
                    exclude: list[str], include: list[str]) -> tuple[list[str], list[str]]:
    """(schemas to dump, notes for the manifest).

    *schemas* None is a full backup: the topology's schemas that are present and the
    project's metadata schema, then *include* (any schema, a platform one too). A
    platform schema never gets in by default: it is the platform's to back up, and its
    dump does not restore outside the platform. *exclude*: schemas this set dumps
    from where they moved (their home copies are empty). A schema backup whose every
    schema moved keeps the registry (edulink_db_meta) in its home part."""
    if schemas is None:
        wanted = [s for s in settings.topology().schemas if s in present]
        if META_SCHEMA in present:
            wanted.append(META_SCHEMA)
        wanted += [s for s in include if s not in wanted]
    else:
        wanted = list(schemas)
    chosen = [s for s in wanted if s not in exclude]
    if not chosen and exclude and META_SCHEMA in present:
        chosen = [META_SCHEMA]
    if not chosen:
        raise ConfigError("Nothing to back up: the database has none of the topology's "
                          "schemas. Provision it ('edulink-db provision') or name schemas "
                          "with 'backup schema'.")
    notes = [f"{s}: a platform schema, included because it was asked for"
             for s in chosen if is_platform_schema(s)]
    return chosen, notes


def target_params(target_db: str | None, settings: Settings) -> dict[str, Any]:
    if not target_db:
        return admin_conninfo(settings)
    try:
        params = dict(conninfo_to_dict(target_db))
    except Exception:
        raise ConfigError("--target-db is not a valid connection string.") from None
    return apply_tls(params, settings)


def _require_rls_bypass(conn: psycopg.Connection[Any], schemas: list[str], action: str, *,
                        archive_has_rls: bool = False) -> None:
    """Refuse, before anything happens, a dump or restore that row-level security would
    break: pg_dump and pg_restore turn row_security off and fail on tables whose policies
    apply to them. (``--enable-row-security`` would instead dump only the rows the admin
    may see: a silently incomplete backup.)"""
    row = conn.execute("SELECT current_user, rolsuper OR rolbypassrls FROM pg_catalog.pg_roles"
                       " WHERE rolname = current_user").fetchone()
    assert row is not None
    user, bypass = row
    if bypass:
        return
    tables = [r[0] for r in conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY(%s) AND c.relrowsecurity"
        " AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(c.relowner, 'USAGE'))"
        " ORDER BY 1", [schemas]).fetchall()]
    if tables or archive_has_rls:
        what = ", ".join(tables) if tables else "tables with row-level security in the backup"
        raise BackupError(
            f"{action} {', '.join(schemas)} needs an admin that bypasses row-level security, "
            f"and {user} does not: {what}. A superuser can run ALTER ROLE {user} BYPASSRLS "
            "(Supabase's postgres has it), or use such a role for backups. Nothing was done.")


class BackupManager:
    """Creates, verifies, restores and prunes backups in the backup directory
    (``EDULINK_DB_BACKUP_DIR``, default ``<edulink-db home>/backups``)."""

    def __init__(self, settings: Settings | None = None, progress: Progress = _quiet) -> None:
        self._settings = settings
        self.progress = progress
        # Tables of contents by backup id. A listing cannot go stale: backups never
        # change, and check_files (checksums) runs before every use of one.
        self._listings: dict[str, list[str]] = {}

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def store(self) -> BackupStore:
        """The backup folder, with the signing key (generated on first use)."""
        root = self.settings.edulink_db_backup_dir or (self.settings.home / "backups")
        return BackupStore(Path(root).expanduser().resolve(),
                           key=backup_key(self.settings, create=True))

    # -- creating ---------------------------------------------------------------
    def create_full_backup(self, compress: bool = True, *, fmt: str = "custom",
                           jobs: int = 1, include_schemas: list[str] | None = None
                           ) -> BackupInfo:
        """The topology's schemas, wherever each lives now (moved ones in parts of the
        set), the project's metadata (edulink_db_meta, when present) and large objects.
        A platform's schemas (core/platform.py) only when named in *include_schemas*,
        which adds any schema of the home database (noted in the manifest)."""
        include = list(dict.fromkeys(include_schemas or []))
        for schema in include:
            validate_identifier(schema, "schema to include")
        return self._backup("full", None, compress=compress, fmt=fmt, jobs=jobs,
                            include=include)

    def create_schema_backup(self, schemas: list[str], compress: bool = True, *,
                             fmt: str = "custom", jobs: int = 1) -> BackupInfo:
        """The named schemas (e.g. ``['user_schema', 'auth_schema']``)."""
        if not schemas:
            raise ConfigError("Name at least one schema to back up.")
        for schema in schemas:
            validate_identifier(schema, "schema to back up")
        return self._backup("schema", list(dict.fromkeys(schemas)), compress=compress,
                            fmt=fmt, jobs=jobs)

    def _backup(self, kind: str, schemas: list[str] | None, *, compress: bool, fmt: str,
                jobs: int, admin: dict[str, Any] | None = None,
                include: list[str] | None = None) -> BackupInfo:
        """Take a backup (a set, for full and schema backups: see the module's doc).

        Every moved schema's location credential is looked up before anything is
        dumped, so a missing one fails the whole set at once, in one line. A failed
        part or home dump leaves no part of the set behind."""
        if fmt not in ("custom", "directory"):
            raise ConfigError(f"Unknown backup format {fmt!r}; use 'custom' or 'directory'.")
        if jobs < 1 or (jobs > 1 and fmt != "directory"):
            raise ConfigError("Parallel jobs (--jobs > 1) need the directory format "
                              "(--format directory): only it dumps in parallel.")
        # Several hosts in DATABASE_URL (failover): dump the primary, which has every
        # commit, not whichever host answers first (a standby may lag, and pg_dump there
        # can be cancelled by recovery conflicts).  pg_dump gets the same parameters.
        admin = want_primary(admin or admin_conninfo(self.settings))
        moved: dict[str, tuple[Placement, dict[str, Any]]] = {}
        if kind in SET_KINDS:
            placed = placements(self.settings, admin)
            wanted = schemas if schemas is not None else list(placed)
            moved = {s: (placed[s], want_primary(location_admin(self.settings, placed[s])))
                     for s in wanted if s in placed and placed[s].location is not None}
        store = self.store
        backup_id = store.new_id(kind)
        work = store.start(backup_id)  # reserves the set's id (and its parts' ids)
        done: list[Manifest] = []
        try:
            for schema, (placement, params) in moved.items():
                part_id = f"{backup_id}.{placement.service}"
                self.progress(f"{schema} lives on {placement.location}: dumping it there "
                              f"into {part_id}")
                part = self._timed_dump(params, part_id, kind, [schema], compress=compress,
                                        fmt=fmt, jobs=jobs, part=True)
                part.set_id = backup_id
                store.save(part)
                done.append(part)
            started, t0 = now_utc(), time.perf_counter()
            manifest = self._dump(admin, backup_id, kind, schemas, work, compress=compress,
                                  fmt=fmt, jobs=jobs, exclude=list(moved),
                                  include=include or [])
            manifest.started_at = started.isoformat()
            manifest.finished_at = now_utc().isoformat()
            manifest.duration_s = round(time.perf_counter() - t0, 3)
            if kind in SET_KINDS:
                manifest.set_schemas = {
                    s: {"source": m.source, "backup_id": m.backup_id}
                    for m in [manifest, *done] for s in m.schemas}
            store.complete(work, manifest)
        except BaseException as exc:
            for part in done:
                store.delete(part.backup_id)
            store.abandon(work, kind, str(exc))
            raise
        self.progress(f"backup {backup_id}: {manifest.size / 1e6:.1f} MB, "
                      f"{sum(manifest.row_counts.values())} rows, {manifest.duration_s:.1f}s")
        mode = self.settings.edulink_db_backup_verify
        if mode != "none":
            for part in done:
                self.verify(part.backup_id, deep=mode == "deep")
            self.verify(backup_id, deep=mode == "deep")
        info = BackupInfo.from_manifest(manifest, store)
        for part in done:
            info.schemas += part.schemas
            info.row_counts.update(part.row_counts)
            info.size += part.size
            info.parts.append(part.backup_id)
        return info

    def _timed_dump(self, admin: dict[str, Any], backup_id: str, kind: str,
                    schemas: list[str], **kw: Any) -> Manifest:
        """One complete backup of *schemas* from *admin*'s server (a part of a set)."""
        store = self.store
        work = store.start(backup_id)
        started, t0 = now_utc(), time.perf_counter()
        try:
            manifest = self._dump(admin, backup_id, kind, schemas, work, **kw)
            manifest.started_at = started.isoformat()
            manifest.finished_at = now_utc().isoformat()
            manifest.duration_s = round(time.perf_counter() - t0, 3)
            store.complete(work, manifest)
        except BaseException as exc:
            store.abandon(work, kind, str(exc))
            raise
        return manifest

    def _dump(self, admin: dict[str, Any], backup_id: str, kind: str,
              schemas: list[str] | None, work: Path, *, compress: bool, fmt: str,
              jobs: int, exclude: list[str] | None = None,
              include: list[str] | None = None, part: bool = False) -> Manifest:
        """Dump *schemas* of *admin*'s database (None: a full backup's selection, plus
        *include*), minus *exclude* (schemas a set takes from where they moved). A full
        backup takes the database's large objects too, except in a *part* (a moved
        schema's server): large objects are the home database's, and logical
        replication, hence a move, does not carry them."""
        with connect(admin, purpose="back up", autocommit=False) as snap:
            snap.isolation_level = IsolationLevel.REPEATABLE_READ
            snap.read_only = True
            snapshot = snap.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
            present = [r[0] for r in snap.execute(
                "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname <> ALL(%s)"
                " AND nspname NOT LIKE 'pg\\_%%' ORDER BY 1", [list(SYSTEM_SCHEMAS)]).fetchall()]
            schemas, notes = _select_schemas(self.settings, present, schemas,
                                             exclude or [], include or [])
            missing = [s for s in schemas if s not in present]
            if missing:
                raise ConfigError(f"No schema {', '.join(missing)} in database "
                                  f"{admin.get('dbname')!r} (it has: {', '.join(present)}).")
            _require_rls_bypass(snap, schemas, "Backing up")
            server_major = snap.info.server_version // 10000
            pg_dump = find_tool("pg_dump", server_major, tls=needs_tls(admin))
            target = work / (f"{backup_id}.dump" if fmt == "custom" else f"{backup_id}.dir")
            args = [str(pg_dump), f"--snapshot={snapshot}", "--no-password",
                    f"--format={fmt}", f"--file={target}",
                    f"--compress={6 if compress else 0}"]
            if jobs > 1:
                args.append(f"--jobs={jobs}")
            # Always by name: a full backup is the project's schemas, not the platform's.
            # With --schema, pg_dump leaves large objects out unless asked (-b).
            args += [f"--schema={s}" for s in schemas]
            large_objects = kind == "full" and not part
            if large_objects:
                args.append("-b")  # --large-objects (--blobs before 16)
            self.progress(f"dumping {len(schemas)} schema(s) with {pg_dump.name} "
                          f"{tool_version(pg_dump)} ({fmt})")
            with tempfile.TemporaryFile("w+") as errors:
                proc = subprocess.Popen(args, env=libpq_env(admin), stdout=subprocess.DEVNULL,
                                        stderr=errors, stdin=subprocess.DEVNULL)
                try:
                    # Meanwhile, count rows in the very snapshot pg_dump reads.
                    row_counts = self._count_rows(snap, schemas)
                    matviews = self._matviews(snap, schemas)
                    sequences = self._sequences(snap, schemas)
                    blobs = (self._large_object_count(snap) if large_objects else None)
                finally:
                    code = proc.wait()
                if code != 0:
                    errors.seek(0)
                    raise BackupError(
                        f"pg_dump failed (exit {code}): {explain(errors.read().strip())}")
            # Reported by the server at connect: no query needed.
            server_version = snap.info.parameter_status("server_version") or ""
            snap.rollback()
        (work / "preamble.sql").write_text(render_postgresql_script(self.settings.topology()))
        self.progress("checksumming files")
        return Manifest(
            backup_id=backup_id, kind=kind, schemas=schemas,
            database=str(admin.get("dbname", "")), format=fmt,
            compression="gzip:6" if compress else "none", server_version=server_version,
            tool_version=str(tool_version(pg_dump)), started_at="", finished_at="",
            duration_s=0.0, files=file_entries(work), row_counts=row_counts, snapshot=snapshot,
            matviews=matviews, sequences=sequences, source=location_string(admin),
            large_objects=large_objects, large_object_count=blobs, notes=notes)

    @staticmethod
    def _count_rows(conn: psycopg.Connection[Any], schemas: list[str]) -> dict[str, int]:
        # Leaf by leaf: every table that holds rows itself (partitions at any depth,
        # default partitions, inheritance children, unlogged tables), each FROM ONLY.
        # A partitioned parent holds none (pg_dump writes its rows under the leaves),
        # and an inheritance parent's count(*) would include its children's rows.
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname = ANY(%s)"
            " ORDER BY 1, 2", [schemas]).fetchall()
        if not tables:
            return {}
        union = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT %s, count(*) FROM ONLY {}").format(sql.Identifier(s, t))
            for s, t in tables)
        rows = conn.execute(union, [f"{s}.{t}" for s, t in tables]).fetchall()
        return {name: int(n) for name, n in rows}

    @staticmethod
    def _matviews(conn: psycopg.Connection[Any], schemas: list[str]) -> dict[str, bool]:
        """Whether each materialized view of *schemas* is populated."""
        return {f"{s}.{n}": bool(p) for s, n, p in conn.execute(
            "SELECT n.nspname, c.relname, c.relispopulated FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'm' AND n.nspname = ANY(%s) ORDER BY 1, 2", [schemas])}

    @staticmethod
    def _sequences(conn: psycopg.Connection[Any], schemas: list[str]) -> dict[str, int]:
        """Each sequence's last value (None never called: left out). Sequences are not
        transactional: this is read while pg_dump runs, so the dumped value may only be
        higher (a nextval in between), never lower."""
        names = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'S' AND n.nspname = ANY(%s) ORDER BY 1, 2",
            [schemas]).fetchall()
        if not names:
            return {}
        union = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT %s, last_value, is_called FROM {}").format(sql.Identifier(s, n))
            for s, n in names)
        return {name: int(value) for name, value, called in
                conn.execute(union, [f"{s}.{n}" for s, n in names]).fetchall() if called}

    @staticmethod
    def _large_object_count(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT count(*) FROM pg_catalog.pg_largeobject_metadata").fetchone()
        return int(row[0]) if row else 0

    def restored_problems(self, manifest: Manifest, conn: psycopg.Connection[Any]
                          ) -> tuple[list[str], dict[str, int]]:
        """What makes a restore of *manifest* on *conn* differ from the backup, one line
        per object (and the leaf counts found).  The one definition of "this backup
        restores as it was taken", used by deep verify and by drills (and so by
        ``backup auto``, which verifies what it takes)."""
        counts = self._count_rows(conn, manifest.schemas)
        problems = [f"table {t}: manifest {n} rows, restored {counts.get(t)}"
                    for t, n in sorted(manifest.row_counts.items()) if counts.get(t) != n]
        if manifest.matviews:
            found = self._matviews(conn, manifest.schemas)
            problems += [f"materialized view {v}: "
                         + ("populated at backup, not after the restore" if was else
                            "unpopulated at backup, populated after the restore")
                         for v, was in sorted(manifest.matviews.items()) if found.get(v) != was]
        if manifest.sequences:
            now = self._sequences(conn, manifest.schemas)
            problems += [f"sequence {q}: last value {v} at backup, "
                         + (f"{now[q]} after the restore" if q in now else
                            "never called after the restore")
                         for q, v in sorted(manifest.sequences.items())
                         if now.get(q, -2**63) < v]
        if manifest.large_object_count is not None:
            found_blobs = self._large_object_count(conn)
            if found_blobs != manifest.large_object_count:
                problems.append(f"large objects: {manifest.large_object_count} at backup, "
                                f"{found_blobs} after the restore")
        return problems, counts

    # -- verifying ------------------------------------------------------------------
    def _listing(self, manifest: Manifest) -> list[str]:
        """The archive's table of contents (``pg_restore --list``), read once per backup
        and manager: reading it proves the archive is readable, and restores, RLS checks
        and subset selection all work from it."""
        cached = self._listings.get(manifest.backup_id)
        if cached is not None:
            return cached
        directory = self.store.path(manifest.backup_id)
        pg_restore = find_tool("pg_restore", int(manifest.tool_version))
        result = subprocess.run([str(pg_restore), "--list", str(directory / manifest.archive)],
                                capture_output=True, text=True, check=False, timeout=600)
        if result.returncode != 0:
            raise BackupError(f"pg_restore cannot read {manifest.backup_id}: "
                              f"{result.stderr.strip()}")
        listing = self._listings[manifest.backup_id] = result.stdout.splitlines()
        return listing

    def _archive_tables(self, manifest: Manifest) -> set[str]:
        """The tables whose data the archive holds."""
        tables = set()
        for line in self._listing(manifest):
            entry = toc_entry(line)
            if entry is not None and entry[0] == "TABLE DATA" and entry[1] is not None:
                tables.add(f"{entry[1]}.{entry[2]}")
        return tables

    def verify(self, backup_id: str, deep: bool = False) -> dict[str, Any]:
        """Check files (size, SHA-256) and the archive listing; with *deep*, restore into
        a scratch database and compare every table's row count with the manifest."""
        store = self.store
        manifest = store.load(backup_id)
        try:
            self.progress(f"verifying {backup_id}: checksums")
            store.check_files(manifest)
            listed = self._archive_tables(manifest)
            missing = sorted(set(manifest.row_counts) - listed)
            if missing:
                raise BackupError(f"{backup_id}: the archive lacks data for "
                                  f"{', '.join(missing)}.")
            mismatches: list[str] = []
            if deep:
                mismatches = self._deep_verify(manifest)
            ok = not mismatches
        except BackupError:
            store.record_verification(manifest, deep=deep, ok=False)
            raise
        store.record_verification(manifest, deep=deep, ok=ok)
        if not ok:
            raise BackupError(f"{backup_id}: the restore differs from the backup: "
                              + "; ".join(mismatches))
        return {"backup_id": backup_id, "ok": True, "deep": deep,
                "tables": len(manifest.row_counts)}

    def _deep_verify(self, manifest: Manifest) -> list[str]:
        admin = admin_conninfo(self.settings)
        scratch = f"edulink_verify_{secrets.token_hex(4)}"
        self.progress(f"verifying {manifest.backup_id}: restoring into scratch database "
                      f"{scratch}")
        with connect(admin, purpose="create a scratch database") as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
        target = {**admin, "dbname": scratch}
        try:
            self._restore_into(manifest, target, manifest.schemas, fresh=True, scratch=True)
            with connect(target, purpose="count restored rows") as conn:
                return self.restored_problems(manifest, conn)[0]
        finally:
            with connect(admin, purpose="drop the scratch database") as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(scratch)))

    # -- restoring -----------------------------------------------------------------
    def restore(self, backup_id: str, *, schemas: list[str] | None = None,
                target_db: str | None = None, safety_backup: bool = True) -> RestoreReport:
        """Replace *schemas* with the backup's contents, atomically per server.

        Default *schemas*: every schema of the backup's set except the location
        registry (edulink_db_meta: restored only when named, for an old registry would
        send pools back to where services no longer live). Each schema goes where the
        registry on the home server says it lives now (a moved one: to its location,
        from whichever backup of the set holds it), or to *target_db* when given.
        Refused, in one line, while a chosen schema's service is being moved.
        Raises BackupError/BackupCorruptError/BackupNotFoundError/ConfigError."""
        started = time.perf_counter()
        manifest = self.store.load(backup_id)
        holders = ({s: h["backup_id"] for s, h in manifest.set_schemas.items()}
                   or dict.fromkeys(manifest.schemas, backup_id))
        chosen = list(dict.fromkeys(schemas or [s for s in holders if s != META_SCHEMA]
                                    or list(holders)))
        absent = [s for s in chosen if s not in holders]
        if absent:
            raise ConfigError(f"Backup {backup_id} does not contain {', '.join(absent)} "
                              f"(it has {', '.join(holders)}).")
        # (backup id, target params) -> schemas restored from that archive to that server
        routes: dict[tuple[str, str], tuple[dict[str, Any], list[str]]] = {}
        if target_db:
            where = {s: target_params(target_db, self.settings) for s in chosen}
        else:
            where = self._restore_destinations(chosen)
        for schema in chosen:
            params = where[schema]
            entry = routes.setdefault((holders[schema], mask_dsn(params)), (params, []))
            entry[1].append(schema)
        done: list[RestoreReport] = []
        for (holder, _shown), (params, part_schemas) in routes.items():
            part = manifest if holder == backup_id else self.store.load(holder)
            done.append(self._restore_one(part, part_schemas, params,
                                          safety_backup=safety_backup))
        first = done[0]
        return RestoreReport(
            backup_id=backup_id, schemas=chosen,
            target=", ".join(dict.fromkeys(r.target for r in done)),
            safety_backup=first.safety_backup,
            preamble_applied=any(r.preamble_applied for r in done),
            duration_s=round(time.perf_counter() - started, 3),
            parts=[{"backup_id": r.backup_id, "schemas": r.schemas, "target": r.target,
                    "safety_backup": r.safety_backup} for r in done])

    def _restore_destinations(self, schemas: list[str]) -> dict[str, dict[str, Any]]:
        """Where each of *schemas* lives now (admin parameters), from the home server's
        registry; refuses schemas whose service is being moved."""
        home = admin_conninfo(self.settings)
        with connect(home, purpose="read the location registry") as conn:
            placed = read_placements(conn, self.settings.topology(), home)
            moving = moves_in_progress(conn)
        busy = [f"{placed[s].service} ({s}) to {moving[placed[s].service]}"
                for s in schemas if s in placed and placed[s].service in moving]
        if busy:
            raise BackupError(
                f"Not restoring: a move is in progress for {', '.join(busy)}; finish it "
                "('edulink-db move-service SERVICE --resume') or undo it (--abort) first.")
        return {s: (want_primary(location_admin(self.settings, placed[s]))
                    if s in placed and placed[s].location is not None else home)
                for s in schemas}

    def _restore_one(self, manifest: Manifest, chosen: list[str], target: dict[str, Any],
                     *, safety_backup: bool) -> RestoreReport:
        """Restore *chosen* schemas of one archive (*manifest*) into *target*."""
        started = time.perf_counter()
        store = self.store
        backup_id = manifest.backup_id

        absent = [s for s in chosen if s not in manifest.schemas]
        if absent:
            raise ConfigError(f"Backup {backup_id} does not contain {', '.join(absent)} "
                              f"(it has {', '.join(manifest.schemas)}).")
        self.progress(f"checking {backup_id} before touching anything")
        store.check_files(manifest)
        self._archive_tables(manifest)
        if self._archive_has_rls(manifest, chosen):
            with connect(target, purpose="restore") as conn:
                _require_rls_bypass(conn, chosen, "Restoring", archive_has_rls=True)
        with connect(target, purpose="restore") as conn:
            existing = {r[0] for r in conn.execute(
                "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY(%s)",
                [chosen]).fetchall()}
            provisioned = conn.execute(
                "SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)",
                [self.settings.topology().owner_roles]).fetchone()
        safety: str | None = None
        replace = [s for s in chosen if s in existing]
        if safety_backup and replace:
            self.progress(f"saving {', '.join(replace)} before replacing them")
            safety = self._backup("prerestore", replace, compress=True, fmt="custom",
                                  jobs=1, admin=target).backup_id
        fresh = not provisioned or not provisioned[0] or not existing
        self._restore_into(manifest, target, chosen, fresh=fresh, replace=replace,
                           safety=safety)
        return RestoreReport(backup_id=backup_id, schemas=chosen, target=mask_dsn(target),
                             safety_backup=safety, preamble_applied=fresh,
                             duration_s=round(time.perf_counter() - started, 3))

    def _restore_into(self, manifest: Manifest, target: dict[str, Any], schemas: list[str],
                      *, fresh: bool, replace: list[str] | None = None,
                      scratch: bool = False, safety: str | None = None) -> None:
        """Restore *schemas* of *manifest* into *target* in one transaction that commits
        only after pg_restore exited 0 and every table holds the manifest's row count
        (see restore.py). *fresh*: apply the preamble first, in the same transaction.
        *scratch*: a throwaway database; cluster-wide role settings are left alone."""
        directory = self.store.path(manifest.backup_id)
        major = int(manifest.tool_version)
        opening = b""
        if fresh:
            self.progress("applying the backup's preamble (roles, schemas, grants)")
            opening += preamble_sql(directory / "preamble.sql", keep_role_settings=not scratch)
        drop = [s for s in (replace if replace is not None else schemas) if s != "public"]
        if "public" in (replace or []):
            # The public schema is never created by pg_dump's script (every database has
            # one): empty it by recreating it as a new database has it.
            opening += (b"DROP SCHEMA public CASCADE;\nCREATE SCHEMA public;\n"
                        b"ALTER SCHEMA public OWNER TO pg_database_owner;\n"
                        b"GRANT USAGE ON SCHEMA public TO PUBLIC;\n")
        if not scratch and self._archive_has_blobs(manifest):
            # Large objects belong to the database, not to a schema: a restore that holds
            # them replaces them all (pg_restore recreates each with its own OID).
            opening += (b"SELECT pg_catalog.lo_unlink(oid) FROM "
                        b"pg_catalog.pg_largeobject_metadata;\n")
        # The restore replaces whole schemas: objects created after the backup go too;
        # and pg_restore recreates the schemas the preamble created already if fresh.
        for schema in dict.fromkeys(drop + ([s for s in schemas if s != "public"]
                                            if fresh else [])):
            opening += sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE;\n").format(
                sql.Identifier(schema)).as_string(None).encode()
        # pg_restore writes a script (no connection); psql runs it over the connection,
        # which may need TLS (a psql other than the embedded wheel's).
        pg_restore = find_tool("pg_restore", major)
        psql = find_tool("psql", major, tls=needs_tls(target))
        # The schemas being restored were dropped above, so pg_restore's own --clean is
        # not needed, and it would break a schema holding a view that pg_dump split into
        # a placeholder and a _RETURN rule (the rule's "drop" is a CREATE OR REPLACE
        # VIEW in a schema that is gone).
        restore_args = [str(pg_restore), "--file=-", "--single-transaction"]
        toc: Path | None = None
        if set(schemas) != set(manifest.schemas):
            toc = self._toc_for(manifest, schemas)
            restore_args.append(f"--use-list={toc}")
        restore_args.append(str(directory / manifest.archive))
        self.progress(f"restoring {', '.join(schemas)} in one transaction")
        matviews = sorted(f"{e[1]}.{e[2]}" for line in self._listing(manifest)
                          if (e := toc_entry(line)) is not None
                          and e[0] == "MATERIALIZED VIEW DATA" and e[1] in schemas)
        if matviews:
            # pg_dump keeps a materialized view's query, not its rows.
            self.progress(f"materialized views are refreshed from the restored tables, not "
                          f"restored as they were: {', '.join(matviews)}")
        with connect(target, purpose="restore") as conn:
            target_major = conn.info.server_version // 10000
        # pg_restore 18 writing a script cannot know the server, and emits settings
        # (e.g. transaction_timeout, PostgreSQL 17+) that older servers reject.
        unknown = [name.encode() for since, name in _VERSIONED_SETTINGS if target_major < since]
        psql_args = [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                     "-f", "-"]
        try:
            run_restore(restore_args, psql_args, _psql_env(target), opening=opening,
                        check=count_check_sql(manifest.row_counts, schemas),
                        drop_settings=unknown)
        except RestoreOutcomeUnknownError:
            raise
        except BackupError as exc:
            undo = (f" The schemas as they were before are also saved in backup {safety}."
                    if safety else "")
            raise BackupError(
                f"Restore of {manifest.backup_id} failed and was rolled back; the database "
                f"is unchanged. {str(exc).rstrip('.')}.{undo}") from None
        finally:
            if toc is not None:
                toc.unlink(missing_ok=True)

    def _archive_has_blobs(self, manifest: Manifest) -> bool:
        return any((entry := toc_entry(line)) is not None
                   and entry[0] in ("BLOB", "BLOB METADATA", "LARGE OBJECT", "BLOBS")
                   for line in self._listing(manifest))

    def _archive_has_rls(self, manifest: Manifest, schemas: list[str]) -> bool:
        return any(" ROW SECURITY " in line and _toc_schema(line) in schemas
                   for line in self._listing(manifest))

    def _toc_for(self, manifest: Manifest, schemas: list[str]) -> Path:
        """A pg_restore list file with only *schemas*' entries.

        ``pg_restore --schema`` would restore the objects but not the schema itself or
        its ACL, so a subset is selected from the archive's table of contents instead.
        """
        kept = [line for line in self._listing(manifest) if _toc_schema(line) in schemas]
        with tempfile.NamedTemporaryFile("w", suffix=".toc", delete=False) as fh:
            fh.write("\n".join(kept) + "\n")
        return Path(fh.name)

    def sign(self, backup_id: str) -> Manifest:
        """Sign a backup the operator vouches for (one taken before backups were signed,
        or under another key). Its directory and files must still be real and ours, and
        match the checksums its manifest records."""
        store = self.store
        manifest = store.load(backup_id, signed=False)
        store.check_files(manifest)
        self._archive_tables(manifest)
        store.save(manifest)
        return manifest

    # -- retention and status ---------------------------------------------------------
    def prune(self, *, dry_run: bool = False) -> list[str]:
        """Delete backups beyond EDULINK_DB_BACKUP_KEEP_LAST (per kind) that are also
        older than EDULINK_DB_BACKUP_KEEP_DAYS; never the newest verified backup."""
        store = self.store
        every = store.backups()
        # A set's parts go with it: counted once, deleted together.
        backups = [m for m in every if not m.set_id]
        keep_last = self.settings.edulink_db_backup_keep_last
        cutoff = now_utc() - timedelta(days=self.settings.edulink_db_backup_keep_days)
        verified = [m for m in backups if m.verified.get("ok")]
        protected = {verified[-1].backup_id} if verified else set()
        by_kind: dict[str, list[Manifest]] = {}
        for m in backups:
            by_kind.setdefault(m.kind, []).append(m)
        doomed = []
        for items in by_kind.values():
            for m in items[:-keep_last]:
                if m.finished < cutoff and m.backup_id not in protected:
                    doomed.append(m.backup_id)
        sets = {m.backup_id for m in backups}
        doomed += [m.backup_id for m in every if m.set_id
                   and (m.set_id in doomed or (m.set_id not in sets and m.finished < cutoff))]
        if not dry_run:
            for backup_id in doomed:
                store.delete(backup_id)
                self._listings.pop(backup_id, None)
            store.clean_partials()
        return doomed

    def status(self) -> dict[str, Any]:
        store = self.store
        backups = store.backups()
        last: dict[str, dict[str, Any]] = {}
        for m in backups:
            last[m.kind] = {"backup_id": m.backup_id, "finished_at": m.finished_at,
                            "size": m.size}
        verified = [m for m in backups if m.verified.get("ok")]
        newest = verified[-1] if verified else None
        age = (now_utc() - newest.finished).total_seconds() if newest else None
        max_age = self.settings.edulink_db_backup_max_age_hours * 3600
        warnings = []
        if not backups:
            warnings.append("no backups yet: take the first with 'edulink-db backup auto' "
                            "(and run it from cron: see docs/backups.md)")
        elif newest is None:
            warnings.append(f"no verified backup: run 'edulink-db backups verify "
                            f"{backups[-1].backup_id}' (backups taken by 'edulink-db backup "
                            "auto' are verified as they are taken)")
        elif age is not None and age > max_age:
            warnings.append(f"the newest verified backup ({newest.backup_id}) is "
                            f"{age / 3600:.1f} h old (limit "
                            f"{self.settings.edulink_db_backup_max_age_hours:g} h)")
        coverage = self._coverage()
        warnings += [f.message for f in coverage or [] if f.overdue]
        return {
            "directory": str(store.root),
            "total_backups": len(backups),
            "total_size_bytes": sum(m.size for m in backups),
            "last_successful": last,
            "failures": store.failures()[-10:],
            "incomplete": [p.name for p in store.partials()],
            "newest_verified": newest.backup_id if newest else None,
            "newest_verified_age_seconds": round(age) if age is not None else None,
            "warnings": warnings,
            # Per schema: the newest verified backup that covers it where it lives now
            # (None when the database cannot be reached to say where that is).
            "coverage": None if coverage is None else {
                f.schema: {"newest": f.newest, "age_seconds": None if f.age_s is None
                           else round(f.age_s), "overdue": f.overdue,
                           "location": f.location, "message": f.message}
                for f in coverage},
        }

    def _coverage(self) -> list[Any] | None:
        """backup_freshness of the topology's schemas present at home; None when the
        home server cannot be asked (status still reports what the folder holds)."""
        from .schedule import backup_freshness, present_schemas

        try:
            return backup_freshness(self.settings, present_schemas(self.settings))
        except (psycopg.Error, EdulinkDBError, OSError):
            return None

    def list_backups(self) -> list[dict[str, Any]]:
        return [{"backup_id": m.backup_id, "kind": m.kind, "schemas": m.schemas,
                 "finished_at": m.finished_at, "size": m.size, "format": m.format,
                 "rows": sum(m.row_counts.values()), "verified": m.verified}
                for m in self.store.backups()]


backup_manager = BackupManager()


def create_full_backup(compress: bool = True) -> BackupInfo:
    return backup_manager.create_full_backup(compress=compress)


def create_schema_backup(schemas: list[str], compress: bool = True) -> BackupInfo:
    return backup_manager.create_schema_backup(schemas, compress=compress)


def restore_backup(backup_id: str, schemas: list[str] | None = None,
                   target_db: str | None = None) -> bool:
    """True when the restore succeeded; False otherwise, with the reason logged.
    (BackupManager.restore raises instead.)"""
    try:
        backup_manager.restore(backup_id, schemas=schemas, target_db=target_db)
        return True
    except (BackupError, ConfigError) as exc:
        log.error("restore of %s failed: %s", backup_id, exc)
        return False


def get_backup_status() -> dict[str, Any]:
    return backup_manager.status()


__all__ = [
    "BackupInfo",
    "BackupManager",
    "BackupNotFoundError",
    "FileEntry",
    "backup_manager",
    "create_full_backup",
    "create_schema_backup",
    "get_backup_status",
    "restore_backup",
]
