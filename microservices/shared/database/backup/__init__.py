"""Backups and restores (public API, the seed's import path)::

    from microservices.shared.database.backup import create_full_backup, restore_backup

The implementation: :mod:`.manager` (pg_dump/pg_restore runs), :mod:`.store` (signed
manifests on disk), :mod:`.restore` (atomic restore SQL), :mod:`.schedule` (policy,
``backup auto``) and :mod:`.drill` (restore drills).
"""

from .manager import (
    BackupInfo,
    BackupManager,
    RestoreReport,
    backup_manager,
    create_full_backup,
    create_schema_backup,
    get_backup_status,
    restore_backup,
)

__all__ = [
    "BackupInfo",
    "BackupManager",
    "RestoreReport",
    "backup_manager",
    "create_full_backup",
    "create_schema_backup",
    "get_backup_status",
    "restore_backup",
]
