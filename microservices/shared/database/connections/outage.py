"""How a service pool rides out its server going away: bounded, jittered reconnect
retries, one real attempt at a time per pool, one log line per outage, and the error a
statement in flight gets (:func:`connection_lost_error`).

psycopg_pool replaces a lost connection with a task that retries with exponential
backoff from 1 s (``psycopg_pool.base.AttemptWithBackoff``: 1, 2, 4, 8 s ...).  After a
10 s outage the next attempt can come 6 s after the server is back, and every
service pays that on every restart or failover.  :class:`Backoff` starts at
:data:`INITIAL_DELAY_S` and never waits more than :data:`MAX_DELAY_S` (plus jitter),
so a pool is back within a quarter of a second or so of its server.

Retrying that often must not become a storm against a server that is really down,
or against a standby that rejects the pool's ``target_session_attrs`` after a full
login: a pool that lost *n* connections runs *n* such tasks.  :class:`Outage` lets
one of them make a real attempt per :data:`ATTEMPT_GAP_S`; the others fail at once
with the last error and keep their own jittered schedule.  So one pool sends at most
``1 / ATTEMPT_GAP_S`` attempts per second, whatever its size.

psycopg_pool logs a warning, with the whole multi-line libpq message, for every failed
attempt.  :func:`quiet_pool_logs` drops those records for our pools only; instead
:class:`Outage` logs one line when a pool's outage starts and one when it ends.

psycopg_pool has no public hook for either (3.3): the pool classes override its
``_connect`` and ``_add_connection``, whose signatures are stable since 3.1;
``tests/test_reconnect.py`` fails if a release stops calling them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, TypeVar

import psycopg
from psycopg.pq import ConnStatus
from psycopg_pool.base import AttemptWithBackoff

from ..config import host_label
from ..core.errors import ServerConnectionLostError

# The first retry comes soon (a restart or a switchover is over in well under a
# second), then the delay doubles up to MAX_DELAY_S.
INITIAL_DELAY_S = 0.05
MAX_DELAY_S = 0.25
JITTER = 0.25  # each delay is drawn from +-25% of its nominal value
ATTEMPT_GAP_S = 0.1  # at most one real connection attempt per pool in this interval

log = logging.getLogger("microservices.shared.database.connection_manager")
_POOL_LOGGER = "psycopg.pool"
# psycopg_pool's records per failed attempt (args[0]: the pool's name) and per dead
# connection it throws away (args[0]: the connection; ours carry their service_name).
_QUIET_MESSAGES = frozenset({"error connecting in %r: %s"})
_QUIET_CONNECTION_MESSAGES = frozenset({"discarding closed connection: %s",
                                        "discarding broken connection: %s"})
_quiet_pools: set[str] = set()
_quiet_lock = threading.Lock()
_filter_installed = False


class Backoff(AttemptWithBackoff):
    """psycopg_pool's retry state, bounded: delays grow from INITIAL_DELAY_S to
    MAX_DELAY_S, each jittered by +-JITTER so that pools do not retry in step.  The
    pool's ``reconnect_timeout`` still decides when it gives up."""

    def __init__(self, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._nominal = 0.0

    def update_delay(self, now: float) -> None:
        if self._nominal == 0.0:
            self.give_up_at = now + self.timeout
            self._nominal = INITIAL_DELAY_S
        else:
            self._nominal = min(self._nominal * self.DELAY_BACKOFF, MAX_DELAY_S)
        self.delay = self._nominal * random.uniform(1.0 - JITTER, 1.0 + JITTER)  # noqa: S311 (timing, not secrets)
        if self.delay + now > self.give_up_at:
            self.delay = max(0.0, self.give_up_at - now)


def server_label(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    """``host:port`` that *conn* reached (one of a multi-host URL's hosts).  Raises
    psycopg.Error once the connection is finished."""
    info = conn.info
    return host_label({"host": info.host, "port": info.port})


def one_line(exc: BaseException, limit: int = 400) -> str:
    """*exc*'s message on one line (libpq's multi-host messages span many)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Outage:
    """The reconnect state of one pool, shared by its reconnect tasks (thread-safe).

    ``gate()`` before each attempt returns an error to raise instead of connecting
    while another attempt failed moments ago; ``failed()`` and ``succeeded()`` record
    each real attempt and log the start and the end of an outage, one line each.
    """

    def __init__(self, pool_name: str, target: str) -> None:
        self.pool_name = pool_name
        self.target = target  # host:port list, no credentials
        self._lock = threading.Lock()
        self.started_at: float | None = None  # time.monotonic() of the first failure
        self.attempts = 0
        self.last_error: str | None = None
        self._last_attempt_at = 0.0

    @property
    def active(self) -> bool:
        return self.started_at is not None

    def gate(self) -> psycopg.OperationalError | None:
        with self._lock:
            if self.started_at is None or self.last_error is None:
                return None
            if time.monotonic() - self._last_attempt_at >= ATTEMPT_GAP_S:
                # This task makes the attempt; the others wait for its outcome.
                self._last_attempt_at = time.monotonic()
                return None
            return psycopg.OperationalError(self.last_error)

    def failed(self, exc: BaseException) -> None:
        reason = one_line(exc)
        with self._lock:
            self.attempts += 1
            self._last_attempt_at = time.monotonic()
            first = self.started_at is None
            if first:
                self.started_at = self._last_attempt_at
            self.last_error = reason
        if first:
            log.warning("pool %s cannot connect to %s: %s; retrying every %g-%g s until "
                        "it answers (one line per outage; the end is logged too)",
                        self.pool_name, self.target, reason, INITIAL_DELAY_S, MAX_DELAY_S)
        else:
            log.debug("pool %s: attempt %d to reach %s failed: %s", self.pool_name,
                      self.attempts, self.target, reason)

    def succeeded(self) -> None:
        with self._lock:
            started, attempts = self.started_at, self.attempts
            if started is None:
                return
            self.started_at, self.attempts, self.last_error = None, 0, None
        log.warning("pool %s reconnected to %s after %.1f s (%d failed attempts)",
                    self.pool_name, self.target, time.monotonic() - started, attempts)


def lost_connection(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
                    exc: psycopg.OperationalError) -> bool:
    """Whether *exc* means the server (not the statement) failed: the connection is
    gone, or the server said it is shutting down or cut the session (class 57P:
    admin shutdown, crash shutdown, cannot connect now; class 08: connection
    exception).  A statement timeout (57014) is not one."""
    if isinstance(exc, ServerConnectionLostError):
        return False
    state = exc.sqlstate or ""
    return conn.pgconn.status == ConnStatus.BAD or state.startswith(("57P", "08"))


E = TypeVar("E", bound=ServerConnectionLostError)


def connection_lost_error(service: str, server: str, exc: psycopg.OperationalError,
                          cls: type[E] = ServerConnectionLostError) -> E:  # type: ignore[assignment]
    """The error a lost statement raises (*cls*: Django's variant)."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return cls(
        f"Service {service!r} lost its connection to {server} during a statement: "
        f"{reason} ({type(exc).__name__}). The transaction did not commit (unless the "
        "lost statement was its COMMIT: then the outcome is unknown). The pool replaces "
        "the connection, and reconnects to the new primary after a failover: retry the "
        "unit of work.")


class _QuietPoolLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.args, tuple) or not record.args:
            return True
        if record.msg in _QUIET_CONNECTION_MESSAGES:
            # Ours: the checkout or the outage line already said so, once.
            return not getattr(record.args[0], "service_name", "")
        return record.msg not in _QUIET_MESSAGES or record.args[0] not in _quiet_pools


def quiet_pool_logs(pool_name: str) -> None:
    """Drop psycopg_pool's per-attempt connection warnings for pool *pool_name*
    (:class:`Outage` logs the outage instead); other pools' records pass."""
    global _filter_installed
    with _quiet_lock:
        _quiet_pools.add(pool_name)
        if not _filter_installed:
            logging.getLogger(_POOL_LOGGER).addFilter(_QuietPoolLogs())
            _filter_installed = True
