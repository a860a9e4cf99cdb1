"""DatabaseWrapper: Django's PostgreSQL backend plus the location registry.

Each new connection of an alias whose settings name a service (``EDULINK_SERVICE``,
set by django_settings) consults the registry of the alias's configured (home)
server, cached for ``location.TTL_S`` per process:

- at home (never moved, or moved back): the connection Django would make, and the
  registry refresh, when one is due, runs on that very connection (no extra one);
- moved: a direct connection to the new location with the same role and password,
  SCRAM required (``location.located_params``); with Django's pool (``pool=True``)
  such connections bypass the pool, which stays bound to the home server;
- frozen (a cutover in progress) on a writable alias: wait, at most
  ``FREEZE_WAIT_S``, then go where the registry then points.

A statement already sent when a cutover revokes the old location's writes gets
Django's ProgrammingError (permission denied); the freeze announced beforehand
makes that rare (see docs/move-service.md).
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.db.backends.postgresql import base

from ..connection_manager import FREEZE_WAIT_S
from ..connections import location

SERVICE_KEY = "EDULINK_SERVICE"  # django_settings.SERVICE_KEY (no import: layering)
READONLY_KEY = "EDULINK_READONLY"


class DatabaseWrapper(base.DatabaseWrapper):  # type: ignore[misc]
    """Django's PostgreSQL DatabaseWrapper whose new connections follow the registry."""

    _edulink_direct = False  # True while making a connection that bypasses the pool

    @property
    def pool(self) -> Any:
        if self._edulink_direct:
            return None
        # Django < 5.1 has no connection pool (nor this property).
        return getattr(super(), "pool", None)

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        service = self.settings_dict.get(SERVICE_KEY)
        if not service:
            return super().get_new_connection(conn_params)
        registry = location.registry_for(conn_params)
        home: list[Any] = []

        def run(query: Any) -> location.Rows:
            if not home or home[0].closed:
                home[:] = [super(DatabaseWrapper, self).get_new_connection(conn_params)]
            conn = home[0]
            with psycopg.Cursor(conn) as cur:
                rows: location.Rows = cur.execute(query, prepare=False).fetchall()
            if not conn.autocommit:
                conn.rollback()  # leave it idle: Django sets autocommit next
            return rows

        loc = registry.get(service, run)
        if loc.frozen and not self.settings_dict.get(READONLY_KEY):
            loc = registry.wait_unfrozen(service, run, FREEZE_WAIT_S)
        if loc.where is None:
            return home[0] if home else super().get_new_connection(conn_params)
        if home:
            self._edulink_release(home[0])
        self._edulink_direct = True
        try:
            return super().get_new_connection(location.located_params(conn_params, loc.where))
        finally:
            self._edulink_direct = False

    def _edulink_release(self, conn: Any) -> None:
        if getattr(conn, "_pool", None) is not None:
            conn._pool.putconn(conn)
        else:
            conn.close()

    def _close(self) -> None:
        # A direct connection (the service moved) made while Django's pool is on is
        # closed, not handed to a pool it does not belong to.
        if self.connection is not None and getattr(self.connection, "_pool", None) is None \
                and getattr(super(), "pool", None):
            with self.wrap_database_errors:
                self.connection.close()
            return
        super()._close()
