"""Re-export of :mod:`.django_support.rls`, the documented middleware path::

    MIDDLEWARE = [..., "microservices.shared.database.django_rls.RLSUserMiddleware", ...]

No code here: :mod:`.django_support.rls` has it.
"""

from .django_support.rls import RLSUserMiddleware, current_rls_user, install, rls_user

__all__ = ["RLSUserMiddleware", "current_rls_user", "install", "rls_user"]
