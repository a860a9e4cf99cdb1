"""Which statements may leave state in a session, and how to remove it.

A pooled connection is shared by requests of different end users, so nothing a
checkout does to its *session* may reach the next checkout: session-level
settings (``SET``, ``set_config(..., false)``, including ``app.current_user_id``
and ``search_path``), session advisory locks, cursors ``WITH HOLD``, temporary
objects, ``LISTEN`` and SQL-level prepared statements.

Measured (benchmarks/connections.py, README "Behind a transaction pooler"): a
reset round trip on *every* return costs about a third of the pooled read rate,
so the connection manager resets only checkouts that are not provably clean.
:func:`statement_is_clean` is the proof for one statement.  It is deliberately
conservative -- an allowlist, not a denylist: a statement counts as clean only
if it is a plain query/DML/transaction-control statement that calls no function
outside :data:`SAFE_FUNCTIONS`.  Everything else (``SET``, ``DO``, ``CALL``,
``DECLARE``, ``LISTEN``, ``PREPARE``, DDL, ``SELECT ... INTO``, a call of any
other function such as ``set_config`` or ``pg_advisory_lock`` or an
application function, text it cannot lex with certainty) counts as dirty, and
the checkout is reset on return.  A false "dirty" only costs one round trip.

What the proof takes as given: code that runs *implicitly* (view definitions,
RLS policies, triggers, column defaults, operators) was written by the
service's owner role through reviewed migrations; the runtime role cannot
create persistent objects, and temporary objects (which could shadow a table
name) only come from statements classified dirty.
"""

from __future__ import annotations

import re

# Statements (by first keyword) that can be clean, subject to the checks below.
_CLEAN_HEADS = frozenset({
    "select", "insert", "update", "delete", "with", "values", "table", "merge",
    "begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release",
    "show", "fetch", "move", "close", "lock", "copy", "set",
})
# Keywords after which "(" opens a sub-expression, a list or a subquery, not a call.
_SYNTAX_BEFORE_PAREN = frozenset({
    "all", "and", "any", "array", "as", "between", "by", "case", "cast", "coalesce",
    "conflict", "cube", "distinct", "else", "except", "exists", "extract", "filter",
    "from", "greatest", "group", "grouping", "having", "if", "ilike", "in", "insert",
    "intersect",
    "is", "join", "lateral", "least", "like", "limit", "not", "nullif", "offset", "on",
    "or", "over", "overlay", "partition", "position", "returning", "rollup", "row",
    "select", "set", "sets", "similar", "some", "substring", "then", "trim", "union",
    "using", "values", "when", "where", "window", "with", "within",
})
# Type names that take a modifier: varchar(20), numeric(10, 2), timestamp(3) ...
_TYPES_WITH_MODIFIER = frozenset({
    "bit", "char", "character", "dec", "decimal", "float", "interval", "numeric",
    "time", "timestamp", "timestamptz", "varbit", "varchar", "varying",
})
# Built-in functions without session effects.  Unqualified names resolve to
# pg_catalog first (it is implicitly first on every search_path), and pg_temp is
# never searched for functions.  Deliberately absent: set_config, setseed,
# nextval/currval/lastval/setval, pg_advisory_*, pg_notify, dblink*, and every
# application-defined function.
SAFE_FUNCTIONS = frozenset({
    "abs", "age", "array_agg", "array_append", "array_cat", "array_length",
    "array_position", "array_positions", "array_remove", "array_to_json",
    "array_to_string", "avg", "bool_and", "bool_or", "btrim", "cardinality", "ceil",
    "ceiling", "char_length", "clock_timestamp", "concat", "concat_ws", "count",
    "cume_dist", "current_setting", "date_part", "date_trunc", "dense_rank", "every",
    "first_value", "floor", "format", "gen_random_uuid", "generate_series", "initcap",
    "jsonb_agg", "jsonb_array_elements", "jsonb_array_elements_text",
    "jsonb_array_length", "jsonb_build_array", "jsonb_build_object", "jsonb_each",
    "jsonb_each_text", "jsonb_object_agg", "jsonb_object_keys", "jsonb_set",
    "jsonb_typeof", "json_agg", "json_array_elements", "json_build_array",
    "json_build_object", "json_object_agg", "lag", "last_value", "lead", "left",
    "length", "lower", "lpad", "ltrim", "make_date", "make_interval",
    "make_timestamp", "max", "md5", "min", "mod", "now", "ntile", "octet_length",
    "percent_rank", "percentile_cont", "percentile_disc", "power", "random", "rank",
    "regexp_match", "regexp_matches", "regexp_replace", "regexp_split_to_array",
    "repeat", "replace", "reverse", "right", "round", "row_number", "row_to_json",
    "rpad", "rtrim", "sign", "split_part", "sqrt", "statement_timestamp",
    "string_agg", "string_to_array", "strpos", "substr", "sum", "to_char", "to_date",
    "to_json", "to_jsonb", "to_number", "to_timestamp", "transaction_timestamp",
    "trunc", "unnest", "upper",
})

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*)
  | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<dollar>\$(?P<tag>[A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$)
  | (?P<param>\$\d+)
  | (?P<qident>"(?:[^"]|"")*")
  | (?P<word>[A-Za-z_\x80-\uffff][\w$\x80-\uffff]*)
  | (?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)
  | (?P<punct>[(),;\[\]])
  | (?P<dot>\.)
  | (?P<op>::|(?:(?!--|/\*)[-+*/<>=~!@#%^&|`?:])+)  # '--' and '/*' end it: a comment
""", re.VERBOSE)

_CACHE: dict[str, bool] = {}
CACHE_SIZE = 5_000


def _tokens(text: str) -> list[tuple[str, str]] | None:
    """(kind, lowercased value) of the significant tokens; None if *text* cannot be
    lexed with certainty (the caller then treats the statement as dirty)."""
    out: list[tuple[str, str]] = []
    pos, end = 0, len(text)
    while pos < end:
        if text.startswith("/*", pos):
            depth, pos = 1, pos + 2  # PostgreSQL block comments nest
            while depth and pos < end:
                if text.startswith("/*", pos):
                    depth, pos = depth + 1, pos + 2
                elif text.startswith("*/", pos):
                    depth, pos = depth - 1, pos + 2
                else:
                    pos += 1
            if depth:
                return None
            continue
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        kind = m.lastgroup
        assert kind is not None
        if kind == "tag":
            kind = "dollar"
        if kind == "dollar":  # $tag$ ... $tag$: skip the body
            close = text.find(m.group(0), m.end())
            if close < 0:
                return None
            pos = close + len(m.group(0))
            out.append(("literal", ""))
            continue
        pos = m.end()
        if kind in ("space", "comment"):
            continue
        if kind in ("string", "estring", "number", "param"):
            out.append(("literal", ""))
        elif kind == "word":
            out.append(("word", m.group(0).lower()))
        else:
            out.append((kind, m.group(0)))
    return out


def _transaction_scoped_set(toks: list[tuple[str, str]]) -> bool:
    """SET LOCAL of a built-in setting, or SET TRANSACTION ...: nothing outlives it.

    A custom setting (a name with a dot, or any quoted name) never counts, whatever
    its prefix: ``SET local.x = 1`` and ``SET transaction.y = 1`` are *session*
    settings of parameters named ``local.x`` and ``transaction.y``.  ``SET LOCAL
    app.x`` would be clean, but telling it from those by the tokens is the kind of
    cleverness that broke before; a false "dirty" costs one reset round trip.
    """
    if len(toks) < 3 or toks[1] not in (("word", "local"), ("word", "transaction")):
        return False
    return toks[2][0] == "word" and (len(toks) < 4 or toks[3][0] != "dot")


def _statement_clean(toks: list[tuple[str, str]]) -> bool:
    kind, head = toks[0]
    if kind != "word" or head not in _CLEAN_HEADS:
        return False
    if head in ("commit", "rollback", "end", "abort") and len(toks) > 1 \
            and toks[1][1] == "prepared":
        return False  # two-phase commit of a prepared transaction
    if head == "set" and not _transaction_scoped_set(toks):
        return False  # a session-level SET; SET LOCAL / SET TRANSACTION end with it
    prev2: tuple[str, str] = ("", "")
    prev: tuple[str, str] = ("", "")
    # Where we are in "INSERT INTO schema.table (": "name" expects a name part,
    # "dot" expects a dot (or the column list), "" is anywhere else.
    into = ""
    for tok in toks:
        kind, value = tok
        if kind == "word" and value == "into" and prev[1] not in ("insert", "merge"):
            return False  # SELECT ... INTO creates a table
        column_list = into == "dot" and tok == ("punct", "(")
        if kind == "word" and value == "into":
            into = "name"
        elif into == "name" and kind in ("word", "qident"):
            into = "dot"
        elif into == "dot" and kind == "dot":
            into = "name"
        else:
            into = ""
        if kind == "punct" and value == "(" and prev[0] in ("word", "qident") \
                and not column_list:
            name = prev[1]
            if prev[0] == "qident" or prev2[0] == "dot":
                return False  # quoted or schema-qualified call: anything
            elif name in _SYNTAX_BEFORE_PAREN or name in _TYPES_WITH_MODIFIER \
                    or name in SAFE_FUNCTIONS:
                pass
            elif prev2 == ("word", "as"):
                pass  # a table alias with column names: AS t(a, b)
            else:
                return False
        prev2, prev = prev, tok
    return True


def _classify(text: str) -> bool:
    toks = _tokens(text)
    if toks is None:
        return False
    statement: list[tuple[str, str]] = []
    seen = False
    for tok in [*toks, ("punct", ";")]:
        if tok == ("punct", ";"):
            if statement:
                if not _statement_clean(statement):
                    return False
                seen = True
            statement = []
        else:
            statement.append(tok)
    return seen or not toks


def statement_is_clean(text: str) -> bool:
    """True only if running *text* provably leaves no state in the session.

    Cached per text (bounded), so a repeated statement costs one dict lookup.
    """
    found = _CACHE.get(text)
    if found is None:
        found = _classify(text)
        if len(_CACHE) >= CACHE_SIZE:
            _CACHE.clear()
        _CACHE[text] = found
    return found


# One round trip (simple protocol; one implicit transaction) that removes every
# kind of session state a runtime role can create, except psycopg's own prepared
# statements (protocol-level, from_sql = false), which psycopg keeps track of
# and which must survive.  DISCARD ALL would drop those behind psycopg's back.
# It starts by leaving read-only mode, which a checkout may have made the
# session default: the implicit transaction would otherwise be read-only and
# DISCARD TEMP could not drop the temporary tables.
RESET_SESSION = (
    "SET TRANSACTION READ WRITE; RESET ALL; RESET ROLE; CLOSE ALL; UNLISTEN *; "
    "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; "
    "DO $reset$ DECLARE s record; BEGIN "
    "FOR s IN SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql LOOP "
    "EXECUTE pg_catalog.format('DEALLOCATE %I', s.name); END LOOP; END $reset$"
)
