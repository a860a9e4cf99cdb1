"""Query fingerprints: the shape of a statement, without any of its values.

``SELECT * FROM t WHERE id = 42 AND name = 'bob'`` and the same query with other
values share a fingerprint; the values never reach metrics or logs (no personal
data). Parameters passed separately (``%s``) are never looked at at all.
"""

from __future__ import annotations

import hashlib

from ..core.sql_text import normalise

__all__ = ["QUERY_TYPES", "fingerprint", "normalise", "query_type"]

QUERY_TYPES = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "COPY", "CALL")


def query_type(normalised: str) -> str:
    head = normalised.split(" ", 1)[0].upper() if normalised else ""
    return head if head in QUERY_TYPES else "OTHER"


def fingerprint(query: str) -> tuple[str, str, str]:
    """(hash, query type, normalised text) of *query*."""
    text = normalise(query)
    digest = hashlib.blake2b(text.lower().encode(), digest_size=8).hexdigest()
    return digest, query_type(text), text
