"""Re-export of :mod:`microservices.shared.database.django_support.backend.base`, so that
``ENGINE = "microservices.shared.database.django_backend"`` keeps working. No code here."""

from ..django_support.backend.base import (
    CREDENTIALS_KEY,
    READONLY_KEY,
    SERVICE_KEY,
    TRACE_KEY,
    DatabaseWrapper,
)

__all__ = ["CREDENTIALS_KEY", "READONLY_KEY", "SERVICE_KEY", "TRACE_KEY", "DatabaseWrapper"]
