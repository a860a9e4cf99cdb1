"""Per-service schema migrations (public API, the seed's import path)::

    from microservices.shared.database.migrations import MigrationManager

The implementation: :mod:`.manager` (history, locking, runs), :mod:`.files` (file
format), :mod:`.contracts` and :mod:`.lint` (static checks), :mod:`.scaffold`
(``edulink-db init``), and the packaged ``reference_migrations/``.
"""

from .manager import (
    HISTORY_TABLE,
    MigrateReport,
    MigrationManager,
    ServiceStatus,
    reference_migrations_dir,
)

__all__ = [
    "HISTORY_TABLE",
    "MigrateReport",
    "MigrationManager",
    "ServiceStatus",
    "reference_migrations_dir",
]
