"""Every way edulink-db builds connection parameters passes through core/tls.py: with
DATABASE_SSLROOTCERT set, each carries sslmode=verify-full and the root certificate
(no server needed: these are the parameters, tests/test_tls.py connects with them)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from microservices.shared.database.backup.drill import _drill_server
from microservices.shared.database.backup.manager import target_params
from microservices.shared.database.backup.placement import Placement, location_admin
from microservices.shared.database.config import (
    admin_conninfo,
    load_settings,
    replica_conninfos,
    service_conninfo,
)
from microservices.shared.database.connections.location import located_params
from microservices.shared.database.django_settings import configure_service_database
from microservices.shared.database.server.pg_tools import libpq_env
from microservices.shared.database.topology import default_topology

USER = default_topology().service("user")
REMOTE = "postgresql://postgres.ref:pw@db.example.supabase.co:5432/postgres"


@pytest.fixture
def ca(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=t"], cwd=tmp_path,
                   check=True, capture_output=True, timeout=60)
    for key in list(os.environ):
        if key.startswith(("DATABASE_", "EDULINK_DB_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", REMOTE + "?sslmode=require")
    monkeypatch.setenv("DATABASE_SSLROOTCERT", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("DATABASE_REPLICA_URLS", REMOTE.replace("db.", "replica."))
    monkeypatch.setenv("EDULINK_DB_USER_PASSWORD", "pw")
    monkeypatch.setenv("EDULINK_DB_USER_MIGRATOR_PASSWORD", "pw")
    monkeypatch.setenv("EDULINK_DB_DRILL_URL", REMOTE.replace("db.", "drill."))
    monkeypatch.setenv("EDULINK_DB_LOCATION_ADMIN_URLS",
                       REMOTE.replace("db.example.supabase.co", "moved.example"))
    return str((tmp_path / "ca.crt").resolve())


def _verified(params: dict[str, Any], ca: str) -> None:
    assert params.get("sslmode") == "verify-full", params.get("sslmode")
    assert params.get("sslrootcert") == ca


def test_every_conninfo_verifies_the_server(ca: str) -> None:
    settings = load_settings()
    admin = admin_conninfo(settings)
    _verified(admin, ca)  # the URL's sslmode=require is raised to verify-full
    _verified(service_conninfo(USER, settings), ca)
    _verified(service_conninfo(USER, settings, kind="migrator"), ca)
    for replica in replica_conninfos(USER, settings):
        _verified(replica, ca)
    _verified(target_params(REMOTE.replace("db.", "other."), settings), ca)
    _verified(_drill_server(SimpleNamespace(settings=settings)), ca)
    # A service moved elsewhere: the registry holds host/port/dbname/sslmode only.
    _verified(located_params(admin, "host=moved.example port=5432 dbname=postgres "
                                    "sslmode=require"), ca)
    moved = Placement("user", "user_schema", "host=moved.example port=5432 dbname=postgres",
                      None)
    _verified(location_admin(settings, moved), ca)
    options = configure_service_database("user", settings=settings)["default"]["OPTIONS"]
    _verified(options, ca)
    env = libpq_env(admin)
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", ca)



def test_the_embedded_server_ignores_the_root_cert(ca: str, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    # The embedded server is built without TLS: a DATABASE_SSLROOTCERT meant for the
    # production server in the same .env must not make `up` without DATABASE_URL fail.
    import psycopg

    from microservices.shared.database.server.embedded import EmbeddedServer

    from .conftest import reachable_tempdir
    from .ports import free_port

    home = reachable_tempdir("edulink-tls-embedded-") / ".edulink-db"
    server = EmbeddedServer(home, port=free_port())
    server.start()
    try:
        monkeypatch.delenv("DATABASE_URL")
        monkeypatch.setenv("EDULINK_DB_HOME", str(home))
        params = admin_conninfo(load_settings())
        assert "sslrootcert" not in params, "the embedded server was given a root cert"
        psycopg.connect(**params, connect_timeout=10).close()
    finally:
        server.stop()
        shutil.rmtree(home.parent, ignore_errors=True)


def test_an_exported_credential_names_no_admin_path_and_needs_the_hosts_root_cert(
    ca: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The root certificate's path on the admin's machine is not written into a service's
    credential; a service host with a verify-full credential and no root certificate of
    its own is told which setting to set, before any connection is tried."""
    from microservices.shared.database.core.errors import ConfigError
    from microservices.shared.database.credentials_export import render

    text = render(USER, load_settings(), "json")
    assert "sslrootcert" not in text and "verify-full" in text
    credential = tmp_path / "user.json"
    credential.write_text(text)
    credential.chmod(0o600)
    for key in list(os.environ):
        if key.startswith(("DATABASE_", "EDULINK_DB_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("EDULINK_DB_CREDENTIALS_FILE", str(credential))
    with pytest.raises(ConfigError, match="set DATABASE_SSLROOTCERT on this host"):
        service_conninfo(USER, load_settings())
    monkeypatch.setenv("DATABASE_SSLROOTCERT", ca)
    _verified(service_conninfo(USER, load_settings()), ca)
