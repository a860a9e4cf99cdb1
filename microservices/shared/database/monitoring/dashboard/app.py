"""The dashboard as a WSGI application: read-only, token-guarded, strict headers.

Served by the stdlib's threaded WSGI server (``edulink-db dashboard``), or mounted in
a service's own WSGI app like the metrics exporter (:func:`make_app`).

Access:

* With a token (``EDULINK_DB_DASHBOARD_TOKEN``, at least 16 characters) every request
  needs it: ``Authorization: Bearer <token>``, or the cookie that a first visit with
  ``?token=<token>`` sets (the answer is a redirect to the same page without the token,
  so it leaves the address bar and browser history).  Compared in constant time; never
  echoed.
* Without a token only loopback clients get an answer, and only for a loopback
  ``Host`` header (a DNS-rebinding page in a browser cannot read the dashboard).

Only GET and HEAD: anything else is 405.  Every answer carries a Content-Security-Policy
without inline scripts or styles (chart data comes from a JSON endpoint that a static
script fetches), ``X-Frame-Options: DENY``, ``nosniff``, ``no-referrer`` and
``Cache-Control: no-store``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import jinja2
import psycopg

from ...config import Settings, load_settings
from ...core.errors import ConfigError, EdulinkDBError
from .data import DashboardData, error_reason

TOKEN_ENV = "EDULINK_DB_DASHBOARD_TOKEN"  # noqa: S105 - a variable name
TOKEN_MIN_LENGTH = 16
COOKIE = "edulink_db_dashboard"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
SECURITY_HEADERS = [
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
]
_HERE = Path(__file__).parent
_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".txt": "text/plain; charset=utf-8"}
# Served files are a fixed list, read once: no path from a request reaches the disk.
_STATIC_FILES = ("dashboard.js", "dashboard.css", "uPlot.iife.min.js", "uPlot.min.css",
                 "uPlot.LICENSE.txt")
_SERVICE_PATH = re.compile(r"^/service/([a-z][a-z0-9_]{0,62})$")
_SERIES_PATH = re.compile(r"^/api/series/([a-z][a-z0-9_]{0,62})\.json$")
_LOCAL_PATH = re.compile(r"/(?!/)[A-Za-z0-9_./-]*")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
# Headers a reverse proxy adds: a proxy on the same host makes every client look local.
_FORWARDED = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_HOST",
              "HTTP_X_REAL_IP")
# A client that sends nothing for this long loses its connection (and its thread).
REQUEST_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


def is_loopback(host: str) -> bool:
    if host.strip("[]") in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> str | None:
    """*token* if usable; ConfigError for one too short to resist guessing."""
    if token is None or token == "":
        return None
    if len(token) < TOKEN_MIN_LENGTH or not _TOKEN_CHARS.fullmatch(token):
        raise ConfigError(
            f"{TOKEN_ENV} must be at least {TOKEN_MIN_LENGTH} characters of letters, digits "
            "and -._~+/= (it travels in a header and a cookie); make one with: "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


class DashboardApp:
    """The WSGI callable.  *data* supplies the figures; *token* None = loopback only."""

    def __init__(self, data: DashboardData, token: str | None) -> None:
        self.data = data
        self._token = check_token(token)
        # The cookie carries a value derived from the token, not the token: browsers send
        # a host's cookies to every port of it, so other apps on the host see the cookie;
        # it opens this dashboard's pages but is not the token used elsewhere (Bearer).
        self._cookie = (None if self._token is None else hmac.new(
            self._token.encode(), b"edulink-db dashboard cookie", hashlib.sha256).hexdigest())
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
            lstrip_blocks=True)
        self._static = {name: (_HERE / "static" / name).read_bytes() for name in _STATIC_FILES}

    def __repr__(self) -> str:  # never the token
        return f"DashboardApp(token={'set' if self._token else 'none'})"

    # -- access ------------------------------------------------------------------------
    @staticmethod
    def _same(presented: str | None, expected: str | None) -> bool:
        if not presented or not expected:
            return False
        # Digests of equal length: compare_digest alone would return early on a length
        # mismatch and so tell the secret's length.
        return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(),
                                   hashlib.sha256(expected.encode()).digest())

    def _matches(self, presented: str | None) -> bool:
        return self._same(presented, self._token)

    def _authorised(self, environ: dict[str, Any]) -> bool:
        if self._token is None:
            host = environ.get("HTTP_HOST", "")
            hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            return (is_loopback(environ.get("REMOTE_ADDR", "")) and is_loopback(hostname)
                    and not any(environ.get(h) for h in _FORWARDED))
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth[:7].lower() == "bearer " and self._matches(auth[7:].strip()):
            return True
        try:
            cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        except CookieError:
            return False
        morsel = cookie.get(COOKIE)
        return self._same(morsel.value if morsel else None, self._cookie)

    # -- WSGI --------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            status, headers, body = self._handle(environ, method)
        except Exception as exc:  # the answer must keep its headers
            # No traceback or message on the page (it could carry a name or a value);
            # the type goes to the log for the operator.
            log.error("dashboard request failed: %s", type(exc).__name__)
            status, headers, body = (HTTPStatus.INTERNAL_SERVER_ERROR, [_TEXT],
                                     b"internal error; see the dashboard's log\n")
        headers = [*headers, *SECURITY_HEADERS, ("Content-Length", str(len(body)))]
        start_response(f"{status.value} {status.phrase}", headers)
        return [b""] if method == "HEAD" else [body]

    def _handle(self, environ: dict[str, Any], method: str
                ) -> tuple[HTTPStatus, list[tuple[str, str]], bytes]:
        if method not in ("GET", "HEAD"):
            return (HTTPStatus.METHOD_NOT_ALLOWED, [("Allow", "GET, HEAD"), _TEXT],
                    b"read-only: only GET and HEAD\n")
        base = environ.get("SCRIPT_NAME", "").rstrip("/")
        path = environ.get("PATH_INFO", "") or "/"
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if self._token is not None and "token" in query:
            if not self._matches(query["token"][0]):
                return _unauthorised()
            # Trade the URL token for a cookie and drop it from the address bar.  Only a
            # plain local path goes back into Location ("//host" would leave the site).
            target = path if _LOCAL_PATH.fullmatch(path) else "/"
            secure = "; Secure" if environ.get("wsgi.url_scheme") == "https" else ""
            return (HTTPStatus.SEE_OTHER, [
                ("Location", base + target),
                ("Set-Cookie", f"{COOKIE}={self._cookie}; Path={base or '/'}; HttpOnly; "
                               f"SameSite=Strict{secure}"), _TEXT], b"")
        if not self._authorised(environ):
            if self._token is None:
                return (HTTPStatus.FORBIDDEN, [_TEXT],
                        b"the dashboard answers loopback clients only (not through a "
                        b"proxy); set EDULINK_DB_DASHBOARD_TOKEN to serve it elsewhere\n")
            return _unauthorised()
        if path.startswith("/static/"):
            name = path[len("/static/"):]
            if name not in self._static:
                return _not_found()
            kind = _STATIC_TYPES.get(Path(name).suffix, _STATIC_TYPES[".txt"])
            return HTTPStatus.OK, [("Content-Type", kind)], self._static[name]
        try:
            if path == "/":
                return self._page("index.html", base, None)
            if match := _SERVICE_PATH.match(path):
                if match.group(1) not in self.data.topology.service_names():
                    return _not_found()
                return self._page("service.html", base, match.group(1))
            if path == "/api/series.json":
                return _json({svc.name: self.data.sampler.series(svc.runtime_role)
                              for svc in self.data.topology.services})
            if match := _SERIES_PATH.match(path):
                if match.group(1) not in self.data.topology.service_names():
                    return _not_found()
                svc = self.data.topology.service(match.group(1))
                return _json(self.data.sampler.series(svc.runtime_role))
        except (EdulinkDBError, psycopg.Error) as exc:
            # E.g. the database is away, or a statistics read hit the session's timeouts.
            page = self._env.get_template("error.html").render(base=base,
                                                               message=error_reason(exc))
            return HTTPStatus.SERVICE_UNAVAILABLE, [_HTML], page.encode()
        return _not_found()

    def _page(self, template: str, base: str, service: str | None
              ) -> tuple[HTTPStatus, list[tuple[str, str]], bytes]:
        live = self.data.live()
        slow = self.data.slow()
        topology = self.data.topology
        services = [s for s in topology.services if service is None or s.name == service]
        html = self._env.get_template(template).render(
            base=base, topology=topology, services=services, service=service,
            live=live, slow=slow, stats=live["stats"], health=live["health"],
            interval=self.data.sampler.interval)
        return HTTPStatus.OK, [_HTML], html.encode()


_HTML = ("Content-Type", "text/html; charset=utf-8")
_TEXT = ("Content-Type", "text/plain; charset=utf-8")


def _json(data: Any) -> tuple[HTTPStatus, list[tuple[str, str]], bytes]:
    return (HTTPStatus.OK, [("Content-Type", "application/json")],
            json.dumps(data, separators=(",", ":")).encode())


def _not_found() -> tuple[HTTPStatus, list[tuple[str, str]], bytes]:
    return HTTPStatus.NOT_FOUND, [_TEXT], b"not found\n"


def _unauthorised() -> tuple[HTTPStatus, list[tuple[str, str]], bytes]:
    return (HTTPStatus.UNAUTHORIZED, [("WWW-Authenticate", 'Bearer realm="edulink-db"'), _TEXT],
            b"a token is required: send 'Authorization: Bearer <token>' or open the page "
            b"once with ?token=<token>\n")


def make_app(settings: Settings | None = None, *, token: str | None = None,
             interval: float = 10.0, start_sampler: bool = True) -> DashboardApp:
    """A WSGI app to mount (e.g. under ``/dashboard`` of a service's app).  *token*
    defaults to ``EDULINK_DB_DASHBOARD_TOKEN``; without one, only loopback clients are
    answered.  Starts the background sampler unless *start_sampler* is False."""
    settings = settings or load_settings()
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    app = DashboardApp(DashboardData(settings, interval=interval), token)
    if start_sampler:
        app.data.sampler.start()
    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    # Without it a client that opens a connection and never finishes its request holds
    # a thread forever (slowloris); StreamRequestHandler applies it to the socket.
    timeout = REQUEST_TIMEOUT_S

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The path only, never the query string: it may carry ?token=.
        self.log_message('"%s %s" %s', self.command, self.path.split("?", 1)[0], code)

    def log_error(self, format: str, *args: object) -> None:
        # The base class logs malformed request lines verbatim, query string included.
        self.log_message("bad request (%s)", str(args[0]) if args else "?")


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8478,
          token: str | None = None, interval: float = 10.0,
          ready: Callable[[WSGIServer], None] | None = None) -> None:
    """Serve until interrupted.  Refuses a non-loopback *host* without a token."""
    token = check_token(token if token is not None else os.environ.get(TOKEN_ENV))
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve the dashboard on {host}: bound to a non-loopback address it "
            f"needs a token; set {TOKEN_ENV} (at least {TOKEN_MIN_LENGTH} characters), or "
            "bind to 127.0.0.1")
    app = make_app(settings, token=token, interval=interval, start_sampler=False)
    server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
    server = make_server(host.strip("[]"), port, app, server_class=server_class,
                         handler_class=_QuietHandler)
    bound = str(server.server_address[0])
    if token is None and not is_loopback(bound):
        # E.g. a "localhost" that resolves elsewhere: what counts is the bound address.
        server.server_close()
        raise ConfigError(
            f"refusing to serve the dashboard on {host}: it resolved to {bound}, not a "
            f"loopback address; set {TOKEN_ENV} or bind to 127.0.0.1")
    app.data.sampler.start()
    try:
        if ready is not None:
            threading.Thread(target=ready, args=(server,), daemon=True).start()
        server.serve_forever()
    finally:
        app.data.sampler.stop()
        server.server_close()
