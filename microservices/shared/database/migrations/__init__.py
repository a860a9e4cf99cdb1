"""Per-service schema migrations (public API, the seed's import path)::

    from microservices.shared.database.migrations import MigrationManager

The implementation: :mod:`.manager` (the API over all services), :mod:`.runner` (one
schema's run under its lock), :mod:`.history` (history table and status), :mod:`.files` (file
format), :mod:`.contracts` and :mod:`.lint` (static checks), :mod:`.scaffold`
(``edulink-db init``), and the packaged ``reference_migrations/``.
"""

from .history import HISTORY_TABLE, ServiceStatus, reference_migrations_dir
from .manager import MigrationManager
from .runner import MigrateReport

__all__ = [
    "HISTORY_TABLE",
    "MigrateReport",
    "MigrationManager",
    "ServiceStatus",
    "reference_migrations_dir",
]
