"""Patroni REST discovery: which member leads, which replicas may serve reads.

A leaf of the connection layer: it reads ``GET /cluster`` from Patroni's REST API
(``DATABASE_PATRONI_URLS``) and keeps a :class:`ClusterView`.  A :class:`PatroniWatch`
per process keeps it fresh in a thread; the service pools and Django aliases connect
to its leader (:func:`writable_conninfo`), and replica reads admit the members it
calls replicas (:func:`replica_admission`).
Standard library HTTP (``urllib.request``), no new dependency.

``GET /cluster`` of Patroni 3.0.2 (``patroni/api.py`` ``do_GET_cluster`` ->
``patroni/utils.py`` ``cluster_as_json``) answers ``{"members": [...]}`` sorted by
name, plus ``"pause": true`` and ``"scheduled_switchover"`` when they apply.  Each
member has ``name``, ``role`` (``leader``, ``standby_leader`` in a standby cluster,
``sync_standby``, ``replica``), ``state`` (PostgreSQL's state as Patroni tracks it:
``running``, ``starting``, ``stopping``, ``stopped``, ``restarting``, ``start failed``,
...; 3.0.2 reports ``running`` for a healthy replica, later versions report
``streaming``), ``api_url``, ``host`` and ``port`` (from the member's connect address;
absent when it has none), ``timeline``, ``pending_restart``, ``scheduled_restart``,
``tags`` when known, and -- for every member but the leader -- ``lag``: bytes behind
the leader's last WAL position in the DCS, or ``"unknown"``.  Both positions are
written to the DCS once per HA loop (``loop_wait``, 10 s by default).

When Patroni cannot read its DCS (etcd down or partitioned), 3.0.2's ``/cluster``
handler raises (``dcs.get_cluster(True)`` re-raises ``EtcdError``) and the server
closes the connection without an answer: here that endpoint failed, and the next is
tried.  A cluster whose leader key expired (a failover under way) answers with no
leader.

The rules (:class:`PatroniDiscovery`):

* One fetch tries the configured endpoints in order -- those whose last attempt
  failed after the others -- then the ``api_url`` of members of the current view that
  are not configured (never with credentials).  The first answer with a valid payload
  and a leader wins; when every valid answer has no leader, the first of them does.
* A fetch with a valid answer replaces the view wholesale, whatever it says: a new
  leader (failover), or none (failover under way: writes then have no target rather
  than a stale one).  A view is never a merge of two answers.
* A fetch without one (every endpoint down, timing out, answering HTTP errors, invalid
  JSON or an invalid payload such as two leaders) keeps the last good view as it is --
  including a view whose leader is None: an older leader is never brought back.
* So a member is reported as leader only when the answer the view comes from gives it
  role ``leader`` (whatever its ``state``: it holds the leader key, and ``state`` says
  whether its PostgreSQL runs); ``standby_leader`` (a standby cluster's head, read-only) never is.
  :func:`leader_conninfo` adds ``target_session_attrs=read-write`` as well, so a
  leader that was demoted since the view was fetched refuses the connection (and the
  caller's ``refresh()`` finds the new one).
* Each problem is logged once while it lasts (per endpoint, and per skipped member),
  and its end once ('recovered').

Thread safety and coalescing: at most one fetch is in flight per instance.
:meth:`PatroniDiscovery.view` returns the cached view; when it is due (the last fetch
ended more than ``refresh_interval`` ago, jittered ±20% per fetch so that many
processes do not synchronise) the calling thread fetches while the others keep using
the old view.  :meth:`PatroniDiscovery.refresh` (after a connection error) waits for a
fetch in flight instead of starting one, and reuses the last fetch when it ended less
than ``min_gap`` (0.2 s) ago: fifty connections failing at once cost one request.
No background thread.  Calls block on HTTP (at most ``timeout`` per connect and per
read, per endpoint tried): an async caller should run them in a thread
(``asyncio.to_thread``) or use :meth:`PatroniDiscovery.cached`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..config import (
    PatroniEndpoint,
    Settings,
    host_label,
    parse_patroni_url,
    parse_patroni_urls,
)
from ..core.errors import ConfigError, PatroniDiscoveryError

log = logging.getLogger(__name__)

LEADER, STANDBY_LEADER = "leader", "standby_leader"
SYNC_STANDBY, REPLICA = "sync_standby", "replica"
# The roles Patroni 3.0.2's cluster_as_json reports; any other is skipped and reported.
KNOWN_ROLES = frozenset((LEADER, STANDBY_LEADER, SYNC_STANDBY, REPLICA))
READ_ROLES = (REPLICA, SYNC_STANDBY)
# 3.0.2 says 'running' for a healthy replica; later versions say 'streaming'.
READ_STATES = ("running", "streaming")
CLUSTER_PATH = "/cluster"
HISTORY_PATH = "/history"
CONFIG_PATH = "/config"
T = TypeVar("T")
MIN_GAP_S = 0.2
JITTER = 0.2
MAX_BODY_BYTES = 1 << 20
# Members' api_urls tried after the configured endpoints, at most this many.
MAX_DISCOVERED = 8


@dataclass(frozen=True)
class Member:
    """One member of the cluster as ``GET /cluster`` reports it.  ``lag_bytes`` is None
    for the leader and for a lag Patroni reports as ``unknown``."""

    name: str
    host: str
    port: int
    role: str
    state: str
    lag_bytes: int | None
    timeline: int | None


@dataclass(frozen=True)
class ClusterView:
    """What one answer of ``GET /cluster`` says: the leader (None while there is none),
    the replicas that may serve reads (role ``replica``/``sync_standby``, state
    ``running``/``streaming``, lag known and at most the limit), when
    (``time.monotonic()``) and from which endpoint (no credentials).

    ``members`` holds every member with a known role and an address; ``skipped`` says
    why any other member was left out (an unknown role, no host); ``api_urls`` the
    members' REST endpoints, which a later fetch may try."""

    leader: Member | None
    replicas: tuple[Member, ...]
    fetched_at: float
    source: str
    members: tuple[Member, ...] = ()
    skipped: tuple[str, ...] = ()
    api_urls: tuple[str, ...] = ()

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.fetched_at


# -- parsing -----------------------------------------------------------------------


def _invalid(source: str, what: str) -> PatroniDiscoveryError:
    where = f"{source}{CLUSTER_PATH}" if source else f"GET {CLUSTER_PATH}"
    return PatroniDiscoveryError(
        f"Patroni REST endpoint {where} gave an unusable answer: {what}. Check that "
        "DATABASE_PATRONI_URLS points at Patroni's REST API (restapi.listen, default port "
        "8008) of this cluster, and 'patronictl list'.", [(source, what)])


def _optional_int(member: dict[str, Any], key: str, name: str, source: str) -> int | None:
    value = member.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(source, f"member {name!r} has a {key} that is not an integer")
    return value


def parse_cluster(payload: object, max_lag_bytes: int | None, *, source: str = "",
                  fetched_at: float = 0.0) -> ClusterView:
    """The view of one ``GET /cluster`` answer (decoded JSON) from endpoint *source*.

    Raises PatroniDiscoveryError when *payload* is not what Patroni answers (not an
    object, no ``members`` list, a member or one of its fields of the wrong type, two
    members with one name) or names two leaders: never a guess.  No leader is a view
    with ``leader`` None.  A member with an unknown role, or without a host, is left
    out and named in ``skipped``."""
    if not isinstance(payload, dict):
        raise _invalid(source, f"a JSON {type(payload).__name__}, not an object")
    members = payload.get("members")
    if not isinstance(members, list):
        raise _invalid(source, "no 'members' list")
    seen: set[str] = set()
    heads: list[str] = []
    parsed: list[Member] = []
    skipped: list[str] = []
    api_urls: list[str] = []
    for position, raw in enumerate(members, 1):
        if not isinstance(raw, dict):
            raise _invalid(source, f"member {position} is not an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid(source, f"member {position} has no name")
        if name in seen:
            raise _invalid(source, f"two members are named {name!r}")
        seen.add(name)
        role, state, host = raw.get("role"), raw.get("state", ""), raw.get("host")
        for key, value in (("role", role), ("state", state), ("api_url", raw.get("api_url"))):
            if (key != "api_url" or value is not None) and not isinstance(value, str):
                raise _invalid(source, f"member {name!r} has a {key} that is not a string")
        if host is not None and not isinstance(host, str):
            raise _invalid(source, f"member {name!r} has a host that is not a string")
        port = _optional_int(raw, "port", name, source)
        if port is not None and not 0 < port < 65536:
            raise _invalid(source, f"member {name!r} has a port out of range")
        timeline = _optional_int(raw, "timeline", name, source)
        lag = raw.get("lag")
        if lag is not None and lag != "unknown" and (
                isinstance(lag, bool) or not isinstance(lag, int) or lag < 0):
            raise _invalid(source, f"member {name!r} has a lag that is neither a number of "
                           "bytes nor 'unknown'")
        assert isinstance(role, str) and isinstance(state, str)
        if role in (LEADER, STANDBY_LEADER):
            heads.append(name)
        if isinstance(raw.get("api_url"), str):
            api_urls.append(raw["api_url"])
        if role not in KNOWN_ROLES:
            skipped.append(f"member {name!r} has role {role!r}, which this version does not "
                           "know: it is not used")
            continue
        if not host:
            if role == LEADER:
                raise _invalid(source, f"the leader {name!r} has no host (is Patroni's "
                               "postgresql.connect_address set?)")
            skipped.append(f"member {name!r} has no host (postgresql.connect_address): it "
                           "is not used")
            continue
        parsed.append(Member(name, host, port or 5432, role, state,
                             lag if isinstance(lag, int) else None, timeline))
    if len(heads) > 1:
        raise _invalid(source, f"{len(heads)} leaders ({', '.join(heads)}); the DCS "
                       "disagrees with itself or the endpoints are of different clusters")
    leader = next((m for m in parsed if m.role == LEADER), None)
    replicas = tuple(
        m for m in parsed if m.role in READ_ROLES and m.state in READ_STATES
        and m.lag_bytes is not None and (max_lag_bytes is None or m.lag_bytes <= max_lag_bytes))
    return ClusterView(leader, replicas, fetched_at, source, tuple(parsed), tuple(skipped),
                       tuple(api_urls))


@dataclass(frozen=True)
class LeaderChange:
    """One line of Patroni's timeline history: *timeline* ended at WAL position *lsn*
    (bytes) when a member was promoted.  *at* (ISO 8601, Patroni's clock) and
    *new_leader* are None in lines Patroni wrote before it recorded them."""

    timeline: int
    lsn: int
    reason: str
    at: str | None
    new_leader: str | None


def parse_history(payload: object, source: str = "") -> list[LeaderChange]:
    """``GET /history``'s answer: a list of ``[timeline, lsn, reason]`` lines, to
    which Patroni 2.0+ appends the promotion's timestamp and the new leader's name.
    Raises PatroniDiscoveryError (naming *source*) for anything else."""
    where = f"{source}{HISTORY_PATH}" if source else f"GET {HISTORY_PATH}"

    def invalid(what: str) -> PatroniDiscoveryError:
        return PatroniDiscoveryError(f"Patroni answered {where} with {what}; expected a list "
                                     "of [timeline, lsn, reason, timestamp, new_leader]",
                                     [(source or where, what)])

    if not isinstance(payload, list):
        raise invalid(f"a {type(payload).__name__}")
    out = []
    for i, line in enumerate(payload, 1):
        if not isinstance(line, list) or len(line) < 3:
            raise invalid(f"line {i} that is not a list of at least 3 items")
        timeline, lsn, reason = line[0], line[1], line[2]
        if isinstance(timeline, bool) or not isinstance(timeline, int) or isinstance(
                lsn, bool) or not isinstance(lsn, int) or not isinstance(reason, str):
            raise invalid(f"line {i} whose timeline, lsn or reason has the wrong type")
        at = line[3] if len(line) > 3 and isinstance(line[3], str) else None
        new_leader = line[4] if len(line) > 4 and isinstance(line[4], str) else None
        out.append(LeaderChange(timeline, lsn, reason[:200], at, new_leader))
    return out


# -- conninfos -----------------------------------------------------------------------


def member_params(member: Member) -> dict[str, str]:
    """``host`` and ``port`` of *member*, as connection parameters."""
    return {"host": member.host, "port": str(member.port)}


def leader_params(view: ClusterView) -> dict[str, str] | None:
    """The leader's ``host``/``port``; None while the view has no leader."""
    return None if view.leader is None else member_params(view.leader)


def replica_params(view: ClusterView) -> list[dict[str, str]]:
    """``host``/``port`` of each replica that may serve reads, in the view's order."""
    return [member_params(m) for m in view.replicas]


def conninfo_for(member: Member, conninfo: str = "", **overrides: str) -> str:
    """*conninfo* (e.g. a service's, with its role and password) pointed at *member*:
    ``host``/``port`` replaced (a ``hostaddr`` dropped, it would win over the host),
    then *overrides*, with :func:`psycopg.conninfo.make_conninfo`."""
    params = dict(conninfo_to_dict(conninfo)) if conninfo else {}
    params.pop("hostaddr", None)
    return make_conninfo(make_conninfo(**{k: str(v) for k, v in params.items()}),
                         **member_params(member), **overrides)


def leader_conninfo(view: ClusterView, conninfo: str = "") -> str:
    """*conninfo* at the leader, with ``target_session_attrs=read-write`` so that a
    leader demoted since the view was fetched refuses the connection.  Raises
    PatroniDiscoveryError while the view has no leader."""
    if view.leader is None:
        raise PatroniDiscoveryError(
            f"Patroni ({view.source}) reports no leader: a failover is under way, or the "
            "cluster has no healthy primary. Retry shortly; 'patronictl list' shows the "
            "cluster.", [(view.source, "no leader")])
    return writable_conninfo(view.leader, conninfo)


def writable_conninfo(leader: Member, conninfo: str = "") -> str:
    """*conninfo* at *leader*, with ``target_session_attrs=read-write``: a leader
    demoted since the view was fetched refuses the connection."""
    return conninfo_for(leader, conninfo, target_session_attrs="read-write")


def replica_conninfos(view: ClusterView, conninfo: str = "") -> list[str]:
    """*conninfo* at each replica that may serve reads, with
    ``target_session_attrs=standby`` (a replica promoted since is refused)."""
    return [conninfo_for(m, conninfo, target_session_attrs="standby") for m in view.replicas]


# -- fetching ------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the Authorization header to wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies from the environment (the REST API is on the cluster's network, and a
# proxy would see the credentials), no redirects.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


class _Failed(Exception):
    """One endpoint's attempt failed; the message says why (no credentials)."""


def _describe(exc: BaseException, timeout: float) -> str:
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) and not isinstance(
        exc, urllib.error.HTTPError) else exc
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s (DATABASE_PATRONI_TIMEOUT)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is Patroni running there?)"
    if isinstance(reason, http.client.RemoteDisconnected):
        return ("closed the connection without an answer (Patroni 3.0.2 does so when it "
                "cannot read its DCS: etcd down or partitioned?)")
    if isinstance(reason, OSError) and reason.strerror:
        return f"{type(reason).__name__}: {reason.strerror}"
    return f"{type(reason).__name__}: {' '.join(str(reason).split())[:200]}"


@dataclass(frozen=True)
class _Target:
    label: str  # scheme://host:port, what logs name it by
    url: str  # the base the request paths (/cluster, /history, /config) are appended to
    authorization: str | None
    configured: bool


def _target(endpoint: PatroniEndpoint, configured: bool = True) -> _Target:
    auth = None
    if endpoint.username is not None:
        token = f"{endpoint.username}:{endpoint.password or ''}".encode()
        auth = "Basic " + base64.b64encode(token).decode("ascii")
    return _Target(endpoint.url, endpoint.url, auth, configured)


def _api_base(api_url: str) -> str | None:
    """``scheme://host:port`` of a member's ``api_url`` (``http://h:8008/patroni``)."""
    try:
        parts = urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            return None
        if parts.username is not None:
            return None
        return parse_patroni_url(f"{parts.scheme}://{parts.netloc}").url
    except (ValueError, ConfigError):  # not an endpoint we would use
        return None


class PatroniDiscovery:
    """The cluster view of one process, from Patroni's REST API (see the module's
    docstring for the rules).  Thread-safe."""

    def __init__(self, endpoints: Sequence[str | PatroniEndpoint], refresh_interval: float,
                 timeout: float, max_lag_bytes: int | None,
                 logger: logging.Logger | None = None, *, min_gap: float = MIN_GAP_S) -> None:
        parsed = [e if isinstance(e, PatroniEndpoint) else parse_patroni_url(e, index=i)
                  for i, e in enumerate(endpoints, 1)]
        if not parsed:
            raise PatroniDiscoveryError("PatroniDiscovery needs at least one endpoint: set "
                                        "DATABASE_PATRONI_URLS.")
        if refresh_interval <= 0 or timeout <= 0 or min_gap < 0:
            raise ValueError("refresh_interval and timeout must be > 0, min_gap >= 0")
        self._targets = [_target(e) for e in parsed]
        self.endpoints = tuple(t.label for t in self._targets)
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self.max_lag_bytes = max_lag_bytes
        self.min_gap = min_gap
        self.log = logger or log
        self._cond = threading.Condition()
        self._view: ClusterView | None = None
        self._error: PatroniDiscoveryError | None = None
        self._fetching = False
        self._generation = 0  # completed fetches
        self._last_end = float("-inf")
        self._due = float("-inf")
        # Only the fetching thread (one at a time) reads and writes these.
        self._problems: dict[str, str] = {}  # endpoint or topic -> the problem logged
        self._failed: set[str] = set()  # endpoints whose last attempt failed
        self._random = random.Random()  # noqa: S311 -- jitter, not secrecy
        self.requests = 0  # HTTP requests sent (tests, metrics)
        _INSTANCES.add(self)

    def __repr__(self) -> str:
        return f"PatroniDiscovery({list(self.endpoints)})"

    # -- reading ---------------------------------------------------------------------
    def cached(self) -> ClusterView | None:
        """The last good view, without fetching (None before the first)."""
        return self._view

    def problems(self) -> dict[str, str]:
        """The problems that last fetches logged and that have not ended, by endpoint."""
        return dict(self._problems)

    def view(self) -> ClusterView:
        """The last good view; fetched by this thread when there is none yet, or when it
        is due (others meanwhile get the old one).  Raises PatroniDiscoveryError only
        when no fetch has ever succeeded, naming every endpoint and why it failed."""
        with self._cond:
            if self._view is not None and (self._fetching or time.monotonic() < self._due):
                return self._view
            if self._view is None:
                return self._fetch_coalesced("first view")
            self._fetching = True
        self._fetch("periodic")
        with self._cond:
            return self._result()

    def refresh(self, reason: str) -> ClusterView:
        """Fetch now (e.g. after a connection error, *reason* says which), unless a fetch
        is in flight (then wait for it) or the last one ended less than ``min_gap`` ago
        (then use it).  Returns the view that results, as :meth:`view` does."""
        with self._cond:
            return self._fetch_coalesced(reason)

    def leader_changes(self) -> list[LeaderChange]:
        """The cluster's timeline history (``GET /history``: one entry per promotion,
        oldest first), from the first endpoint that answers; fetched each call, for
        monitoring, not for routing.  Raises PatroniDiscoveryError naming every
        endpoint and why when none answers with a valid history."""
        return self._first_answer(HISTORY_PATH, parse_history)

    def dynamic_config(self) -> dict[str, Any]:
        """The cluster's dynamic configuration (``GET /config``: ``ttl``, ``slots``,
        ``postgresql.use_slots``, ...), from the first endpoint that answers; raises
        PatroniDiscoveryError when none does."""
        def parse(payload: object, source: str) -> dict[str, Any]:
            if not isinstance(payload, dict):
                raise PatroniDiscoveryError(
                    f"Patroni answered {source}{CONFIG_PATH} with a "
                    f"{type(payload).__name__}, not an object", [(source, "not an object")])
            return payload
        return self._first_answer(CONFIG_PATH, parse)

    def _first_answer(self, path: str, parse: Callable[[object, str], T]) -> T:
        failures: list[tuple[str, str]] = []
        for target in self._candidates():
            try:
                return parse(self._get(target, path), target.label)
            except _Failed as exc:
                failures.append((target.label, str(exc)))
            except PatroniDiscoveryError as exc:
                failures.append((target.label, exc.problems[0][1] if exc.problems
                                 else str(exc)))
        raise self._failure(failures, f"GET {path}")

    # -- internals -------------------------------------------------------------------
    def _result(self) -> ClusterView:
        if self._view is not None:
            return self._view
        assert self._error is not None
        raise self._error

    def _fetch_coalesced(self, reason: str) -> ClusterView:
        """Called with the lock held; returns with it held."""
        if self._fetching:
            generation = self._generation
            while self._fetching and self._generation == generation:
                self._cond.wait()
            return self._result()
        if time.monotonic() - self._last_end < self.min_gap:
            return self._result()
        self._fetching = True
        self._cond.release()
        try:
            self._fetch(reason)
        finally:
            self._cond.acquire()
        return self._result()

    def _candidates(self) -> list[_Target]:
        ok = [t for t in self._targets if t.label not in self._failed]
        failed = [t for t in self._targets if t.label in self._failed]
        out = ok + failed
        known = {t.label for t in out}
        view = self._view
        for api_url in view.api_urls if view is not None else ():
            base = _api_base(api_url)
            if base is not None and base not in known and len(out) < len(
                    self._targets) + MAX_DISCOVERED:
                known.add(base)
                out.append(_Target(base, base, None, False))
        return out

    def _get(self, target: _Target, path: str = CLUSTER_PATH) -> object:
        headers = {"Accept": "application/json"}
        if target.authorization is not None:
            headers["Authorization"] = target.authorization
        request = urllib.request.Request(target.url + path, headers=headers)  # noqa: S310 -- http(s) only
        self.requests += 1
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                body = response.read(MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            exc.close()
            hint = (" (credentials in DATABASE_PATRONI_URLS?)" if exc.code in (401, 403)
                    else "")
            raise _Failed(f"HTTP {exc.code}{hint}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Failed(_describe(exc, self.timeout)) from None
        if len(body) > MAX_BODY_BYTES:
            raise _Failed(f"an answer larger than {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            raise _Failed("an answer that is not JSON") from None

    def _fetch(self, reason: str) -> None:
        """One fetch (this thread set ``_fetching``); stores the result and wakes the
        waiting threads, whatever happens."""
        chosen: ClusterView | None = None
        failures: list[tuple[str, str]] = [("<all>", "the fetch was interrupted")]
        try:
            chosen, failures = self._try_endpoints()
        finally:
            with self._cond:
                previous = self._view
                if chosen is not None:
                    self._view, self._error = chosen, None
                else:
                    self._error = self._failure(failures, reason)
                now = time.monotonic()
                self._last_end = now
                self._due = now + self.refresh_interval * self._random.uniform(
                    1 - JITTER, 1 + JITTER)
                self._fetching = False
                self._generation += 1
                self._cond.notify_all()
        self._report(previous, chosen, failures, reason)

    def _try_endpoints(self) -> tuple[ClusterView | None, list[tuple[str, str]]]:
        failures: list[tuple[str, str]] = []
        leaderless: ClusterView | None = None
        for target in self._candidates():
            try:
                payload = self._get(target)
                view = parse_cluster(payload, self.max_lag_bytes, source=target.label,
                                     fetched_at=time.monotonic())
            except _Failed as exc:
                failures.append((target.label, str(exc)))
                self._failed.add(target.label)
                continue
            except PatroniDiscoveryError as exc:
                why = exc.problems[0][1] if exc.problems else str(exc)
                failures.append((target.label, why))
                self._failed.add(target.label)
                continue
            self._failed.discard(target.label)
            self._recovered(target.label)
            if view.leader is not None:
                return view, failures
            if leaderless is None:
                leaderless = view  # another endpoint may see the leader
        return leaderless, failures

    def _failure(self, failures: Sequence[tuple[str, str]], reason: str
                 ) -> PatroniDiscoveryError:
        detail = "; ".join(f"{label}: {why}" for label, why in failures)
        return PatroniDiscoveryError(
            f"No Patroni REST endpoint gave a usable view of the cluster ({reason}): "
            f"{detail}. Check DATABASE_PATRONI_URLS (http(s)://HOST:PORT of Patroni's "
            "restapi.listen), that Patroni runs there, and 'patronictl list'.", failures)

    # -- logging: once per problem, once when it ends ----------------------------------
    def _warn_once(self, key: str, problem: str, message: str, *args: object) -> None:
        if self._problems.get(key) != problem:
            self._problems[key] = problem
            self.log.warning(message, *args)

    def _recovered(self, key: str) -> None:
        if self._problems.pop(key, None) is not None:
            self.log.info("Patroni REST endpoint %s recovered: it answers GET %s again",
                          key, CLUSTER_PATH)

    def _report(self, previous: ClusterView | None, chosen: ClusterView | None,
                failures: Sequence[tuple[str, str]], reason: str) -> None:
        for label, why in failures:
            self._warn_once(label, why, "Patroni REST endpoint %s failed: %s; trying the "
                            "others", label, why)
        if chosen is None:
            kept = ("none yet" if previous is None else
                    f"keeping the view from {previous.age():.1f} s ago (leader "
                    f"{previous.leader.name if previous.leader else 'none'})")
            self._warn_once("<all>", "down", "no Patroni REST endpoint answered (%s): %s",
                            reason, kept)
            return
        if self._problems.pop("<all>", None) is not None:
            self.log.info("Patroni REST API answers again (%s)", chosen.source)
        for skipped in chosen.skipped:
            self._warn_once(f"<skipped> {skipped}", skipped, "Patroni cluster: %s", skipped)
        for key in [k for k in self._problems if k.startswith("<skipped> ")]:
            if key.removeprefix("<skipped> ") not in chosen.skipped:
                del self._problems[key]
        old = previous.leader.name if previous and previous.leader else None
        new = chosen.leader.name if chosen.leader else None
        if new is None:
            self._warn_once("<leader>", "none", "Patroni cluster (%s) has no leader: a "
                            "failover is under way or no member can lead; writes have no "
                            "target until one appears", chosen.source)
        elif self._problems.pop("<leader>", None) is not None or (old is not None
                                                                   and old != new):
            self.log.warning("Patroni cluster leader is now %s (%s:%d), was %s",
                             new, chosen.leader.host if chosen.leader else "",
                             chosen.leader.port if chosen.leader else 0, old or "none")


def discovery_from_settings(settings: Settings, logger: logging.Logger | None = None
                            ) -> PatroniDiscovery | None:
    """A PatroniDiscovery over ``DATABASE_PATRONI_URLS`` (None when unset)."""
    if settings.database_patroni_urls is None:
        return None
    return PatroniDiscovery(parse_patroni_urls(settings.database_patroni_urls.get_secret_value()),
                            settings.database_patroni_refresh_interval,
                            settings.database_patroni_timeout,
                            settings.database_patroni_max_lag_bytes, logger)


# Every live instance, for the fork handler: a child must not inherit a fetch "in
# flight" in a thread that does not exist there (it would never end), nor its lock.
_INSTANCES: weakref.WeakSet[PatroniDiscovery] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for discovery in list(_INSTANCES):
        discovery._cond = threading.Condition()
        discovery._fetching = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class PatroniWatch:
    """A process's :class:`PatroniDiscovery`, kept fresh by a daemon thread, so that
    no pool (and no event loop) ever waits for Patroni's REST API.

    The thread refreshes every ``refresh_interval`` (jittered by the discovery) and at
    once when :meth:`poke`\\ d -- the pools poke it when a connection attempt fails, and
    the discovery coalesces those (one fetch per ``min_gap``).  :meth:`leader` is the
    leader of the last good view, or, while a view says there is none (a failover under
    way), the leader before it: connections go there with
    ``target_session_attrs=read-write``, so a demoted one refuses them, and the next
    view names the new leader.  Never a member that no view called leader.
    """

    def __init__(self, discovery: PatroniDiscovery) -> None:
        self.discovery = discovery
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._last_leader: Member | None = None
        self.leader_changed_at: float | None = None  # time.time() of the last change seen
        self.previous_leader: str | None = None

    def __repr__(self) -> str:
        return f"PatroniWatch({list(self.discovery.endpoints)})"

    def start(self) -> None:
        """Start the thread (again, in a forked child), after one fetch in this thread:
        the first view is there when this returns, unless every endpoint failed (then
        the pools use DATABASE_URL's hosts until one answers)."""
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() \
                    and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="edulink-patroni-watch",
                                            daemon=True)
            self._thread.start()
        with contextlib.suppress(PatroniDiscoveryError):  # logged once; the thread retries
            self._note(self.discovery.view())

    def poke(self) -> None:
        """Ask for a refresh now (non-blocking)."""
        self._wake.set()

    def view(self) -> ClusterView | None:
        return self.discovery.cached()

    def leader(self) -> Member | None:
        view = self.discovery.cached()
        if view is not None:
            self._note(view)
        return self._last_leader

    def _note(self, view: ClusterView) -> None:
        leader = view.leader
        if leader is not None and leader != self._last_leader:
            if self._last_leader is not None and leader.name != self._last_leader.name:
                self.previous_leader = self._last_leader.name
                self.leader_changed_at = time.time()
            self._last_leader = leader

    def _run(self) -> None:
        while True:
            poked = self._wake.wait(self.discovery.refresh_interval)
            self._wake.clear()
            try:
                view = self.discovery.refresh("a connection attempt failed") if poked \
                    else self.discovery.view()
            except PatroniDiscoveryError:
                continue  # no view yet; logged once
            except Exception:  # the watch must outlive any one fetch
                log.exception("Patroni watch: refresh failed")
                continue
            self._note(view)


def leader_member_conninfo(watch: PatroniWatch, configured: dict[str, Any]) -> str:
    """``host``/``port`` of *watch*'s leader, read-write only (for a pool that takes a
    conninfo callable); before any view, the *configured* host, port and
    ``target_session_attrs`` (DATABASE_URL's members)."""
    leader = watch.leader()
    if leader is None:
        return make_conninfo(**{k: str(v) for k, v in configured.items()})
    return writable_conninfo(leader)


def replica_admission(watch: PatroniWatch) -> Callable[[str], bool]:
    """Whether a replica (by ``host:port``) may serve reads by Patroni's last view: role
    ``replica``/``sync_standby``, state running, lag within the byte limit.  Without a
    view yet, every replica the probes find healthy may."""
    cache: list[Any] = [None, frozenset()]

    def admit(label: str) -> bool:
        view = watch.view()
        if view is None:
            return True
        if cache[0] is not view:
            cache[:] = [view, frozenset(host_label(member_params(m)) for m in view.replicas)]
        return label in cache[1]
    return admit


_WATCHES: dict[tuple[Any, ...], PatroniWatch] = {}
_WATCHES_LOCK = threading.Lock()


def watch_for(settings: Settings) -> PatroniWatch | None:
    """The process's watch of the cluster ``DATABASE_PATRONI_URLS`` names (one per set
    of endpoints and options, shared by every pool), started; None when unset."""
    if settings.database_patroni_urls is None:
        return None
    key = (settings.database_patroni_urls.get_secret_value(),
           settings.database_patroni_refresh_interval, settings.database_patroni_timeout,
           settings.database_patroni_max_lag_bytes)
    with _WATCHES_LOCK:
        watch = _WATCHES.get(key)
        if watch is None:
            discovery = discovery_from_settings(settings)
            assert discovery is not None
            watch = _WATCHES[key] = PatroniWatch(discovery)
    watch.start()
    return watch
