"""`edulink-db init`, where migrations come from, the missing-folder error, switching from
the reference history to a team's own files, and health checks that need a sample."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.config import _dotenv, load_settings
from microservices.shared.database.core.errors import (
    ConfigError,
    MigrationFileError,
    MigrationValidationError,
)
from microservices.shared.database.migrations import (
    MigrationManager,
    reference_migrations_dir,
    scaffold,
)
from microservices.shared.database.migrations.scaffold import default_migrations_root, init_project
from microservices.shared.database.monitoring.health import DatabaseStats, _cache_hit_check
from microservices.shared.database.monitoring.monitor import get_database_health
from microservices.shared.database.topology import default_topology, default_topology_text

from .conftest import do_provision, service_env

CLI = [sys.executable, "-m", "microservices.shared.database"]
REFERENCE = reference_migrations_dir()


@pytest.fixture
def no_db_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A project directory as cwd, with no edulink-db settings in the environment."""
    for key in list(os.environ):
        if key.startswith(("DATABASE_", "EDULINK_DB_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    _dotenv.cache_clear()
    return tmp_path


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# -- init, without a database -----------------------------------------------------------


def test_init_copies_the_reference_byte_for_byte_and_never_overwrites(no_db_env: Path) -> None:
    project = no_db_env
    (project / ".env.example").write_text("# mine\n")
    team = project / "migrations" / "user"
    team.mkdir(parents=True)
    (team / "V1__our_own.sql").write_text("CREATE TABLE ours (id int);\n")

    report = init_project(project, load_settings())

    for svc in default_topology().services:
        if svc.name == "user":
            continue
        for source in (REFERENCE / svc.name).glob("*.sql"):
            assert (project / "migrations" / svc.name / source.name).read_bytes() == \
                source.read_bytes()
    # The team's folder is left alone: the reference V1 next to theirs would be 2 x V1.
    assert sorted(p.name for p in team.iterdir()) == ["V1__our_own.sql"]
    assert "migrations/user/" in report.kept and ".env.example" in report.kept
    assert (project / ".env.example").read_text() == "# mine\n"
    assert (project / "topology.toml").read_text() == default_topology_text()

    before = tree(project)
    again = init_project(project, load_settings())
    assert again.created == [] and tree(project) == before


def test_init_empty_makes_folders_git_keeps(no_db_env: Path) -> None:
    init_project(no_db_env, load_settings(), empty=True)
    for svc in default_topology().services:
        folder = no_db_env / "migrations" / svc.name
        assert sorted(p.name for p in folder.iterdir()) == [".gitkeep"]
    env = (no_db_env / ".env.example").read_text()
    # Every setting is commented out: copying the example changes nothing by itself.
    assert all(not line.strip() or line.startswith("#") for line in env.splitlines())
    assert "# DATABASE_CACHE_HIT_MIN_BLOCKS=10000" in env


def test_init_never_writes_through_a_planted_symlink(no_db_env: Path, tmp_path_factory:
                                                     pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "victim"
    outside.write_text("precious\n")
    (no_db_env / "topology.toml").symlink_to(outside)
    (no_db_env / ".env.example").symlink_to(no_db_env / "dangling")
    report = init_project(no_db_env, load_settings())
    assert outside.read_text() == "precious\n"
    assert not (no_db_env / "dangling").exists()
    assert {"topology.toml", ".env.example"} <= set(report.kept)


def test_init_failure_removes_only_what_it_made(no_db_env: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (no_db_env / "migrations").mkdir()
    (no_db_env / "migrations" / "notes.txt").write_text("keep me\n")

    def disk_full() -> str:
        raise OSError(28, "No space left on device", "topology.toml")

    monkeypatch.setattr(scaffold, "default_topology_text", disk_full)
    with pytest.raises(ConfigError, match=r"No space left on device.*nothing was left behind"):
        init_project(no_db_env, load_settings())
    assert tree(no_db_env) == {"migrations/notes.txt": b"keep me\n"}
    assert sorted(p.name for p in (no_db_env / "migrations").iterdir()) == ["notes.txt"]


def test_init_cli_output_and_bad_input(no_db_env: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "EDULINK_", "SUPABASE_"))}
    made = subprocess.run([*CLI, "init"], cwd=no_db_env, env=env, capture_output=True,
                          text=True, check=False, timeout=60)
    assert made.returncode == 0, made.stderr
    assert "created migrations/user/V1__profiles_preferences_academic_info.sql" in made.stdout
    assert "created .env.example" in made.stdout and "created topology.toml" in made.stdout
    # The copies pass the contract and lint checks that migrate applies.
    lint = subprocess.run([*CLI, "migrations", "lint", "--strict"], cwd=no_db_env, env=env,
                          capture_output=True, text=True, check=False, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "0 error(s), 0 warning(s)" in lint.stdout

    other = no_db_env / "other"
    other.mkdir()
    (other / "migrations").write_text("not a folder")
    bad = subprocess.run([*CLI, "init", str(other)], cwd=no_db_env, env=env,
                         capture_output=True, text=True, check=False, timeout=60)
    assert bad.returncode == 2
    assert "is not a folder" in bad.stderr and "Traceback" not in bad.stderr
    assert sorted(p.name for p in other.iterdir()) == ["migrations"]
    missing = subprocess.run([*CLI, "init", str(no_db_env / "nowhere")], cwd=no_db_env,
                             env=env, capture_output=True, text=True, check=False, timeout=60)
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    assert not (no_db_env / "nowhere").exists()


def test_which_migrations_are_used(no_db_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A Django app's migrations/ folder is not a project's migrations root.
    django_like = no_db_env / "migrations"
    django_like.mkdir()
    (django_like / "__init__.py").write_text("")
    (django_like / "0001_initial.py").write_text("")
    assert default_migrations_root(load_settings()) == REFERENCE
    init_project(no_db_env, load_settings())
    assert default_migrations_root(load_settings()) == no_db_env / "migrations"
    assert MigrationManager(load_settings()).root == no_db_env / "migrations"
    # From a subdirectory, the project is where .edulink-db is.
    (no_db_env / ".edulink-db").mkdir()
    (no_db_env / ".edulink-db" / "state.json").write_text("{}")
    sub = no_db_env / "services" / "user"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert default_migrations_root(load_settings()) == no_db_env / "migrations"
    monkeypatch.setenv("EDULINK_DB_MIGRATIONS", "/elsewhere")
    assert default_migrations_root(load_settings()) == Path("/elsewhere")


# -- against a database -------------------------------------------------------------------


@pytest.fixture
def reference_applied(fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                      no_db_env: Path) -> dict[str, Any]:
    """What 'edulink-db up' leaves in a project without ./migrations: the reference
    schema applied (cwd = the empty project directory)."""
    do_provision(fresh_db, default_topology())
    service_env(monkeypatch, fresh_db)
    result = MigrationManager(load_settings()).run_all_migrations()
    assert result["user"]["applied"] == ["V1__profiles_preferences_academic_info.sql"]
    return fresh_db


def test_a_missing_migrations_folder_is_its_own_error(reference_applied: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    manager = MigrationManager()
    with pytest.raises(MigrationFileError) as info:
        manager.run_service_migrations('user_service', './migrations/user')
    message = str(info.value)
    assert "migrations/user" in message and "does not exist" in message
    assert "edulink-db init" in message and "file is gone" not in message
    with pytest.raises(MigrationFileError, match="edulink-db init"):
        manager.run_all_migrations('./migrations')
    # A mistyped EDULINK_DB_MIGRATIONS is not "no migrations" either.
    monkeypatch.setenv("EDULINK_DB_MIGRATIONS", "./migratoins")
    with pytest.raises(MigrationFileError, match=r"migratoins .*does not exist"):
        MigrationManager(load_settings()).run_all_migrations()


def test_after_init_the_seed_calls_find_nothing_pending(reference_applied: dict[str, Any],
                                                        no_db_env: Path) -> None:
    init_project(no_db_env, load_settings())
    manager = MigrationManager()
    assert manager.run_service_migrations('user_service', './migrations/user')["applied"] == []
    results = manager.run_all_migrations('./migrations')
    assert all(r["applied"] == [] for r in results.values())
    assert manager.get_migration_status('user_service')["ok"]
    # A service folder removed from a root whose history it has: not "the file is gone".
    for file in (no_db_env / "migrations" / "auth").iterdir():
        file.unlink()
    (no_db_env / "migrations" / "auth").rmdir()
    with pytest.raises(MigrationFileError, match=r"auth: migrations directory .*auth.* does "
                                                 r"not exist.*edulink-db init"):
        MigrationManager().run_all_migrations()


def test_switching_to_own_files_explains_and_repair_adopts_them(
        reference_applied: dict[str, Any], no_db_env: Path) -> None:
    """A team points the database at its own files: V1 replaces the reference V1 (the
    schema already holds it), V2 is new."""
    init_project(no_db_env, load_settings(), empty=True)
    user = no_db_env / "migrations" / "user"
    (user / "V1__our_baseline.sql").write_text("-- what the reference V1 created\nSELECT 1;\n")
    (user / "V2__bio.sql").write_text(
        "ALTER TABLE profiles_userprofile ADD COLUMN bio_v2 text;\n")
    with pytest.raises(MigrationValidationError) as info:
        MigrationManager().run_all_migrations()
    message = str(info.value)
    assert "nothing was run" in message
    for advice in ("edulink-db init", "edulink-db migrations repair",
                   "edulink-db migrations baseline", "Your own migrations"):
        assert advice in message

    repaired = MigrationManager().repair()
    assert "V1__our_baseline.sql: checksum re-recorded" in repaired["user"]
    results = MigrationManager().run_all_migrations()
    assert results["user"]["applied"] == ["V2__bio.sql"]
    status = MigrationManager().get_migration_status("user")
    assert status["ok"] and status["last_applied_version"] == "2"
    with psycopg.connect(**reference_applied) as conn:
        scripts = [r[0] for r in conn.execute(
            "SELECT script FROM user_schema.edulink_schema_history"
            " WHERE success ORDER BY installed_rank").fetchall()]
    assert scripts == ["V1__our_baseline.sql", "V2__bio.sql"]


def test_a_service_folder_missing_before_any_history_means_no_migrations(
        fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch, no_db_env: Path) -> None:
    """Only a folder whose history exists is missed: a root holding some services'
    folders (or the reference root and a topology's extra service) still works."""
    do_provision(fresh_db, default_topology())
    service_env(monkeypatch, fresh_db)
    root = no_db_env / "partial"
    (root / "auth").mkdir(parents=True)
    (root / "auth" / "V1__t.sql").write_text("CREATE TABLE t (id int);\n")
    results = MigrationManager(load_settings(), root).run_all_migrations()
    assert results["auth"]["applied"] == ["V1__t.sql"] and results["user"]["applied"] == []


# -- health checks that need a sample -----------------------------------------------------


def test_cache_hit_ratio_is_judged_only_on_a_meaningful_sample(no_db_env: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    young = DatabaseStats(cache_hit_ratio=0.988, cache_blocks=400)
    check = _cache_hit_check(young, load_settings())
    assert check["status"] == "ok" and check["value"] == 0.988
    assert check["message"].startswith("not enough data yet: 400 block reads of the 10000")
    busy = DatabaseStats(cache_hit_ratio=0.988, cache_blocks=50_000)
    assert _cache_hit_check(busy, load_settings())["status"] == "degraded"
    monkeypatch.setenv("DATABASE_CACHE_HIT_MIN_BLOCKS", "100")
    assert _cache_hit_check(young, load_settings())["status"] == "degraded"
    monkeypatch.setenv("DATABASE_CACHE_HIT_MIN", "0.98")
    assert _cache_hit_check(young, load_settings())["status"] == "ok"
    monkeypatch.setenv("DATABASE_CACHE_HIT_MIN_BLOCKS", "-1")
    with pytest.raises(ConfigError, match="DATABASE_CACHE_HIT_MIN_BLOCKS"):
        load_settings()


def test_fresh_database_health_reads_the_sample(provisioned_db: dict[str, Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    service_env(monkeypatch, provisioned_db,
                extra={"DATABASE_CACHE_HIT_MIN_BLOCKS": str(10**15)})
    health = get_database_health(load_settings())
    check = health["checks"]["cache_hit_ratio"]
    assert check["status"] == "ok" and "not enough data yet" in check["message"]
    blocks = int(check["message"].split(": ")[1].split()[0])
    assert blocks > 0  # the sample is read from pg_stat_database, not assumed
