"""What verified TLS costs edulink-db itself (core/tls.py), without a server:

    python benchmarks/tls.py [--calls 2000]

- building a conninfo with and without DATABASE_SSLROOTCERT (every pool, backup and
  health check builds one; the root certificate is parsed once per version of the file);
- the first parse of a root certificate (a throwaway one made with the openssl CLI);
- probing a directory of client programs for TLS support (once per directory, cached).

The TLS handshake itself is libpq's and is paid once per new connection, not per query.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import timeit
from functools import partial
from pathlib import Path

from microservices.shared.database.core import tls
from microservices.shared.database.server import pg_tools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    calls = parser.parse_args().calls
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=bench"],
                       cwd=tmp, check=True, capture_output=True, timeout=60)
        ca = str(Path(tmp) / "ca.crt")
        first = timeit.timeit(lambda: tls.with_tls({"host": "db.example.com"}, rootcert=ca),
                              number=1)
        cached = timeit.timeit(lambda: tls.with_tls({"host": "db.example.com"}, rootcert=ca),
                               number=calls)
    plain = timeit.timeit(lambda: tls.with_tls({"host": "db.example.com"}), number=calls)
    print(f"conninfo without a root certificate: {plain / calls * 1e6:.1f} us")
    print(f"conninfo with a root certificate:    {cached / calls * 1e6:.1f} us "
          f"(first call, parsing the file: {first * 1e3:.1f} ms)")
    for directory in pg_tools.bin_dirs():
        if (directory / "pg_dump").is_file():
            pg_tools.has_tls.cache_clear()
            took = timeit.timeit(partial(pg_tools.has_tls, directory), number=1)
            print(f"TLS probe of {directory}: {pg_tools.has_tls(directory)} "
                  f"({took * 1e3:.0f} ms, once per directory)")


if __name__ == "__main__":
    main()
