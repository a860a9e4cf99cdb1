"""The Django ENGINE ``"microservices.shared.database.django_backend"`` (the one
:func:`~microservices.shared.database.django_support.settings.configure_service_database`
emits): Django loads ``<ENGINE>.base``, a re-export of
:mod:`microservices.shared.database.django_support.backend.base`, which has the code.
"""
