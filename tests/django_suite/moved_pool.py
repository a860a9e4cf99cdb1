"""Mode ``moved-pool``: ``moved`` with Django's connection pool (Django >= 5.1)."""

from .common import *  # noqa: F403
from .common import EDULINK_ENGINE, SERVICE, databases

DATABASES = databases("moved-pool", EDULINK_ENGINE, service=SERVICE, options={"pool": True})
