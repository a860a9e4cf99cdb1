"""Views that report which profiles row-level security lets the request see."""

from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection, connections, transaction
from django.http import HttpRequest, JsonResponse
from profiles.models import Profile


def _visible() -> list[str]:
    return sorted(str(u) for u in Profile.objects.values_list("user_id", flat=True))


def visible(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"visible": _visible()})


def visible_atomic(request: HttpRequest) -> JsonResponse:
    with transaction.atomic():
        first = _visible()
        with connection.cursor() as cursor:  # raw SQL through Django's cursor carries it too
            cursor.execute("SELECT shared_schema.current_user_id()")
            setting = cursor.fetchone()[0]
        return JsonResponse({"visible": first, "setting": setting})


def visible_mirror(request: HttpRequest) -> JsonResponse:
    """The application service reading the user service's table through its read-only alias."""
    from user_mirror.models import ProfileMirror

    names = sorted(str(u) for u in ProfileMirror.objects.values_list("user_id", flat=True))
    return JsonResponse({"visible": names, "alias": ProfileMirror.objects.all().db,
                         "aliases": sorted(connections)})


async def visible_async(request: HttpRequest) -> JsonResponse:
    names = sorted([str(p.user_id) async for p in Profile.objects.all()])
    count = await Profile.objects.acount()
    listed: list[str] = await sync_to_async(_visible)()
    return JsonResponse({"visible": names, "count": count, "listed": listed})


def create(request: HttpRequest) -> Any:
    Profile.objects.create(user_id=request.GET["user_id"], display_name="x")
    return JsonResponse({"created": True})
