"""TLS for every connection: the one place that decides a conninfo's sslmode and root
certificate, and the words for what goes wrong.

``sslmode=require`` encrypts but accepts any certificate, so a man in the middle on
the path to the server reads every password and row.  With a root certificate
(``DATABASE_SSLROOTCERT``, ``--ca``; Supabase publishes one) every
connection uses ``sslmode=verify-full``: libpq checks that the server's certificate
chains to that root and names the host connected to.  Pools, Django, migrations,
pg_dump/pg_restore/psql, move-service, replicas and monitoring all build their
parameters through :func:`with_tls`, so none can be left behind.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ConfigError

SETTING = "DATABASE_SSLROOTCERT"
VERIFYING = ("verify-ca", "verify-full")
FIX = (f"set {SETTING} (or --ca) to the server's root certificate (Supabase: Project "
       "Settings > Database > SSL Configuration > Download certificate)")


def is_loopback(host: str | None) -> bool:
    if not host or host.startswith("/"):
        return True  # unix socket
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hosts(params: dict[str, Any]) -> list[str]:
    return str(params.get("host", "") or "").split(",")


def check_root_cert(path: Path | str, setting: str = SETTING) -> str:
    """The absolute path of a readable PEM root certificate, else a one-line ConfigError
    naming *setting*.  Checked before connecting: libpq's own message for a missing or
    garbled file does not say which setting pointed at it."""
    file = Path(path).expanduser()
    try:
        stat = file.stat()
    except OSError:
        stat = None
    if stat is None or not file.is_file():
        raise ConfigError(f"{setting}: {file} does not exist or is not a file; {FIX}.")
    # Parsing costs ~2 ms and every pool, backup and health check builds a conninfo:
    # parse once per version of the file.
    return _checked(str(file), stat.st_mtime_ns, stat.st_size, setting)


@lru_cache(maxsize=8)
def _checked(name: str, _mtime_ns: int, _size: int, setting: str) -> str:
    file = Path(name)
    try:
        text = file.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {file} ({exc.strerror}).") from None
    try:
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ssl.SSLError("no PEM certificate")
        ssl.create_default_context(cafile=str(file))  # parses every certificate in it
    except ssl.SSLError:
        raise ConfigError(
            f"{setting}: {file} is not a PEM certificate (expected a text file starting "
            "with -----BEGIN CERTIFICATE-----; convert a DER file with 'openssl x509 "
            "-inform der -in FILE.crt -out FILE.pem')."
        ) from None
    return str(file.resolve())


def with_tls(params: dict[str, Any], *, sslmode: str | None = None,
             rootcert: Path | str | None = None) -> dict[str, Any]:
    """*params* (changed in place and returned) with the TLS settings of edulink-db.

    With *rootcert*: ``sslmode=verify-full`` and that root certificate (one a URL names
    itself wins: a server elsewhere may have another CA).  Without: the URL's sslmode,
    else *sslmode* (``DATABASE_SSLMODE``), else ``require`` off loopback."""
    if rootcert is not None:
        if params.get("sslrootcert") in (None, ""):
            params["sslrootcert"] = check_root_cert(rootcert)
        params["sslmode"] = "verify-full"
    elif "sslmode" not in params:
        if sslmode:
            params["sslmode"] = sslmode
        elif not all(is_loopback(h) for h in _hosts(params)):
            params["sslmode"] = "require"
    return params


def unauthenticated_warning(params: dict[str, Any]) -> str | None:
    """A warning when *params* reach a server off loopback without checking who it is
    (no ``verify-full``/``verify-ca``); None when the server is authenticated or local."""
    if all(is_loopback(h) for h in _hosts(params)):
        return None
    if params.get("sslmode") in VERIFYING:
        return None
    return (f"the server at {params.get('host')} is not authenticated "
            f"(sslmode={params.get('sslmode', 'prefer')}): traffic is encrypted at best, "
            f"but a man in the middle could read passwords and rows; {FIX}.")


# What libpq (OpenSSL) says when verification fails, and what to do about it.
_EXPIRED = ("the server's certificate has expired: renew it on the server (or, if it is "
            f"the root certificate in {SETTING} that expired, download the current one)")
_WRONG_HOST = ("the server's certificate names another host: connect by the host name the "
               "certificate was issued for (e.g. db.<project-ref>.supabase.co, not an IP "
               "address)")
_WRONG_CA = (f"the server's certificate is not signed by the root certificate in {SETTING}: "
             "download this server's root certificate")
_TLS_REASONS = (
    ("certificate has expired", _EXPIRED),
    ("does not match host name", _WRONG_HOST),
    ("certificate verify failed", _WRONG_CA),
    ("root certificate file", f"libpq cannot use the root certificate: check {SETTING}"),
)
# OpenSSL's verify messages (Python's ssl) for the cases libpq folds into "certificate
# verify failed".
_VERIFY_MESSAGES = (("expired", _EXPIRED), ("mismatch", _WRONG_HOST))
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)  # the protocol's SSLRequest message


def tls_hint(reason: str, params: dict[str, Any] | None = None) -> str | None:
    """A one-line explanation of a TLS failure in libpq's *reason*, naming the setting
    to fix; None when *reason* is not about TLS.  libpq says only "certificate verify
    failed" whatever OpenSSL found: with *params*, the server's certificate is fetched
    again and checked here, to tell an expired certificate from a wrong CA."""
    if "no pg_hba.conf entry" in reason and "no encryption" in reason:
        return ("the server accepts only TLS connections: drop sslmode=disable/allow "
                "(DATABASE_SSLMODE or the URL)")
    for needle, hint in _TLS_REASONS:
        if needle in reason:
            if needle == "certificate verify failed" and params is not None:
                found = _verify_message(params) or ""
                hint = next((h for word, h in _VERIFY_MESSAGES if word in found), hint)
            return f"TLS verification failed ({SETTING}): {hint}"
    return None


def _verify_message(params: dict[str, Any]) -> str | None:
    """What OpenSSL says of the server's certificate, checked against *params*'
    root certificate and host name; None when it verifies or cannot be asked."""
    host, port = str(params.get("host") or ""), str(params.get("port") or "5432")
    rootcert = params.get("sslrootcert")
    if not rootcert or not host or host.startswith("/") or "," in host + port:
        return None  # a unix socket has no TLS; a multi-host list: libpq's own words
    try:
        context = ssl.create_default_context(cafile=str(rootcert))
        address = str(params.get("hostaddr") or host)
        with socket.create_connection((address, int(port)), timeout=5) as raw:
            raw.sendall(_SSL_REQUEST)
            if raw.recv(1) != b"S":
                return None
            with context.wrap_socket(raw, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message)
    except (OSError, ValueError):
        return None


def explain(reason: str, params: dict[str, Any] | None = None) -> str:
    """*reason* (libpq's or a client program's message) unchanged, or, when it is a TLS
    failure, folded to one line after a hint that says what to fix."""
    folded = " ".join(reason.split())
    hint = tls_hint(folded, params)
    return f"{hint}. libpq said: {folded}" if hint else reason
