"""A three-node Patroni test cluster for tests, wrapping ``scripts/patroni-cluster.sh``.

The script starts 3 etcd members and 3 Patroni nodes (PostgreSQL 15) on 127.0.0.1, on
12 fixed ports from a BASE_PORT below the ephemeral range (tests/test_ports.py).
:func:`free_port_block` picks a block that is free right now, and
:meth:`PatroniCluster.start` moves to another block when the script reports a port
taken (exit 3) -- someone may bind one between our check and the servers' own binds.

The fixture :func:`patroni_cluster` (module scope) yields a started cluster and stops
it afterwards; it, and :func:`patroni_installed`, skip only when patroni or etcd is
missing and cannot be installed.  A test module imports both to use them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "patroni-cluster.sh"
NODES = ("node1", "node2", "node3")
PORTS_PER_CLUSTER = 12
EPHEMERAL_START = 32768  # Linux's default ip_local_port_range is 32768-60999
# Blocks of 12 ports from here up to the ephemeral range (tests/test_ports.py).
LOWEST_BASE = 20000
HIGHEST_BASE = EPHEMERAL_START - PORTS_PER_CLUSTER
PORT_TAKEN = 3  # the script's exit code
ATTEMPTS = 5
TTL = 10  # the script's Patroni ttl
T = TypeVar("T")


class PatroniUnavailable(Exception):
    """patroni or etcd is not installed and could not be installed."""


@dataclass(frozen=True)
class Facts:
    """What ``patroni-cluster.sh start`` printed (KEY=value lines)."""

    url: str
    rest: tuple[str, ...]
    etcd: tuple[str, ...]
    ctl_config: Path
    nodes: tuple[str, ...]
    pg_ports: tuple[int, ...]
    rest_ports: tuple[int, ...]
    base_port: int
    sync: bool

    @classmethod
    def parse(cls, text: str) -> Facts:
        values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        return cls(
            url=values["URL"],
            rest=tuple(values["REST"].split(",")),
            etcd=tuple(values["ETCD"].split(",")),
            ctl_config=Path(values["PATRONICTL_CONFIG_FILE"]),
            nodes=tuple(values["NODES"].split(",")),
            pg_ports=tuple(int(p) for p in values["PG_PORTS"].split(",")),
            rest_ports=tuple(int(p) for p in values["REST_PORTS"].split(",")),
            base_port=int(values["BASE_PORT"]),
            sync=values["SYNC"] == "1",
        )

    @property
    def password(self) -> str:
        return self.url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]

    def __repr__(self) -> str:  # never the password
        return f"Facts(base_port={self.base_port}, pg_ports={self.pg_ports}, sync={self.sync})"


@dataclass(frozen=True)
class Member:
    """One entry of Patroni's ``GET /cluster``."""

    name: str
    role: str  # 'leader', 'replica' or 'sync_standby'
    state: str  # 'running', 'starting', 'stopped', 'crashed', ...
    host: str
    port: int
    api_url: str
    timeline: int | None
    lag: int | str | None  # bytes behind the leader, 'unknown'; None for the leader

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Member:
        return cls(name=data["name"], role=data["role"], state=data.get("state", ""),
                   host=data.get("host", ""), port=int(data.get("port", 0)),
                   api_url=data["api_url"], timeline=data.get("timeline"),
                   lag=data.get("lag"))


def _ports_free(base: int) -> bool:
    for port in range(base, base + PORTS_PER_CLUSTER):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_block(rng: random.Random | None = None) -> int:
    """A BASE_PORT whose 12 ports are all free on 127.0.0.1 right now (bind test)."""
    rng = rng or random.Random()
    bases = list(range(LOWEST_BASE, HIGHEST_BASE + 1, PORTS_PER_CLUSTER))
    rng.shuffle(bases)  # two test runs at once rarely try the same block
    for base in bases:
        if _ports_free(base):
            return base
    raise RuntimeError(f"no free block of {PORTS_PER_CLUSTER} ports below {EPHEMERAL_START}")


def wait_for(predicate: Callable[[], T | None], timeout: float, interval: float = 0.2,
             what: str = "condition") -> T:
    """Call *predicate* until it returns a true value (returned); exceptions count as
    not yet.  TimeoutError after *timeout* seconds, naming *what* and the last error."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s"
                               + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


def _http_json(url: str, timeout: float = 2) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http://127.0.0.1)
        return json.loads(resp.read())


def ensure_installed() -> None:
    """Install patroni and etcd-server with apt-get when missing (as the script would);
    :class:`PatroniUnavailable` when that is impossible."""
    if shutil.which("patroni") and shutil.which("etcd") and shutil.which("patronictl"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PatroniUnavailable("patroni/etcd are not installed and apt-get needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "patroni", "etcd-server"]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600,
                                check=False)
        if result.returncode != 0:
            raise PatroniUnavailable(f"{' '.join(argv)} failed: "
                                     f"{(result.stderr or result.stdout).strip()[-500:]}")
    if not (shutil.which("patroni") and shutil.which("etcd")):
        raise PatroniUnavailable("apt-get install patroni etcd-server installed no binaries")


class PatroniCluster:
    """The cluster whose files live in *dir* (created by the first :meth:`start`)."""

    def __init__(self, dir: Path) -> None:
        self.dir = Path(dir).resolve()
        self.facts: Facts | None = None

    def __repr__(self) -> str:
        return f"PatroniCluster({str(self.dir)!r}, {self.facts!r})"

    # -- the script ----------------------------------------------------------------
    def _script(self, *args: str, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False,
                              env={**os.environ, **(env or {})})

    def start(self, sync: bool = False, base_port: int | None = None) -> Facts:
        """Start (or, if running, check) the cluster; its :class:`Facts`.

        Without *base_port*, a new cluster goes on a free block of ports and moves to
        another one when the script reports a port taken; an existing one keeps its own.
        """
        env = {"PATRONI_SYNC": "1" if sync else "0"}
        existing = (self.dir / "base_port").is_file()
        for attempt in range(1, ATTEMPTS + 1):
            base = base_port or (None if existing else free_port_block())
            result = self._script("start", str(self.dir), *([str(base)] if base else []),
                                  env=env)
            if result.returncode == 0:
                self.facts = Facts.parse(result.stdout)
                return self.facts
            if (result.returncode == PORT_TAKEN and base_port is None and not existing
                    and attempt < ATTEMPTS):
                continue
            raise RuntimeError(f"patroni-cluster.sh start failed ({result.returncode}):\n"
                               f"{result.stderr[-6000:]}")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        result = self._script("stop", str(self.dir))
        if result.returncode != 0:
            raise RuntimeError(f"patroni-cluster.sh stop failed:\n{result.stderr}")

    def status(self) -> str:
        """``patronictl list``."""
        return self._script("status", str(self.dir)).stdout

    def start_node(self, name: str) -> None:
        """Start the Patroni node *name* again (after :meth:`kill_node`); returns once
        its PostgreSQL runs (as a replica, rewound if need be, or leader)."""
        result = self._script("start-node", str(self.dir), name)
        if result.returncode != 0:
            raise RuntimeError(f"start-node {name} failed:\n{result.stderr[-4000:]}")

    # -- what Patroni says ---------------------------------------------------------
    @property
    def started(self) -> Facts:
        assert self.facts is not None, "start() the cluster first"
        return self.facts

    def members(self) -> list[Member]:
        """``GET /cluster`` from the first REST API that answers."""
        errors = []
        for url in self.started.rest:
            try:
                data = _http_json(f"{url}/cluster")
            except OSError as exc:
                errors.append(f"{url}: {exc}")
                continue
            return [Member.from_json(m) for m in data["members"]]
        raise ConnectionError("no Patroni REST API answers: " + "; ".join(errors))

    def leader(self) -> Member | None:
        """The running leader, or None."""
        return next((m for m in self.members() if m.role == "leader" and m.state == "running"),
                    None)

    def replicas(self) -> list[Member]:
        return [m for m in self.members() if m.role in ("replica", "sync_standby")]

    def streaming(self) -> set[str]:
        """Names of the members that stream from the leader (its ``GET /patroni``)."""
        leader = self.leader()
        if leader is None:
            return set()
        status = _http_json(leader.api_url)
        # Patroni lists every WAL sender, a logical one (a move's subscription) too.
        return {r["application_name"] for r in status.get("replication", [])
                if r.get("state") == "streaming" and r["application_name"] in NODES}

    def healthy(self) -> Member | None:
        """The leader, if both other members run and stream from it."""
        members = self.members()
        leader = next((m for m in members if m.role == "leader" and m.state == "running"), None)
        if leader is None or len(members) != len(NODES):
            return None
        others = {m.name for m in members if m.name != leader.name}
        if any(m.state != "running" for m in members) or self.streaming() != others:
            return None
        return leader

    def ready(self) -> Member | None:
        """:meth:`healthy`, and with synchronous_mode a member Patroni has made its
        ``sync_standby``: until then Patroni 3.0.2 promotes nobody when the leader dies
        (only a synchronous standby may be promoted, and the other replicas defer to
        the healthiest member, which may not be one)."""
        leader = self.healthy()
        if leader is None or not self.started.sync:
            return leader
        return leader if any(m.role == "sync_standby" for m in self.members()) else None

    def switchover(self, candidate: str | None = None) -> str:
        """``patronictl -c CFG switchover --force [--candidate NAME]``; its output.

        Returns when Patroni has accepted it (the new leader may still be promoting)."""
        argv = ["patronictl", "-c", str(self.started.ctl_config), "switchover", "--force"]
        if candidate:
            argv += ["--candidate", candidate]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL, check=False)
        output = result.stdout + result.stderr
        if result.returncode != 0 or "failed" in output.lower():
            raise RuntimeError(f"switchover failed ({result.returncode}):\n{output}")
        return output

    # -- processes -----------------------------------------------------------------
    def node_dir(self, name: str) -> Path:
        assert name in NODES, name
        return self.dir / name

    def _pid(self, pidfile: Path) -> int | None:
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def node_processes(self, name: str) -> list[psutil.Process]:
        """That node's Patroni, its postmaster and every PostgreSQL process of its data
        directory (they run with it as their working directory)."""
        node = self.node_dir(name)
        found: dict[int, psutil.Process] = {}
        for pid in (self._pid(node / "patroni.pid"), self._pid(node / "data" / "postmaster.pid")):
            if pid is None:
                continue
            try:
                proc = psutil.Process(pid)
                if str(node) in " ".join(proc.cmdline()):
                    found[pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
            except psutil.Error:
                continue
        for proc in self.processes():
            try:
                if Path(proc.cwd()).is_relative_to(node):
                    found[proc.pid] = proc
            except psutil.Error:
                continue
        return list(found.values())

    def processes(self) -> list[psutil.Process]:
        """Every live process with its working directory in the cluster's directory, or
        its directory on its command line (etcd, Patroni, PostgreSQL)."""
        found = []
        for proc in psutil.process_iter(["cwd", "cmdline", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                cwd = proc.info["cwd"]
                cmdline = " ".join(proc.info["cmdline"] or ())
                if (cwd and Path(cwd).is_relative_to(self.dir)) or f"{self.dir}/" in cmdline:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def kill_node(self, name: str) -> None:
        """SIGKILL that node's Patroni and its PostgreSQL (postmaster and children)."""
        procs = self.node_processes(name)
        assert procs, f"{name} has no process"
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        _, alive = psutil.wait_procs(procs, timeout=10)
        assert not alive, f"still alive after SIGKILL: {alive}"

    # -- connecting ----------------------------------------------------------------
    def params(self, name: str) -> dict[str, Any]:
        """Superuser connection parameters of one node's PostgreSQL."""
        port = self.started.pg_ports[NODES.index(name)]
        return {"host": "127.0.0.1", "port": port, "user": "postgres",
                "password": self.started.password, "dbname": "postgres", "connect_timeout": 5}

    def connect(self, name: str, **overrides: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(**{**self.params(name), **overrides}, autocommit=True)


def replayed(cluster: PatroniCluster, name: str) -> None:
    """Wait until member *name* has replayed everything the leader has written."""
    leader = cluster.leader()
    assert leader is not None
    with cluster.connect(leader.name) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    with cluster.connect(name) as conn:
        wait_for(lambda: conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                      (row[0],)).fetchone() == (True,), 30)


def _cluster_root() -> Path:
    # The postgres OS user must be able to traverse to the cluster's directory.
    root = Path(tempfile.mkdtemp(prefix="edulink-patroni-"))
    root.chmod(0o711)
    return root


def _unavailable(exc: PatroniUnavailable) -> None:
    """Skip on a developer's machine; in CI (CI=true) the cluster is required."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"Patroni test cluster unavailable in CI: {exc}")
    pytest.skip(f"Patroni test cluster unavailable: {exc}")


@pytest.fixture(scope="session")
def patroni_installed() -> None:
    """Skips (only) when patroni/etcd are missing and cannot be installed."""
    try:
        ensure_installed()
    except PatroniUnavailable as exc:
        _unavailable(exc)


@contextlib.contextmanager
def cluster_fixture(sync: bool = False) -> Iterator[PatroniCluster]:
    """A started three-node cluster, stopped (and its files removed) afterwards;
    skips only when patroni/etcd are missing and cannot be installed."""
    try:
        ensure_installed()
    except PatroniUnavailable as exc:
        _unavailable(exc)
    root = _cluster_root()
    cluster = PatroniCluster(root / "cluster")
    try:
        started = time.monotonic()
        cluster.start(sync=sync)
        print(f"\n[patroni] cluster started in {time.monotonic() - started:.1f} s "
              f"(BASE_PORT={cluster.started.base_port}, sync={sync})")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def patroni_cluster(patroni_installed: None) -> Iterator[PatroniCluster]:
    """A started three-node cluster (asynchronous replication), stopped afterwards."""
    with cluster_fixture(sync=False) as cluster:
        yield cluster
