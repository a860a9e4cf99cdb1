"""Red team: hostile file-system neighbours and careless operators of backups (issue 13)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from microservices.shared.database.backup.store import MANIFEST
from microservices.shared.database.core.errors import (
    BackupCorruptError,
    BackupNotFoundError,
    BackupUntrustedError,
    ConfigError,
)

from .test_backup import db, manager  # noqa: F401 - db is a fixture


# BREAK (fixed in backup_store.py): a backup directory or file that other users may
# write was accepted.  Its checksums are checked, and only then does pg_restore open
# the files by name: a neighbour with write access swaps the dump in between, and its
# SQL runs as the admin (a superuser on a self-hosted server).
@pytest.mark.parametrize("target", ["directory", "dump", "manifest"])
def test_backup_writable_by_others_is_refused(db: dict[str, Any],  # noqa: F811
                                              target: str) -> None:
    m = manager()
    backup = m.create_schema_backup(["user_schema"])
    path = {"directory": backup.path, "manifest": backup.path / MANIFEST,
            "dump": next(p for p in backup.path.iterdir()
                         if p.name not in (MANIFEST, "preamble.sql"))}[target]
    path.chmod(path.stat().st_mode | 0o022)
    with pytest.raises(BackupUntrustedError, match="writable by other users"):
        m.verify(backup.backup_id)
    with pytest.raises(BackupUntrustedError, match="writable by other users"):
        m.restore(backup.backup_id)
    path.chmod(path.stat().st_mode & ~0o022)  # the owner vouches for it again
    m.verify(backup.backup_id)


def test_renamed_backup_is_not_a_new_backup(db: dict[str, Any]) -> None:  # noqa: F811
    """Regression: replaying an old signed backup under a new id (to look fresh, or to
    shadow a newer one) is refused: the signed manifest names its own id."""
    m = manager()
    backup = m.create_schema_backup(["user_schema"])
    replay = backup.path.parent / "schema_29990101_000000"
    shutil.copytree(backup.path, replay)
    with pytest.raises(BackupUntrustedError, match="renamed or copied"):
        m.verify(replay.name)
    assert [b["backup_id"] for b in m.list_backups()] == [backup.backup_id]


def test_files_swapped_between_two_signed_backups_are_refused(
        db: dict[str, Any]) -> None:  # noqa: F811
    """Regression: each manifest signs its files' sizes and SHA-256, so a dump from
    another (equally signed) backup does not pass."""
    m = manager()
    first = m.create_schema_backup(["user_schema"])
    second = m.create_schema_backup(["auth_schema"])
    def dump(path: Path) -> Path:
        return next(p for p in path.iterdir() if p.name not in (MANIFEST, "preamble.sql"))

    shutil.copy(dump(second.path), dump(first.path))
    with pytest.raises(BackupCorruptError):
        m.restore(first.backup_id)


@pytest.mark.parametrize("field", ["schemas", "row_counts", "snapshot", "kind"])
def test_every_manifest_field_is_signed(db: dict[str, Any], field: str) -> None:  # noqa: F811
    m = manager()
    backup = m.create_schema_backup(["user_schema"])
    path = backup.path / MANIFEST
    data = json.loads(path.read_text())
    data[field] = {"schemas": ["user_schema", "auth_schema"], "row_counts": {},
                   "snapshot": "00000003-0000001B-1", "kind": "full"}[field]
    path.write_text(json.dumps(data))
    with pytest.raises(BackupUntrustedError, match="signature does not match"):
        m.verify(backup.backup_id)


@pytest.mark.parametrize("key", ["", "short"])
def test_weak_signing_key_is_refused(db: dict[str, Any], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                     key: str) -> None:
    monkeypatch.setenv("EDULINK_DB_BACKUP_KEY", key)
    with pytest.raises(ConfigError, match="EDULINK_DB_BACKUP_KEY"):
        manager().create_schema_backup(["user_schema"])


@pytest.mark.parametrize("bad", ["../outside", "/etc", "x/../../y", ".hidden.partial"])
def test_backup_ids_cannot_leave_the_folder(db: dict[str, Any], bad: str) -> None:  # noqa: F811
    with pytest.raises(BackupNotFoundError):
        manager().restore(bad)
    assert os.path.exists("/etc")
