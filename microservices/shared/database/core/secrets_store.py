"""A small on-disk store for generated passwords.

Generated service passwords and the embedded server's admin password live in
``<home>/secrets.json``: created with mode 0600 inside a 0700 directory,
written atomically (temp file + rename) under an exclusive lock, so two
processes provisioning at once cannot lose each other's writes and a crash
cannot leave a half-written file.  Production deployments normally supply
passwords from their secret manager through ``EDULINK_DB_<SERVICE>_PASSWORD``
instead; the store is the zero-configuration default.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import ConfigError


def ensure_private_dir(path: Path) -> Path:
    """Create *path* (mode 0700) if needed and return it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


class SecretStore:
    """JSON key/value file for secrets, readable only by its owner.

    Values are never logged; ``repr`` shows only the path.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"SecretStore({str(self.path)!r})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_private_dir(self.path.parent)
        lock_path = self.path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self) -> dict[str, str]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{self.path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                f"it holds passwords. Run: chmod 600 {self.path}"
            )
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(
                f"{self.path} is not valid JSON. Restore it from a backup, or delete it and "
                "run 'edulink-db provision --rotate-passwords' to issue new passwords."
            ) from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise ConfigError(f"{self.path} must map names to strings.")
        return data

    def _write(self, data: dict[str, str]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def set(self, key: str, value: str) -> None:
        with self._locked():
            data = self._read()
            data[key] = value
            self._write(data)

    def get_or_create(self, key: str, factory: Callable[[], str]) -> str:
        """Return the stored value, creating it with *factory* if absent.

        Read and write happen under one lock, so concurrent callers agree on
        a single value.
        """
        with self._locked():
            data = self._read()
            if key not in data:
                data[key] = factory()
                self._write(data)
            return data[key]
