"""Exception hierarchy for edulink-db.

Every failure the package can report has its own class, so callers can catch
exactly what they can handle.  Messages say what was wrong and what to do, and
never contain a password: DSNs are masked before they are put in a message.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg


class EdulinkDBError(Exception):
    """Base class of every error raised by edulink-db."""


class ConfigError(EdulinkDBError):
    """Settings are missing, malformed or contradictory."""


class TopologyError(ConfigError):
    """The topology (services, schemas, roles, grants) is invalid.

    Raised before any SQL runs, so an invalid topology never half-provisions.
    """


class UnknownServiceError(ConfigError, KeyError):
    """A service name that the topology does not declare."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class EmbeddedServerError(EdulinkDBError):
    """The embedded PostgreSQL server could not be initialised, started or stopped."""


class DatabaseUnavailableError(EdulinkDBError):
    """The database server could not be reached or refused the login."""


class StandbyServerError(DatabaseUnavailableError):
    """A command that changes the database reached a standby (a read-only replica)."""


class DatabaseNotRunningError(DatabaseUnavailableError):
    """No database is configured and the embedded server is not running."""


class ProvisioningError(EdulinkDBError):
    """Provisioning could not complete; its transaction was rolled back."""


class VerificationError(EdulinkDBError):
    """The privileges PostgreSQL grants differ from what the topology declares."""


class ServiceConnectionError(EdulinkDBError):
    """A service could not get a working connection as its own role."""


class ServerConnectionLostError(ServiceConnectionError, psycopg.OperationalError):
    """The server went away while a service connection ran a statement: it shut down
    or crashed, a failover or switchover took it away, an administrator terminated the
    session, or the network dropped.  The message names the server and the reason.

    Also a :class:`psycopg.OperationalError`, so code (and Django) that handles
    psycopg's error keeps working.  The transaction did not commit, unless the lost
    statement was the COMMIT itself: then its outcome is unknown.  The pool replaces
    the connection; retry the unit of work.
    """


class ServiceAuthenticationError(ServiceConnectionError):
    """The server rejected the service role's credentials."""


class PoolExhaustedError(ServiceConnectionError):
    """Every connection of a service's pool stayed checked out for the whole timeout."""


class RequestContextError(EdulinkDBError):
    """An operation cannot carry the request context (user_id / readonly) as asked."""


class MigrationFileError(ConfigError):
    """A migration file or directory is invalid; nothing was run."""


class MigrationValidationError(EdulinkDBError):
    """Applied history and migration files disagree (edited, missing or failed files)."""


class MigrationError(EdulinkDBError):
    """A migration could not be applied; its transaction was rolled back."""


class MigrationLockTimeout(MigrationError):
    """Another process kept the schema's migration lock for longer than allowed."""


class CrossServiceAccessError(EdulinkDBError):
    """A service asked for access to another service's data that the topology does not grant."""


class CrossServiceWriteError(CrossServiceAccessError):
    """A write to another service's data; only a service itself writes its schema."""


class BackupError(EdulinkDBError):
    """A backup or restore could not be completed; nothing was changed by a restore."""


class BackupInterruptedError(BackupError):
    """The server went away (or, on a standby, cancelled the dump) while a backup ran;
    nothing of it was kept, and another attempt may succeed."""


class BackupNotFoundError(BackupError, KeyError):
    """No complete backup has that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BackupCorruptError(BackupError):
    """A backup's files do not match its manifest (flipped bytes, truncation, missing files)."""


class ForeignRoleError(ProvisioningError):
    """A topology role exists but edulink-db did not create it, or it may never be adopted.

    Raised before provisioning changes anything.
    """


class BackupUntrustedError(BackupError):
    """A backup that edulink-db cannot prove it took: unsigned or wrongly signed manifest,
    a symbolic link, or a file owned by another user. Nothing of it is read or run."""


class InvalidIdentifierValueError(EdulinkDBError, ValueError):
    """An id, or another argument, given to a cross-service helper is malformed (wrong
    type, empty, too long, NUL or other control characters, a limit out of range).

    Raised before any SQL is sent; the message names the argument, never echoes its value.
    """


class LintToolError(ConfigError):
    """A tool the migration linter needs (squawk) is missing or failed."""


class MigrationLintError(MigrationError):
    """Pending migrations have lint findings that block ``migrate``; nothing was run.

    ``findings`` holds the :class:`~..migrations.findings.Finding` objects.
    """

    def __init__(self, message: str, findings: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.findings = list(findings)


class ContractViolationError(MigrationLintError):
    """A pending migration would drop, rename, retype or move a column (or table) that
    another service reads; nothing was run."""


class ServiceMovedError(ServiceConnectionError):
    """A statement was refused because its service's schema moved to another server
    (``edulink-db move-service``) while it ran; it changed nothing: run it again."""


class MovedSchemaAccessError(CrossServiceAccessError):
    """A statement on a service's own connection used a table of another service whose
    schema ``edulink-db move-service`` moved to another server: the schema left on this
    server is empty (or its old copy retired), so PostgreSQL said ``relation ... does
    not exist`` (42P01).  Not a transient failure: running it again fails the same way.
    Read the moved service's data through
    ``connection_manager.get_reader_connection(service, reads)``, which follows the move.

    ``service`` is the moved service's name, ``location`` where it lives now (None: its
    home server), ``reader`` the service whose connection ran the statement."""

    def __init__(self, message: str, *, service: str, location: str | None,
                 reader: str) -> None:
        super().__init__(message)
        self.service, self.location, self.reader = service, location, reader


class MoveError(EdulinkDBError):
    """``move-service`` refused or stopped; the message says what to do (nothing was lost)."""


class RestoreOutcomeUnknownError(BackupError):
    """COMMIT was sent but psql lost its connection: the restore may or may not be in."""


class PoolDoesNotFit(ConfigError):
    """An explicit pool size that lets a service's processes open more connections than
    its role's CONNECTION LIMIT."""

    def __init__(self, message: str, connections: int, limit: int) -> None:
        super().__init__(message)
        self.connections, self.limit = connections, limit


class PatroniDiscoveryError(EdulinkDBError):
    """Patroni's REST API gave no usable view of the cluster: no endpoint answered, or
    an answer was malformed or contradictory (two leaders).  ``problems`` holds
    ``(endpoint, what was wrong)`` pairs; endpoints are named without credentials."""

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)
