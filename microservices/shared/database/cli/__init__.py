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
import sys
import warnings

# Imported for their side effect: each registers its commands on ``app``, in this
# order (the order of ``edulink-db --help``).
# isort: off
from . import server, roles, migrations, lint, backups, monitoring  # noqa: F401
from . import budget, dashboard, move, credentials  # noqa: F401
# isort: on
from .app import app
from .help_text import reflow

reflow(app)  # after every command module registered its commands

__all__ = ["app", "main"]


def main() -> None:
    # Libraries' warnings are for their developers, not for the user of a command (e.g.
    # platformdirs' RuntimeDirWarning when XDG_RUNTIME_DIR is unset, attributed to the
    # module that imported it). Shown only when asked for with -W or PYTHONWARNINGS.
    if not sys.warnoptions:
        warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
