"""edulink-db: the shared database layer of Edulink's microservices.

One PostgreSQL database, one schema per service, one login role per service,
and a topology (``topology.py``) that says who may read what.  See README.md.
"""

from .connections import hooks as _connection_hooks
from .connections.hooks import Instrumentation as _Instrumentation
from .core.errors import (
    BackupCorruptError,
    BackupError,
    BackupInterruptedError,
    BackupNotFoundError,
    BackupUntrustedError,
    ConfigError,
    ContractViolationError,
    CrossServiceAccessError,
    CrossServiceWriteError,
    DatabaseNotRunningError,
    DatabaseUnavailableError,
    EdulinkDBError,
    EmbeddedServerError,
    ForeignRoleError,
    InvalidIdentifierValueError,
    LintToolError,
    MigrationError,
    MigrationFileError,
    MigrationLintError,
    MigrationLockTimeout,
    MigrationValidationError,
    MovedSchemaAccessError,
    MoveError,
    PatroniDiscoveryError,
    PoolDoesNotFit,
    PoolExhaustedError,
    ProvisioningError,
    RequestContextError,
    RestoreOutcomeUnknownError,
    ServerConnectionLostError,
    ServiceAuthenticationError,
    ServiceConnectionError,
    ServiceMovedError,
    StandbyServerError,
    TopologyError,
    UnknownServiceError,
    VerificationError,
)

__version__ = "0.1.0"


def _monitoring_instrumentation() -> _Instrumentation:
    # The package root wires monitoring into the pools: the connection layer may not
    # import monitoring (pyproject.toml's layers contract), and importing this package
    # must import no monitoring code nor register a metric.  Called by the first pool
    # that opens with DATABASE_MONITORING_ENABLED.
    from .monitoring.hooks import instrumentation

    return instrumentation()


_connection_hooks.set_provider(_monitoring_instrumentation)

__all__ = [
    "BackupCorruptError",
    "BackupError",
    "BackupInterruptedError",
    "BackupNotFoundError",
    "BackupUntrustedError",
    "ConfigError",
    "ContractViolationError",
    "CrossServiceAccessError",
    "CrossServiceWriteError",
    "DatabaseNotRunningError",
    "DatabaseUnavailableError",
    "EdulinkDBError",
    "EmbeddedServerError",
    "ForeignRoleError",
    "InvalidIdentifierValueError",
    "LintToolError",
    "MigrationError",
    "MigrationFileError",
    "MigrationLintError",
    "MigrationLockTimeout",
    "MigrationValidationError",
    "MoveError",
    "MovedSchemaAccessError",
    "PatroniDiscoveryError",
    "PoolDoesNotFit",
    "PoolExhaustedError",
    "ProvisioningError",
    "RequestContextError",
    "RestoreOutcomeUnknownError",
    "ServerConnectionLostError",
    "ServiceAuthenticationError",
    "ServiceConnectionError",
    "ServiceMovedError",
    "StandbyServerError",
    "TopologyError",
    "UnknownServiceError",
    "VerificationError",
    "__version__",
]
