"""Mode ``home``: our engine, service ``user`` never moved (the registry is consulted
and finds nothing: every connection is the one Django would make)."""

from .common import *  # noqa: F403
from .common import EDULINK_ENGINE, SERVICE, databases

DATABASES = databases("home", EDULINK_ENGINE, service=SERVICE)
