"""A Django test runner for services on the shared database.

    TEST_RUNNER = 'microservices.shared.database.django_test_runner.EdulinkTestRunner'

Django's own runner creates the test database as the alias's user and then
migrates it with that user. Neither works here: a runtime role may create
neither databases nor tables. Django would also treat every alias of the one
shared database as a mirror and migrate only the first
(``get_unique_databases_and_mirrors``), so the apps of other writable aliases
would never get their tables.

This runner creates ``test_<NAME>`` with the admin credentials (DATABASE_URL or
the embedded server), provisions it from the topology, migrates *every* writable
alias as its service's migrator role (which acts as the owner role), points all
aliases at it, and drops it
afterwards (``--keepdb`` keeps it).
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.core.management import call_command
from django.db import connections
from django.test.runner import DiscoverRunner
from psycopg import sql

from ..config import admin_conninfo, load_settings
from ..lifecycle import migrator_password, service_password
from ..privileges.provisioning import provision
from .settings import READONLY_KEY, SERVICE_KEY, configure_service_database

_SWAPPED = ("USER", "PASSWORD", "HOST", "PORT", "OPTIONS")


class EdulinkTestRunner(DiscoverRunner):  # type: ignore[misc]  # Django ships no stubs
    """DiscoverRunner that builds the test database the way edulink-db builds databases."""

    def setup_databases(self, **kwargs: Any) -> Any:
        settings = load_settings()
        admin = admin_conninfo(settings)
        default = connections["default"].settings_dict
        name = (default.get("TEST") or {}).get("NAME") or f"test_{default['NAME']}"
        with psycopg.connect(**admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  [name]).fetchone()
            if exists and not self.keepdb:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                    sql.Identifier(name)))
            if not exists or not self.keepdb:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        test_admin = {**admin, "dbname": name}
        provision(test_admin, settings.topology(), lambda svc: service_password(settings, svc),
                  migrator_passwords=lambda svc: migrator_password(settings, svc))
        old_names = {}
        from django.conf import settings as django_settings

        for alias in connections:
            conn = connections[alias]
            conn.close()
            old_names[alias] = conn.settings_dict["NAME"]
            conn.settings_dict["NAME"] = name
            django_settings.DATABASES[alias]["NAME"] = name
        for alias in connections:
            if not connections[alias].settings_dict.get(READONLY_KEY):
                self._migrate_as_owner(alias, name)
        return old_names, test_admin, admin

    def _migrate_as_owner(self, alias: str, name: str) -> None:
        conn = connections[alias]
        service = conn.settings_dict.get(SERVICE_KEY)
        owner = configure_service_database(service, migrate=True)["default"]
        saved = {key: conn.settings_dict[key] for key in _SWAPPED}
        conn.close()
        conn.settings_dict.update({key: owner[key] for key in _SWAPPED})
        try:
            call_command("migrate", database=alias, interactive=False,
                         verbosity=max(self.verbosity - 1, 0), run_syncdb=True)
        finally:
            conn.close()
            conn.settings_dict.update(saved)

    def teardown_databases(self, old_config: Any, **kwargs: Any) -> None:
        old_names, test_admin, admin = old_config
        from django.conf import settings as django_settings

        for alias, old in old_names.items():
            connections[alias].close()
            connections[alias].settings_dict["NAME"] = old
            django_settings.DATABASES[alias]["NAME"] = old
        if not self.keepdb:
            with psycopg.connect(**admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(test_admin["dbname"])))
