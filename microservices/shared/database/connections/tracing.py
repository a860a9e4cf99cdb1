"""OpenTelemetry spans for the statements a service runs (``DATABASE_TRACING_ENABLED``).

Off by default, and then free: the pools hand out exactly the cursor classes they
would without this module, and nothing of it is imported. On, every ``execute`` and
``executemany`` of a pooled connection (and Django's engine, through an execute
wrapper) runs inside a CLIENT span named after the statement's first keyword, with:

- ``edulink.service``, ``edulink.role``, ``edulink.schema``: whose work it is;
- ``db.system.name``, ``db.namespace``, ``server.address``, ``server.port``,
  ``db.operation.name`` (OpenTelemetry's database conventions);
- ``db.query.text``: the SQL with every literal (quoted string, dollar-quoted body,
  number, as PostgreSQL's lexer finds them) replaced by ``?`` and comments dropped.
  Parameter values are never looked at, and a literal written into the SQL
  (``PASSWORD 'x'``) does not reach the span;
- on failure, ``error.type`` and ``db.response.status_code`` (the SQLSTATE). Not the
  error message: PostgreSQL's DETAIL quotes row values ("Key (email)=(...)").

Spans go to whatever tracer provider the application configured (the OpenTelemetry
SDK and an exporter); with none configured, the API's no-op tracer drops them.

``opentelemetry-instrumentation-psycopg`` does not fit the pools: it instruments by
replacing a connection's ``cursor_factory``, which every checkout sets back to the
service's own classes, and its spans know nothing of the service, role or schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ..core.errors import ConfigError
from ..core.sql_text import normalise

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from ..topology import Service

TRACER_NAME = "edulink-db"
QUERY_TEXT_MAX = 2048  # characters of db.query.text; a span is not a place for a dump

def tracer() -> Tracer:
    """The package's tracer, or a clear error when the API is not installed."""
    try:
        from opentelemetry import trace
    except ImportError:
        raise ConfigError(
            "DATABASE_TRACING_ENABLED is true but OpenTelemetry is not installed: "
            "pip install 'edulink-db[tracing]', or set DATABASE_TRACING_ENABLED=false."
        ) from None
    return trace.get_tracer(TRACER_NAME)


@lru_cache(maxsize=4096)
def sanitized(text: str) -> str:
    """*text* with every literal as ``?``, as PostgreSQL's lexer finds them (the same
    normalisation as monitoring's fingerprints); cached, as services repeat their SQL."""
    return normalise(text)[:QUERY_TEXT_MAX]


def _operation(text: str) -> str:
    words = text.lstrip(" \t\r\n(").split(None, 1)
    return words[0].upper() if words and words[0].isalpha() else "SQL"


def query_text(query: Any, conn: Any) -> str:
    """The statement as text, before sanitising. A Composed is rendered on *conn*
    (its Literals then show as quoted strings, which :func:`sanitized` removes)."""
    if isinstance(query, str):
        return query
    if isinstance(query, bytes):
        return query.decode(errors="replace")
    if isinstance(query, sql.Composable):
        try:
            return query.as_string(conn)
        except (psycopg.Error, TypeError, ValueError):
            return "SQL"
    return str(query)


def service_attributes(service: Service, params: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes every span of *service*'s connections carries (no password)."""
    attributes: dict[str, Any] = {
        "db.system.name": "postgresql",
        "edulink.service": service.name,
        "edulink.role": str(params.get("user") or service.runtime_role),
        "edulink.schema": service.schema,
    }
    if params.get("dbname"):
        attributes["db.namespace"] = str(params["dbname"])
    if params.get("host"):
        attributes["server.address"] = str(params["host"])
    port = str(params.get("port") or "")
    if port.isdigit():
        attributes["server.port"] = int(port)
    return attributes


class Statement:
    """One statement's span: opened by the traced cursors and Django's wrapper."""

    __slots__ = ("cm", "span")

    def __init__(self, tracer: Tracer, attributes: Mapping[str, Any], query: Any,
                 conn: Any) -> None:
        from opentelemetry.trace import SpanKind

        text = sanitized(query_text(query, conn))
        operation = _operation(text)
        self.cm = tracer.start_as_current_span(
            operation, kind=SpanKind.CLIENT, record_exception=False,
            set_status_on_exception=False,
            attributes={**attributes, "db.operation.name": operation,
                        "db.query.text": text})
        self.span = self.cm.__enter__()

    def failed(self, exc: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode

        sqlstate = getattr(exc, "sqlstate", None)
        self.span.set_attribute("error.type", type(exc).__name__)
        if sqlstate:
            self.span.set_attribute("db.response.status_code", sqlstate)
        # The description is the class and SQLSTATE only: messages may quote values.
        self.span.set_status(Status(StatusCode.ERROR, sqlstate or type(exc).__name__))

    def end(self) -> None:
        self.cm.__exit__(None, None, None)


def execute_wrapper(attributes: Mapping[str, Any]) -> Callable[..., Any]:
    """A Django execute wrapper (``connection.execute_wrapper``) that traces statements."""
    trace = tracer()
    attrs = dict(attributes)

    def wrapper(execute: Callable[..., Any], query: Any, params: Any, many: bool,
                context: dict[str, Any]) -> Any:
        stmt = Statement(trace, attrs, query, context["connection"].connection)
        try:
            return execute(query, params, many, context)
        except BaseException as exc:
            stmt.failed(exc)
            raise
        finally:
            stmt.end()

    return wrapper
