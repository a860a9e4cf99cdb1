"""``edulink-db init``: a project's own starting point, and where its migrations live.

``init`` writes, in the project directory (the convention of ``supabase init`` and
``alembic init``):

* ``migrations/<service>/`` for every service of the topology, holding copies of the
  reference migrations that ``edulink-db up`` applies (byte for byte, so their checksums
  match a history that ``up`` already recorded), or nothing with ``empty=True``;
* ``migrations/README.md``, how the folder works;
* ``.env.example``, every setting a new project needs, commented out;
* ``topology.toml``, a copy of the topology in use, to edit.

It never overwrites: an existing file is kept, and so is an existing service folder with
everything in it (adding the reference ``V1`` next to a team's own ``V1`` would make two
files with one version).  A failure removes only what this run created.

Which migrations ``up``, ``migrate`` and :class:`~.migrations.MigrationManager` use
(:func:`default_migrations_root`): ``EDULINK_DB_MIGRATIONS`` if set; else the project's
``migrations/`` when it holds a folder named after a service of the topology (so an
unrelated ``migrations/`` folder, e.g. a Django app's, is not taken for it), looked for in
the working directory, then in the project directory that holds ``.edulink-db``; else the
reference migrations shipped in the package.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import HOME_DIR_NAME, Settings
from ..core.errors import ConfigError
from ..topology import Service, Topology, default_topology_text

MIGRATIONS_DIR_NAME = "migrations"
TOPOLOGY_FILE_NAME = "topology.toml"
ENV_EXAMPLE_NAME = ".env.example"
KEEP_FILE_NAME = ".gitkeep"  # git keeps no empty folder


def _service_folder_names(topology: Topology) -> set[str]:
    # The same names MigrationManager accepts for a service's folder.
    return {n for s in topology.services for n in (s.name, f"{s.name}_service")}


def project_migrations_dir(settings: Settings, topology: Topology) -> Path | None:
    """The project's ``migrations/`` folder, or None when the project has none."""
    candidates = [Path.cwd() / MIGRATIONS_DIR_NAME]
    if settings.edulink_db_home is None:  # the project is where .edulink-db was found
        candidates.append(settings.home.parent / MIGRATIONS_DIR_NAME)
    names = _service_folder_names(topology)
    for candidate in candidates:
        if candidate.is_dir() and any((candidate / n).is_dir() for n in names):
            return candidate
    return None


def default_migrations_root(settings: Settings, topology: Topology | None = None) -> Path:
    """Where migrations come from when no directory is given (see the module docstring)."""
    from .history import reference_migrations_dir  # local: migrations imports us

    if settings.edulink_db_migrations is not None:
        return settings.edulink_db_migrations
    project = project_migrations_dir(settings, topology or settings.topology())
    return project if project is not None else reference_migrations_dir()


@dataclass
class InitReport:
    """What ``init`` created and what it found already there (paths relative to the
    project directory)."""

    directory: str
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


MIGRATIONS_README = """\
# Migrations, one folder per service

`edulink-db up` and `edulink-db migrate` apply these (this folder is used whenever it
exists; `EDULINK_DB_MIGRATIONS` points elsewhere). Each service's files run logged in as
that service's migrator role, with `search_path` = its schema, so write names unqualified.

- `V<version>__<description>.sql` runs once, in version order; `R__<description>.sql` runs
  again whenever its content changes.
- The files `edulink-db init` copied are the reference schema that `up` applies: keep them,
  and put your changes in new versions (`V2__add_bio.sql`, ...).
- Never edit a file that was applied: `migrate` refuses to run (it shows both checksums).
  `edulink-db migrations repair` accepts an edit deliberately.
- `edulink-db migrations lint` checks the files without a database (what other services
  read, lock hazards); `edulink-db migrations status` compares them with the database.
"""


def env_example(topology: Topology) -> str:
    """A commented ``.env`` for a new project: nothing in it takes effect until edited."""
    svc = topology.services[0].name.upper()
    return f"""\
# edulink-db settings. Copy this file to .env and uncomment what you need; the
# environment wins over .env. Never commit .env: it may hold passwords.

# -- Which database -------------------------------------------------------------
# With neither DATABASE_URL nor DATABASE_HOST set, 'edulink-db up' starts an embedded
# PostgreSQL in ./{HOME_DIR_NAME}. For Supabase, use the direct connection (port 5432):
# migrations refuse the transaction pooler (port 6543).
# DATABASE_URL=postgresql://postgres:your-password@db.your-project.supabase.co:5432/postgres

# -- Topology: services, schemas, roles, cross-service reads ----------------------
# 'edulink-db init' copied the topology in use to ./{TOPOLOGY_FILE_NAME}; point at it so
# your edits take effect, then run 'edulink-db up' (or 'edulink-db provision').
# EDULINK_DB_TOPOLOGY={TOPOLOGY_FILE_NAME}

# -- Migrations ---------------------------------------------------------------------
# ./{MIGRATIONS_DIR_NAME} (one folder per service) is used when it exists; elsewhere:
# EDULINK_DB_MIGRATIONS=path/to/migrations

# -- Service passwords -------------------------------------------------------------
# Generated into ./{HOME_DIR_NAME}/secrets.json by 'edulink-db up'. To manage one yourself
# (EDULINK_DB_<SERVICE>_PASSWORD, _MIGRATOR_PASSWORD, or a whole _URL):
# EDULINK_DB_{svc}_PASSWORD=
# EDULINK_DB_{svc}_MIGRATOR_PASSWORD=

# -- Connection pools (per service and process) -------------------------------------
# Sized from each role's CONNECTION LIMIT unless set; see 'edulink-db budget'.
# EDULINK_DB_PROCESSES_PER_SERVICE=2
# DATABASE_POOL_SIZE=2
# DATABASE_MAX_OVERFLOW=4
# DATABASE_POOL_TIMEOUT=30

# -- Health checks -------------------------------------------------------------------
# The cache hit ratio is judged once it rests on enough block reads.
# DATABASE_CACHE_HIT_MIN=0.99
# DATABASE_CACHE_HIT_MIN_BLOCKS=10000

# -- Backups -------------------------------------------------------------------------
# EDULINK_DB_BACKUP_DIR=./{HOME_DIR_NAME}/backups
# EDULINK_DB_BACKUP_FULL_EVERY=24h
# EDULINK_DB_BACKUP_SCHEMA_EVERY=1h
"""


class _Writer:
    """Creates files and folders that do not exist yet, remembering them so that a
    failure can remove exactly what this run made."""

    def __init__(self, root: Path, report: InitReport) -> None:
        self.root = root
        self.report = report
        self.files: list[Path] = []
        self.dirs: list[Path] = []

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def mkdir(self, path: Path) -> bool:
        """True if this run created *path*; False if it existed (a folder)."""
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise ConfigError(
                    f"{path} exists and is not a folder: move it away, then run "
                    "'edulink-db init' again.") from None
            return False
        self.dirs.append(path)
        return True

    def write(self, path: Path, data: bytes) -> None:
        # O_EXCL: never overwrite, and never follow a symlink planted at the path.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self.report.kept.append(self.rel(path))
            return
        self.files.append(path)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        self.report.created.append(self.rel(path))

    def undo(self) -> None:
        for path in reversed(self.files):
            path.unlink(missing_ok=True)
        for path in reversed(self.dirs):
            with contextlib.suppress(OSError):  # something else put a file there: keep it
                path.rmdir()


def _reference_files(service: Service) -> list[Path]:
    from .history import reference_migrations_dir

    folder = reference_migrations_dir() / service.name
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".sql")


def init_project(directory: Path, settings: Settings, *, empty: bool = False) -> InitReport:
    """Scaffold *directory* as described in the module docstring; never overwrites.

    Raises ConfigError (with nothing left behind by this run) when a file cannot be
    written or a path that must be a folder is a file.
    """
    topology = settings.topology()  # validate before writing anything
    root = directory.resolve()
    if not root.is_dir():
        raise ConfigError(f"{directory} is not a folder: create it first, or run "
                          "'edulink-db init' inside the project.")
    report = InitReport(directory=str(root))
    writer = _Writer(root, report)
    try:
        migrations = root / MIGRATIONS_DIR_NAME
        writer.mkdir(migrations)
        writer.write(migrations / "README.md", MIGRATIONS_README.encode())
        for svc in topology.services:
            existing = [migrations / n for n in (svc.name, f"{svc.name}_service")
                        if (migrations / n).exists()]
            if existing:
                report.kept.append(writer.rel(existing[0]) + "/")
                continue
            folder = migrations / svc.name
            writer.mkdir(folder)
            report.created.append(writer.rel(folder) + "/")
            sources = [] if empty else _reference_files(svc)
            for source in sources:
                writer.write(folder / source.name, source.read_bytes())
            if not sources:
                writer.write(folder / KEEP_FILE_NAME, b"")
        writer.write(root / ENV_EXAMPLE_NAME, env_example(topology).encode())
        if settings.edulink_db_topology is None:
            writer.write(root / TOPOLOGY_FILE_NAME, default_topology_text().encode())
        else:
            report.notes.append(f"topology: {settings.edulink_db_topology} (EDULINK_DB_TOPOLOGY) "
                                "is yours already; no copy made")
    except OSError as exc:
        writer.undo()
        raise ConfigError(f"init could not write in {root}: {exc.strerror or exc} "
                          f"({exc.filename or root}); nothing was left behind. Fix the "
                          "folder's permissions and run 'edulink-db init' again.") from None
    except BaseException:
        writer.undo()
        raise
    if settings.edulink_db_migrations is not None:
        report.notes.append(
            f"EDULINK_DB_MIGRATIONS is set ({settings.edulink_db_migrations}): 'up' and "
            f"'migrate' use that, not ./{MIGRATIONS_DIR_NAME}; unset it to use the new folder")
    return report
