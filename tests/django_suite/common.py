"""What every mode's settings share: the server, two aliases, Django's test defaults.

The harness passes the home server's superuser parameters in the environment
(:data:`SERVER_ENV`, JSON): Django's suite creates databases, extensions and tables,
so every mode logs in as the server's superuser.  The settings mirror Django's own
``tests/test_sqlite.py`` (the suite's reference settings) apart from DATABASES.
"""

from __future__ import annotations

import json
import os
from typing import Any

import django

SERVER_ENV = "EDULINK_DJANGO_SUITE_SERVER"
STOCK_ENGINE = "django.db.backends.postgresql"
EDULINK_ENGINE = "microservices.shared.database.django_backend"
SERVICE_KEY = "EDULINK_SERVICE"  # django_support.backend.base.SERVICE_KEY
SERVICE = "user"  # the service the engine looks up in the location registry
ALIASES = ("default", "other")  # the two aliases Django's suite needs


def test_database_name(mode: str, alias: str) -> str:
    """The test database of *alias* in *mode*: distinct per mode, so a run that was
    killed leaves nothing that the next mode's run would trip over; the moved modes
    create these themselves (``--keepdb``)."""
    base = "edulink_suite_" + mode.replace("-", "_")
    return base if alias == "default" else f"{base}_{alias}"


def databases(mode: str, engine: str, *, service: str | None = None,
              options: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """DATABASES for *mode*: both aliases with the same ENGINE and OPTIONS."""
    server = json.loads(os.environ[SERVER_ENV])
    result: dict[str, dict[str, Any]] = {}
    for alias in ALIASES:
        entry: dict[str, Any] = {
            "ENGINE": engine,
            # The maintenance database: it exists on every server, and Django only
            # uses it before switching each alias to its test database.
            "NAME": "postgres",
            "HOST": server["host"],
            "PORT": str(server["port"]),
            "USER": server["user"],
            "PASSWORD": server["password"],
            "OPTIONS": dict(options or {}),
            "TEST": {"NAME": test_database_name(mode, alias)},
        }
        if service:
            entry[SERVICE_KEY] = service
        result[alias] = entry
    return result


SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
USE_TZ = False
if django.VERSION < (6, 0):
    # Django 6.0 made BigAutoField the default and dropped this from its test settings;
    # older suites expect AutoField.
    DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

__all__ = ["PASSWORD_HASHERS", "SECRET_KEY", "USE_TZ"]
if django.VERSION < (6, 0):
    __all__ += ["DEFAULT_AUTO_FIELD"]
