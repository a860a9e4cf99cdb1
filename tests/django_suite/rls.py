"""Mode ``rls``: the ``home`` engine plus the RLS layer; every test runs inside
``rls_user(RLS_USER)`` (see runner.py)."""

from .common import *  # noqa: F403
from .common import EDULINK_ENGINE, SERVICE, databases

DATABASES = databases("rls", EDULINK_ENGINE, service=SERVICE)
TEST_RUNNER = "tests.django_suite.runner.RLSTestRunner"
