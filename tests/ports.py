"""Ports for the servers the tests start (issue: no fixed ports in the ephemeral range).

Every server a test starts listens on a port the kernel has just handed out
(:func:`free_port`).  The kernel may hand the same port to someone else between our
``bind(0)`` and the server's own bind, so starts go through :func:`start_on_free_port`,
which tries another port when the server reports the port taken.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
ATTEMPTS = 5


class PortTaken(Exception):
    """The server could not bind its port: another process got there first."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on *host* that the kernel considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_on_free_port(start: Callable[[int], T], attempts: int = ATTEMPTS) -> tuple[int, T]:
    """Call ``start(port)`` with fresh ports until it does not raise :class:`PortTaken`."""
    for _ in range(attempts - 1):
        port = free_port()
        try:
            return port, start(port)
        except PortTaken:
            continue
    port = free_port()
    return port, start(port)
