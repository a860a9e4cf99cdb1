"""Mode ``moved``: our engine, and the home server's registry says service ``user``
lives on a second server; the harness creates the test databases on both servers and
writes the registry row before Django's runner starts (``--keepdb --parallel=1``)."""

from .common import *  # noqa: F403
from .common import EDULINK_ENGINE, SERVICE, databases

DATABASES = databases("moved", EDULINK_ENGINE, service=SERVICE)
