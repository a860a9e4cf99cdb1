"""Direct (unpooled) connections for administrative work, with clear errors.

Provisioning, verification and status use one short-lived connection each;
pooling is for services (``connection_manager``).
"""

from __future__ import annotations

from typing import Any

import psycopg

from ..config import mask_dsn
from ..core.errors import DatabaseUnavailableError

CONNECT_TIMEOUT_S = 15


def connect(params: dict[str, Any], *, purpose: str, autocommit: bool = True
            ) -> psycopg.Connection[Any]:
    """Connect with *params*; on failure raise DatabaseUnavailableError naming the
    (masked) target and *purpose*, never the password."""
    try:
        return psycopg.connect(**params, autocommit=autocommit,
                               connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        raise DatabaseUnavailableError(
            f"Cannot connect to {mask_dsn(params)} to {purpose}: {reason}"
        ) from None
