"""OpenTelemetry spans of the connection manager and of the Django engine, on a real server.

The SDK's in-memory exporter collects what a real exporter would have sent: each span
must say whose work it was (service, role, schema) and must hold no parameter value,
no literal of the SQL and no password. With tracing off, nothing is recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from microservices.shared.database.connections.tracing import sanitized

from .conftest import SERVICE_PASSWORD, service_env

SECRET_VALUE = "v4lue-that-must-not-leak"
SECRET_LITERAL = "l1teral-that-must-not-leak"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """One exporter for the module, on the process's tracer provider (which can be set
    only once per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


def _everything(span: ReadableSpan) -> str:
    """All a span would export, as text."""
    return json.dumps({"name": span.name, "attributes": dict(span.attributes or {}),
                       "status": str(span.status.description),
                       "events": [dict(e.attributes or {}) for e in span.events]})


def test_statements_are_spans_with_service_role_and_schema(
        provisioned_db: dict[str, Any], manager_for: Any, spans: InMemorySpanExporter) -> None:
    manager = manager_for(provisioned_db, DATABASE_TRACING_ENABLED="true")
    with manager.get_connection("user", user_id="u1") as conn:
        rows = conn.execute("SELECT body FROM user_schema.notes WHERE body <> %s"
                            " AND body <> 'l1teral-that-must-not-leak' AND id < 12345",
                            (SECRET_VALUE,)).fetchall()
        conn.cursor().executemany("SELECT %s::text", [(SECRET_VALUE,), ("other",)])
        with conn.transaction(), conn.cursor(name="named") as cur:
            cur.execute("SELECT %s::text", (SECRET_VALUE,)).fetchall()
    assert len(rows) == 3  # the request context still applies under the span
    finished = [s for s in spans.get_finished_spans() if s.name == "SELECT"]
    assert len(finished) == 3  # execute, executemany, a named (server-side) cursor
    attributes = dict(finished[0].attributes or {})
    assert attributes["edulink.service"] == "user"
    assert attributes["edulink.role"] == "user_service_role"
    assert attributes["edulink.schema"] == "user_schema"
    assert attributes["db.system.name"] == "postgresql"
    assert attributes["db.namespace"] == provisioned_db["dbname"]
    assert attributes["db.query.text"] == (
        "SELECT body FROM user_schema.notes WHERE body <> %s AND body <> ? AND id < ?")
    assert finished[0].kind == trace.SpanKind.CLIENT
    for span in spans.get_finished_spans():
        text = _everything(span)
        assert SECRET_VALUE not in text and SECRET_LITERAL not in text
        assert SERVICE_PASSWORD not in text and "12345" not in text


def test_a_failed_statement_records_the_sqlstate_not_the_message(
        provisioned_db: dict[str, Any], manager_for: Any, spans: InMemorySpanExporter) -> None:
    manager = manager_for(provisioned_db, DATABASE_TRACING_ENABLED="true")
    with manager.get_connection("user") as conn:
        conn.execute("CREATE TEMP TABLE t (v text UNIQUE)")
        conn.execute("INSERT INTO t VALUES (%s)", (SECRET_VALUE,))
        with pytest.raises(psycopg.errors.UniqueViolation) as exc:
            conn.execute("INSERT INTO t VALUES (%s)", (SECRET_VALUE,))
    assert SECRET_VALUE in str(exc.value)  # PostgreSQL's DETAIL quotes the value ...
    failed = [s for s in spans.get_finished_spans() if s.status.status_code.name == "ERROR"]
    assert len(failed) == 1
    assert dict(failed[0].attributes or {})["db.response.status_code"] == "23505"
    for span in spans.get_finished_spans():
        assert SECRET_VALUE not in _everything(span)  # ... the span does not


def test_async_checkouts_are_traced_too(
        provisioned_db: dict[str, Any], manager_for: Any, spans: InMemorySpanExporter) -> None:
    manager = manager_for(provisioned_db, DATABASE_TRACING_ENABLED="true")

    async def main() -> None:
        async with manager.get_async_connection("auth", user_id="u2") as conn:
            await (await conn.execute("SELECT %s::text", (SECRET_VALUE,))).fetchall()
        await manager.aclose_all()

    asyncio.run(main())
    finished = spans.get_finished_spans()
    assert [dict(s.attributes or {})["edulink.role"] for s in finished] == ["auth_service_role"]
    assert SECRET_VALUE not in _everything(finished[0])


def test_nothing_is_recorded_when_tracing_is_off(
        provisioned_db: dict[str, Any], manager_for: Any, spans: InMemorySpanExporter) -> None:
    for env in ({}, {"DATABASE_TRACING_ENABLED": "false",
                     "DATABASE_MONITORING_ENABLED": "false"}):
        manager = manager_for(provisioned_db, **env)
        with manager.get_connection("user", user_id="u1") as conn:
            conn.execute("SELECT 1").fetchall()
            with conn.transaction(), conn.cursor(name="named") as cur:
                cur.execute("SELECT 1").fetchall()
            # Off is free: the pool hands out the very classes it did before tracing.
            assert type(conn.cursor()).__module__.endswith(
                ("connections.cursor", "monitoring.instrumentation"))
    assert spans.get_finished_spans() == ()


def test_literals_of_every_kind_are_removed() -> None:
    assert sanitized("SELECT 'a''b', E'x\\'', $$body$$, $f$ 'q' $f$, 1.5e3, t1.c2, $1"
                     " -- 'comment'") == "SELECT ?, ?, ?, ?, ?, t1.c2, $1"
    assert sanitized("ALTER ROLE r PASSWORD 'hunter2'") == "ALTER ROLE r PASSWORD ?"


DJANGO_SCRIPT = """
import json, sys
import django
from django.conf import settings
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from microservices.shared.database.django_settings import (
    configure_cross_service_databases, configure_service_database)

provider = TracerProvider()
memory = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(memory))
trace.set_tracer_provider(provider)
databases = configure_service_database("user")
databases.update(configure_cross_service_databases("user", ["auth"]))
settings.configure(DATABASES=databases, INSTALLED_APPS=[], USE_TZ=True)
django.setup()
from django.db import connections
with connections["default"].cursor() as cur:
    cur.execute("SELECT %s::text, 'literal'", [sys.argv[1]])
    cur.fetchall()
with connections["auth"].cursor() as cur:
    cur.execute("SELECT 1")
print(json.dumps([{"name": s.name, "attributes": dict(s.attributes)}
                  for s in memory.get_finished_spans()]))
"""


@pytest.mark.parametrize("enabled", ["true", "false"])
def test_the_django_engine_traces_each_statement(
        provisioned_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch, enabled: str) -> None:
    pytest.importorskip("django")
    service_env(monkeypatch, provisioned_db, extra={"DATABASE_TRACING_ENABLED": enabled})
    result = subprocess.run([sys.executable, "-c", DJANGO_SCRIPT, SECRET_VALUE], cwd=ROOT,
                            env=dict(os.environ), capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    mine = [s for s in found if s["attributes"].get("edulink.service")]
    if enabled == "false":
        assert mine == []
        return
    assert SECRET_VALUE not in result.stdout and SERVICE_PASSWORD not in result.stdout
    assert "literal" not in result.stdout
    queries = {s["attributes"]["db.query.text"]: s["attributes"] for s in mine}
    user = queries["SELECT %s::text, ?"]
    assert (user["edulink.service"], user["edulink.role"], user["edulink.schema"]) == (
        "user", "user_service_role", "user_schema")
    cross = queries["SELECT ?"]
    assert (cross["edulink.role"], cross["edulink.reads"]) == ("user_service_role", "auth")
