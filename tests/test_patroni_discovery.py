"""Patroni REST discovery (connections/patroni.py): parsing ``GET /cluster`` and the
refresh rules of PatroniDiscovery.

The payloads have the shape Patroni 3.0.2 answers (Debian's ``patroni`` 3.0.2-1:
``/usr/lib/python3/dist-packages/patroni/api.py`` ``do_GET_cluster`` returns
``patroni/utils.py`` ``cluster_as_json(cluster)``): ``{"members": [...]}`` sorted by
name, each with ``name``, ``role``, ``state``, ``api_url``, ``host``, ``port``,
``timeline`` and -- for every member but the leader -- ``lag`` (bytes or
``"unknown"``).

The behaviour tests run against a fake REST server (stdlib ``http.server`` in a
thread) and not a real Patroni: the cases that matter are the ones a real Patroni
cannot be made to produce on demand -- two leaders, a role this code does not know,
invalid JSON, an answer slower than the timeout, a connection closed without an
answer (what 3.0.2 does when its etcd is unreachable) -- switched between from one
request to the next.  Everything else is real: sockets, urllib, threads, the clock.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from microservices.shared.database.connections import patroni
from microservices.shared.database.connections.patroni import (
    ClusterView,
    PatroniDiscovery,
    leader_conninfo,
    leader_params,
    parse_cluster,
    replica_conninfos,
    replica_params,
)
from microservices.shared.database.core.errors import PatroniDiscoveryError

from .ports import free_port

MIB = 1024 * 1024
PLACEHOLDER = "http://member-"  # the fake server puts its own URL there


def member(name: str, role: str, lag: int | str | None = 0, *, state: str = "running",
           host: str | None = None, port: int = 5432, timeline: int = 3) -> dict[str, Any]:
    """One member as 3.0.2's cluster_as_json writes it (no 'lag' for the leader)."""
    out: dict[str, Any] = {"name": name, "role": role, "state": state,
                           "api_url": f"{PLACEHOLDER}{host or name}:8008/patroni",
                           "host": host or name, "port": port, "timeline": timeline}
    if role not in ("leader", "standby_leader"):
        out["lag"] = lag
    return out


def cluster(*members: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"members": sorted(members, key=lambda m: m["name"]), **extra}


GOOD = cluster(member("pg1", "leader"), member("pg2", "sync_standby", 0),
               member("pg3", "replica", 4096))
FAILED_OVER = cluster(member("pg1", "replica", 0), member("pg2", "leader"),
                      member("pg3", "replica", 0))
NO_LEADER = cluster(member("pg1", "replica", "unknown", state="stopped"),
                    member("pg2", "replica", 0), member("pg3", "replica", 0))
TWO_LEADERS = cluster(member("pg1", "leader"), member("pg2", "leader"),
                      member("pg3", "replica", 0))
UNKNOWN_ROLE = cluster(member("pg1", "leader"), member("pg2", "quorum_standby", 0),
                       member("pg3", "replica", 0))


# -- parsing -------------------------------------------------------------------------


def test_a_real_shaped_answer_gives_the_leader_and_the_readable_replicas() -> None:
    payload = cluster(
        member("pg1", "leader", host="10.0.0.1"),
        member("pg2", "sync_standby", 0, host="10.0.0.2"),
        member("pg3", "replica", 10 * MIB, host="10.0.0.3", port=5433),
        member("pg4", "replica", "unknown", host="10.0.0.4"),  # no WAL position in the DCS
        member("pg5", "replica", 32 * MIB, host="10.0.0.5"),  # over the limit
        member("pg6", "replica", 0, state="starting", host="10.0.0.6"),
        member("pg7", "replica", 0, state="streaming", host="10.0.0.7"),  # Patroni >= 3.0.4
        pause=True)
    view = parse_cluster(payload, 16 * MIB, source="http://p1:8008", fetched_at=12.5)
    assert view.leader is not None
    assert (view.leader.name, view.leader.host, view.leader.port) == ("pg1", "10.0.0.1", 5432)
    assert view.leader.lag_bytes is None and view.leader.timeline == 3
    assert [(m.name, m.port, m.lag_bytes) for m in view.replicas] == [
        ("pg2", 5432, 0), ("pg3", 5433, 10 * MIB), ("pg7", 5432, 0)]
    assert len(view.members) == 7 and view.skipped == ()
    assert (view.source, view.fetched_at) == ("http://p1:8008", 12.5)
    assert view.api_urls[0] == PLACEHOLDER + "10.0.0.1:8008/patroni"


def test_the_lag_limit_is_inclusive_and_none_means_no_limit() -> None:
    payload = cluster(member("pg1", "leader"), member("pg2", "replica", 100),
                      member("pg3", "replica", 101), member("pg4", "replica", "unknown"))
    assert [m.name for m in parse_cluster(payload, 100).replicas] == ["pg2"]
    # No limit still needs a known lag: 'unknown' means Patroni has no WAL position.
    assert [m.name for m in parse_cluster(payload, None).replicas] == ["pg2", "pg3"]
    assert parse_cluster(payload, 0).replicas == ()


@pytest.mark.parametrize(("payload", "what"), [
    ([], "a JSON list, not an object"),
    ("members", "a JSON str, not an object"),
    ({}, "no 'members' list"),
    ({"members": {"pg1": {}}}, "no 'members' list"),
    ({"members": ["pg1"]}, "member 1 is not an object"),
    ({"members": [{"role": "leader", "state": "running"}]}, "member 1 has no name"),
    ({"members": [member("pg1", "leader") | {"role": 1}]}, "role that is not a string"),
    ({"members": [member("pg1", "leader") | {"state": None}]}, "state that is not a string"),
    ({"members": [member("pg1", "leader") | {"host": ["h"]}]}, "host that is not a string"),
    ({"members": [member("pg1", "leader") | {"port": "5432"}]}, "port that is not an integer"),
    ({"members": [member("pg1", "leader") | {"port": 70000}]}, "port out of range"),
    ({"members": [member("pg1", "leader") | {"timeline": "3"}]}, "timeline that is not"),
    ({"members": [member("pg2", "replica", "12")]}, "lag that is neither"),
    ({"members": [member("pg2", "replica", True)]}, "lag that is neither"),
    ({"members": [member("pg2", "replica", -1)]}, "lag that is neither"),
    ({"members": [member("pg1", "leader"), member("pg1", "replica")]}, "two members are named"),
    ({"members": [member("pg1", "leader") | {"host": ""}]}, "the leader 'pg1' has no host"),
])
def test_malformed_answers_are_errors_naming_the_endpoint(payload: object, what: str) -> None:
    with pytest.raises(PatroniDiscoveryError) as info:
        parse_cluster(payload, None, source="http://p1:8008")
    assert what in str(info.value)
    assert "http://p1:8008/cluster" in str(info.value)
    assert "DATABASE_PATRONI_URLS" in str(info.value)  # what to do
    assert info.value.problems[0][0] == "http://p1:8008"


def test_two_leaders_are_an_error_never_a_guess() -> None:
    with pytest.raises(PatroniDiscoveryError, match=r"2 leaders \(pg1, pg2\)"):
        parse_cluster(TWO_LEADERS, None)
    with pytest.raises(PatroniDiscoveryError, match="2 leaders"):
        parse_cluster(cluster(member("pg1", "leader"), member("pg2", "standby_leader")), None)


def test_no_leader_is_a_view_without_one() -> None:
    view = parse_cluster(NO_LEADER, None)
    assert view.leader is None
    assert [m.name for m in view.replicas] == ["pg2", "pg3"]
    assert leader_params(view) is None
    with pytest.raises(PatroniDiscoveryError, match="no leader"):
        leader_conninfo(view)


def test_a_standby_leader_is_never_the_leader() -> None:
    # A standby cluster's head replicates from elsewhere: read-only, not a write target.
    view = parse_cluster(cluster(member("pg1", "standby_leader"), member("pg2", "replica")),
                         None)
    assert view.leader is None and [m.name for m in view.replicas] == ["pg2"]


def test_an_unknown_role_is_skipped_and_reported() -> None:
    view = parse_cluster(UNKNOWN_ROLE, None)
    assert view.leader is not None and view.leader.name == "pg1"
    assert [m.name for m in view.replicas] == ["pg3"]
    assert [m.name for m in view.members] == ["pg1", "pg3"]
    assert len(view.skipped) == 1 and "'pg2'" in view.skipped[0]
    assert "quorum_standby" in view.skipped[0]


def test_a_replica_without_a_host_is_skipped() -> None:
    raw = member("pg2", "replica", 0)
    del raw["host"], raw["port"]  # cluster_as_json omits them without a connect address
    view = parse_cluster(cluster(member("pg1", "leader"), raw), None)
    assert view.replicas == () and "'pg2' has no host" in view.skipped[0]


def test_conninfos_point_the_given_conninfo_at_the_members() -> None:
    view = parse_cluster(GOOD, None)
    base = "host=old1,old2 port=1,2 hostaddr=10.9.9.9 dbname=app user=u password=secret"
    leader = conninfo_to_dict(leader_conninfo(view, base))
    assert (leader["host"], leader["port"], leader["target_session_attrs"]) == (
        "pg1", "5432", "read-write")
    assert "hostaddr" not in leader  # it would win over host
    assert (leader["dbname"], leader["user"], leader["password"]) == ("app", "u", "secret")
    replicas = [conninfo_to_dict(c) for c in replica_conninfos(view, base)]
    assert [(r["host"], r["target_session_attrs"]) for r in replicas] == [
        ("pg2", "standby"), ("pg3", "standby")]
    assert leader_params(view) == {"host": "pg1", "port": "5432"}
    assert replica_params(view) == [{"host": "pg2", "port": "5432"},
                                    {"host": "pg3", "port": "5432"}]


# -- a fake Patroni REST API -------------------------------------------------------------


class FakePatroni:
    """Serves GET /cluster as told: ``mode`` 'json' (``payload``), 'invalid' (not JSON),
    'http500', 'drop' (close without an answer, as 3.0.2 does when its DCS is
    unreachable) or 'slow' (``payload`` after ``delay`` seconds).  Counts requests.
    The members' placeholder ``api_url`` becomes this server's: it plays every member."""

    def __init__(self, payload: object = GOOD) -> None:
        self.payload: object = copy.deepcopy(payload)
        self.mode = "json"
        self.delay = 0.0
        self.requests = 0
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with fake._lock:
                    fake.requests += 1
                    fake.authorizations.append(self.headers.get("Authorization"))
                    mode, payload, delay = fake.mode, fake.payload, fake.delay
                if self.path != "/cluster":
                    self.send_error(404)
                    return
                if mode == "drop":
                    self.close_connection = True
                    return
                if mode == "http500":
                    self.send_error(500)
                    return
                if mode == "slow":
                    time.sleep(delay)
                if isinstance(payload, dict) and isinstance(payload.get("members"), list):
                    payload = copy.deepcopy(payload)
                    for m in payload["members"]:  # one fake plays every member
                        if isinstance(m, dict) and str(m.get("api_url")).startswith(PLACEHOLDER):
                            m["api_url"] = fake.url + "/patroni"
                body = b"{'members': [" if mode == "invalid" else json.dumps(payload).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (slow)
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def set(self, mode: str, payload: object | None = None) -> None:
        with self._lock:
            self.mode = mode
            if payload is not None:
                self.payload = copy.deepcopy(payload)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakePatroni]:
    server = FakePatroni()
    yield server
    server.close()


@pytest.fixture
def logger() -> logging.Logger:
    return logging.getLogger("test.patroni_discovery")


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def discovery(*urls: str, logger: logging.Logger, interval: float = 60.0,
              timeout: float = 0.5, max_lag: int | None = 16 * MIB,
              min_gap: float = 0.0) -> PatroniDiscovery:
    return PatroniDiscovery(list(urls), interval, timeout, max_lag, logger, min_gap=min_gap)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def leader_name(view: ClusterView) -> str | None:
    return view.leader.name if view.leader else None


# -- behaviour ---------------------------------------------------------------------------


def test_the_first_view_is_fetched_once_and_then_cached(fake: FakePatroni,
                                                        logger: logging.Logger) -> None:
    d = discovery(fake.url, logger=logger)
    assert d.cached() is None
    view = d.view()
    assert leader_name(view) == "pg1" and view.source == fake.url
    assert [m.name for m in view.replicas] == ["pg2", "pg3"]
    assert d.view() is view and d.view() is view
    assert fake.requests == 1


def test_never_a_good_view_is_an_error_naming_every_endpoint(
        fake: FakePatroni, logger: logging.Logger) -> None:
    fake.set("http500")
    refused = refused_url()
    d = discovery(refused, fake.url, logger=logger)
    with pytest.raises(PatroniDiscoveryError) as info:
        d.view()
    text = str(info.value)
    assert f"{refused}: connection refused" in text and f"{fake.url}: HTTP 500" in text
    assert "DATABASE_PATRONI_URLS" in text
    assert [label for label, _ in info.value.problems] == [refused, fake.url]
    fake.set("json")
    assert leader_name(d.view()) == "pg1"  # and once one answers, there is a view


def test_bad_answers_keep_the_last_good_view_and_warn_once_each(
        fake: FakePatroni, logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    d = discovery(fake.url, logger=logger, timeout=0.3)
    caplog.set_level(logging.INFO, logger=logger.name)
    good = d.view()
    fake.delay = 1.0
    problems = [("invalid", "not JSON"), ("http500", "HTTP 500"),
                ("drop", "closed the connection without an answer"),
                ("slow", "no answer within 0.3 s"),
                ("json", "2 leaders")]
    for mode, expected in problems:
        fake.set(mode, TWO_LEADERS if mode == "json" else None)
        for _ in range(3):
            assert d.refresh("test") is good  # the last good view, as it was
        assert any(expected in w for w in warnings_of(caplog)), (mode, warnings_of(caplog))
    endpoint_warnings = [w for w in warnings_of(caplog) if w.startswith("Patroni REST endpoint")]
    assert len(endpoint_warnings) == len(problems)  # once per distinct problem, not per call
    assert len([w for w in warnings_of(caplog) if w.startswith("no Patroni")]) == 1
    assert fake.requests == 1 + 3 * len(problems)

    caplog.clear()
    fake.set("json", GOOD)
    for _ in range(3):
        assert leader_name(d.refresh("test")) == "pg1"
    recovered = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recovered) == 1 and fake.url in recovered[0]
    assert len([r for r in caplog.records if "answers again" in r.getMessage()]) == 1
    assert warnings_of(caplog) == [] and d.problems() == {}


def test_a_failed_endpoint_is_tried_after_the_ones_that_answer(
        logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    first, second = FakePatroni(), FakePatroni(FAILED_OVER)
    try:
        d = discovery(first.url, second.url, logger=logger)
        caplog.set_level(logging.INFO, logger=logger.name)
        assert d.view().source == first.url and second.requests == 0
        first.set("drop")  # e.g. its etcd is unreachable
        view = d.refresh("connection error")
        assert view.source == second.url and leader_name(view) == "pg2"
        assert (first.requests, second.requests) == (2, 1)
        # While the second answers, the failed first is not asked first again: no
        # failed round trip (or, for a black-holed endpoint, no timeout) per fetch.
        for _ in range(3):
            assert d.refresh("again").source == second.url
        assert (first.requests, second.requests) == (2, 4)
        endpoint_warnings = [w for w in warnings_of(caplog) if "REST endpoint" in w]
        assert len(endpoint_warnings) == 1 and first.url in endpoint_warnings[0]
        # The second fails, the first is back: one 'recovered' line for the first.
        first.set("json", FAILED_OVER)
        second.set("http500")
        assert d.refresh("again").source == first.url
        recovered = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
        assert len(recovered) == 1 and first.url in recovered[0]
    finally:
        first.close()
        second.close()


def test_coalesced_refresh_fifty_threads_one_request(fake: FakePatroni,
                                                    logger: logging.Logger) -> None:
    d = PatroniDiscovery([fake.url], 60.0, 2.0, None, logger)  # default min_gap, 0.2 s
    d.view()
    time.sleep(0.25)  # past the minimum gap
    fake.set("slow", FAILED_OVER)
    fake.delay = 0.3
    before = fake.requests
    start = threading.Barrier(50)
    results: list[str | None] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            results.append(leader_name(d.refresh("connection refused")))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert fake.requests - before <= 2, fake.requests - before
    # Every caller waited for the fetch in flight and got the new view.
    assert results == ["pg2"] * 50


def test_refresh_within_the_minimum_gap_reuses_the_last_fetch(
        fake: FakePatroni, logger: logging.Logger) -> None:
    d = PatroniDiscovery([fake.url], 60.0, 1.0, None, logger, min_gap=0.2)
    d.view()
    fake.set("json", FAILED_OVER)
    assert leader_name(d.refresh("error")) == "pg1" and fake.requests == 1
    time.sleep(0.25)
    assert leader_name(d.refresh("error")) == "pg2" and fake.requests == 2


def test_failover_shows_in_the_view_after_a_refresh(
        fake: FakePatroni, logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    d = discovery(fake.url, logger=logger)
    caplog.set_level(logging.INFO, logger=logger.name)
    assert leader_name(d.view()) == "pg1"
    fake.set("json", FAILED_OVER)
    assert leader_name(d.view()) == "pg1"  # cached until due or asked
    view = d.refresh("connection to pg1 failed")
    assert leader_name(view) == "pg2" and view.leader is not None
    assert leader_conninfo(view, "dbname=app").count("host=pg2") == 1
    assert [m.name for m in view.replicas] == ["pg1", "pg3"]
    assert any("leader is now pg2" in w and "was pg1" in w for w in warnings_of(caplog))


def test_no_leader_replaces_the_old_leader_and_a_failed_fetch_never_brings_it_back(
        fake: FakePatroni, logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    # The rule: an answer replaces the view wholesale; no answer keeps the last view as
    # it is.  "No leader" is an answer (the DCS has no leader key: a failover is under
    # way, the old leader is demoting), so it is not overridden by the older leader,
    # and the failures that follow keep *that* view, not the one before it.
    d = discovery(fake.url, logger=logger)
    caplog.set_level(logging.INFO, logger=logger.name)
    assert leader_name(d.view()) == "pg1"
    fake.set("json", NO_LEADER)
    for _ in range(3):
        view = d.refresh("error")
        assert view.leader is None and [m.name for m in view.replicas] == ["pg2", "pg3"]
    assert len([w for w in warnings_of(caplog) if "has no leader" in w]) == 1
    for mode in ("drop", "http500", "invalid"):
        fake.set(mode)
        assert d.refresh("error").leader is None
    fake.set("json", TWO_LEADERS)
    assert d.refresh("error").leader is None  # not pg1, not pg2: never a guess
    fake.set("json", FAILED_OVER)
    assert leader_name(d.refresh("error")) == "pg2"
    assert any("leader is now pg2" in w and "was none" in w for w in warnings_of(caplog))


def test_an_endpoint_that_sees_the_leader_beats_one_that_does_not(
        logger: logging.Logger) -> None:
    # Two Patronis read the DCS a moment apart around a leader change: the first says
    # no leader (yet), the second already sees the new one.
    first, second = FakePatroni(NO_LEADER), FakePatroni(FAILED_OVER)
    try:
        view = discovery(first.url, second.url, logger=logger).view()
        assert leader_name(view) == "pg2" and view.source == second.url
        second.set("drop")
        view = discovery(first.url, second.url, logger=logger).view()
        assert view.leader is None and view.source == first.url
    finally:
        first.close()
        second.close()


def test_unknown_role_warns_once_while_it_lasts(
        fake: FakePatroni, logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    fake.set("json", UNKNOWN_ROLE)
    d = discovery(fake.url, logger=logger)
    caplog.set_level(logging.INFO, logger=logger.name)
    for _ in range(4):
        view = d.refresh("test")
        assert leader_name(view) == "pg1" and [m.name for m in view.replicas] == ["pg3"]
    assert len([w for w in warnings_of(caplog) if "quorum_standby" in w]) == 1
    fake.set("json", GOOD)
    d.refresh("test")
    fake.set("json", UNKNOWN_ROLE)
    d.refresh("test")  # it came back: a new occurrence, warned again
    assert len([w for w in warnings_of(caplog) if "quorum_standby" in w]) == 2


def test_members_api_urls_are_tried_after_the_configured_endpoints(
        fake: FakePatroni, logger: logging.Logger) -> None:
    other = FakePatroni(FAILED_OVER)
    try:
        payload = copy.deepcopy(GOOD)
        payload["members"][1]["api_url"] = other.url + "/patroni"
        fake.set("json", payload)
        d = discovery(fake.url, logger=logger)
        d.view()
        fake.set("drop")
        view = d.refresh("error")
        assert view.source == other.url and leader_name(view) == "pg2"
        assert other.authorizations == [None]  # never the configured credentials
    finally:
        other.close()


def test_the_periodic_refresh_is_done_by_one_caller_while_others_use_the_old_view(
        fake: FakePatroni, logger: logging.Logger) -> None:
    d = discovery(fake.url, logger=logger, interval=0.2, timeout=2.0)
    old = d.view()
    assert d._due - old.fetched_at == pytest.approx(0.2, abs=0.2 * patroni.JITTER + 0.02)
    time.sleep(0.3)
    fake.set("slow", FAILED_OVER)
    fake.delay = 0.5
    fetched: list[ClusterView] = []
    t = threading.Thread(target=lambda: fetched.append(d.view()))
    t.start()
    time.sleep(0.15)  # t is waiting for the slow answer
    began = time.monotonic()
    assert d.view() is old  # no wait, no second request
    assert time.monotonic() - began < 0.1
    t.join(5)
    assert leader_name(fetched[0]) == "pg2" and fake.requests == 2
    assert leader_name(d.view()) == "pg2" and fake.requests == 2  # fresh again


def test_jitter_spreads_the_refreshes(fake: FakePatroni, logger: logging.Logger) -> None:
    d = discovery(fake.url, logger=logger, interval=10.0)
    gaps = set()
    for _ in range(20):
        d.refresh("test")
        gaps.add(round(d._due - d._last_end, 3))
    assert all(8.0 <= g <= 12.0 for g in gaps) and len(gaps) > 10


def test_credentials_are_sent_but_never_shown(
        fake: FakePatroni, logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    secret = "p@ss:w/rd"
    url = fake.url.replace("http://", "http://patroni:p%40ss%3Aw%2Frd@")
    d = discovery(url, logger=logger)
    caplog.set_level(logging.INFO, logger=logger.name)
    d.view()
    import base64
    assert fake.authorizations == [
        "Basic " + base64.b64encode(f"patroni:{secret}".encode()).decode()]
    fake.set("http500")
    d.refresh("test")
    d2 = discovery(url, logger=logger)
    with pytest.raises(PatroniDiscoveryError) as info:
        d2.view()
    shown = [repr(d), str(info.value), d.view().source, *[r.getMessage() for r in caplog.records]]
    for text in shown:
        assert secret not in text and "p%40ss" not in text, text


def test_settings_build_a_discovery(monkeypatch: pytest.MonkeyPatch,
                                    fake: FakePatroni) -> None:
    from microservices.shared.database.config import load_settings

    for key in ("URLS", "REFRESH_INTERVAL", "MAX_LAG_BYTES", "TIMEOUT"):
        monkeypatch.delenv(f"DATABASE_PATRONI_{key}", raising=False)
    settings = load_settings(database_patroni_urls=f"{fake.url},http://other:8008",
                             database_patroni_max_lag_bytes="none")
    d = patroni.discovery_from_settings(settings)
    assert d is not None and d.endpoints == (fake.url, "http://other:8008")
    assert d.max_lag_bytes is None and d.refresh_interval == 5.0 and d.timeout == 1.0
    assert leader_name(d.view()) == "pg1"
    assert patroni.discovery_from_settings(load_settings()) is None


def test_patroni_members_serve_replica_reads_but_give_django_no_replica_alias(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without DATABASE_REPLICA_URLS, the members in DATABASE_URL are the connection
    manager's replica candidates (standby-only, read-only); Django gets no replica alias
    for them (one member is always the leader and would refuse it)."""
    from microservices.shared.database.config import load_settings, replica_conninfos
    from microservices.shared.database.django_settings import configure_service_database
    from microservices.shared.database.topology import default_topology

    for key in list(os.environ):
        if key.startswith(("DATABASE_", "EDULINK_DB_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres:pw@db1:5432,db2:5433,db3:5434"
                                       "/edulink?target_session_attrs=read-write")
    monkeypatch.setenv("DATABASE_PATRONI_URLS", "http://db1:8008,http://db2:8008")
    for svc in default_topology().services:
        monkeypatch.setenv(f"EDULINK_DB_{svc.name.upper()}_PASSWORD", "secret-pw")
    settings = load_settings()
    user = settings.topology().service("user")
    members = replica_conninfos(user, settings)
    assert [(m["host"], m["port"]) for m in members] == [
        ("db1", "5432"), ("db2", "5433"), ("db3", "5434")]
    assert all(m["target_session_attrs"] == "standby" for m in members)
    assert all("default_transaction_read_only=on" in m["options"] for m in members)
    assert all(m["user"].endswith("user_service_role") for m in members)
    assert set(configure_service_database("user")) == {"default"}
