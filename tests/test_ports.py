"""No server started by CI or the tests may sit on a fixed port in the ephemeral range.

Linux hands out 32768-60999 (``/proc/sys/net/ipv4/ip_local_port_range``) as the local
port of outgoing connections and of servers that bind port 0, so a fixed port there is
taken at random moments and fails a CI run.  Servers use a port the kernel has just
handed out (tests/ports.py) or a fixed port below 32768, and retry when they lose it.
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from microservices.shared.database.server.embedded import DEFAULT_PORT, EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
EPHEMERAL = range(32768, 61000)
NUMBER = re.compile(r"(?<![\w.])(\d{5})(?![\w.])")
# A number is a port when the line talks about ports, or it follows "host:".
PORT_CONTEXT = re.compile(r"port|PORT|Port|[\w\]]:\d{5}\b|\s-p\s*\d{5}\b")
SCANNED_SUFFIXES = {".py", ".sh", ".toml", ".ini", ".cfg", ".yml", ".yaml", ".conf"}


def _scanned_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    files = [ROOT / name for name in tracked
             if Path(name).suffix in SCANNED_SUFFIXES or name.startswith((".ci/", "scripts/"))]
    return [f for f in files if f.is_file() and f != Path(__file__).resolve()]


def fixed_ephemeral_ports(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every port-like literal in the ephemeral range."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if not PORT_CONTEXT.search(line) or "32768-60999" in line:
            continue
        if any(int(m.group(1)) in EPHEMERAL for m in NUMBER.finditer(line)):
            found.append((number, line.strip()))
    return found


def test_the_scan_finds_a_fixed_ephemeral_port() -> None:
    assert fixed_ephemeral_ports('url=$(pg-server.sh start 15 "$dir" 55432)  # port')
    assert fixed_ephemeral_ports("conn = connect(host='127.0.0.1', port=54329)")
    assert fixed_ephemeral_ports("listen_port = 40001")
    assert fixed_ephemeral_ports("postgresql://u@127.0.0.1:45432/db")
    assert not fixed_ephemeral_ports("port = 25432")
    assert not fixed_ephemeral_ports("rows = 50000")


def test_no_fixed_port_in_the_ephemeral_range_in_scripts_and_tests() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{number}: {line}"
                 for path in _scanned_files()
                 for number, line in fixed_ephemeral_ports(path.read_text(errors="replace"))]
    assert not offenders, "fixed ports in 32768-60999:\n" + "\n".join(offenders)
    assert EPHEMERAL.start > DEFAULT_PORT


def test_embedded_server_retries_when_its_port_is_taken_before_it_binds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the issue describes: a port looked free, then someone else bound it."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    server = EmbeddedServer(tmp_path / ".edulink-db")
    monkeypatch.setattr(EmbeddedServer, "_choose_port", lambda self: taken)
    messages: list[str] = []
    try:
        info = server.start(progress=messages.append)
        try:
            assert info.port != taken
            assert any(f"port {taken} was taken" in m for m in messages), messages
            params: dict[str, Any] = server.admin_params(info)
            with psycopg.connect(**params) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            server.stop()
    finally:
        holder.close()
