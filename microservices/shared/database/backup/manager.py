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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql

from ..config import Settings, admin_conninfo, host_label, load_settings, mask_dsn
from ..connections.direct import connect, want_primary
from ..connections.location import META_SCHEMA, location_string
from ..core.errors import (
    BackupError,
    BackupInterruptedError,
    BackupNotFoundError,
    ConfigError,
)
from ..core.identifiers import validate_identifier
from ..core.tls import explain
from ..privileges.provisioning import render_postgresql_script
from ..server.pg_tools import find_tool, libpq_env, needs_tls, tool_version
from .apply import RESTORE_LOCK_TIMEOUT, Progress, restore_into
from .archive import ArchiveListings, toc_entry
from .contents import (
    count_rows,
    large_object_count,
    matview_states,
    require_rls_bypass,
    restored_problems,
)
from .contents import sequence_values as read_sequences
from .placement import (
    Placement,
    location_admin,
    moves_in_progress,
    placements,
    read_placements,
)
from .retention import prune, status
from .selection import select_schemas, target_params
from .source import Source, backup_source, pinned
from .store import (
    BackupStore,
    FileEntry,
    Manifest,
    backup_key,
    file_entries,
    now_utc,
)

log = logging.getLogger(__name__)
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
SET_KINDS = ("full", "schema")  # backups that follow moves (a prerestore saves one server)
# Settings newer pg_restore versions put in a script's header: (first major, name).

# pg_dump's errors when its server went away or (on a standby) cancelled its reads;
# another run may well succeed.
_INTERRUPTED = ("server closed the connection unexpectedly",
                "terminating connection due to administrator command",
                "conflict with recovery", "connection to server", "could not receive data")


def _gone(conn: psycopg.Connection[Any]) -> bool:
    """Whether *conn*'s server went away (its session cannot run a query any more)."""
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return True
    return False


def _interrupted(admin: dict[str, Any], reason: str) -> BackupInterruptedError:
    return BackupInterruptedError(
        f"The backup was interrupted: {host_label(admin)} went away or cancelled it "
        f"({' '.join(reason.split())}). Nothing of it was kept. Run it again: 'backup "
        "auto' retries by itself for EDULINK_DB_BACKUP_RETRY_FOR seconds.")


def _quiet(_msg: str) -> None:
    pass






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



class BackupManager:
    """Creates, verifies, restores and prunes backups in the backup directory
    (``EDULINK_DB_BACKUP_DIR``, default ``<edulink-db home>/backups``)."""

    def __init__(self, settings: Settings | None = None, progress: Progress = _quiet) -> None:
        self._settings = settings
        self.progress = progress
        self._archives = ArchiveListings(lambda: self.store)

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
        # The home dump reads the server EDULINK_DB_BACKUP_FROM asks for (source.py):
        # by default the primary, which has every commit, not whichever host of a
        # multi-host URL answers first.  A prerestore backup (*admin* given) dumps the
        # restore's target.  The registry is always read on the primary.
        if admin is None:
            admin = admin_conninfo(self.settings)
            source = backup_source(self.settings, admin)
        else:
            source = Source(want_primary(admin), "")
        admin = want_primary(admin)
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
            manifest = self._dump(source.params, backup_id, kind, schemas, work,
                                  compress=compress, fmt=fmt, jobs=jobs,
                                  exclude=list(moved), include=include or [], home=admin)
            if source.note:
                manifest.notes.append(source.note)
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
              include: list[str] | None = None, part: bool = False,
              home: dict[str, Any] | None = None) -> Manifest:
        """Dump *schemas* of *admin*'s database (None: a full backup's selection, plus
        *include*), minus *exclude* (schemas a set takes from where they moved). A full
        backup takes the database's large objects too, except in a *part* (a moved
        schema's server): large objects are the home database's, and logical
        replication, hence a move, does not carry them.  The manifest's source is
        *home* (default *admin*): the server the schemas belong to, even when one of
        its replicas or its current Patroni leader was read.

        Raises BackupInterruptedError when the server went away meanwhile."""
        try:
            with connect(admin, purpose="back up", autocommit=False) as snap:
                return self._dump_from(snap, admin, backup_id, kind, schemas, work,
                                       compress=compress, fmt=fmt, jobs=jobs,
                                       exclude=exclude, include=include, part=part,
                                       home=home or admin)
        except psycopg.OperationalError as exc:
            raise _interrupted(admin, str(exc)) from None

    def _dump_from(self, snap: psycopg.Connection[Any], admin: dict[str, Any],
                   backup_id: str, kind: str, schemas: list[str] | None, work: Path, *,
                   compress: bool, fmt: str, jobs: int, exclude: list[str] | None,
                   include: list[str] | None, part: bool, home: dict[str, Any]
                   ) -> Manifest:
        snap.isolation_level = IsolationLevel.REPEATABLE_READ
        snap.read_only = True
        snapshot = snap.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        present = [r[0] for r in snap.execute(
            "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname <> ALL(%s)"
            " AND nspname NOT LIKE 'pg\\_%%' ORDER BY 1", [list(SYSTEM_SCHEMAS)]).fetchall()]
        schemas, notes = select_schemas(self.settings, present, schemas,
                                         exclude or [], include or [])
        missing = [s for s in schemas if s not in present]
        if missing:
            raise ConfigError(f"No schema {', '.join(missing)} in database "
                              f"{admin.get('dbname')!r} (it has: {', '.join(present)}).")
        require_rls_bypass(snap, schemas, "Backing up")
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
                      f"{tool_version(pg_dump)} ({fmt}) from {host_label(pinned(admin, snap))}")
        with tempfile.TemporaryFile("w+") as errors:
            # pg_dump imports *snap*'s snapshot, so it must reach the same server, not
            # whichever host of a multi-host URL leads by the time it connects.
            proc = subprocess.Popen(args, env=libpq_env(pinned(admin, snap)),
                                    stdout=subprocess.DEVNULL, stderr=errors,
                                    stdin=subprocess.DEVNULL)
            try:
                # Meanwhile, count rows in the very snapshot pg_dump reads.
                row_counts = count_rows(snap, schemas)
                matviews = matview_states(snap, schemas)
                sequences = read_sequences(snap, schemas)
                blobs = (large_object_count(snap) if large_objects else None)
            finally:
                code = proc.wait()
            if code != 0:
                errors.seek(0)
                reason = explain(errors.read().strip())
                if _gone(snap) or any(m in reason for m in _INTERRUPTED):
                    raise _interrupted(admin, reason)
                raise BackupError(f"pg_dump failed (exit {code}): {reason}")
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
            matviews=matviews, sequences=sequences, source=location_string(home),
            large_objects=large_objects, large_object_count=blobs, notes=notes)

    def restored_problems(self, manifest: Manifest, conn: psycopg.Connection[Any]
                          ) -> tuple[list[str], dict[str, int]]:
        """What makes a restore of *manifest* on *conn* differ from the backup, one line
        per object (and the leaf counts found): contents.restored_problems."""
        return restored_problems(manifest, conn)

    # -- verifying ------------------------------------------------------------------
    def archive_listing(self, manifest: Manifest) -> list[str]:
        """The lines of ``pg_restore --list`` of *manifest*'s archive (cached per
        manager); raises BackupError when pg_restore cannot read it."""
        return self._archives.listing(manifest)

    _listing = archive_listing  # the name before the split (tests read it)

    def archive_tables(self, manifest: Manifest) -> set[str]:
        """The tables (``schema.table``) whose data *manifest*'s archive holds, read from
        pg_restore's listing (cached per manager); raises BackupError when pg_restore
        cannot read the archive, so calling it proves the archive readable."""
        return self._archives.tables(manifest)

    def verify(self, backup_id: str, deep: bool = False) -> dict[str, Any]:
        """Check files (size, SHA-256) and the archive listing; with *deep*, restore into
        a scratch database and compare every table's row count with the manifest."""
        store = self.store
        manifest = store.load(backup_id)
        try:
            self.progress(f"verifying {backup_id}: checksums")
            store.check_files(manifest)
            listed = self.archive_tables(manifest)
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
            self.restore_into(manifest, target, manifest.schemas, fresh=True, scratch=True)
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
        self.archive_tables(manifest)
        if self._archives.has_rls(manifest, chosen):
            with connect(target, purpose="restore") as conn:
                require_rls_bypass(conn, chosen, "Restoring", archive_has_rls=True)
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
        self.restore_into(manifest, target, chosen, fresh=fresh, replace=replace,
                           safety=safety)
        return RestoreReport(backup_id=backup_id, schemas=chosen, target=mask_dsn(target),
                             safety_backup=safety, preamble_applied=fresh,
                             duration_s=round(time.perf_counter() - started, 3))

    def restore_into(self, manifest: Manifest, target: dict[str, Any], schemas: list[str],
                     *, fresh: bool, replace: list[str] | None = None,
                     scratch: bool = False, safety: str | None = None) -> None:
        """Restore *schemas* of *manifest* into *target* in one transaction that commits
        only after pg_restore exited 0 and every table holds the manifest's row count
        (apply.restore_into).  *fresh*: apply the preamble first, in the same
        transaction.  *replace*: the schemas dropped first (default *schemas*).
        *scratch*: a throwaway database; cluster-wide role settings are left alone.
        *safety*: the id of the backup that saved the schemas replaced, named in the
        error.  Raises BackupError (rolled back, unchanged) or
        RestoreOutcomeUnknownError."""
        restore_into(self.store, self._archives, self.progress, manifest, target, schemas,
                     fresh=fresh, replace=replace, scratch=scratch, safety=safety)

    def sign(self, backup_id: str) -> Manifest:
        """Sign a backup the operator vouches for (one taken before backups were signed,
        or under another key). Its directory and files must still be real and ours, and
        match the checksums its manifest records."""
        store = self.store
        manifest = store.load(backup_id, signed=False)
        store.check_files(manifest)
        self.archive_tables(manifest)
        store.save(manifest)
        return manifest

    def prune(self, *, dry_run: bool = False) -> list[str]:
        """Delete backups beyond EDULINK_DB_BACKUP_KEEP_LAST (per kind) that are also
        older than EDULINK_DB_BACKUP_KEEP_DAYS; never the newest verified backup."""
        return prune(self.store, self.settings, dry_run=dry_run, forget=self._archives.forget)

    def status(self) -> dict[str, Any]:
        """retention.status of this manager's backup folder."""
        return status(self.store, self.settings)

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
    "RESTORE_LOCK_TIMEOUT",
    "BackupInfo",
    "BackupManager",
    "BackupNotFoundError",
    "FileEntry",
    "backup_manager",
    "create_full_backup",
    "create_schema_backup",
    "get_backup_status",
    "restore_backup",
    "target_params",
    "toc_entry",
]
