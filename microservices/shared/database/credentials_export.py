"""What ``edulink-db credentials export SERVICE`` writes: one service's connection
settings and password, in the form a deployment wants.

* ``json`` -- the credential file (:mod:`.core.credentials`); point
  ``EDULINK_DB_CREDENTIALS_FILE`` at it.  Re-read when it changes: a rotation reaches
  running processes without a restart.
* ``env`` -- ``EDULINK_DB_SERVICE`` and ``EDULINK_DB_<SERVICE>_URL`` lines, for
  ``docker --env-file``, systemd ``EnvironmentFile=`` or ``kubectl create secret generic
  --from-env-file``.  Environment variables are fixed for a process's life: after a
  rotation, restart it.
* ``k8s-secret`` -- a Kubernetes Secret manifest holding ``credential.json`` (the json
  form), to mount as a file (``defaultMode: 0400``).
* ``django`` -- a Python settings module with ``DATABASES`` (the service's ``default``
  alias and one per service it reads) as :mod:`.django_support.settings` builds them, for Django
  projects that want static settings (restart after a rotation).

Everything is built from the credential the admin side resolves for the service's
runtime role (:func:`.config.service_conninfo`): the admin's own credentials and the
other services' passwords are never part of it.
"""

from __future__ import annotations

import json
import pprint
from typing import Any

from .config import Settings, service_conninfo, to_url
from .core.credentials import SERVICE_ENV, Credential, parse
from .topology import Service

FORMATS = ("env", "json", "k8s-secret", "django")


def service_credential(service: Service, settings: Settings) -> Credential:
    """The runtime credential of *service* as this (admin) side resolves it."""
    params = service_conninfo(service, settings)
    params.pop("passfile", None)  # the password is in the credential itself
    # A path on the admin's machine means nothing on a service host: the host names
    # its own copy of the root certificate (DATABASE_SSLROOTCERT); sslmode stays.
    params.pop("sslrootcert", None)
    credential = Credential(service.name, {k: str(v) for k, v in params.items()
                                           if v is not None})
    # What a service host would refuse is refused here, before anything is written.
    parse(json.dumps(credential.as_json()), f"the credential of service {service.name}")
    return credential


def env_var(service: Service) -> str:
    return f"EDULINK_DB_{service.name.upper()}_URL"


def render(service: Service, settings: Settings, fmt: str) -> str:
    """The text of *service*'s credential in format *fmt* (one of :data:`FORMATS`)."""
    credential = service_credential(service, settings)
    header = (f"edulink-db credential of service {service.name} (role "
              f"{service.runtime_role}). It holds a password: keep it private (mode 0600).")
    if fmt == "json":
        return json.dumps(credential.as_json(), indent=2, sort_keys=True) + "\n"
    if fmt == "env":
        # to_url percent-encodes every part, so the value needs no quoting (docker's
        # --env-file would keep quotes as part of the value).
        return (f"# {header}\n{SERVICE_ENV}={service.name}\n"
                f"{env_var(service)}={to_url(credential.params)}\n")
    if fmt == "k8s-secret":
        document = json.dumps(credential.as_json(), sort_keys=True)
        name = f"edulink-db-{service.name.replace('_', '-').lower()}"
        # A JSON string is a valid YAML double-quoted scalar: no YAML library needed.
        return (f"# {header}\n"
                "apiVersion: v1\nkind: Secret\ntype: Opaque\n"
                f"metadata:\n  name: {name}\n  labels:\n"
                "    app.kubernetes.io/managed-by: edulink-db\n"
                f"    edulink-db/service: {json.dumps(service.name)}\n"
                f"stringData:\n  credential.json: {json.dumps(document)}\n")
    if fmt == "django":
        return _django_module(service, settings, header)
    raise ValueError(fmt)


def _django_module(service: Service, settings: Settings, header: str) -> str:
    from .django_support.settings import (
        configure_cross_service_databases,
        configure_service_database,
    )

    databases: dict[str, Any] = configure_service_database(
        service.name, migrate=False, settings=settings)
    databases.update(configure_cross_service_databases(
        service.name, list(service.reads), settings=settings))
    rootcert = False
    for alias in databases.values():
        # As for the other formats: no path of the admin's machine. With a verified
        # server the module reads the host's own DATABASE_SSLROOTCERT.
        rootcert = alias.get("OPTIONS", {}).pop("sslrootcert", None) is not None or rootcert
    tail = ""
    if rootcert:
        tail = ("\nimport os\n\nfor _alias in DATABASES.values():  # this host's root "
                "certificate\n    _alias['OPTIONS']['sslrootcert'] = "
                "os.environ['DATABASE_SSLROOTCERT']\n")
    return (f'"""{header}\n\nIn settings.py: from .edulink_db_credential import DATABASES\n'
            f'Generated by: edulink-db credentials export {service.name} --format django\n"""\n\n'
            f"DATABASES = {pprint.pformat(databases, sort_dicts=True)}\n{tail}")
