"""One connection pool per service, each logged in as that service's runtime role.

    from microservices.shared.database.connection_manager import connection_manager

    with connection_manager.get_connection('user_service') as conn:
        with conn.cursor() as cursor:
            cursor.execute("SELECT * FROM user_schema.profiles_userprofile")
            results = cursor.fetchall()

Transaction semantics of a checkout
-----------------------------------
Connections are in **autocommit** mode: every statement commits on its own, and
a plain read costs exactly one round trip (no BEGIN, COMMIT, RESET or SET is
added).  Group statements atomically with ``with conn.transaction():``; it
commits when the block ends and rolls back if it raises.  A transaction still
open when the ``get_connection`` block ends is rolled back.

``user_id=`` sets ``app.current_user_id`` and ``readonly=True`` makes the work
read-only, for this checkout only: both travel with every statement as
transaction-local settings (see :mod:`.request_context`), so nothing survives
into the next checkout or leaks through a transaction pooler.

Nothing else a checkout does to its session reaches the next one either: a
checkout that ran anything not provably free of session effects (a session
``SET``, ``set_config(..., false)``, ``pg_advisory_lock``, ``DECLARE ... WITH
HOLD``, a temporary table, ``LISTEN``, ``PREPARE``, ``DO``, any application
function, a cursor class of its own ...; see :mod:`.session_state`) is reset
with one extra round trip before the pool gets the connection back, and closed
if that fails.  A checkout that changed nothing pays nothing.

Pools are built on psycopg_pool, opened lazily on first use, and thread-safe.
Sizes come from the connection budget (:mod:`.connections.budget`): the role's
CONNECTION LIMIT divided by the service's processes, read when the pool opens.
Explicit sizes (min = ``DATABASE_POOL_SIZE``, max = min + ``DATABASE_MAX_OVERFLOW``,
or per service ``EDULINK_DB_<SERVICE>_POOL_SIZE`` / ``_MAX_OVERFLOW``) win, and are
refused at opening when the processes' pools cannot fit that limit.  Checkout
timeout: ``DATABASE_POOL_TIMEOUT`` / ``EDULINK_DB_<SERVICE>_POOL_TIMEOUT``.

This module is the seed's import path and re-exports the connection layer: the manager
(:mod:`.connections.manager`), a service's pool (:mod:`.connections.pool`), checkouts and
the relocation hook (:mod:`.connections.checkout` and ``checkout_async``, generated one
from the other; :mod:`.connections.move_watch`), pool settings
(:mod:`.connections.pool_config`).  ``connection_manager`` is the one process-wide
manager, the same object wherever it is imported from.
"""

from .connections.checkout import Checkout
from .connections.checkout_async import AsyncCheckout
from .connections.manager import ConnectionManager, connection_manager
from .connections.move_watch import FREEZE_WAIT_S
from .connections.pool import (
    DEAD,
    OK,
    RECHECK_IDLE_AFTER_S,
    REPLICA_CHECKOUT_TIMEOUT_S,
    REPLICA_RESET_SESSION,
    SUSPECT,
    ServicePool,
)
from .connections.pool_config import PoolConfig, pool_config

__all__ = [
    "DEAD",
    "FREEZE_WAIT_S",
    "OK",
    "RECHECK_IDLE_AFTER_S",
    "REPLICA_CHECKOUT_TIMEOUT_S",
    "REPLICA_RESET_SESSION",
    "SUSPECT",
    "AsyncCheckout",
    "Checkout",
    "ConnectionManager",
    "PoolConfig",
    "ServicePool",
    "connection_manager",
    "pool_config",
]
