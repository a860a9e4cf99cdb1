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
the value is never session state: each statement that runs under a context carries
``SELECT set_config('app.current_user_id', $1, true)`` in its own transaction.

Where that happens, and why there:

* **Below Django.**  Each cursor an alias creates becomes, as soon as Django made it,
  an instance of a subclass of its own class (Django's ClientCursor,
  ServerBindingCursor or named ServerSideCursor, or a ``cursor_factory`` of your own)
  that adds the prologue inside ``execute()``.  Django's execute wrappers (an app's
  query logger, Sentry, the debug toolbar) and its query log (``connection.queries``,
  ``assertNumQueries``, ``last_executed_query``) see the application's SQL and
  parameters, as without the layer; ``execute_wrappers`` and the connection's
  ``cursor_factory`` are left as Django set them.  ``cursor.copy()`` carries the user.
* **One message, when it can.**  Django's default cursor binds parameters on the
  client and uses the simple query protocol: the prologue and the statement go as
  one Query message, one round trip, one implicit transaction in autocommit.  Where
  that is impossible (server-side binding, ``executemany``, COPY, a parameter dict
  using our parameter's name), the prologue runs as its own statement: inside the
  open transaction, or, in autocommit, in an explicit transaction around both, so
  a deferred constraint failing at COMMIT is an ordinary IntegrityError and the
  connection stays usable.  No pipeline is used: a pipeline costs ~100 us of client
  CPU per statement and shows up in ``pg_cursors``.
* **Inside ``atomic()``** the prologue goes with *every* statement: a savepoint
  rollback undoes a ``set_config`` made inside it, so "already set in this
  transaction" cannot be tracked reliably on the client.  Once a transaction has
  carried a user, each later statement in it without a context clears the value
  (``''``, which ``current_user_id()`` reads as NULL), so nothing outlives a
  ``with rls_user(...)`` block that ends inside a transaction.
* **Statements that refuse a transaction block** (``CREATE INDEX CONCURRENTLY``,
  ``REINDEX ... CONCURRENTLY``, ``VACUUM``, ``CREATE DATABASE``, ``ALTER SYSTEM``,
  ...) read no rows under a policy: they run as they are, without the prologue.
* **Django's named cursors** (``.iterator()``) declare their cursor after the
  prologue, in one transaction with it.

The context lives in a :class:`contextvars.ContextVar`: per thread and per
asyncio task, copied into ``sync_to_async`` threads (Django's async ORM), absent in
new threads and after the ``with`` block / request.  No context means no
``app.current_user_id``, so policies built on ``current_user_id()`` match nothing
(fail closed).  A context names PostgreSQL aliases only (another vendor's alias is
refused: it has no row-level security).

Not covered (they see no user, so RLS policies show them nothing): SQL on the raw
psycopg connection (``connection.connection.cursor()``), and a
``StreamingHttpResponse`` iterated after the middleware returned.
"""

from __future__ import annotations

import re
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.client_cursor import ClientCursorMixin
from psycopg.pq import TransactionStatus

from ..core.errors import RequestContextError

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
    other = sorted(n for n in names if connections[n].vendor != "postgresql")
    if other:
        # Row-level security is PostgreSQL's: a context there would protect nothing.
        raise RequestContextError(
            f"rls_user(using=...) names alias(es) that are not PostgreSQL: "
            f"{', '.join(other)}; row-level security applies to PostgreSQL aliases only.")
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


# -- carrying the user: the cursors Django creates --------------------------------------
#
# Each cursor a PostgreSQL alias creates (Django's ClientCursor, ServerBindingCursor or
# named ServerSideCursor for .iterator(), or the class of a cursor_factory in OPTIONS)
# becomes, right after Django made it, an instance of a subclass that adds the prologue
# in execute(). That is below Django's execute wrappers and query log, so both see the
# application's SQL and parameters, never the prologue; and neither execute_wrappers
# nor the connection's cursor_factory change (Django's own tests check both).

# Statements PostgreSQL refuses in a transaction block, hence in a multi-statement
# Query message or with a prologue: none reads rows under a policy, so they run as
# they are, without the user.
_NON_TRANSACTIONAL = re.compile(
    r"\s*(?:(?:CREATE|DROP)\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY|REINDEX\b[^;]*\bCONCURRENTLY"
    r"|VACUUM|(?:CREATE|DROP)\s+(?:DATABASE|TABLESPACE)|ALTER\s+SYSTEM"
    r"|(?:CREATE|ALTER|DROP)\s+SUBSCRIPTION|(?:COMMIT|ROLLBACK)\s+PREPARED|DISCARD\s+ALL"
    r"|ALTER\s+DATABASE\b[^;]*\bSET\s+TABLESPACE|CLUSTER\s*;?\s*$)",
    re.IGNORECASE)

# Raw connections whose open transaction carried a user: a statement there without
# a user clears it, so nothing outlives a ``with rls_user(...)`` block that ends
# inside a transaction. Weak: a connection that goes away takes its entry with it.
_DIRTY: weakref.WeakKeyDictionary[psycopg.Connection[Any], bool] = weakref.WeakKeyDictionary()


def _wanted(alias: str, raw: psycopg.Connection[Any]) -> tuple[str, str] | None:
    """(prologue, value) that the next statement on *raw* (alias *alias*) must carry,
    or None when it needs none: no user, and nothing to clear in this transaction."""
    status = raw.pgconn.transaction_status
    if status == TransactionStatus.IDLE:
        if _DIRTY:  # (an empty map is the common case: no weak reference made)
            _DIRTY.pop(raw, None)  # the transaction that carried a user has ended
    elif status == TransactionStatus.INERROR:
        return None  # rejected anyway: keep PostgreSQL's error
    ctx = _CONTEXT.get()
    if ctx is None or not ctx.applies_to(alias):
        user, readonly = None, False
    else:
        user, readonly = ctx.user_id, ctx.readonly
    if user is None and not readonly and not (_DIRTY and raw in _DIRTY):
        return None
    if not raw.autocommit and user is not None:
        _DIRTY[raw] = True  # set_config(..., true) lasts until this transaction ends
    return (_SET_USER_READONLY if readonly else _SET_USER), (_NO_USER if user is None else user)


@contextmanager
def _carrying(raw: psycopg.Connection[Any], prologue: str, value: str) -> Iterator[None]:
    """Run the block's statements after *prologue*, in one transaction with it: the
    open one, else an explicit one (so COMMIT errors, e.g. a deferred constraint,
    arrive here, with the connection left usable)."""
    if not raw.autocommit:
        psycopg.Cursor(raw).execute(prologue, (value,))
        yield
        return
    # BEGIN and the prologue in one Query message: one round trip fewer than psycopg's
    # transaction() (which sends BEGIN alone). Plain cursors, not the RLS factory's.
    psycopg.ClientCursor(raw).execute(f"BEGIN; {prologue}", (value,))
    try:
        yield
    except BaseException:
        if raw.pgconn.transaction_status != TransactionStatus.IDLE and not raw.closed:
            with suppress(psycopg.Error):  # a broken connection: the first error matters
                psycopg.Cursor(raw).execute("ROLLBACK")
        raise
    psycopg.Cursor(raw).execute("COMMIT")


_NAMED_PARAM = "edulink_rls_user_id"


def _join(prologue: str, value: str, sql: str, params: Any) -> tuple[str, Any] | None:
    """*prologue* and *sql* as one client-side-bound query text, or None if params don't allow.

    Django's default cursor (a ClientCursor) merges parameters into the text on the
    client and sends it with the simple query protocol, where several statements are
    allowed and run in one implicit transaction. The user id becomes one more bound
    parameter, quoted by psycopg like every other value.
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


class _RLSCursorMixin:
    """The prologue for every statement of a cursor (see the section's note)."""

    __slots__ = ()  # the instance's layout stays Django's: __class__ may be swapped
    _edulink_alias = "default"

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        raw: psycopg.Connection[Any] = self.connection  # type: ignore[attr-defined]
        wanted = _wanted(self._edulink_alias, raw)
        if wanted is None or (isinstance(query, str) and _NON_TRANSACTIONAL.match(query)):
            return super().execute(query, params, **kwargs)  # type: ignore[misc]
        prologue, value = wanted
        if (isinstance(self, psycopg.ServerCursor) and isinstance(self, ClientCursorMixin)
                and isinstance(query, str) and not kwargs and self.pgresult is None
                and not raw.pgconn.pipeline_status):
            return self._declare_joined(raw, prologue, value, query, params)
        if (isinstance(self, psycopg.ClientCursor) and isinstance(query, str) and not kwargs
                and not raw.pgconn.pipeline_status):
            joined = _join(prologue, value, query, params)
            if joined is not None:
                # One Query message holding both statements: one implicit transaction
                # in autocommit, one round trip (a pipeline costs ~100 us of client
                # CPU per query; an explicit transaction two more round trips).
                result = super().execute(joined[0], joined[1])  # type: ignore[misc]
                self.nextset()  # the query's result, not set_config's
                self._hide_prologue(prologue, value)
                return result
        with _carrying(raw, prologue, value):
            return super().execute(query, params, **kwargs)  # type: ignore[misc]

    def _declare_joined(self, raw: psycopg.Connection[Any], prologue: str, value: str,
                        query: str, params: Any) -> Any:
        """DECLARE the named cursor of a ``.iterator()`` in one Query message with the
        prologue, then let psycopg read it as a cursor declared elsewhere (its
        documented "stealing" use: fetch without execute).

        Django's ServerSideCursor binds on the client already, so the text is the
        one psycopg would declare. In autocommit both statements form one implicit
        transaction, and a WITH HOLD cursor is materialised at its commit, before the
        transaction's settings end: the rows are read under the user. That is one
        round trip, as without the layer, instead of BEGIN + prologue, DECLARE and
        COMMIT (+2 round trips, about 7% of a 1,000-row iterator).
        """
        words = [pgsql.SQL("DECLARE"), pgsql.Identifier(self.name)]  # type: ignore[attr-defined]
        scrollable = self.scrollable  # type: ignore[attr-defined]
        if scrollable is not None:
            words.append(pgsql.SQL("SCROLL" if scrollable else "NO SCROLL"))
        words.append(pgsql.SQL("CURSOR"))
        if self.withhold:  # type: ignore[attr-defined]
            words.append(pgsql.SQL("WITH HOLD"))
        words += [pgsql.SQL("FOR"), pgsql.SQL(self.mogrify(query, params))]  # type: ignore[attr-defined]
        declare = pgsql.SQL(" ").join(words)
        head = pgsql.SQL(prologue.replace("%s", "{}")).format(pgsql.Literal(value))
        sender = psycopg.ClientCursor(raw)
        sender.execute(pgsql.Composed([head, pgsql.SQL("; "), declare]))
        # What Django's query log reads (last_executed_query): the DECLARE alone, as
        # psycopg would have recorded it.
        sent = sender._query
        if sent is not None:
            sent.query = declare.as_bytes(raw)
        self._query = sent  # type: ignore[misc]
        return self

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        raw: psycopg.Connection[Any] = self.connection  # type: ignore[attr-defined]
        wanted = _wanted(self._edulink_alias, raw)
        if wanted is None:
            return super().executemany(query, params_seq, **kwargs)  # type: ignore[misc]
        with _carrying(raw, *wanted):
            return super().executemany(query, params_seq, **kwargs)  # type: ignore[misc]

    @contextmanager
    def copy(self, statement: Any, params: Any = None, **kwargs: Any) -> Iterator[Any]:
        raw: psycopg.Connection[Any] = self.connection  # type: ignore[attr-defined]
        wanted = _wanted(self._edulink_alias, raw)
        if wanted is None:
            with super().copy(statement, params, **kwargs) as copy:  # type: ignore[misc]
                yield copy
            return
        with _carrying(raw, *wanted), super().copy(  # type: ignore[misc]
                statement, params, **kwargs) as copy:
            yield copy

    def _hide_prologue(self, prologue: str, value: str) -> None:
        # Django's last_executed_query (connection.queries, debug output,
        # assertNumQueries) reads the client-bound text psycopg sent: show the
        # application's statement, as without the RLS layer.
        query = getattr(self, "_query", None)
        text = getattr(query, "query", None)
        if not isinstance(text, bytes):
            return
        head = _HEADS.get((prologue, value))
        if head is None:
            literal = self._tx.as_literal(value)  # type: ignore[attr-defined]
            head = prologue.replace("%s", "{}").encode().replace(b"{}", literal) + b"; "
            if len(_HEADS) > 1024:  # one per user id seen: keep it bounded
                _HEADS.clear()
            _HEADS[(prologue, value)] = head
        if text.startswith(head):
            query.query = text[len(head):]  # type: ignore[union-attr]


# (prologue, user id) -> the bound prologue as psycopg sends it (see _hide_prologue).
_HEADS: dict[tuple[str, str], bytes] = {}


_CURSOR_CLASSES: dict[tuple[type, str], type] = {}


def _cursor_class(base: type, alias: str) -> type:
    """*base* (the class of a cursor Django made) with the prologue, for *alias*."""
    if issubclass(base, _RLSCursorMixin):
        base = base.__mro__[2]  # already ours (another alias's): wrap its base
    made = _CURSOR_CLASSES.get((base, alias))
    if made is None:
        made = _CURSOR_CLASSES.setdefault((base, alias), type(
            f"RLS{base.__name__}", (_RLSCursorMixin, base),
            {"_edulink_alias": alias, "__slots__": ()}))
    return made


def _install_on(db: Any) -> None:
    """Make every cursor *db* creates carry the user (see the section's note)."""
    if db.vendor != "postgresql" or getattr(db.create_cursor, _MARK, False):
        return
    create = db.create_cursor  # Django's, bound to db

    def create_cursor(name: str | None = None) -> Any:
        cursor = create(name)
        if not isinstance(cursor, _RLSCursorMixin):
            # Same instance, one class further down: Django keeps its cursor (a
            # ClientCursor, ServerBindingCursor or named ServerSideCursor, or one of
            # its own cursor_factory) and the connection's cursor_factory is untouched.
            cursor.__class__ = _cursor_class(type(cursor), db.alias)
        return cursor

    setattr(create_cursor, _MARK, True)
    db.create_cursor = create_cursor


def _uninstall_on(db: Any) -> None:
    """Take the RLS layer off one wrapper (benchmarks' baseline)."""
    if getattr(db.create_cursor, _MARK, False):
        del db.create_cursor  # Django's method again


_MARK = "_edulink_rls"


def _on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    _install_on(connection)


_signal_connected = False


def install() -> None:
    """Install the RLS layer on every PostgreSQL alias, now and for each new connection.

    Idempotent and cheap (rls_user() calls it on every entry). The
    ``connection_created`` signal covers the DatabaseWrapper of every thread from then
    on (Django's pool hands a new psycopg connection to the same wrapper per checkout,
    and the signal fires for each); this thread's wrappers that connected earlier get
    it here.
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
