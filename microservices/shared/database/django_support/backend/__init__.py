"""Django database engine that follows ``edulink-db move-service``.

``ENGINE = "microservices.shared.database.django_backend"`` (what
:func:`~microservices.shared.database.django_settings.configure_service_database`
emits): Django's own PostgreSQL backend, whose new connections go where the
location registry says the alias's service schema lives now (see :mod:`.base`).
"""
