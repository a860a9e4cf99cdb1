"""Django support lives in microservices.shared.database.django_support; the older dotted
paths (django_settings, django_rls, django_test_runner and the ENGINE django_backend) are
thin re-exports that give the very same objects."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = "microservices.shared.database"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / "microservices" / "shared" / "database"

# old module -> the django_support modules it re-exports
SHIMS = {
    "django_settings": ["django_support.settings", "django_support.router"],
    "django_rls": ["django_support.rls"],
    "django_test_runner": ["django_support.test_runner"],
    "django_backend.base": ["django_support.backend.base"],
}

# (old dotted path, new dotted path) of what settings files and users name
SAME = [
    ("django_backend.base.DatabaseWrapper", "django_support.backend.base.DatabaseWrapper"),
    ("django_settings.configure_service_database",
     "django_support.settings.configure_service_database"),
    ("django_settings.configure_cross_service_databases",
     "django_support.settings.configure_cross_service_databases"),
    ("django_settings.service_table", "django_support.settings.service_table"),
    ("django_settings.get_database_router", "django_support.router.get_database_router"),
    ("django_settings.EdulinkRouter", "django_support.router.EdulinkRouter"),
    ("django_settings.ReplicaPinningMiddleware",
     "django_support.router.ReplicaPinningMiddleware"),
    ("django_settings.pin_to_primary", "django_support.router.pin_to_primary"),
    ("django_rls.RLSUserMiddleware", "django_support.rls.RLSUserMiddleware"),
    ("django_rls.rls_user", "django_support.rls.rls_user"),
    ("django_rls.current_rls_user", "django_support.rls.current_rls_user"),
    ("django_rls.install", "django_support.rls.install"),
    ("django_test_runner.EdulinkTestRunner", "django_support.test_runner.EdulinkTestRunner"),
]


def _resolve(dotted: str) -> object:
    from django.utils.module_loading import import_string  # how Django reads settings

    return import_string(f"{PACKAGE}.{dotted}")


@pytest.mark.parametrize(("old", "new"), SAME, ids=[old for old, _ in SAME])
def test_old_path_is_the_new_object(old: str, new: str) -> None:
    assert _resolve(old) is _resolve(new)


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_every_reexported_name_is_the_original(old: str) -> None:
    shim = importlib.import_module(f"{PACKAGE}.{old}")
    sources = [importlib.import_module(f"{PACKAGE}.{new}") for new in SHIMS[old]]
    assert shim.__all__
    for name in shim.__all__:
        found = [vars(s)[name] for s in sources if name in vars(s)]
        assert found, f"{old}.{name} is in none of {SHIMS[old]}"
        assert all(getattr(shim, name) is obj for obj in found), f"{old}.{name}"


@pytest.mark.parametrize("old", [*sorted(SHIMS), "django_backend"])
def test_old_modules_are_thin(old: str) -> None:
    # Only a docstring, imports from django_support and __all__: no logic to drift.
    module = importlib.import_module(f"{PACKAGE}.{old}")
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom):
            assert node.level > 0 and (node.module or "").startswith("django_support"), \
                ast.unparse(node)
            continue
        assert isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__", \
            ast.unparse(node)


def test_django_loads_the_engine_by_old_and_new_name() -> None:
    from django.db.utils import load_backend

    from microservices.shared.database.django_support.backend.base import DatabaseWrapper

    for engine in (f"{PACKAGE}.django_backend", f"{PACKAGE}.django_support.backend"):
        assert load_backend(engine).DatabaseWrapper is DatabaseWrapper


def test_the_engine_settings_emit_is_loadable() -> None:
    from django.db.utils import load_backend

    from microservices.shared.database.django_support import settings
    from microservices.shared.database.django_support.backend.base import DatabaseWrapper

    engines = set()
    for node in ast.walk(ast.parse(Path(settings.__file__).read_text())):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (isinstance(key, ast.Constant) and key.value == "ENGINE"
                        and isinstance(value, ast.Constant) and value.value != "mssql"):
                    engines.add(value.value)
    assert engines == {f"{PACKAGE}.django_backend"}  # unchanged: existing settings keep it
    assert load_backend(engines.pop()).DatabaseWrapper is DatabaseWrapper


def test_engine_keys_match_the_settings_keys() -> None:
    # backend/base.py repeats the settings' keys (the two are independent layers).
    from microservices.shared.database.django_support import settings
    from microservices.shared.database.django_support.backend import base

    for key in ("SERVICE_KEY", "READONLY_KEY", "CREDENTIALS_KEY", "TRACE_KEY"):
        assert getattr(base, key) == getattr(settings, key), key


def test_django_support_modules_stay_small() -> None:
    for path in sorted((PACKAGE_DIR / "django_support").rglob("*.py")):
        lines = len(path.read_text().splitlines())
        assert lines < 600, f"{path.relative_to(PACKAGE_DIR)}: {lines} lines"
