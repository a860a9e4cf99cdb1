"""Django support: everything edulink-db gives a Django project, in one package.

- :mod:`.settings` -- ``DATABASES`` from the topology (``configure_service_database``,
  ``configure_cross_service_databases``, ``service_table``);
- :mod:`.router` -- the database router (``get_database_router``, ``EdulinkRouter``) and
  read-your-writes pinning (``ReplicaPinningMiddleware``, ``pin_to_primary``);
- :mod:`.rls` -- row-level security user context (``RLSUserMiddleware``, ``rls_user``);
- :mod:`.backend` -- the database engine, Django's PostgreSQL backend following
  ``move-service`` (``backend/base.py``: ``DatabaseWrapper``);
- :mod:`.test_runner` -- ``EdulinkTestRunner``.

Nothing is imported here, so importing one module does not import Django for the others.
"""
