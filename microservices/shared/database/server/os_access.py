"""What the embedded server's OS user may do with a path, judged from mode bits as the
kernel does (used as root, where the server runs as an unprivileged user)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerUser:
    """The unprivileged OS user the server runs as when edulink-db runs as root."""

    name: str
    uid: int
    gid: int


def may_access(st: os.stat_result, user: ServerUser, owner: int, group: int, other: int) -> bool:
    """Whether *user*, running with only its primary group, has the permission whose
    owner/group/other bits are given, judged as the kernel does from the mode bits:
    the owner class alone applies to the owner, the group class alone to the group."""
    if st.st_uid == user.uid:
        return bool(st.st_mode & owner)
    if st.st_gid == user.gid:
        return bool(st.st_mode & group)
    return bool(st.st_mode & other)


def can_enter(path: Path, user: ServerUser) -> bool:
    return may_access(path.stat(), user, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)


def _can_read(path: Path, user: ServerUser) -> bool:
    return may_access(path.stat(), user, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


def describe_path(path: Path) -> str:
    import grp
    import pwd

    st = path.stat()
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{path} (mode {stat.S_IMODE(st.st_mode):04o}, owner {owner}:{group})"


def _has_acl(path: Path) -> bool:
    try:
        return "system.posix_acl_access" in os.listxattr(path)
    except OSError:  # no xattr support: mode bits are all there is
        return False


def blocking_ancestor(path: Path, user: ServerUser) -> Path | None:
    """The first existing directory on the way to *path* that *user* cannot enter.

    Both the path as written and its symlink-resolved form are walked: the kernel
    checks every directory it passes through, including those a symlink leads to.
    A directory with a POSIX ACL (e.g. ``setfacl -m u:embedded_postgres:x``) is left
    to the kernel: its mode bits alone do not tell.
    """
    chains = {path.absolute(), path.resolve()}
    for target in sorted(chains):
        for directory in reversed(target.parents):
            if (directory.exists() and not can_enter(directory, user)
                    and not _has_acl(directory)):
                return directory
    return None


def unreadable_in(tree: Path, user: ServerUser) -> Path | None:
    """The first directory under *tree* (itself included) that *user* cannot list and
    enter, or file it cannot read; None if the whole tree is readable."""
    if not (_can_read(tree, user) and can_enter(tree, user)):
        return tree
    for root, dirs, files in os.walk(tree):
        for name in dirs:
            d = Path(root, name)
            if not d.is_symlink() and not (_can_read(d, user) and can_enter(d, user)):
                return d
        for name in files:
            f = Path(root, name)
            if f.exists() and not _can_read(f, user):
                return f
    return None
