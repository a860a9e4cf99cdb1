"""Per-service schema migrations: history and lock per schema, safe under concurrent deploys.

    from microservices.shared.database.migrations import MigrationManager

    migration_manager = MigrationManager()
    migration_manager.run_service_migrations('user_service', './migrations/user')
    migration_manager.run_all_migrations('./migrations')      # one subfolder per service
    status = migration_manager.get_migration_status('user_service')

How a run works, per service (see :mod:`.files` for the files):

* **History** lives in the service's own schema, ``<schema>.edulink_schema_history``,
  owned by the service's owner role; runtime roles have no access to it.
* **Validate first.** Before anything runs, the history is compared with the
  files: an applied file that was edited (checksums differ), an applied file
  that disappeared, or a pending file older than the newest applied one stops
  the run with every problem listed.  ``repair`` accepts edits deliberately.
* **One transaction per file**, holding a transaction-level advisory lock keyed
  on the schema's history table (so another service's migration never waits on
  it, and a transaction pooler cannot strand it).  Under the lock the history
  is read again, so of several processes racing, exactly one applies each file
  and the others skip it.  The runner logs in as the service's **migrator
  role**, never as the admin: its only membership is the owner role, which it
  becomes at login, so no statement in a file can act with more than the
  owner's authority.  A statement that leaves the owner role (SET ROLE, RESET
  ROLE, SET SESSION AUTHORIZATION, set_config('role', ...), also inside DO
  blocks) or a file that grants its schema's objects to a role the topology
  does not name is refused and rolled back, and so is a file whose catalog, read
  before it commits, is wider than the topology allows or breaks a reader
  (:mod:`.guard`).  Statements run as the owner role with
  ``search_path`` = the service schema, ``lock_timeout`` (default 2s; a file
  that hits it is retried) and ``statement_timeout`` (default 15min), put back
  after every statement (a pasted pg_dump header cannot turn them off); each
  file starts from the session's defaults, so its settings do not reach the next.
  On failure the file is rolled back, the history is unchanged, and the error
  names the file, the statement and its line, with the server's detail, hint and
  context (:mod:`.diagnostics`).
* **Non-transactional files** (CREATE INDEX CONCURRENTLY...) run statement by
  statement under a session-level lock on a dedicated connection.  They are
  recorded as in progress first; a run killed midway leaves that mark, and the
  next run drops the invalid indexes such an interruption leaves behind and
  runs the file again (so write such files with IF NOT EXISTS).
* Migrations need a direct or session-mode connection: pointed at a
  transaction pooler, the runner refuses.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import Settings, load_settings, pooler_mode, service_conninfo
from ..connections.direct import connect
from ..core.errors import (
    ConfigError,
    MigrationError,
    MigrationFileError,
    MigrationValidationError,
)
from ..topology import Service, Topology
from .files import MigrationFile, load_directory, parse_version
from .history import (
    Progress,
    ServiceStatus,
    compute_status,
    no_notice,
    read_histories,
    switch_hint,
)
from .runner import SchemaMigrator


class MigrationManager:
    """The seed's migration API; one instance can serve every service.

    *directory* is the root with one folder per service (default:
    ``EDULINK_DB_MIGRATIONS``, else the reference migrations in the package).
    """

    def __init__(self, settings: Settings | None = None, directory: str | Path | None = None,
                 progress: Progress = no_notice) -> None:
        self._settings = settings
        self._root = Path(directory) if directory is not None else None
        self._service_dirs: dict[str, Path] = {}
        self.progress = progress

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def root(self) -> Path:
        if self._root is None:
            from .scaffold import default_migrations_root  # EDULINK_DB_MIGRATIONS, ./migrations

            self._root = default_migrations_root(self.settings)
        return self._root

    def _topology(self) -> Topology:
        return self.settings.topology()

    def _login(self, service: Service) -> dict[str, Any]:
        """The migrator role's connection parameters: migrations never log in as the
        admin, so no migration file can use the admin's authority."""
        login = service_conninfo(service, self.settings, kind="migrator")
        if pooler_mode(self.settings, login) == "transaction":
            raise MigrationError(
                "Migrations need a direct (or session-mode) connection, but DATABASE_URL "
                "points at a transaction pooler (port 6543 or DATABASE_POOLER=transaction): "
                "its connections change between transactions, which breaks session locks "
                "and CREATE INDEX CONCURRENTLY. Use the direct connection string "
                "(Supabase: port 5432, db.<project>.supabase.co)."
            )
        return login

    def migrations_dir(self, service: Service, directory: str | Path | None = None) -> Path:
        """The folder holding *service*'s migrations: *directory* when given (it must
        exist, and is remembered for the service), else the one found under ``root``
        (``<service>`` or ``<service>_service``).  Raises when a given folder or the
        root is missing, so a typo never reads as "no migrations"."""
        return self._dir_for(service, directory)

    def _dir_for(self, service: Service, directory: str | Path | None) -> Path:
        if directory is not None:
            path = Path(directory)
            if not path.exists():  # a typo must not read as "no migrations"
                raise _missing_dir(service, path)
            self._service_dirs[service.name] = path
            return path
        if service.name in self._service_dirs:
            return self._service_dirs[service.name]
        if not self.root.exists():  # e.g. a mistyped EDULINK_DB_MIGRATIONS
            raise _missing_dir(None, self.root)
        for name in (service.name, f"{service.name}_service"):
            if (self.root / name).is_dir():
                return self.root / name
        return self.root / service.name

    def _check_root(self, root: Path, topology: Topology) -> None:
        if not root.exists():
            raise _missing_dir(None, root)
        known = {n for s in topology.services for n in (s.name, f"{s.name}_service")}
        strays = sorted(p.name for p in root.iterdir()
                        if p.is_dir() and not p.name.startswith((".", "_"))
                        and p.name not in known)
        if strays:
            raise MigrationFileError(
                f"{root}: folder(s) {', '.join(strays)} match no service in the topology "
                f"(services: {', '.join(topology.service_names())}); rename or remove them.")

    def statuses(self, services: Iterable[str] | None = None,
                 directory: str | Path | None = None, *,
                 primary: bool = False) -> list[ServiceStatus]:
        """Status of several services; each history is read as its service's migrator
        (the history is the owner role's alone), in two queries per service.  With
        *primary* (before migrating), a standby is refused: its history may lag."""
        topology = self._topology()
        if directory is not None:
            self._root = Path(directory)
            self._check_root(self._root, topology)
        chosen = [topology.service(s) for s in services] if services else list(
            topology.services)
        dirs = {s.name: self._dir_for(s, None) for s in chosen}
        files = {s.name: load_directory(dirs[s.name]) for s in chosen}
        return [self._status_for(s, files[s.name], dirs[s.name], primary=primary)
                for s in chosen]

    def _status_for(self, service: Service, files: list[MigrationFile],
                    directory: Path, *, primary: bool = False) -> ServiceStatus:
        purpose = (f"migrate {service.name}" if primary
                   else f"read the migration history of {service.name}")
        with connect(self._login(service), purpose=purpose, primary=primary) as conn:
            exists, rows = read_histories(conn, [service])[service.schema]
        if not directory.exists() and any(r.kind == "versioned" and r.success for r in rows):
            # Not "every applied file is gone": the folder itself is missing.
            raise _missing_dir(service, directory)
        return compute_status(service, files, rows, exists)

    def _status_one(self, service: Service, directory: str | Path | None, *,
                    primary: bool = False) -> ServiceStatus:
        path = self._dir_for(service, directory)
        return self._status_for(service, load_directory(path), path, primary=primary)

    def get_migration_status(self, service: str, directory: str | Path | None = None
                             ) -> dict[str, Any]:
        """applied_count, pending_count, pending_migrations, last_applied_version,
        checksum_mismatches, missing_files, out_of_order, failed, resumable, ok."""
        svc = self._topology().service(service)
        return self._status_one(svc, directory).as_dict()

    def run_service_migrations(self, service: str, directory: str | Path | None = None, *,
                               dry_run: bool = False, strict: bool = False) -> dict[str, Any]:
        """Apply *service*'s pending migrations from *directory*; returns the report.

        Every pending file is checked against the service contracts first (and, with
        *strict*, for lock hazards); any finding refuses the whole run."""
        topology = self._topology()
        svc = topology.service(service)
        status = self._status_one(svc, directory, primary=True)
        _check_contracts(topology, [status], strict)
        migrator = SchemaMigrator(self._login(svc), topology, svc, status.files,
                                  self.settings, self.progress)
        return migrator.migrate(status, dry_run=dry_run).as_dict()

    def run_all_migrations(self, directory: str | Path | None = None, *,
                           services: Iterable[str] | None = None,
                           dry_run: bool = False,
                           strict: bool = False) -> dict[str, dict[str, Any]]:
        """Every service in turn (one subfolder per service). Services are migrated
        sequentially; parallel processes are safe thanks to the per-schema locks.
        Every pending file of every service is contract-checked before any runs."""
        topology = self._topology()
        statuses = self.statuses(services, directory, primary=True)
        problems = [p for st in statuses for p in
                    (f"{st.service}: {x}" for x in st.problems)]
        if problems:
            raise MigrationValidationError(
                "Migration history and files disagree; nothing was run:\n  "
                + "\n  ".join(problems) + switch_hint(statuses))
        _check_contracts(topology, statuses, strict)
        results: dict[str, dict[str, Any]] = {}
        for st in statuses:
            svc = topology.service(st.service)
            migrator = SchemaMigrator(self._login(svc), topology, svc, st.files, self.settings,
                                      self.progress)
            results[svc.name] = migrator.migrate(st, dry_run=dry_run).as_dict()
        return results

    def validate(self, services: Iterable[str] | None = None,
                 directory: str | Path | None = None) -> list[ServiceStatus]:
        """Raise MigrationValidationError listing every disagreement; else the statuses."""
        statuses = self.statuses(services, directory)
        problems = [f"{st.service}: {p}" for st in statuses for p in st.problems]
        if problems:
            raise MigrationValidationError("\n".join(problems) + switch_hint(statuses))
        return statuses

    def repair(self, services: Iterable[str] | None = None,
               directory: str | Path | None = None) -> dict[str, list[str]]:
        topology = self._topology()
        return {
            st.service: SchemaMigrator(self._login(topology.service(st.service)), topology,
                                       topology.service(st.service), st.files,
                                       self.settings, self.progress).repair(st)
            for st in self.statuses(services, directory)
        }

    def baseline(self, service: str, version: str) -> None:
        topology = self._topology()
        svc = topology.service(service)
        try:
            parse_version(version)
        except ValueError:
            raise ConfigError(f"Baseline version {version!r} is not a version like 3 or 1.2."
                              ) from None
        SchemaMigrator(self._login(svc), topology, svc, [], self.settings,
                       self.progress).baseline(version)


def _missing_dir(service: Service | None, path: Path) -> MigrationFileError:
    where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    whose = f"{service.name}: migrations" if service else "Migrations"
    return MigrationFileError(
        f"{whose} directory {path}{where} does not exist. 'edulink-db init' in the project "
        "directory creates migrations/<service>/ for every service, holding the reference "
        "migrations that 'edulink-db up' applies (it never overwrites); or give the folder "
        "that holds the V<version>__<description>.sql files.")


def _check_contracts(topology: Topology, statuses: list[ServiceStatus], strict: bool) -> None:
    """Service contracts (issue 12): refuse before anything runs if a pending file
    breaks what another service reads (or, with *strict*, has lint warnings)."""
    from .lint import check_pending

    check_pending(topology, [(topology.service(st.service), f)
                             for st in statuses for f in st.pending], strict=strict)
