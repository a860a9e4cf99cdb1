"""One service's own credential: the file a service process is given instead of the
shared secrets store.

``edulink-db credentials export SERVICE --format json`` writes it; a process points
``EDULINK_DB_CREDENTIALS_FILE`` at it (and may say which service it is with
``EDULINK_DB_SERVICE``).  The file holds the connection settings and password of that
service's runtime role and nothing else, so a compromised service host can log in as
that service only -- never as another one, never as the admin.

The file is JSON::

    {"edulink_db_credential": 1, "service": "user",
     "connection": {"host": "...", "port": "5432", "dbname": "postgres",
                    "user": "user_service_role", "password": "...", "sslmode": "require"}}

It must be readable by its owner only (mode 0600 or 0400): a file others can read is
refused, as the secrets store is.  Reads are cached by the file's identity (device,
inode, size, modification time), so a pool may ask before every new connection at the
cost of one ``stat``: when an operator rotates the password and replaces the file (a
Kubernetes secret update does exactly that), the next connection uses the new one.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import replace_file

CREDENTIALS_FILE_ENV = "EDULINK_DB_CREDENTIALS_FILE"
SERVICE_ENV = "EDULINK_DB_SERVICE"
FORMAT_KEY = "edulink_db_credential"
FORMAT_VERSION = 1
# libpq keywords a credential may not carry: they would take connection settings or
# passwords from other files of the host (~/.pgpass, pg_service.conf), and the credential
# must be the whole truth about how the service logs in.
FORBIDDEN_KEYS = frozenset({"passfile", "service"})
REQUIRED_KEYS = ("host", "dbname", "user", "password")


@dataclass(frozen=True)
class Credential:
    """The runtime credential of one service; ``repr`` never shows the password."""

    service: str
    params: dict[str, str] = field(repr=False)

    def __repr__(self) -> str:
        return (f"Credential(service={self.service!r}, user={self.params.get('user')!r}, "
                f"host={self.params.get('host')!r})")

    def as_json(self) -> dict[str, Any]:
        return {FORMAT_KEY: FORMAT_VERSION, "service": self.service,
                "connection": dict(self.params)}


def parse(text: str, source: str) -> Credential:
    """The credential in *text* (the JSON format); *source* names it in errors."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(f"{source} is not valid JSON: export it again with 'edulink-db "
                          "credentials export SERVICE --format json -o FILE'.") from None
    if not isinstance(data, dict) or data.get(FORMAT_KEY) != FORMAT_VERSION:
        raise ConfigError(f"{source} is not an edulink-db credential (no "
                          f"\"{FORMAT_KEY}\": {FORMAT_VERSION}); export one with "
                          "'edulink-db credentials export SERVICE --format json -o FILE'.")
    service, conn = data.get("service"), data.get("connection")
    if not isinstance(service, str) or not service or not isinstance(conn, dict):
        raise ConfigError(f"{source} must name its \"service\" and hold a \"connection\" "
                          "object.")
    forbidden = sorted(k for k in conn if k in FORBIDDEN_KEYS)
    if forbidden:
        raise ConfigError(f"{source}: the connection may not use {', '.join(forbidden)} "
                          "(settings from other files); export the credential again.")
    missing = [k for k in REQUIRED_KEYS if not conn.get(k)]
    if missing:
        raise ConfigError(f"{source}: connection lacks {', '.join(missing)}.")
    if not all(isinstance(v, str | int) for v in conn.values()):
        raise ConfigError(f"{source}: connection values must be strings.")
    return Credential(service, {k: str(v) for k, v in conn.items()})


def check_private(path: Path, st: os.stat_result, variable: str = CREDENTIALS_FILE_ENV
                  ) -> None:
    """Refuse a credential file that others may read or write, or that another user owns.

    libpq's rule for a private key: owned by this process's user with no access for
    group or others (0600), or (for a process that is not root) owned by root with at
    most group read (0640, what a Kubernetes secret volume with fsGroup gives).
    Whoever owns the file decides the server and password the service logs in with, so
    its owner is checked too."""
    euid = os.geteuid()
    if st.st_uid == euid:
        loose = st.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    elif st.st_uid == 0:
        loose = st.st_mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO)
    else:
        raise ConfigError(
            f"{variable}={path} is owned by uid {st.st_uid}, not by this process's user "
            f"(uid {euid}) or root: whoever owns it decides where the service logs in. "
            f"Run: chown {euid} {path}")
    if loose:
        raise ConfigError(
            f"{variable}={path} is readable or writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):o}); it holds a password. Run: chmod 600 {path}")


class _Cache:
    """The last credential read per file, with the identity of the file it came from."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[Path, tuple[tuple[int, int, int, int], Credential]] = {}


_CACHE = _Cache()


def load(path: Path, variable: str = CREDENTIALS_FILE_ENV) -> Credential:
    """The credential in the file at *path* (named *variable* in errors), re-read only
    when the file changed since the last call."""
    try:
        st = path.stat()  # follows symlinks: Kubernetes mounts secrets as links
    except FileNotFoundError:
        raise ConfigError(f"{variable}={path} does not exist: export the service's "
                          "credential there with 'edulink-db credentials export SERVICE "
                          f"--format json -o {path}'.") from None
    except OSError as exc:
        raise ConfigError(f"{variable}={path} cannot be read ({exc.strerror}).") from None
    check_private(path, st, variable)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _CACHE.lock:
        cached = _CACHE.entries.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{variable}={path} cannot be read ({type(exc).__name__}).") from None
    credential = parse(text, f"{variable}={path}")
    with _CACHE.lock:
        _CACHE.entries[path] = (key, credential)
    return credential


def check_service(credential: Credential, path: Path, service: str,
                  claimed: str | None) -> None:
    """Refuse *credential* (from *path*) when it is another service's than *service*
    (asked for) or *claimed* (``EDULINK_DB_SERVICE``); names are resolved already."""
    if claimed is not None and claimed != credential.service:
        raise ConfigError(
            f"{CREDENTIALS_FILE_ENV}={path} holds the credential of service "
            f"{credential.service!r}, but {SERVICE_ENV} says this process is {claimed!r}: "
            "give the process its own service's credential file.")
    if service != credential.service:
        raise ConfigError(
            f"This process has only the credential of service {credential.service!r} "
            f"({CREDENTIALS_FILE_ENV}={path}) and cannot connect as service {service!r}; "
            f"read {service!r}'s exposed data through {credential.service!r}'s own "
            "connection (the topology's reads), or run it where that service's "
            "credential is.")


def write_private(path: Path, text: str) -> None:
    """Write *text* to *path* with mode 0600 (atomically: temp file + rename), so a
    reader never sees half a file and the password is never world-readable."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{path} is a directory; add a file name to the path.")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            # A device or a FIFO would be swapped for a regular file with the password.
            raise ConfigError(f"{path} is not a regular file (a device, a pipe or a "
                              "socket); write the credential to a file.")
    replace_file(path, text, 0o600)
