"""Every import path the seed (and Django settings strings) name keeps working after the
package was split into subpackages, and the packaged data files still ship."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "microservices.shared.database"
PACKAGE_DIR = ROOT / "microservices" / "shared" / "database"

# module -> names the seed README (and Django settings strings) import from it.
SEED_PATHS = {
    "config": [],
    "connection_manager": ["connection_manager", "ConnectionManager"],
    "migrations": ["MigrationManager"],
    "django_settings": ["configure_service_database", "configure_cross_service_databases",
                        "get_database_router"],
    "cross_schema_access": ["get_user_profile_with_auth", "get_institution_details",
                            "create_audit_log", "cross_schema_manager"],
    "monitoring": ["record_query_execution", "get_database_health", "get_service_performance"],
    "backup": ["create_full_backup", "create_schema_backup", "restore_backup",
               "get_backup_status"],
    "django_rls": ["RLSUserMiddleware", "rls_user"],
    "django_test_runner": ["EdulinkTestRunner"],
}


@pytest.mark.parametrize("module", sorted(SEED_PATHS))
def test_seed_import_path(module: str) -> None:
    imported = importlib.import_module(f"{PACKAGE}.{module}")
    for name in SEED_PATHS[module]:
        assert getattr(imported, name, None) is not None, f"{module}.{name} is gone"


def test_seed_imports_verbatim() -> None:
    # The statements as the seed writes them (a static check for mypy, too).
    from microservices.shared.database.backup import (  # noqa: F401
        create_full_backup,
        create_schema_backup,
        get_backup_status,
        restore_backup,
    )
    from microservices.shared.database.connection_manager import (  # noqa: F401
        ConnectionManager,
        connection_manager,
    )
    from microservices.shared.database.cross_schema_access import (  # noqa: F401
        create_audit_log,
        cross_schema_manager,
        get_institution_details,
        get_user_profile_with_auth,
    )
    from microservices.shared.database.django_settings import (  # noqa: F401
        configure_cross_service_databases,
        configure_service_database,
        get_database_router,
    )
    from microservices.shared.database.migrations import MigrationManager
    from microservices.shared.database.monitoring import (  # noqa: F401
        get_database_health,
        get_service_performance,
        record_query_execution,
    )

    assert MigrationManager.__module__ == f"{PACKAGE}.migrations.manager"


def test_console_script_and_module_entry_point() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"edulink-db": f"{PACKAGE}.cli:main"}
    for argv in ([sys.executable, "-m", PACKAGE, "--help"],
                 [str(Path(sys.executable).parent / "edulink-db"), "--help"]):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        for command in ("up", "provision", "verify", "migrate", "backups", "health"):
            assert f" {command} " in result.stdout


def _packages() -> set[Path]:
    return {p.parent for p in PACKAGE_DIR.rglob("__init__.py")}


def test_package_data_globs_ship_every_data_file() -> None:
    # setuptools matches package-data globs relative to the directory of the package
    # they are listed under; a file no glob matches is silently left out of the wheel.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data: dict[str, list[str]] = config["tool"]["setuptools"]["package-data"]
    shipped: set[Path] = set()
    for package, patterns in package_data.items():
        directory = ROOT.joinpath(*package.split("."))
        assert directory in _packages(), f"package-data names {package}, not a package"
        for pattern in patterns:
            shipped.update(directory.glob(pattern))
    data_files = {p for p in PACKAGE_DIR.rglob("*")
                  if p.is_file() and p.suffix in {".sql", ".toml", ".md"}
                  and "__pycache__" not in p.parts}
    assert data_files, "no data files found: the check would be vacuous"
    assert not data_files - shipped, sorted(str(p.relative_to(ROOT)) for p in data_files - shipped)


def test_packaged_resources_resolve() -> None:
    from microservices.shared.database.migrations import reference_migrations_dir
    from microservices.shared.database.topology import default_topology_text

    assert "[" in default_topology_text()
    assert sorted(p.name for p in reference_migrations_dir().iterdir() if p.is_dir())


def test_every_error_class_lives_in_core_errors_and_is_exported() -> None:
    """One place for the exceptions a caller may catch (issue 29): each class defined in
    core/errors.py is importable from the package top and listed in its __all__, and no
    other module of the package defines a public exception class."""
    import ast
    import inspect

    import microservices.shared.database as package
    from microservices.shared.database.core import errors

    defined = [name for name, obj in vars(errors).items()
               if inspect.isclass(obj) and issubclass(obj, BaseException)
               and obj.__module__ == errors.__name__]
    assert len(defined) >= 30
    for name in defined:
        assert getattr(package, name) is getattr(errors, name), name
        assert name in package.__all__, name
    root = Path(package.__file__).parent
    elsewhere = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "errors.py" and path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.ClassDef) and not node.name.startswith("_")
                    and any(isinstance(b, ast.Name)
                            and (b.id.endswith(("Error", "Exception")) or b.id in defined)
                            for b in node.bases)):
                elsewhere.append(f"{path.relative_to(root)}:{node.name}")
    assert elsewhere == []
