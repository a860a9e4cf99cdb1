"""Replacing a file whole: a reader, or a write that fails half-way (a full disk, a
killed process), never leaves half a file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(path: Path, text: str, mode: int) -> None:
    """Write *text* (UTF-8) to a temporary file next to *path* with *mode*, then rename
    it over *path*.  mkstemp gives the temporary file an unpredictable name, created
    0600 with O_EXCL, so a planted or leftover file cannot be used or block the write."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # whatever the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
