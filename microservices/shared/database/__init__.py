"""edulink-db: the shared database layer of Edulink's microservices.

One PostgreSQL database, one schema per service, one login role per service,
and a topology (``topology.py``) that says who may read what.  See README.md.
"""

from .core.errors import (
    BackupCorruptError,
    BackupError,
    BackupNotFoundError,
    ConfigError,
    CrossServiceAccessError,
    CrossServiceWriteError,
    DatabaseNotRunningError,
    DatabaseUnavailableError,
    EdulinkDBError,
    EmbeddedServerError,
    MigrationError,
    MigrationFileError,
    MigrationLockTimeout,
    MigrationValidationError,
    MovedSchemaAccessError,
    PoolExhaustedError,
    ProvisioningError,
    RequestContextError,
    ServiceAuthenticationError,
    ServiceConnectionError,
    TopologyError,
    UnknownServiceError,
    VerificationError,
)

__version__ = "0.1.0"

__all__ = [
    "BackupCorruptError",
    "BackupError",
    "BackupNotFoundError",
    "ConfigError",
    "CrossServiceAccessError",
    "CrossServiceWriteError",
    "DatabaseNotRunningError",
    "DatabaseUnavailableError",
    "EdulinkDBError",
    "EmbeddedServerError",
    "MigrationError",
    "MigrationFileError",
    "MigrationLockTimeout",
    "MigrationValidationError",
    "MovedSchemaAccessError",
    "PoolExhaustedError",
    "ProvisioningError",
    "RequestContextError",
    "ServiceAuthenticationError",
    "ServiceConnectionError",
    "TopologyError",
    "UnknownServiceError",
    "VerificationError",
    "__version__",
]
