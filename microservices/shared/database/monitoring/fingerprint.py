"""Query fingerprints: the shape of a statement, without any of its values.

``SELECT * FROM t WHERE id = 42 AND name = 'bob'`` and the same query with other
values share a fingerprint; the values never reach metrics or logs (no personal
data). Parameters passed separately (``%s``) are never looked at at all.
"""

from __future__ import annotations

import hashlib
import re

from pglast import parser
from pglast.parser import ParseError

# PostgreSQL's lexer (through pglast) finds every literal, whatever its spelling:
# E'..\'..', U&'..', $tag$..$tag$, B'..', X'..', numbers.  Hand-written patterns
# miss some of them and then show part of a value.
_LITERAL_TOKENS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_IN_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")
_SPACE = re.compile(r"\s+")
# Everything from the first character that could open a literal or a comment: what a
# statement that does not lex (pg_stat_activity cuts query texts at
# track_activity_query_size, often inside a literal) is cut back to.
_UNLEXED_TAIL = re.compile(r"""['$"]|--|/\*|\b[eEuUbBxXnN]&?'|\d""")
QUERY_TYPES = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "COPY", "CALL")


def _lexed(query: str) -> str:
    """*query* with literals as ``?`` and comments as a space (raises ParseError)."""
    # pglast reports token offsets in characters, ends inclusive.
    out: list[str] = []
    pos = 0
    for token in parser.scan(query):
        if token.name in _LITERAL_TOKENS or token.name in _COMMENT_TOKENS:
            out.append(query[pos:token.start])
            out.append("?" if token.name in _LITERAL_TOKENS else " ")
            pos = token.end + 1
    out.append(query[pos:])
    return "".join(out)


def normalise(query: str) -> str:
    """Comments dropped, literals replaced by ``?``, whitespace collapsed.

    A text that PostgreSQL's lexer cannot read (a truncated statement, say) is cut at
    the first place a value could start, and marked with ``…``: never a partial value.
    """
    try:
        text = _lexed(query)
    except ParseError:
        cut = _UNLEXED_TAIL.search(query)
        text = query if cut is None else query[:cut.start()] + " …"
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
