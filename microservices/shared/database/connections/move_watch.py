"""The relocation hook's judgement (issue 17): whether an error a checkout met means
its service moved while it ran.  No I/O here: the checkout re-reads the registry
(:func:`.checkout.check`) and hands the result to :meth:`MoveWatch.moved`.
"""

from __future__ import annotations

import psycopg

from ..config import Settings
from ..core.errors import MovedSchemaAccessError, ServiceMovedError
from . import location
from .pool import ServicePool

# How long a service's checkout waits while a cutover freezes its writes; the
# cutover announces at most this long a freeze (relocation.mover.FREEZE_S).
FREEZE_WAIT_S = 10.0


class MoveWatch:
    """Turns the refusal a frozen old location gives a queued statement (its writes
    revoked: 42501; its tables retired: 42P01) into ServiceMovedError when the
    registry shows the service moved since the checkout: retry it, it changed nothing.

    And a ``relation "<schema>.<table>" does not exist`` (42P01) for a table in the
    schema of a service that the registry places on another server than this
    checkout's (*where*: None = home) into MovedSchemaAccessError: a plain-SQL read of
    a moved service's table, which only ``get_reader_connection`` can follow.  Both
    run only on the error path (``check`` with an exception): a checkout that succeeds
    pays nothing."""

    __slots__ = ("epoch", "home", "registry", "service", "settings", "where")

    def __init__(self, registry: location.Registry, home: ServicePool, service: str,
                 epoch: int, where: str | None = None, settings: Settings | None = None
                 ) -> None:
        self.registry, self.home, self.service, self.epoch = registry, home, service, epoch
        self.where, self.settings = where, settings

    @staticmethod
    def refused(exc: BaseException | None) -> bool:
        return isinstance(exc, psycopg.errors.InsufficientPrivilege
                          | psycopg.errors.UndefinedTable)

    def moved(self, now: location.Location, exc: BaseException) -> None:
        if now.epoch != self.epoch:
            raise ServiceMovedError(
                f"Service {self.service!r} moved to another server while this checkout ran "
                f"(location epoch {self.epoch} -> {now.epoch}); the statement changed "
                "nothing: run it again, the next checkout goes to the new location.") from exc
        if self.settings is not None and isinstance(exc, psycopg.errors.UndefinedTable):
            self.elsewhere(exc)

    def elsewhere(self, exc: psycopg.errors.UndefinedTable) -> None:
        """Raise MovedSchemaAccessError when *exc* names a relation qualified with the
        schema of a service that lives on another server than this checkout's.  The
        relation is matched on the quoted name PostgreSQL puts in the message (the same
        in every lc_messages language); the registry was refreshed just before."""
        assert self.settings is not None
        text = exc.diag.message_primary or ""
        reader = self.home.service.name
        for svc in self.settings.topology().services:
            mark = f'"{svc.schema}.'
            if mark not in text:
                continue
            loc = self.registry.cached(svc.name)
            if loc.where == self.where:
                continue  # the schema lives here: a table that really does not exist
            relation = text[text.index(mark) + 1:].split('"', 1)[0]
            raise MovedSchemaAccessError(
                f"{relation} does not exist on this server because service {svc.name!r} "
                f"moved (edulink-db move-service, location epoch {loc.epoch}) to "
                f"{loc.where or 'its home server'}; service {reader!r} read it with plain "
                f"SQL on its own connection, which stays where {reader!r} lives. Read it "
                f"with connection_manager.get_reader_connection({reader!r}, {svc.name!r}), "
                "which follows the move (PostgreSQL still enforces the exposure grants).",
                service=svc.name, location=loc.where, reader=reader) from exc
