"""ORM scenarios run in a subprocess per service by tests/test_django.py.

    python scenarios.py NAME [ARG ...]   (DJANGO_SETTINGS_MODULE=edulink_site.settings)

Prints one JSON line with what happened.
"""

import json
import sys
import uuid

import django

django.setup()

from django.db import connection, connections, transaction  # noqa: E402

from microservices.shared.database.core.errors import (  # noqa: E402
    CrossServiceAccessError,
    CrossServiceWriteError,
)
from microservices.shared.database.django_rls import rls_user  # noqa: E402


def user_creates_profile(user_id: str) -> dict:
    from profiles.models import Profile

    with rls_user(user_id):  # the table has FORCE RLS on the request user
        Profile.objects.create(user_id=uuid.UUID(user_id), display_name="Grace")
        count = Profile.objects.filter(user_id=user_id).count()
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        role = cursor.fetchone()[0]
    return {"count": count, "role": role}


def application_works(user_id: str) -> dict:
    from applications.models import JobApplication
    from user_mirror.models import ProfileMirror

    out: dict = {}
    JobApplication.objects.create(profile_id=uuid.UUID(user_id), position="Intern")
    out["applications"] = JobApplication.objects.count()
    with rls_user(user_id):  # cross-service read, granted; RLS applies there too
        mirror = ProfileMirror.objects.get(user_id=user_id)
    out["read"] = mirror.display_name
    out["read_alias"] = ProfileMirror.objects.all().db
    try:  # the router refuses
        ProfileMirror.objects.create(user_id=uuid.uuid4(), display_name="forged")
        out["router_write"] = "allowed"
    except CrossServiceWriteError as exc:
        out["router_write"] = str(exc)
    try:  # and so does PostgreSQL, router or not
        with transaction.atomic(using="user"), connections["user"].cursor() as cursor:
            cursor.execute("UPDATE user_schema.profiles_profile SET display_name = 'x'")
        out["db_write"] = "allowed"
    except django.db.utils.ProgrammingError as exc:
        out["db_write"] = str(exc).splitlines()[0]
    try:  # no grant on notification for the application service
        with connections["user"].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM notification_schema.django_migrations")
        out["other_read"] = "allowed"
    except django.db.utils.ProgrammingError as exc:
        out["other_read"] = str(exc).splitlines()[0]
    app = JobApplication.objects.first()
    out["relation_allowed"] = django.db.router.allow_relation(app, mirror)
    return out


def settings_refuse_ungranted() -> dict:
    from microservices.shared.database.django_settings import configure_cross_service_databases

    try:
        configure_cross_service_databases("application", ["notification"])
        return {"error": None}
    except CrossServiceAccessError as exc:
        return {"error": str(exc)}


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    print(json.dumps(globals()[name](*args)))
