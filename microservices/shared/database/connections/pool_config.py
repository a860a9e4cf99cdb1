"""Pool configuration of a service, from the settings and the connection budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Settings, pooler_mode
from ..core.errors import ConfigError
from ..topology import Service
from . import budget


@dataclass(frozen=True)
class PoolConfig:
    """The resolved pool settings of one service."""

    min_size: int
    max_size: int
    timeout: float
    max_lifetime: float
    check: bool
    pooler: str

    @property
    def prepare_threshold(self) -> int | None:
        # Transaction poolers hand each transaction another server connection, so a
        # statement prepared on one is unknown on the next (psycopg#280; Supabase docs).
        return None if self.pooler == "transaction" else 5


def pool_config(settings: Settings, service: Service, params: dict[str, Any],
                limit: int | None = None) -> PoolConfig:
    """*limit*: the CONNECTION LIMIT the pool's role holds (read when the pool opens);
    the sizes come from the connection budget (connections/budget.py).  Without it the
    sizes are only provisional: the explicit ones, else 0 until the pool opens."""
    pooler = pooler_mode(settings, params)
    timeout_raw = settings.service_override(service, "POOL_TIMEOUT")
    try:
        timeout = float(timeout_raw) if timeout_raw is not None else \
            settings.database_pool_timeout
    except ValueError:
        timeout = -1.0
    if timeout <= 0:
        raise ConfigError(f"EDULINK_DB_{service.name.upper()}_POOL_TIMEOUT must be a number "
                          f"of seconds > 0, got {timeout_raw!r}.")
    if limit is None:
        size, overflow = budget.explicit_pool(settings, service)
        min_size = size or 0
        max_size = min_size + overflow if overflow is not None else min_size
    else:
        sizes = budget.pool_size(settings, service, limit, pooler=pooler)
        min_size, max_size = sizes.min_size, sizes.max_size
    return PoolConfig(
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        max_lifetime=settings.database_pool_max_lifetime,
        check=settings.database_pool_check,
        pooler=pooler,
    )
