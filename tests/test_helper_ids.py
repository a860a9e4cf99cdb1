"""Cross-service helpers check their ids before any SQL: a clear error, not a DataError.

A NUL byte used to reach PostgreSQL and come back as a raw psycopg DataError; a newline or
an upper-case UUID silently matched nothing.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from microservices.shared.database.config import load_settings
from microservices.shared.database.connection_manager import ConnectionManager
from microservices.shared.database.core.errors import (
    CrossServiceAccessError,
    EdulinkDBError,
    InvalidIdentifierValueError,
)
from microservices.shared.database.cross_schema_access import (
    MAX_AUDIT_TRAIL_LIMIT,
    MAX_ID_LENGTH,
    CrossSchemaAccessManager,
)
from microservices.shared.database.migrations.manager import MigrationManager
from microservices.shared.database.topology import default_topology

from .conftest import do_provision, service_env

USER_ID = str(uuid.uuid4())
INSTITUTION_ID = str(uuid.uuid4())

# (value, what the message must say); none of these may reach PostgreSQL.
MALFORMED: list[tuple[object, str]] = [
    (f"{USER_ID}\x00", "U+0000"),
    ("\x00", "U+0000"),
    ("abc\ndef", "U+000A"),
    ("tab\there", "U+0009"),
    ("del\x7f", "U+007F"),
    ("c1\x85", "U+0085"),
    ("", "is empty"),
    ("x" * (MAX_ID_LENGTH + 1), f"at most {MAX_ID_LENGTH}"),
    (None, "not NoneType"),
    (b"bytes-id", "not bytes"),
    (1.5, "not float"),
    (True, "not bool"),
    ({"id": 1}, "not dict"),
]


@pytest.fixture
def manager(fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[CrossSchemaAccessManager]:
    do_provision(fresh_db, default_topology())
    service_env(monkeypatch, fresh_db)
    MigrationManager(load_settings()).run_all_migrations()
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO auth_schema.authentication_user (id, email, password_hash)"
                     " VALUES (%s, 'ada@example.edu', 'x')", [USER_ID])
        conn.execute("INSERT INTO user_schema.profiles_userprofile (user_id, first_name,"
                     " last_name) VALUES (%s, 'Ada', 'Lovelace')", [USER_ID])
        conn.execute("INSERT INTO institution_schema.institutions_institution (id, code, name)"
                     " VALUES (%s, 'UON', 'University of Nairobi')", [INSTITUTION_ID])
    connections = ConnectionManager(load_settings())
    yield CrossSchemaAccessManager(connections)
    connections.close_all()


def check_refused(call: Callable[[], object], name: str, value: object, says: str) -> None:
    with pytest.raises(InvalidIdentifierValueError) as exc:
        call()
    message = str(exc.value)
    assert name in message and says in message, message
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, EdulinkDBError)
    if isinstance(value, str) and len(value) > 3:
        assert value not in message  # the value itself is never echoed


def test_read_helpers_refuse_malformed_ids(manager: CrossSchemaAccessManager) -> None:
    for value, says in MALFORMED:
        check_refused(lambda v=value: manager.get_user_profile_with_auth(v, "application"),  # type: ignore[misc]
                      "user_id", value, says)
        check_refused(lambda v=value: manager.get_institution_details(v, "user"),  # type: ignore[misc]
                      "institution_id", value, says)
    # An integer cannot be a UUID: a clear type error, not "no such row".
    check_refused(lambda: manager.get_user_profile_with_auth(123, "application"),  # type: ignore[arg-type]
                  "user_id", 123, "not int")
    # The pool is healthy afterwards: nothing half-sent.
    assert manager.get_user_profile_with_auth(USER_ID, "application") is not None


def test_access_is_still_checked_first(manager: CrossSchemaAccessManager) -> None:
    with pytest.raises(CrossServiceAccessError):
        manager.get_user_profile_with_auth("\x00", "institution")
    with pytest.raises(CrossServiceAccessError):
        manager.get_user_profile_with_auth("123", "institution")  # not a quiet None


def test_any_uuid_spelling_finds_the_row_and_other_text_finds_none(
        manager: CrossSchemaAccessManager) -> None:
    u, i = uuid.UUID(USER_ID), uuid.UUID(INSTITUTION_ID)
    for spelling in (USER_ID, USER_ID.upper(), "{" + USER_ID + "}", u.hex, u):
        profile = manager.get_user_profile_with_auth(spelling, "application")
        assert profile is not None and profile["first_name"] == "Ada", spelling
    for spelling in (INSTITUTION_ID.upper(), i.hex, i):
        inst = manager.get_institution_details(spelling, "user")
        assert inst is not None and inst["code"] == "UON", spelling
    # Well-formed text that is no UUID names no row (the README's user_id="123").
    for text in ("123", "456", "not-a-uuid", USER_ID + "0", USER_ID[:-1]):
        assert manager.get_user_profile_with_auth(text, "application") is None
        assert manager.get_institution_details(text, "user") is None


def test_audit_log_refuses_malformed_arguments_and_writes_nothing(
        manager: CrossSchemaAccessManager) -> None:
    def write(**overrides: Any) -> Callable[[], None]:
        args: dict[str, Any] = {"service_name": "user", "action": "profile_updated",
                                "resource_type": "user_profile", "resource_id": USER_ID,
                                "user_id": USER_ID, "details": {"fields": ["bio"]}}
        args.update(overrides)
        return lambda: manager.create_audit_log(**args)

    for value, says in MALFORMED:
        if value is not None:  # the ids are optional
            check_refused(write(resource_id=value), "resource_id", value, says)
            check_refused(write(user_id=value), "user_id", value, says)
        check_refused(write(action=value), "action", value, says)
        check_refused(write(resource_type=value), "resource_type", value, says)
    check_refused(write(action=7), "action", 7, "must be a string")
    for details in ({"note": "a\x00b"}, {"a\x00": 1}, {"deep": [{"x": ("ok", "\x00")}]}):
        check_refused(write(details=details), "details", details, "NUL")
    check_refused(write(details=["a"]), "details", None, "JSON object")
    check_refused(write(details={"when": datetime.datetime.now(datetime.UTC)}), "details",
                  None, "JSON-serialisable")
    check_refused(write(details={"x": float("nan")}), "details", None, "JSON-serialisable")
    assert manager.get_audit_trail("user_profile", USER_ID) == []

    # What is well-formed is written: ids may be ints or UUIDs (stored as text), control
    # characters other than NUL are fine inside details.
    write(resource_id=42, user_id=uuid.UUID(USER_ID), details={"note": "line 1\nline 2"})()
    trail = manager.get_audit_trail("user_profile", 42)
    assert [(t["resource_id"], t["user_id"], t["details"]) for t in trail] == [
        ("42", USER_ID, {"note": "line 1\nline 2"})]


def test_audit_trail_refuses_malformed_arguments(manager: CrossSchemaAccessManager) -> None:
    for value, says in MALFORMED:
        check_refused(lambda v=value: manager.get_audit_trail("user_profile", v),  # type: ignore[misc]
                      "resource_id", value, says)
        check_refused(lambda v=value: manager.get_audit_trail(v, USER_ID),  # type: ignore[misc]
                      "resource_type", value, says)
    for limit in (0, -1, MAX_AUDIT_TRAIL_LIMIT + 1, 2**70, True, "5", 2.0):
        check_refused(lambda n=limit: manager.get_audit_trail("user_profile", USER_ID,  # type: ignore[misc]
                                                              limit=n),
                      "limit", limit, "integer from 1")
    assert manager.get_audit_trail("user_profile", USER_ID, limit=MAX_AUDIT_TRAIL_LIMIT) == []


def test_invalidate_finds_entries_under_any_uuid_spelling(
        fresh_db: dict[str, Any], manager: CrossSchemaAccessManager) -> None:
    cached = CrossSchemaAccessManager(manager.connections, cache_ttl=60)
    assert cached.get_institution_details(INSTITUTION_ID.upper(), "user")["name"] == (  # type: ignore[index]
        "University of Nairobi")
    with psycopg.connect(**fresh_db, autocommit=True) as conn:
        conn.execute("UPDATE institution_schema.institutions_institution SET name = 'UoN'")
    assert cached.get_institution_details(INSTITUTION_ID, "user")["name"] == (  # type: ignore[index]
        "University of Nairobi")  # the same cache entry, whatever the spelling
    cached.invalidate("institution", uuid.UUID(INSTITUTION_ID).hex)
    assert cached.get_institution_details(INSTITUTION_ID, "user")["name"] == "UoN"  # type: ignore[index]
