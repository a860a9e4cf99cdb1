"""Row-level security for Django services: the request's user travels with each query.

    MIDDLEWARE = [
        ...
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "microservices.shared.database.django_rls.RLSUserMiddleware",  # after authentication
        ...
    ]

    with rls_user(user_id):          # Celery tasks, management commands, tests
        Profile.objects.get(...)

The seed's policies read ``app.current_user_id`` (through
``shared_schema.current_user_id()``).  A session-level ``SET`` would survive the
request and, behind a transaction pooler, reach another client's request.  So
the value is never session state: an ``execute_wrapper`` installed on every
PostgreSQL alias (the service's ``'default'`` and the cross-service read-only
aliases) sends ``SELECT set_config('app.current_user_id', $1, true)`` in the
same transaction as each query:

* Outside ``atomic()`` (autocommit) the prologue and the query are pipelined
  (psycopg pipeline mode, extended protocol) before one Sync: one implicit
  transaction, one round trip.  The setting ends with that statement.
* Inside ``atomic()`` the same pipelining puts it in the open transaction.  It
  is sent with *every* statement rather than once per transaction: a savepoint
  rollback (a nested ``atomic()`` that fails) undoes a ``set_config`` made inside
  it, so "already set in this transaction" cannot be tracked reliably on the
  client.  Once a transaction has carried a user, each later statement in it
  without a context clears the value (``''``, which ``current_user_id()`` reads
  as NULL), so nothing outlives a ``with rls_user(...)`` block that ends inside
  a transaction.
* Django's server-side cursors (``.iterator()`` without
  ``DISABLE_SERVER_SIDE_CURSORS``) cannot be pipelined: in autocommit their
  ``DECLARE`` runs in a short explicit transaction with the prologue.

The context lives in a :class:`contextvars.ContextVar`: per thread and per
asyncio task, copied into ``sync_to_async`` threads, absent in new threads and
after the ``with`` block / request.  No context means no ``app.current_user_id``,
so policies built on ``current_user_id()`` match nothing (fail closed).

Not covered (they bypass Django's execute wrappers): ``cursor.copy()``,
``cursor.callproc()`` and SQL on ``connection.connection`` (the raw psycopg
connection); a ``StreamingHttpResponse`` iterated after the middleware returned
runs without the request's user.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from .core.errors import RequestContextError

_SET_USER = "SELECT pg_catalog.set_config('app.current_user_id', %s, true)"
_SET_USER_READONLY = ("SELECT pg_catalog.set_config('app.current_user_id', %s, true), "
                      "pg_catalog.set_config('transaction_read_only', 'on', true)")
_NO_USER = ""  # what current_user_id() turns into NULL

# Attributes kept on Django's DatabaseWrapper (one per alias and thread).
_DIRTY_ATTR = "_edulink_rls_dirty"  # the raw connection whose open transaction carried a user
_CURSOR_ATTR = "_edulink_rls_cursor"  # (raw connection, reusable prologue cursor)


@dataclass(frozen=True, slots=True)
class _Context:
    user_id: str | None
    readonly: bool
    aliases: frozenset[str] | None  # None: every alias

    def applies_to(self, alias: str) -> bool:
        return self.aliases is None or alias in self.aliases


_CONTEXT: ContextVar[_Context | None] = ContextVar("edulink_rls_context", default=None)


def current_rls_user(using: str = "default") -> str | None:
    """The user id that queries on alias *using* carry right now (None: no user)."""
    ctx = _CONTEXT.get()
    return ctx.user_id if ctx is not None and ctx.applies_to(using) else None


def _validate_user_id(user_id: object) -> str | None:
    if user_id is None:
        return None
    if isinstance(user_id, bool) or not isinstance(user_id, str | int | uuid.UUID):
        raise RequestContextError(
            f"rls_user() takes a user id (str, int or uuid.UUID), not {type(user_id).__name__}; "
            "pass the user's primary key, e.g. request.user.pk.")
    value = str(user_id)
    if not value or "\x00" in value:
        raise RequestContextError(
            "rls_user() got an empty user id (or one with a NUL byte); pass the user's "
            "primary key, or None for no user.")
    return value


def _aliases(using: str | Iterable[str] | None) -> frozenset[str] | None:
    if using is None:
        return None
    names = frozenset([using] if isinstance(using, str) else using)
    from django.db import connections

    unknown = sorted(n for n in names if n not in connections.settings)
    if unknown or not names:
        raise RequestContextError(
            f"rls_user(using=...) names no configured database alias: {unknown or 'none'}; "
            f"DATABASES has {', '.join(sorted(connections.settings))}.")
    return names


@contextmanager
def rls_user(user_id: object, *, using: str | Iterable[str] | None = None,
             readonly: bool = False) -> Iterator[None]:
    """Run the block's queries as *user_id* for row-level security.

    *using* limits the context to one alias (or several); None means every
    PostgreSQL alias, cross-service read-only aliases included.  ``None`` as
    *user_id* runs the block with no user (policies then match nothing).
    *readonly* also makes each statement's transaction read-only; inside
    ``atomic()`` that lasts until the transaction ends, so writes after the
    block in the same transaction fail (an error, never a leak).

    The context ends with the block; nested blocks override and then restore it.
    """
    ctx = _Context(_validate_user_id(user_id), bool(readonly), _aliases(using))
    install()
    token = _CONTEXT.set(ctx)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


# -- the execute wrapper -----------------------------------------------------------------

def _prologue_cursor(db: Any, raw: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """A plain psycopg cursor for the prologue, reused per physical connection.

    Server-side binding (``$1``) whatever cursor class Django uses for queries.
    """
    cached = getattr(db, _CURSOR_ATTR, None)
    if cached is not None and cached[0] is raw and not cached[1].closed:
        cursor: psycopg.Cursor[Any] = cached[1]
        return cursor
    cursor = psycopg.Cursor(raw)
    setattr(db, _CURSOR_ATTR, (raw, cursor))
    return cursor


def _rls_execute(execute: Callable[..., Any], sql: Any, params: Any, many: bool,
                 context: dict[str, Any]) -> Any:
    db = context["connection"]
    raw = db.connection
    if not isinstance(raw, psycopg.Connection):  # pragma: no cover - psycopg2 backend
        raise RequestContextError("Row-level security for Django needs psycopg 3.")
    status = raw.pgconn.transaction_status
    if status == TransactionStatus.IDLE and getattr(db, _DIRTY_ATTR, None) is not None:
        setattr(db, _DIRTY_ATTR, None)  # the transaction that carried a user has ended
    ctx = _CONTEXT.get()
    user = ctx.user_id if ctx is not None and ctx.applies_to(db.alias) else None
    readonly = bool(ctx is not None and ctx.readonly and ctx.applies_to(db.alias))
    if status == TransactionStatus.INERROR:
        return execute(sql, params, many, context)  # rejected anyway; keep Django's error
    if user is None and not readonly and (
            status != TransactionStatus.INTRANS or getattr(db, _DIRTY_ATTR, None) is not raw):
        # A fresh (implicit or explicit) transaction: nothing to carry or to clear.
        # (Otherwise this transaction carried a user earlier: clear it below.)
        return execute(sql, params, many, context)
    value = _NO_USER if user is None else user
    prologue = _SET_USER_READONLY if readonly else _SET_USER
    if not raw.autocommit:
        # The value may outlive this statement in the open transaction.
        setattr(db, _DIRTY_ATTR, raw)
    cursor = context["cursor"].cursor
    if (not many and isinstance(cursor, psycopg.ClientCursor) and isinstance(sql, str)
            and not raw.pgconn.pipeline_status):
        joined = _join(prologue, value, sql, params)
        if joined is not None:
            # One simple-protocol Query message holding both statements: one
            # implicit transaction outside atomic(), one round trip, and no
            # pipeline machinery (which measured ~100 us of client CPU per query).
            result = execute(joined[0], joined[1], many, context)
            cursor.nextset()  # Django reads the query's result, not set_config's
            return result
    with db.wrap_database_errors:
        if isinstance(cursor, psycopg.ServerCursor) or not psycopg.Pipeline.is_supported():
            return _execute_unpipelined(db, raw, prologue, value, execute, sql, params, many,
                                        context)
        # A query error may surface at the pipeline's Sync, after Django's own
        # error wrapping returned: wrap_database_errors above turns it into
        # Django's exception class (IntegrityError ...), as callers expect.
        with raw.pipeline():
            _prologue_cursor(db, raw).execute(prologue, (value,))
            result = execute(sql, params, many, context)
        return result


_NAMED_PARAM = "edulink_rls_user_id"


def _join(prologue: str, value: str, sql: str, params: Any) -> tuple[str, Any] | None:
    """*prologue* and *sql* as one client-side-bound query text, or None if params don't allow.

    Django's default psycopg cursor (a ClientCursor) merges parameters into
    the text on the client and sends it with the simple query protocol, where
    several statements are allowed and run in one implicit transaction.  The
    user id becomes one more bound parameter, quoted by psycopg like every
    other value Django sends.
    """
    if params is None:
        # Without parameters psycopg leaves '%' alone; with ours it would not.
        return f"{prologue}; {sql.replace('%', '%%')}", (value,)
    if isinstance(params, list | tuple):
        return f"{prologue}; {sql}", (value, *params)
    if isinstance(params, dict) and _NAMED_PARAM not in params:
        named = prologue.replace("%s", f"%({_NAMED_PARAM})s")
        return f"{named}; {sql}", {**params, _NAMED_PARAM: value}
    return None


def _execute_unpipelined(db: Any, raw: psycopg.Connection[Any], prologue: str, value: str,
                         execute: Callable[..., Any], sql: Any, params: Any, many: bool,
                         context: dict[str, Any]) -> Any:
    """Prologue as its own statement: needs an explicit transaction around both."""
    if raw.autocommit:
        with raw.transaction():
            _prologue_cursor(db, raw).execute(prologue, (value,))
            return execute(sql, params, many, context)
    _prologue_cursor(db, raw).execute(prologue, (value,))
    return execute(sql, params, many, context)


def _install_on(db: Any) -> None:
    if db.vendor == "postgresql" and _rls_execute not in db.execute_wrappers:
        db.execute_wrappers.insert(0, _rls_execute)  # outermost: sees every query


def _on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    _install_on(connection)


_signal_connected = False


def install() -> None:
    """Install the wrapper on every PostgreSQL alias, now and for each new connection.

    Idempotent and cheap (rls_user() calls it on every entry).  The
    ``connection_created`` signal covers the DatabaseWrapper of every thread
    from then on (Django's pool hands a new psycopg connection to the same
    wrapper per checkout, and the signal fires for each); this thread's
    wrappers that connected earlier get it here.
    """
    global _signal_connected
    from django.db import connections

    if not _signal_connected:
        from django.db.backends.signals import connection_created

        connection_created.connect(_on_connection_created,
                                   dispatch_uid="edulink_db.django_rls")
        _signal_connected = True
    for db in connections.all(initialized_only=True):
        _install_on(db)


# -- the middleware ----------------------------------------------------------------------

def _user_pk(request: Any) -> object | None:
    try:
        user = request.user
    except AttributeError:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "RLSUserMiddleware found no request.user: put it after "
            "'django.contrib.auth.middleware.AuthenticationMiddleware' (or your own "
            "authentication middleware) in MIDDLEWARE.") from None
    if user is None or not user.is_authenticated:
        return None
    pk: object = user.pk
    return pk


class RLSUserMiddleware:
    """Runs each request's queries as ``request.user`` (anonymous: no user).

    Sync and async capable.  Belongs after the authentication middleware.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
        install()

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        with rls_user(_user_pk(request)):
            return self.get_response(request)

    async def __acall__(self, request: Any) -> Any:
        from asgiref.sync import sync_to_async

        # request.user (not Django 5's request.auser): an authentication
        # middleware of the service's own may have replaced it.  Resolving it
        # may query the session/user tables, which async code must not do here.
        pk = await sync_to_async(_user_pk)(request)
        with rls_user(pk):
            return await self.get_response(request)


__all__ = ["RLSUserMiddleware", "current_rls_user", "install", "rls_user"]
