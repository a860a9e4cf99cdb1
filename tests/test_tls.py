"""Verified TLS on every path (core/tls.py, docs/tls.md): a Debian PostgreSQL 15 server
that accepts TLS connections only (``hostssl`` in pg_hba.conf), with a certificate for
``localhost`` signed by a throwaway CA made here with the openssl CLI.

The right root certificate connects on every path (up: provision, migrate, verify;
pools; Django; backup full and restore; health; move-service).  A wrong CA, or the
right one with the server reached by another name (127.0.0.1), fails with one line
that names DATABASE_SSLROOTCERT.  So does a root certificate that is missing, not
PEM, or a server certificate that has expired.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from microservices.shared.database.config import load_settings
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.core.errors import ConfigError, EdulinkDBError
from microservices.shared.database.monitoring.monitor import get_database_health
from microservices.shared.database.topology import default_topology

from .clusters import Cluster, debian_bin_dir
from .conftest import SERVICE_PASSWORD, reachable_tempdir

BIN_DIR = debian_bin_dir(15)
if BIN_DIR is None or shutil.which("openssl") is None:
    pytest.skip("needs Debian's PostgreSQL 15 and the openssl CLI", allow_module_level=True)

CLI = [sys.executable, "-m", "microservices.shared.database"]
TOPOLOGY = default_topology()
SETTING = "DATABASE_SSLROOTCERT"
WRONG_CA = "not signed by the root certificate"
WRONG_HOST = "names another host"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> Path:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.crt", "-days", "30", "-subj", f"/CN={name}", cwd=directory)
    return directory / f"{name}.crt"


def _make_server_cert(directory: Path, ca: str, name: str, *, host: str = "localhost",
                      days: int = 30) -> tuple[Path, Path]:
    """A key and certificate for *host* signed by *ca*; ``days=0`` is expired a second
    after it is made (notAfter = notBefore)."""
    (directory / f"{name}.ext").write_text(f"subjectAltName=DNS:{host}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN={host}", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", str(days), "-extfile",
             f"{name}.ext", cwd=directory)
    return directory / f"{name}.key", directory / f"{name}.crt"


def _outside_address() -> str | None:
    """This machine's address off loopback (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


@dataclass
class TLSServer:
    cluster: Cluster
    pki: Path
    ca: Path
    wrong_ca: Path
    outside: str | None

    def url(self, host: str = "localhost") -> str:
        return (f"postgresql://postgres:{self.cluster.password}@{host}:{self.cluster.port}"
                "/postgres")

    def install_cert(self, key: Path, crt: Path) -> None:
        """Make *key*/*crt* the server's certificate (reloaded, as PostgreSQL allows)."""
        for src, dst in ((key, "server.key"), (crt, "server.crt")):
            target = self.cluster.dir / dst
            shutil.copyfile(src, target)
            target.chmod(0o600)
            if self.cluster._user is not None:
                os.chown(target, *self.cluster._user)
        with self.cluster.connect(host="localhost", sslmode="require") as conn:
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)


def _tls_cluster(root: Path, name: str, pki: Path, outside: str | None) -> Cluster:
    cluster = Cluster.create(root, name, bin_dir=BIN_DIR,
                             settings={"max_slot_wal_keep_size": "1GB"})
    key, crt = _make_server_cert(pki, "ca", f"{name}-server")
    for src, dst in ((key, "server.key"), (crt, "server.crt")):
        shutil.copyfile(src, cluster.dir / dst)
        (cluster.dir / dst).chmod(0o600)
        if cluster._user is not None:
            os.chown(cluster.dir / dst, *cluster._user)
    listen = "127.0.0.1" + (f",{outside}" if outside else "")
    cluster.configure({"ssl": "on", "ssl_cert_file": str(cluster.dir / "server.crt"),
                       "ssl_key_file": str(cluster.dir / "server.key"),
                       "listen_addresses": listen})
    # TLS only: a path that connects without it fails loudly ("no encryption").
    nets = ["127.0.0.1/32", *([f"{outside}/32"] if outside else [])]
    (cluster.pgdata / "pg_hba.conf").write_text("".join(
        f"hostssl {db} all {net} scram-sha-256\n"
        for net in nets for db in ("all", "replication")))
    cluster.stop()
    # The server's own libpq (a subscription's walreceiver) looks for a client
    # certificate in $HOME/.postgresql: as root, HOME would be /root, which the server's
    # OS user may not read ("Permission denied").  A real server has a HOME of its own.
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(cluster.dir)
    try:
        cluster.start()
    finally:
        if saved is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved
    return cluster


@pytest.fixture(scope="module")
def tls() -> Iterator[TLSServer]:
    root = reachable_tempdir("edulink-tls-")
    pki = root / "pki"
    pki.mkdir()
    ca = _make_ca(pki, "ca")
    wrong = _make_ca(pki, "wrong-ca")
    outside = _outside_address()
    cluster = _tls_cluster(root, "tls", pki, outside)
    try:
        yield TLSServer(cluster, pki, ca, wrong, outside)
    finally:
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def home(tls: TLSServer) -> Path:
    """A project provisioned and migrated through ``up --ca`` (module-wide)."""
    path = reachable_tempdir("edulink-tls-home-")
    result = _cli(tls, path, "up", "--ca", str(tls.ca))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verify: OK" in result.stdout
    return path


def _env(tls: TLSServer, home: Path, url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "EDULINK_", "SUPABASE_", "PG"))}
    env.update(DATABASE_URL=url or tls.url(), EDULINK_DB_HOME=str(home / ".edulink-db"),
               EDULINK_DB_BACKUP_DIR=str(home / "backups"), **extra)
    for svc in TOPOLOGY.services:
        env[f"EDULINK_DB_{svc.name.upper()}_PASSWORD"] = SERVICE_PASSWORD
        env[f"EDULINK_DB_{svc.name.upper()}_MIGRATOR_PASSWORD"] = SERVICE_PASSWORD
    return env


def _cli(tls: TLSServer, home: Path, *args: str, url: str | None = None,
         **extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*CLI, *args], cwd=home, env=_env(tls, home, url, **extra),
                            capture_output=True, text=True, timeout=600, check=False)
    assert tls.cluster.password not in result.stdout + result.stderr
    assert SERVICE_PASSWORD not in result.stdout + result.stderr
    return result


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a failed command (rich may wrap it: unwrap)."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return " ".join(line.strip() for line in lines[errors[0]:])


def _env_settings(monkeypatch: pytest.MonkeyPatch, tls: TLSServer, home: Path,
                  url: str | None = None, **extra: str) -> None:
    for key in list(os.environ):
        if key.startswith(("DATABASE_", "EDULINK_")):
            monkeypatch.delenv(key)
    for key, value in _env(tls, home, url, **extra).items():
        if key.startswith(("DATABASE_", "EDULINK_")):
            monkeypatch.setenv(key, value)


# -- the right CA: every path connects, verified ------------------------------------


def test_right_ca_connects_on_every_cli_path(tls: TLSServer, home: Path) -> None:
    ca = ("--ca", str(tls.ca))
    for args in (("verify",), ("migrate",), ("status",)):
        result = _cli(tls, home, *args, *ca)
        assert result.returncode == 0, (args, result.stdout + result.stderr)
    taken = _cli(tls, home, "backup", "full", "--json", *ca)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    backup_id = json.loads(taken.stdout)["backup_id"]
    restored = _cli(tls, home, "restore", backup_id, "--no-safety-backup", *ca)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    health = _cli(tls, home, "health", "--json", *ca)
    report = json.loads(health.stdout)
    assert report["checks"]["connection"]["status"] == "ok", report["checks"]["connection"]
    assert "tls" not in report["checks"]
    # The setting works as well as the option.
    assert _cli(tls, home, "verify", DATABASE_SSLROOTCERT=str(tls.ca)).returncode == 0


def test_pools_verify_the_server(tls: TLSServer, home: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _env_settings(monkeypatch, tls, home, DATABASE_SSLROOTCERT=str(tls.ca))
    manager = ConnectionManager(load_settings())
    try:
        with manager.get_connection("user") as conn:
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                               ).fetchone()
            assert row == (True,)
            assert conn.info.get_parameters()["sslmode"] == "verify-full"
    finally:
        manager.close_all()


def test_pools_refuse_a_wrong_ca(tls: TLSServer, home: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _env_settings(monkeypatch, tls, home, DATABASE_SSLROOTCERT=str(tls.wrong_ca),
                  DATABASE_POOL_TIMEOUT="3")
    manager = ConnectionManager(load_settings())
    try:
        with pytest.raises(EdulinkDBError) as info, manager.get_connection("user"):
            pass
    finally:
        manager.close_all()
    assert SETTING in str(info.value) and WRONG_CA in str(info.value), info.value
    assert "\n" not in str(info.value)


DJANGO_SCRIPT = """
import django
from django.conf import settings
from microservices.shared.database.django_settings import configure_service_database
settings.configure(DATABASES=configure_service_database("user"), USE_TZ=True)
django.setup()
from django.db import connection
try:
    with connection.cursor() as cur:
        cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        print("ssl", cur.fetchone()[0], connection.connection.info.get_parameters()["sslmode"])
except Exception as exc:
    print("failed", exc)
"""


@pytest.mark.parametrize("which", ["ca", "wrong_ca"])
def test_django_settings(tls: TLSServer, home: Path, which: str) -> None:
    env = _env(tls, home, DATABASE_SSLROOTCERT=str(getattr(tls, which)))
    result = subprocess.run([sys.executable, "-c", DJANGO_SCRIPT], cwd=home, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    if which == "ca":
        assert result.stdout.split() == ["ssl", "True", "verify-full"], result.stdout
    else:
        assert result.stdout.startswith("failed") and "certificate verify failed" in (
            result.stdout), result.stdout


# -- a wrong CA, or the wrong host name: a clear one-line error everywhere ------------


COMMANDS = [("up",), ("provision",), ("verify",), ("migrate",), ("backup", "full"),
            ("health",), ("status",)]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_wrong_ca_fails_clearly(tls: TLSServer, home: Path, args: tuple[str, ...]) -> None:
    result = _cli(tls, home, *args, "--ca", str(tls.wrong_ca))
    if args in (("health",), ("status",)):  # these report an unreachable server
        assert result.returncode == 3, result.stdout + result.stderr
        message = " ".join(result.stdout.split())
    else:
        message = _error_line(result)
    assert SETTING in message and WRONG_CA in message, message


@pytest.mark.parametrize("args", [("verify",), ("backup", "full"), ("migrate",)],
                         ids=lambda a: " ".join(a))
def test_wrong_host_name_fails_clearly(tls: TLSServer, home: Path,
                                       args: tuple[str, ...]) -> None:
    # The certificate names localhost; 127.0.0.1 is the same server, but verify-full
    # checks the name: with require, this would connect.
    result = _cli(tls, home, *args, "--ca", str(tls.ca), url=tls.url("127.0.0.1"))
    message = _error_line(result)
    assert SETTING in message and WRONG_HOST in message, message


def test_restore_with_a_wrong_ca_fails_clearly(tls: TLSServer, home: Path) -> None:
    taken = _cli(tls, home, "backup", "schema", "user_schema", "--json", "--ca", str(tls.ca))
    assert taken.returncode == 0, taken.stderr
    backup_id = json.loads(taken.stdout)["backup_id"]
    result = _cli(tls, home, "restore", backup_id, "--no-safety-backup", "--ca",
                  str(tls.wrong_ca))
    message = _error_line(result)
    assert SETTING in message and WRONG_CA in message, message


def test_health_library_call_names_the_setting(tls: TLSServer, home: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _env_settings(monkeypatch, tls, home, DATABASE_SSLROOTCERT=str(tls.wrong_ca))
    report = get_database_health(load_settings())
    assert report["overall_status"] == "unhealthy"
    assert WRONG_CA in report["checks"]["connection"]["message"]


# -- bad input ------------------------------------------------------------------------


def test_missing_or_non_pem_root_cert(tls: TLSServer, home: Path) -> None:
    not_pem = tls.pki / "not-pem.crt"
    not_pem.write_bytes(b"\x30\x82\x01\x0a not a certificate")
    garbled = tls.pki / "garbled.crt"
    garbled.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n"
                       "-----END CERTIFICATE-----\n")
    for path, words in ((tls.pki / "absent.crt", "does not exist"),
                        (not_pem, "is not a PEM certificate"),
                        (garbled, "is not a PEM certificate")):
        for how in ("option", "setting"):
            result = (_cli(tls, home, "verify", "--ca", str(path)) if how == "option"
                      else _cli(tls, home, "verify", DATABASE_SSLROOTCERT=str(path)))
            assert result.returncode == 2, (path, how, result.stdout + result.stderr)
            message = _error_line(result)
            assert message.startswith(f"error: {SETTING}: ") and words in message, message


def test_expired_server_certificate(tls: TLSServer, home: Path) -> None:
    key, crt = _make_server_cert(tls.pki, "ca", "expired", days=0)
    good = tls.cluster.dir / "server.key", tls.cluster.dir / "server.crt"
    saved = [p.read_bytes() for p in good]
    time.sleep(1.5)  # past notAfter
    tls.install_cert(key, crt)
    try:
        message = _error_line(_cli(tls, home, "verify", "--ca", str(tls.ca)))
        assert SETTING in message and "expired" in message, message
    finally:
        (tls.pki / "good.key").write_bytes(saved[0])
        (tls.pki / "good.crt").write_bytes(saved[1])
        tls.install_cert(tls.pki / "good.key", tls.pki / "good.crt")


def test_config_error_for_a_library_caller(tls: TLSServer, home: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _env_settings(monkeypatch, tls, home, DATABASE_SSLROOTCERT=str(tls.pki / "absent.crt"))
    with pytest.raises(ConfigError, match=f"^{SETTING}: .* does not exist"):
        ConnectionManager(load_settings()).get_connection("user").__enter__()


# -- without a root certificate, off loopback: warned ---------------------------------


def test_unverified_server_off_loopback_is_warned(tls: TLSServer, home: Path) -> None:
    if tls.outside is None:
        pytest.skip("this machine has no address off loopback")
    url = tls.url(tls.outside)
    verify = _cli(tls, home, "verify", url=url)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = " ".join(verify.stdout.split())
    assert "is not authenticated (sslmode=require)" in text and SETTING in text, text
    health = json.loads(_cli(tls, home, "health", "--json", url=url).stdout)
    assert health["checks"]["tls"]["status"] == "degraded"
    assert SETTING in health["checks"]["tls"]["message"]
    # On loopback (the other tests) no such warning: nobody sits between.
    local = _cli(tls, home, "verify")
    assert "not authenticated" not in local.stdout


# -- move-service ---------------------------------------------------------------------


def test_move_service_verifies_both_servers(tls: TLSServer, home: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    target = _tls_cluster(tls.cluster.dir.parent, "tls-target", tls.pki, None)
    try:
        to = (f"postgresql://postgres:{target.password}@localhost:{target.port}/postgres")
        wrong = _cli(tls, home, "move-service", "institution", "--to", to, "--ca",
                     str(tls.wrong_ca))
        message = _error_line(wrong)
        assert SETTING in message and WRONG_CA in message, message
        moved = _cli(tls, home, "move-service", "institution", "--to", to, "--ca",
                     str(tls.ca))
        assert target.password not in moved.stdout + moved.stderr
        assert moved.returncode == 0, moved.stdout + moved.stderr
        # Pools follow the move with the root certificate: verified at the new server.
        _env_settings(monkeypatch, tls, home, DATABASE_SSLROOTCERT=str(tls.ca))
        manager = ConnectionManager(load_settings())
        try:
            with manager.get_connection("institution") as conn:
                assert conn.info.port == target.port
                assert conn.info.get_parameters()["sslmode"] == "verify-full"
                row = conn.execute(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
                assert row == (True,)
        finally:
            manager.close_all()
        # Backups reach the moved schema there, verified too.
        taken = _cli(tls, home, "backup", "full", "--json", "--ca", str(tls.ca))
        assert taken.returncode == 0, taken.stdout + taken.stderr
        assert json.loads(taken.stdout)["parts"]
    finally:
        target.destroy()


def test_psycopg_agrees_the_server_is_tls_only(tls: TLSServer) -> None:
    # The fixture's premise: without TLS the server refuses (so no path can pass by
    # falling back to a plain connection).
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(tls.url(), sslmode="disable", connect_timeout=5).close()
