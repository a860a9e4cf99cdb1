"""The harness's own check that the ``rls`` mode really wraps every test.

Run (as the label ``tests.django_suite.rls_check``) only in that mode: it reads the
context in a plain test, in a TestCase's class fixture and test, and in a
TransactionTestCase, and asks the server which user each alias's queries carry.
The harness also counts these tests' "... ok" lines: a check that did not run is no
check.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import connections
from django.test import SimpleTestCase, TestCase, TransactionTestCase

from microservices.shared.database.django_rls import current_rls_user

from .runner import RLS_USER

_SETTING = "SELECT pg_catalog.current_setting('app.current_user_id', true)"


def _server_user(alias: str) -> Any:
    with connections[alias].cursor() as cursor:
        cursor.execute(_SETTING)
        return cursor.fetchone()[0]


class ContextInSimpleTest(SimpleTestCase):  # type: ignore[misc]
    def test_context(self) -> None:
        self.assertEqual(current_rls_user(), RLS_USER)


class ContextInTestCase(TestCase):  # type: ignore[misc]
    databases: ClassVar[set[str]] = {"default", "other"}
    fixture_user: str | None = None

    @classmethod
    def setUpTestData(cls) -> None:
        cls.fixture_user = current_rls_user()

    def test_context_in_fixture_and_test(self) -> None:
        self.assertEqual(self.fixture_user, RLS_USER)
        self.assertEqual(current_rls_user(), RLS_USER)

    def test_queries_carry_the_user(self) -> None:
        for alias in ("default", "other"):
            with self.subTest(alias=alias):
                self.assertEqual(_server_user(alias), RLS_USER)


class ContextInTransactionTestCase(TransactionTestCase):  # type: ignore[misc]
    databases: ClassVar[set[str]] = {"default", "other"}
    available_apps: ClassVar[list[str]] = []  # Django's runtests.py insists; no models flushed

    def test_autocommit_queries_carry_the_user(self) -> None:
        self.assertEqual(current_rls_user(), RLS_USER)
        for alias in ("default", "other"):
            with self.subTest(alias=alias):
                self.assertEqual(_server_user(alias), RLS_USER)
