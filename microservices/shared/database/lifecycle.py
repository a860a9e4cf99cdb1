"""The high-level operations behind the CLI: up, provision, verify, status.

Each takes :class:`~.config.Settings` and a progress callback and returns a
report object; the CLI only renders them.  Tests call these directly.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .config import (
    LoginKind,
    Settings,
    admin_conninfo,
    derive_service_conninfo,
    login_override_key,
    login_role,
    mask_dsn,
    service_password_key,
)
from .core.errors import ConfigError
from .core.tls import explain, unauthenticated_warning
from .migrations.history import reference_migrations_dir
from .migrations.manager import MigrationManager
from .privileges.provisioning import ProvisionReport, provision
from .privileges.verify import VerifyReport, verify
from .server.embedded import EmbeddedServer
from .topology import Service, Topology

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def service_password(settings: Settings, service: Service,
                     kind: LoginKind = "runtime") -> str | None:
    """The password *service*'s *kind* role logs in with, generating and storing one
    if needed.

    None when the service has its own ``EDULINK_DB_<SERVICE>_URL`` (or
    ``_MIGRATOR_URL``): its credentials are managed where that server is.
    """
    if settings.service_override(service, login_override_key(kind, "URL")):
        return None
    explicit = settings.service_override(service, login_override_key(kind, "PASSWORD"))
    if explicit:
        return explicit
    return settings.secret_store.get_or_create(
        service_password_key(service, kind), lambda: secrets.token_urlsafe(32)
    )


def migrator_password(settings: Settings, service: Service) -> str | None:
    """:func:`service_password` of the service's migrator role."""
    return service_password(settings, service, "migrator")


def rotate_password(settings: Settings, service: Service,
                    kind: LoginKind = "runtime") -> str | None:
    """Store a new generated password for *service*'s *kind* role (provision then
    applies it).  None for a migrator whose password is managed outside edulink-db."""
    variable = f"EDULINK_DB_{service.name.upper()}_{login_override_key(kind, 'PASSWORD')}"
    if settings.service_override(service, login_override_key(kind, "PASSWORD")):
        if kind == "migrator":
            return None  # rotating a service rotates its runtime password; this one is external
        raise ConfigError(
            f"{variable} is set, so the password of {login_role(service, kind)} is managed "
            "outside edulink-db: change it there, then run 'edulink-db provision' to apply it."
        )
    value = secrets.token_urlsafe(32)
    settings.secret_store.set(service_password_key(service, kind), value)
    return value


def run_provision(
    settings: Settings,
    topology: Topology | None = None,
    *,
    rotate: Iterable[str] = (),
    adopt: Iterable[str] = (),
    progress: Progress = _quiet,
) -> ProvisionReport:
    topology = topology or settings.topology()
    rotate_names = [topology.service(name).name for name in rotate]
    for name in rotate_names:
        rotate_password(settings, topology.service(name))
        rotate_password(settings, topology.service(name), "migrator")
    admin = admin_conninfo(settings)
    progress(f"provisioning {mask_dsn(admin)}")
    return provision(
        admin, topology, lambda svc: service_password(settings, svc),
        migrator_passwords=lambda svc: migrator_password(settings, svc),
        rotate=rotate_names, adopt=adopt, progress=progress,
    )


def run_verify(
    settings: Settings, topology: Topology | None = None, *, logins: bool = True
) -> VerifyReport:
    topology = topology or settings.topology()
    admin = admin_conninfo(settings)
    if not logins:
        report = verify(admin, topology)
    else:
        report = verify(
            admin, topology,
            passwords=lambda svc: service_password(settings, svc),
            conninfo_for=lambda svc, pw: derive_service_conninfo(admin, svc, pw),
        )
    warning = unauthenticated_warning(admin)
    if warning:
        report.warnings.append(warning)
    return report


@dataclass
class UpReport:
    target: str
    embedded: bool
    provision: ProvisionReport
    verify: VerifyReport
    migrations: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "embedded": self.embedded,
            "provision": self.provision.as_dict(),
            "migrations": self.migrations,
            "verify": self.verify.as_dict(),
        }


def run_up(settings: Settings, *, progress: Progress = _quiet) -> UpReport:
    """Start the embedded server if no database is configured, provision, migrate
    (EDULINK_DB_MIGRATIONS, else the project's ./migrations made by 'edulink-db init',
    else the reference Edulink schema: see :mod:`.migrations.scaffold`), verify."""
    topology = settings.topology()  # validate before touching anything
    if settings.uses_embedded:
        EmbeddedServer(settings.home).start(progress)
    admin = admin_conninfo(settings)
    prov = run_provision(settings, topology, progress=progress)
    manager = MigrationManager(settings, progress=progress)
    progress("migrations: " + ("the reference Edulink schema ('edulink-db init' copies it to "
                               "./migrations to start your own)"
                               if manager.root == reference_migrations_dir()
                               else str(manager.root)))
    migrations = manager.run_all_migrations()
    progress("verifying privileges against the topology")
    ver = run_verify(settings, topology)
    return UpReport(target=mask_dsn(admin), embedded=settings.uses_embedded,
                    provision=prov, verify=ver, migrations=migrations)


@dataclass
class StatusReport:
    target: str | None
    embedded: bool
    running: bool
    server_version: str | None = None
    provisioned_roles: int = 0
    expected_roles: int = 0
    home: str = ""
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_status(settings: Settings) -> StatusReport:
    topology = settings.topology()
    roles = topology.runtime_roles + topology.owner_roles + topology.migrator_roles
    report = StatusReport(target=None, embedded=settings.uses_embedded, running=False,
                          expected_roles=len(roles), home=str(settings.home))
    if settings.uses_embedded and EmbeddedServer(settings.home).running_info() is None:
        return report
    try:
        admin = admin_conninfo(settings)
        report.target = mask_dsn(admin)
        with psycopg.connect(**admin, connect_timeout=5, autocommit=True) as conn:
            report.running = True
            report.server_version = conn.info.parameter_status("server_version")
            row = conn.execute(
                "SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)", [roles]
            ).fetchone()
            report.provisioned_roles = int(row[0]) if row else 0
    except psycopg.OperationalError as exc:
        reason = explain(str(exc), admin)  # a TLS failure: one line naming the setting to fix
        report.error = reason if reason != str(exc) else reason.strip().splitlines()[0]
    from .backup.manager import BackupManager  # local: backups are optional to status

    report.warnings = [f"backups: {w}" for w in BackupManager(settings).status()["warnings"]]
    return report
