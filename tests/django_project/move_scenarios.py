"""Scenarios for tests/test_move_django.py: a Django service after move-service.

    python move_scenarios.py NAME [ARG ...]   (DJANGO_SETTINGS_MODULE=edulink_site.settings)

Prints one JSON line.
"""

import json
import sys

import django

django.setup()

from django.db import connection  # noqa: E402

from microservices.shared.database.django_rls import rls_user  # noqa: E402


def where(user_id: str) -> dict:
    """Which server the default alias reached, as whom, and when it connected."""
    from profiles.models import Profile

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('port'), current_user,"
                       " (SELECT backend_start FROM pg_stat_activity"
                       "  WHERE pid = pg_backend_pid())::text")
        port, role, started = cursor.fetchone()
    count = None
    if user_id != "-":
        with rls_user(user_id):
            count = Profile.objects.filter(user_id=user_id).count()
    return {"port": int(port), "role": role, "connected_at": started, "profiles": count}


def initialised(checkouts: str) -> dict:
    """The session time zone of each new connection (Django's init sets it to UTC
    with USE_TZ), and how many server sessions *checkouts* connect/close cycles used
    (Django's pool reuses them)."""
    pids, zones = set(), set()
    for _ in range(int(checkouts)):
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid(), current_setting('TimeZone'),"
                           " current_setting('port')")
            pid, zone, port = cursor.fetchone()
        pids.add(pid)
        zones.add(zone)
    connection.close()
    return {"sessions": len(pids), "zones": sorted(zones), "port": int(port)}

if __name__ == "__main__":
    name, *args = sys.argv[1:]
    print(json.dumps(globals()[name](*args)))
