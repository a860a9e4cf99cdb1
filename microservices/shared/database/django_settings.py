"""Re-export of :mod:`.django_support.settings` and :mod:`.django_support.router`, the
documented path for Django settings::

    from microservices.shared.database.django_settings import (
        configure_service_database, configure_cross_service_databases, get_database_router)

No code here: the modules named above have it.
"""

from .django_support.router import (
    EdulinkRouter,
    ReplicaPinningMiddleware,
    get_database_router,
    pin_to_primary,
)
from .django_support.settings import (
    APP_SERVICES_SETTING,
    CREDENTIALS_KEY,
    MIGRATE_ENV,
    READONLY_KEY,
    REPLICA_KEY,
    SERVICE_KEY,
    TRACE_KEY,
    configure_cross_service_databases,
    configure_service_database,
    service_table,
)

__all__ = [
    "APP_SERVICES_SETTING",
    "CREDENTIALS_KEY",
    "MIGRATE_ENV",
    "READONLY_KEY",
    "REPLICA_KEY",
    "SERVICE_KEY",
    "TRACE_KEY",
    "EdulinkRouter",
    "ReplicaPinningMiddleware",
    "configure_cross_service_databases",
    "configure_service_database",
    "get_database_router",
    "pin_to_primary",
    "service_table",
]
