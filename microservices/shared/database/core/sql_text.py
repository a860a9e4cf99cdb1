"""SQL text without its values: every literal as ``?``, comments dropped.

Shared by monitoring's fingerprints and the OpenTelemetry spans
(``connections/tracing.py``): neither may show a value written into a statement.
"""

from __future__ import annotations

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


def _lexed(query: str) -> str:
    """*query* with literals as ``?`` and comments as a space (raises ParseError)."""
    # pglast reports token offsets in characters, ends inclusive.
    out: list[str] = []
    pos = 0
    for token in parser.scan(query):
        if token.name == "SCONST" and query[token.start] == "'" and "\\" in query[
                token.start:token.end + 1]:
            # A backslash in a plain literal: with standard_conforming_strings off (a
            # session may SET it) the server reads it as an escape and the literal ends
            # elsewhere than here, so nothing after this point is known to be code.
            raise ParseError("backslash in a standard string", token.start)
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
