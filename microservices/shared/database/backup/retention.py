"""Which backups to keep (prune) and what the backup folder says about freshness
(status)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg

from ..config import Settings
from ..core.errors import EdulinkDBError
from .store import BackupStore, Manifest, now_utc


def prune(store: BackupStore, settings: Settings, *, dry_run: bool = False,
          forget: Callable[[str], None] = lambda _id: None) -> list[str]:
    """Delete backups beyond EDULINK_DB_BACKUP_KEEP_LAST (per kind) that are also
    older than EDULINK_DB_BACKUP_KEEP_DAYS; never the newest verified backup.  Returns
    the ids deleted (or, with *dry_run*, that would be); *forget* is told each one."""
    every = store.backups()
    # A set's parts go with it: counted once, deleted together.
    backups = [m for m in every if not m.set_id]
    keep_last = settings.edulink_db_backup_keep_last
    cutoff = now_utc() - timedelta(days=settings.edulink_db_backup_keep_days)
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
            forget(backup_id)
        store.clean_partials()
    return doomed


def status(store: BackupStore, settings: Settings) -> dict[str, Any]:
    """What the backup folder holds, the newest verified backup and its age, and
    warnings (none yet, none verified, too old, a schema overdue)."""
    backups = store.backups()
    last: dict[str, dict[str, Any]] = {}
    for m in backups:
        last[m.kind] = {"backup_id": m.backup_id, "finished_at": m.finished_at,
                        "size": m.size}
    verified = [m for m in backups if m.verified.get("ok")]
    newest = verified[-1] if verified else None
    age = (now_utc() - newest.finished).total_seconds() if newest else None
    max_age = settings.edulink_db_backup_max_age_hours * 3600
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
                        f"{settings.edulink_db_backup_max_age_hours:g} h)")
    coverage = _coverage(settings)
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


def _coverage(settings: Settings) -> list[Any] | None:
    """backup_freshness of the topology's schemas present at home; None when the
    home server cannot be asked (status still reports what the folder holds)."""
    from .schedule import backup_freshness, present_schemas

    try:
        return backup_freshness(settings, present_schemas(settings))
    except (psycopg.Error, EdulinkDBError, OSError):
        return None
