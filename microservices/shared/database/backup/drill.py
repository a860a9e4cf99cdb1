"""Restore drills: prove a backup restores, and how long it takes (an RTO estimate).

``edulink-db backups drill [ID]`` restores the newest verified backup (or ID) into a
scratch database -- on the same server, or on ``EDULINK_DB_DRILL_URL`` -- checks the
files' checksums and every table's row count against the manifest, and drops the
scratch database whatever happens. Live schemas are never touched: the restore goes
to another database, and the preamble's cluster-wide ``ALTER ROLE ... SET`` lines are
left out (role creation is ``IF NOT EXISTS``). The result is kept for the exporter.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..config import admin_conninfo, apply_tls, mask_dsn
from ..connections.direct import connect
from ..core.errors import BackupError, BackupNotFoundError, ConfigError
from .schedule import POLICY_KINDS, update_state
from .store import now_utc

SCRATCH_PREFIX = "edulink_drill_"


@dataclass
class DrillReport:
    backup_id: str
    server: str
    scratch_database: str
    ok: bool = False
    restore_seconds: float | None = None
    tables: int = 0
    rows: int = 0
    mismatches: list[str] = field(default_factory=list)
    error: str | None = None
    at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _drill_server(manager: Any) -> dict[str, Any]:
    url = manager.settings.edulink_db_drill_url
    if url is None:
        return admin_conninfo(manager.settings)
    try:
        params = dict(conninfo_to_dict(url.get_secret_value()))
    except Exception:
        raise ConfigError("EDULINK_DB_DRILL_URL is not a valid connection string.") from None
    return apply_tls(params, manager.settings)


def run_drill(manager: Any, backup_id: str | None = None) -> DrillReport:
    """Restore a backup into a scratch database, compare, drop it; record the result.
    Raises for a backup that cannot be used at all (missing, untrusted, damaged); a
    restore that fails is a failed drill (report.ok False), not an exception."""
    store = manager.store
    if backup_id is None:
        # A set's parts are drilled with their set, not alone.
        candidates = [m for m in store.backups()
                      if m.kind in POLICY_KINDS and m.verified.get("ok") and not m.set_id]
        if not candidates:
            raise BackupNotFoundError(
                "No verified backup to drill: take one with 'edulink-db backup auto'.")
        # The newest one whose files are all there and intact: a damaged newest backup
        # must not stop the drill of the one before it.
        skipped: list[str] = []
        for candidate in reversed(candidates):
            try:
                store.check_files(candidate)
            except BackupError as exc:
                skipped.append(f"{candidate.backup_id} ({exc})")
                continue
            backup_id = candidate.backup_id
            break
        else:
            raise BackupNotFoundError("No verified backup can be drilled: "
                                      + "; ".join(skipped))
        for line in skipped:
            manager.progress(f"drill: skipping {line}")
    manifest = store.load(backup_id)
    # A backup set (a service moved to another server): its parts restore into the same
    # scratch database, so the drill proves the whole set restores together.
    parts = [store.load(part_id) for part_id in dict.fromkeys(
        h["backup_id"] for h in manifest.set_schemas.values()) if part_id != backup_id]
    for archive in [manifest, *parts]:
        manager.progress(f"drill: checking {archive.backup_id} (checksums, archive)")
        store.check_files(archive)
        manager.archive_tables(archive)
    server = _drill_server(manager)
    scratch = f"{SCRATCH_PREFIX}{secrets.token_hex(4)}"
    report = DrillReport(backup_id=backup_id, server=mask_dsn(server),
                         scratch_database=scratch, at=now_utc().isoformat())
    with connect(server, purpose="create the drill's scratch database") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    target = {**server, "dbname": scratch}
    try:
        manager.progress(f"drill: restoring {backup_id} into {scratch}")
        started = time.perf_counter()
        for archive in [manifest, *parts]:
            manager.restore_into(archive, target, archive.schemas, fresh=True,
                                 scratch=True)
        report.restore_seconds = round(time.perf_counter() - started, 3)
        with connect(target, purpose="count the drill's rows") as conn:
            for archive in [manifest, *parts]:
                problems, counts = manager.restored_problems(archive, conn)
                report.mismatches += problems
                report.tables += len(counts)
                report.rows += sum(counts.values())
        report.ok = not report.mismatches
        if report.mismatches:
            report.error = "the restore differs from the backup: " + "; ".join(
                report.mismatches)
    except BackupError as exc:
        report.error = str(exc)
    finally:
        with connect(server, purpose="drop the drill's scratch database") as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(scratch)))
    result = {k: report.as_dict()[k] for k in ("backup_id", "ok", "restore_seconds", "at",
                                                "error")}
    update_state(store.root, lambda data: data.__setitem__("last_drill", result))
    return report
