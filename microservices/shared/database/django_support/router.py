"""Django's database router from the topology, and read-your-writes pinning.

    DATABASE_ROUTERS = [get_database_router()]

* The router maps app labels to services (the topology's ``django_apps``,
  overridden by the ``EDULINK_DB_APP_SERVICES`` setting; an app in neither
  belongs to the ``'default'`` alias's service). Reads go to the owning service's
  alias. Writes to another service's data raise ``CrossServiceWriteError``, and
  PostgreSQL refuses them too. Relations are only allowed within one service, and
  each service migrates only its own apps, on its own alias.
* With read replicas (the ``'replica'`` aliases :mod:`.settings` adds), a read goes to a
  replica only when it is outside a transaction on ``'default'``, no write happened
  earlier in the request (read-your-writes: after a write, the rest of the request reads
  the primary; :class:`ReplicaPinningMiddleware` scopes that to one request,
  :func:`pin_to_primary` to a block of code, e.g. a background task) and the replica's
  replay lag is within ``DATABASE_REPLICA_MAX_LAG``; otherwise it reads ``'default'``.

The aliases it routes between are the ones :mod:`.settings` builds (its ``*_KEY`` entries).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..config import load_settings
from ..core.errors import CrossServiceAccessError, CrossServiceWriteError
from ..topology import Topology
from .settings import APP_SERVICES_SETTING, READONLY_KEY, REPLICA_KEY, SERVICE_KEY

# True once the current request (or pin_to_primary block) wrote: its reads then go to
# the primary, which has its writes; a replica may not have replayed them yet.
_pinned: contextvars.ContextVar[bool] = contextvars.ContextVar("edulink_db_pinned",
                                                               default=False)


@contextmanager
def pin_to_primary() -> Iterator[None]:
    """Within the block, every read goes to the primary (e.g. a background task that
    must see what it or the request that queued it just wrote)."""
    token = _pinned.set(True)
    try:
        yield
    finally:
        _pinned.reset(token)


class ReplicaPinningMiddleware:
    """Django middleware: each request starts unpinned, and a write pins the rest of
    that request to the primary.  Without it, a pin set by a write lasts for the rest
    of the thread's or task's context -- safe (reads the primary), but wasteful."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        token = _pinned.set(False)
        try:
            return self.get_response(request)
        finally:
            _pinned.reset(token)


class EdulinkRouter:
    """Django database router derived from the topology (a duck-typed router)."""

    def __init__(self, topology: Topology | None = None) -> None:
        self._topology = topology
        self._replicas: Any = None  # connections.replicas.ReplicaSet[str] of the aliases

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            self._topology = load_settings().topology()
        return self._topology

    # -- lookups ----------------------------------------------------------------
    @staticmethod
    def _databases() -> dict[str, dict[str, Any]]:
        from django.conf import settings

        dbs: dict[str, dict[str, Any]] = settings.DATABASES
        return dbs

    def own_service(self) -> str | None:
        default = self._databases().get("default", {})
        service = default.get(SERVICE_KEY)
        return str(service) if service else None

    def app_service(self, app_label: str) -> str | None:
        from django.conf import settings

        overrides: dict[str, str] = getattr(settings, APP_SERVICES_SETTING, {}) or {}
        if app_label in overrides:
            return self.topology.service(overrides[app_label]).name
        for svc in self.topology.services:
            if app_label in svc.django_apps:
                return svc.name
        return self.own_service()  # an app nobody claims belongs to this project

    def alias_for(self, service: str | None) -> str | None:
        if service is None or service == self.own_service():
            return "default"
        for alias, conf in self._databases().items():
            if conf.get(SERVICE_KEY) == service:
                return alias
        return None

    def replica_alias(self) -> str | None:
        """A replica alias of 'default' that may serve a read now, else None."""
        if self._replicas is None:
            from ..connections.replicas import ReplicaSet

            aliases = [(name, conf) for name, conf in self._databases().items()
                       if conf.get(REPLICA_KEY)]
            entries = [({"host": c["HOST"], "port": c["PORT"], "dbname": c["NAME"],
                         "user": c["USER"], "password": c["PASSWORD"],
                         **{k: v for k, v in c["OPTIONS"].items()
                            if k in ("options", "sslmode", "sslrootcert",
                                     "target_session_attrs")}}, name)
                       for name, c in aliases]
            own = self.own_service()
            self._replicas = ReplicaSet(
                str(own), entries, load_settings().database_replica_max_lag,
                schema=None if own is None else self.topology.service(own).schema)
        if not self._replicas.replicas:
            return None
        chosen = self._replicas.choose()
        return None if chosen is None else str(chosen.pool)

    # -- Django's router protocol ----------------------------------------------------
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        service = self.app_service(model._meta.app_label)
        alias = self.alias_for(service)
        if alias is None:
            raise CrossServiceAccessError(
                f"{model._meta.label} belongs to service {service!r}, which this project "
                f"({self.own_service()!r}) has no database alias for: add it with "
                f"configure_cross_service_databases({self.own_service()!r}, [{service!r}]).")
        if alias == "default" and not _pinned.get():
            from django.db import connections

            # Inside atomic() the transaction must see its own writes and one snapshot.
            if not connections["default"].in_atomic_block:
                return self.replica_alias() or alias
        return alias

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        service = self.app_service(model._meta.app_label)
        own = self.own_service()
        if service is not None and own is not None and service != own:
            raise CrossServiceWriteError(
                f"Service {own!r} may not write {model._meta.label}: it belongs to service "
                f"{service!r} ({self.topology.service(service).schema}). Ask that service "
                "to make the change.")
        _pinned.set(True)  # read-your-writes: the rest of the request reads the primary
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return bool(self.app_service(obj1._meta.app_label)
                    == self.app_service(obj2._meta.app_label))

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool | None:
        # `migrate` asks the router before its post_migrate signal fires; connecting
        # here (not in __init__, which runs while settings are imported) keeps Django's
        # models out of settings time.  The dispatch_uid makes it once per process.
        from django.db.models.signals import post_migrate

        post_migrate.connect(_grant_exposure_after_migrate,
                             dispatch_uid="edulink-db:grant-exposed-columns")
        conf = self._databases().get(db, {})
        if conf.get(READONLY_KEY):
            return False
        alias_service = conf.get(SERVICE_KEY) or self.own_service()
        return bool(self.app_service(app_label) == alias_service)


def _grant_exposure_after_migrate(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """After ``migrate`` as a service's migrator: give the services that read it the
    exposed columns of the tables Django just created (provisioning ran before they
    existed), as edulink-db's own migration runner does after every file."""
    from django.db import connections

    from ..migrations.runner import grant_exposed_columns

    conn = connections[using]
    user = conn.settings_dict.get("USER")
    topology = load_settings().topology()
    service = next((s for s in topology.services if s.migrator_role == user), None)
    if service is None:  # not a migrator login: nothing of ours to grant
        return
    conn.ensure_connection()
    grant_exposed_columns(conn.connection, topology, service)


def get_database_router() -> EdulinkRouter:
    """The router for ``DATABASE_ROUTERS`` (an instance; Django accepts those)."""
    return EdulinkRouter()
