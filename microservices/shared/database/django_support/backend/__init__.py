"""Django database engine that follows ``edulink-db move-service``.

``ENGINE = "microservices.shared.database.django_support.backend"``, or the older
``"microservices.shared.database.django_backend"`` (what
:func:`~microservices.shared.database.django_support.settings.configure_service_database`
emits; its ``base`` re-exports this package's): Django's own PostgreSQL backend, whose
new connections go where the location registry says the alias's service schema lives
now (see :mod:`.base`).
"""
