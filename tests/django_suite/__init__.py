"""Settings modules for running Django's own test suite against our engine.

``scripts/django_suite.py`` runs Django's ``tests/runtests.py`` with
``--settings=tests.django_suite.<mode>``; each module here is one mode (see
docs/django-suite.md).  They are imported by Django's test runner, never by pytest.
"""
