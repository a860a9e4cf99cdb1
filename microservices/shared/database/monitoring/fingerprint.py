"""Query fingerprints: the shape of a statement, without any of its values.

``SELECT * FROM t WHERE id = 42 AND name = 'bob'`` and the same query with other
values share a fingerprint; the values never reach metrics or logs (no personal
data). Parameters passed separately (``%s``) are never looked at at all.
"""

from __future__ import annotations

import hashlib
import re

_STRING = re.compile(r"'(?:[^']|'')*'")
_DOLLAR = re.compile(r"\$([A-Za-z_]*)\$.*?\$\1\$", re.DOTALL)
_NUMBER = re.compile(r"(?<![\w$.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")
_IN_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_SPACE = re.compile(r"\s+")
QUERY_TYPES = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "COPY", "CALL")


def normalise(query: str) -> str:
    """Comments dropped, literals replaced by ``?``, whitespace collapsed."""
    text = _COMMENT.sub(" ", query)
    text = _DOLLAR.sub("?", text)
    text = _STRING.sub("?", text)
    text = _NUMBER.sub("?", text)
    text = _IN_LIST.sub("(?)", text)
    return _SPACE.sub(" ", text).strip()


def query_type(normalised: str) -> str:
    head = normalised.split(" ", 1)[0].upper() if normalised else ""
    return head if head in QUERY_TYPES else "OTHER"


def fingerprint(query: str) -> tuple[str, str, str]:
    """(hash, query type, normalised text) of *query*."""
    text = normalise(query)
    digest = hashlib.blake2b(text.lower().encode(), digest_size=8).hexdigest()
    return digest, query_type(text), text
