"""Scenarios for tests/test_reconnect.py: a Django service while its server goes away.

    python outage_scenarios.py NAME [ARG ...]   (DJANGO_SETTINGS_MODULE=edulink_site.settings)

Prints ``ready`` when the test may act, then one JSON line.
"""

import json
import sys
import time

import django

django.setup()

from django.db import Error, OperationalError, connection  # noqa: E402

from microservices.shared.database import ServerConnectionLostError  # noqa: E402


def _described(exc: BaseException) -> dict:
    return {"class": type(exc).__name__, "message": str(exc),
            "lost": isinstance(exc, ServerConnectionLostError),
            "django": isinstance(exc, OperationalError)}


def inflight() -> dict:
    """A statement running when the server shuts down."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    print("ready", flush=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(60)")
    except Exception as exc:
        return _described(exc)
    return {"class": None}


def writer(seconds: str) -> dict:
    """Write for *seconds*, as a request loop would: after an error, the connection
    is given up if unusable (what Django does at the end of each request)."""
    successes, errors = [], []
    end = time.time() + float(seconds)
    ready = False
    while time.time() < end:
        try:
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO user_schema.ticks (writer) VALUES ('django')")
            successes.append(time.time())
            if not ready and len(successes) >= 20:
                print("ready", flush=True)
                ready = True
        except Error as exc:
            errors.append(_described(exc))
            time.sleep(0.005)
        connection.close_if_unusable_or_obsolete()
        time.sleep(0.005)
    connection.close()
    return {"successes": successes, "errors": errors}


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    print(json.dumps(globals()[name](*args)))
