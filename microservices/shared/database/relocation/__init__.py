"""Move one service's schema to a server of its own, online (``edulink-db move-service``).

Phases (journalled in ``edulink_db_meta.service_move`` on the home server; each is
idempotent, so a killed run is resumed or aborted):

1. :func:`~.preflight.preflight` -- read-only checks that fail closed;
2. prepare -- provision the topology on the target, copy the schema's DDL;
3. copy -- publication ``FOR TABLE ...`` on the source, slot, subscription on the target;
4. cutover -- freeze, barrier LSN, sequences, flip the registry, unfreeze;
5. cleanup -- drop subscription, slot, publication, temporary role; retire the
   source's copy of the schema.
"""

from .citus import citus_sql
from .mover import MoveContext, abort, run_move
from .preflight import PreflightReport, preflight

__all__ = ["MoveContext", "PreflightReport", "abort", "citus_sql", "preflight", "run_move"]
