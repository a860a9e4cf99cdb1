"""Re-export of :mod:`.django_support.test_runner`, the documented runner path::

    TEST_RUNNER = 'microservices.shared.database.django_test_runner.EdulinkTestRunner'

No code here: :mod:`.django_support.test_runner` has it.
"""

from .django_support.test_runner import EdulinkTestRunner

__all__ = ["EdulinkTestRunner"]
