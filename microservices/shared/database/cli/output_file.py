"""Writing a command's output to a file the user named (``-o``/``--output``).

The user gets one line saying what is wrong with the path and what to do, never a
traceback: a missing directory, a directory given as the file, no permission.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from ..core.errors import ConfigError
from ..core.files import replace_file


def write_output(path: Path, text: str, *, option: str = "--output") -> None:
    """Write *text* to *path* (UTF-8), or raise ConfigError naming the problem.

    A regular file is replaced whole (:func:`.core.files.replace_file`), so a write that
    fails half-way (a full disk) leaves the old file as it was; a device or a pipe
    (``-o /dev/stdout``) is written through, as the shell's ``>`` would."""
    try:
        if path.exists() and not path.is_file():
            if path.is_dir():
                raise IsADirectoryError(path)
            path.write_text(text, encoding="utf-8")
            return
        replace_file(path, text, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
    except OSError as exc:
        raise _refusal(exc, path, option) from None


def check_writable(path: Path, *, option: str = "--output") -> None:
    """Raise the same one-line ConfigError as :func:`write_output` would, before any
    work is done: for commands that must not do their work (render a password, dump)
    only to fail at the end. Probes with a temporary file next to *path*, because the
    mode bits do not tell (root, read-only mounts, sysfs)."""
    try:
        if path.is_dir():
            raise IsADirectoryError(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(path)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=".edulink-db-probe-")
    except OSError as exc:
        raise _refusal(exc, path, option) from None
    os.close(fd)
    os.unlink(probe)


def _refusal(exc: OSError, path: Path, option: str) -> ConfigError:
    """The one line for *exc*, raised while writing *path* (given as *option*)."""
    if isinstance(exc, IsADirectoryError):
        return ConfigError(f"{option} {path} is a directory; add a file name to the path.")
    if isinstance(exc, FileNotFoundError):
        return ConfigError(f"{option} {path}: its directory does not exist; create it "
                           "first (mkdir -p).")
    if isinstance(exc, PermissionError):
        return ConfigError(f"{option} {path}: permission denied; choose a file in a "
                           "directory you may write to.")
    reason = errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__
    return ConfigError(f"{option} {path}: cannot write it ({exc.strerror or reason}); "
                       "choose another file.")
