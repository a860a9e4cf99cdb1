"""Test authentication: the user id comes in a header, as from the auth service's token.

Edulink's services do not own the auth tables; a real service would verify a
JWT here.  request.user is set the way AuthenticationMiddleware sets it.
"""

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.contrib.auth.models import AnonymousUser
from django.db import connections

HEADER = "HTTP_X_EDULINK_USER"


class TokenUser:
    is_authenticated = True
    is_anonymous = False

    def __init__(self, pk: str) -> None:
        self.pk = pk


def _user(request: Any) -> Any:
    pk = request.META.get(HEADER)
    return TokenUser(pk) if pk else AnonymousUser()


class HeaderAuthenticationMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        request.user = _user(request)
        return self.get_response(request)  # a coroutine when async: the caller awaits it


class NaiveSessionSetMiddleware:
    """The obvious workaround the issue warns about: a session-level SET per request.

    Only for the control test that shows the leak harness can see a leak.
    """

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        pk = request.user.pk if request.user.is_authenticated else ""
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT set_config('app.current_user_id', %s, false)", [str(pk)])
        return self.get_response(request)
