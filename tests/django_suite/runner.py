"""The ``rls`` mode's test runner: every test runs with a user context.

Django's runner builds one suite of the runner's ``test_suite`` class, and the
parallel runner splits it with ``partition_suite_by_case``, which rebuilds each
per-class part with ``type(suite)``: so a suite class whose ``run`` enters
``rls_user`` wraps every test, serially and in each parallel worker (the parts are
pickled by class, whatever the start method), together with the class fixtures
(``setUpClass``/``setUpTestData``) that tests depend on -- and nothing outside the
tests: creating, cloning and dropping the test databases runs without a context, as
it would in a service's deployment (``migrate`` is not run under a request's user).

rls_check.py checks this from inside the tests.
"""

from __future__ import annotations

import unittest
from typing import Any

from django.test.runner import DiscoverRunner

from microservices.shared.database.django_rls import install, rls_user

# A fixed user id: failures must be reproducible run after run.
RLS_USER = "2b1c6f0e-26d0-4e6a-9a55-5e17e0a1d026"


class RLSSuite(unittest.TestSuite):
    """A test suite whose tests and class fixtures all run as :data:`RLS_USER`."""

    def run(self, result: Any, debug: bool = False) -> Any:
        install()
        with rls_user(RLS_USER):
            return super().run(result, debug)


class RLSTestRunner(DiscoverRunner):  # type: ignore[misc]
    test_suite = RLSSuite
