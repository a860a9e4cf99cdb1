"""Mode ``stock``: Django's own PostgreSQL backend, the baseline."""

from .common import *  # noqa: F403
from .common import STOCK_ENGINE, databases

DATABASES = databases("stock", STOCK_ENGINE)
