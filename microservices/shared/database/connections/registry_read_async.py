"""Reading a home server's location registry (:class:`.location.Registry`) through a
caller's connection: refresh the cache, look a service up, wait out a freeze.

``registry_read_async.py`` is the source; ``registry_read.py`` is generated from it
by ``tools/async_to_sync.py`` (edit this one, then run the tool).
"""

from __future__ import annotations

import asyncio  # sync:
import time
from contextlib import nullcontext

import psycopg

from .location import POLL_S, AsyncRunner, Location, Registry, Rows


async def arefresh(registry: Registry, run: AsyncRunner) -> None:
    """Read the registry now (its probe first, while the table is not known to exist);
    a failed read keeps the last known locations."""
    # The sync twin lets one thread read at a time; a coroutine cannot be preempted
    # between reading a result and absorbing it, so it needs no lock.
    with nullcontext():  # sync: with registry.lock:
        for _ in range(2):
            query = registry.query()
            try:
                result: Rows | BaseException = await run(query)
            except psycopg.Error as exc:
                result = exc
            if not registry.absorb(query, result):
                return


async def aget(registry: Registry, service: str, run: AsyncRunner, *,
               fresh: bool = False) -> Location:
    """*service*'s location, at most TTL_S old (``fresh``: read now)."""
    if fresh or registry.due():
        await arefresh(registry, run)
    return registry.cached(service)


async def await_unfrozen(registry: Registry, service: str, run: AsyncRunner,
                         limit_s: float) -> Location:
    """Wait while *service* is frozen (a cutover holds its writes), at most *limit_s*;
    the freeze itself expires on the server, so a killed cutover cannot hold writers
    for longer than it announced."""
    deadline = time.monotonic() + limit_s
    loc = await aget(registry, service, run, fresh=True)
    while loc.frozen and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        loc = await aget(registry, service, run, fresh=True)
    return loc
