"""Topology validation: every bad name or reference is rejected before any SQL runs."""

from __future__ import annotations

import pytest

from microservices.shared.database.core.errors import TopologyError, UnknownServiceError
from microservices.shared.database.core.identifiers import identifier_problem
from microservices.shared.database.topology import default_topology, parse_topology


def test_default_topology_matches_the_seed() -> None:
    t = default_topology()
    assert t.service_names() == [
        "auth", "user", "institution", "notification", "application", "internship"]
    reads = {s.name: set(s.reads) for s in t.services}
    assert reads == {
        "auth": set(),
        "user": {"auth", "institution"},
        "institution": set(),
        "notification": {"auth", "user", "institution", "application", "internship"},
        "application": {"auth", "user", "institution", "internship"},
        "internship": {"institution", "user"},
    }
    user = t.service("user")
    assert (user.schema, user.runtime_role, user.owner_role) == (
        "user_schema", "user_service_role", "user_service_owner")
    assert "contenttypes" in t.service("auth").django_apps


@pytest.mark.parametrize("alias", ["user", "user_service", "user_service_role"])
def test_service_lookup_accepts_the_seed_forms(alias: str) -> None:
    assert default_topology().service(alias).name == "user"


def test_unknown_service_lists_the_known_ones() -> None:
    with pytest.raises(UnknownServiceError, match="auth, user, institution"):
        default_topology().service("billing")


BAD_NAMES = [
    ('x"; DROP TABLE y; --', "lower-case letters"),
    ("has space", "lower-case letters"),
    ("semi;colon", "lower-case letters"),
    ("quote'd", "lower-case letters"),
    ("UpperCase", "lower-case letters"),
    ("9starts_with_digit", "lower-case letters"),
    ("a" * 64, "64 bytes"),
    ("pg_mine", "pg_"),
    ("public", "reserved"),
    ("", "empty"),
]


@pytest.mark.parametrize(("name", "why"), BAD_NAMES, ids=[n[:20] or "empty" for n, _ in BAD_NAMES])
def test_unsafe_identifiers_are_rejected(name: str, why: str) -> None:
    problem = identifier_problem(name)
    assert problem is not None and why in problem
    for key in ("schema", "runtime_role", "owner_role"):
        text = f'[services.svc]\n{key} = "{name.replace(chr(34), chr(92) + chr(34))}"\n'
        with pytest.raises(TopologyError, match=key):
            parse_topology(text)


def test_63_bytes_is_the_limit() -> None:
    assert identifier_problem("a" * 63) is None
    # Multi-byte characters count in bytes, and are not allowed anyway.
    assert identifier_problem("é" * 32) is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[services.a]\nreads = ["b"]\n', "'b' is not a service"),
        ('[services.a]\nreads = ["a"]\n', "own schema"),
        ('[services.a]\n[services.b]\nschema = "a_schema"\n', "schema 'a_schema' is used by both"),
        ('[services.a]\n[services.b]\nruntime_role = "a_service_role"\n', "role 'a_service_role'"),
        ('[services.a]\nowner_role = "a_service_role"\n', "role 'a_service_role'"),
        ('[shared]\nschema = "a_schema"\n[services.a]\n', "schema 'a_schema'"),
        ('[services.a]\ndjango_apps = ["x"]\n[services.b]\ndjango_apps = ["x"]\n',
         "Django app 'x'"),
        ('[services.a]\nreeds = ["b"]\n', "unknown key(s) 'reeds'"),
        ('[servces.a]\n', "unknown key(s) 'servces'"),
        ("", "at least one service"),
        ("[services.a\n", "not valid TOML"),
        ('[services.a]\nreads = "b"\n', "list of strings"),
        ('[services.a]\nreads = ["*", "b"]\n[services.b]\n', "'*' already means"),
        ('[services."bad name"]\n', "service name"),
    ],
)
def test_invalid_topologies_are_explained(text: str, message: str) -> None:
    with pytest.raises(TopologyError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*")):
        parse_topology(text)


def test_star_means_every_other_service_including_new_ones() -> None:
    t = parse_topology('[services.a]\n[services.b]\nreads = ["*"]\n[services.c]\n')
    assert t.service("b").reads == ("a", "c")
    assert [s.name for s in t.readers_of(t.service("c"))] == ["b"]


def test_seventh_service_is_just_another_table() -> None:
    from microservices.shared.database.topology import default_topology_text

    t = parse_topology(default_topology_text() + '\n[services.analytics]\nreads = ["user"]\n')
    assert len(t.services) == 7
    assert t.service("analytics").runtime_role == "analytics_service_role"
    # notification reads "*": the new service is covered without editing it.
    assert "analytics" in t.service("notification").reads


def test_role_settings_defaults_and_overrides() -> None:
    t = parse_topology('[defaults]\nstatement_timeout = "30s"\n[services.a]\n'
                       '[services.b]\nstatement_timeout = "5min"\nlock_timeout = 2000\n')
    assert dict(t.service("a").role_settings) == {"statement_timeout": "30s"}
    assert dict(t.service("b").role_settings) == {"statement_timeout": "5min",
                                                   "lock_timeout": "2000"}
    assert dict(default_topology().service("user").role_settings) == {
        "statement_timeout": "30s", "idle_in_transaction_session_timeout": "60s"}


@pytest.mark.parametrize(("text", "message"), [
    ('[services.a]\nstatement_timeout = "30 s"\n', "must be a duration"),
    ('[services.a]\nstatement_timeout = "1s; DROP ROLE x"\n', "must be a duration"),
    ('[services.a]\nstatement_timeout = true\n', "must be a duration"),
    ('[defaults]\nwork_mem = "1GB"\n[services.a]\n', "unknown key(s) 'work_mem'"),
])
def test_bad_role_settings_are_rejected(text: str, message: str) -> None:
    with pytest.raises(TopologyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_topology(text)


# -- column-level exposure (issue 12) ------------------------------------------------

def test_default_topology_exposes_what_the_helpers_read_and_no_secret() -> None:
    from microservices.shared.database.topology import looks_secret

    t = default_topology()
    assert t.exposed_columns("auth") == {
        "authentication_user": ("id", "email", "is_active", "is_staff", "last_login")}
    assert "password_hash" not in t.exposed_columns("auth")["authentication_user"]
    assert set(t.exposed_columns("institution")) == {
        "institutions_institution", "institutions_program"}
    assert t.exposed_columns("notification") == {}
    for svc in t.services:
        for columns in t.exposed_columns(svc).values():
            assert not any(looks_secret(c) for c in columns)


@pytest.mark.parametrize("column", [
    "password_hash", "passwd", "token_hash", "api_key", "apikey", "client_secret", "otp_seed",
    "salt", "pin", "private_key", "credentials", "reset_token", "accesstoken", "passwordhash"])
def test_secret_looking_columns_need_the_marker(column: str) -> None:
    text = f'[services.auth.exposes]\nauthentication_user = ["id", "{column}"]\n'
    with pytest.raises(TopologyError) as info:
        parse_topology(text)
    msg = str(info.value)
    assert "'auth'" in msg and f"authentication_user.{column}" in msg
    assert f'"{column}!secret-ok"' in msg
    marked = parse_topology(text.replace(f'"{column}"', f'"{column}!secret-ok"'))
    assert marked.exposed_columns("auth") == {"authentication_user": ("id", column)}


@pytest.mark.parametrize("column", ["shipping_address", "keyboard_layout", "hashtag_count",
                                    "spinner", "email", "id", "display_name"])
def test_ordinary_columns_need_no_marker(column: str) -> None:
    t = parse_topology(f'[services.auth.exposes]\nt = ["{column}"]\n')
    assert t.exposed_columns("auth") == {"t": (column,)}


@pytest.mark.parametrize(("body", "why"), [
    ('t = ["id", "x; DROP TABLE y"]', "lower-case letters"),
    ('"Bad Table" = ["id"]', "table name"),
    ('t = ["Id"]', "lower-case letters"),
    ('t = ["*"]', "'*' is not allowed"),
    ('t = []', "exposes nothing"),
    ('t = ["id", "id"]', "listed twice"),
    ('t = "id"', "list of strings"),
    ('t = ["!secret-ok"]', "must not be empty"),
])
def test_bad_exposes_are_rejected(body: str, why: str) -> None:
    with pytest.raises(TopologyError, match=why):
        parse_topology(f"[services.auth.exposes]\n{body}\n")


def test_exposes_must_be_a_table() -> None:
    with pytest.raises(TopologyError, match="must be a table"):
        parse_topology('[services.auth]\nexposes = ["id"]\n')


SUPABASE_NAMES = [
    ("schema", "auth"), ("schema", "storage"), ("schema", "realtime"), ("schema", "extensions"),
    ("schema", "graphql_public"), ("schema", "vault"), ("schema", "net"),
    ("schema", "supabase_functions"), ("schema", "supabase_anything"), ("schema", "pgbouncer"),
    ("runtime_role", "authenticator"), ("runtime_role", "anon"),
    ("owner_role", "authenticated"), ("migrator_role", "service_role"),
    ("owner_role", "supabase_admin"), ("runtime_role", "supabase_etl_admin"),
    ("runtime_role", "supabase_new_thing"), ("runtime_role", "pgsodium_keymaker"),
    ("runtime_role", "dashboard_user"),
]


@pytest.mark.parametrize(("key", "name"), SUPABASE_NAMES, ids=[n for _, n in SUPABASE_NAMES])
def test_names_supabase_reserves_are_refused_before_any_sql(key: str, name: str) -> None:
    # A plain PostgreSQL would accept these; Supabase refuses them at provisioning
    # (supautils' reserved roles, its platform schemas), so the topology does, everywhere.
    with pytest.raises(TopologyError) as info:
        parse_topology(f'[services.svc]\n{key} = "{name}"\n')
    message = str(info.value)
    assert repr(name) in message and "choose a name of your own" in message
    assert "\n" not in message


def _load_seconds(columns: int) -> float:
    """Seconds to parse the default topology with one exposed table of *columns* columns
    (best of two, so a scheduler hiccup does not decide the ratio)."""
    import time

    from microservices.shared.database.topology import default_topology_text

    listed = ", ".join(f'"c{i}"' for i in range(columns))
    text = default_topology_text().replace(
        "[services.auth.exposes]\n", f"[services.auth.exposes]\nbig = [{listed}]\n", 1)
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        topology = parse_topology(text)
        best = min(best, time.perf_counter() - started)
    assert len(topology.exposed_columns("auth")["big"]) == columns
    return best


def test_loading_is_linear_in_the_number_of_exposed_columns() -> None:
    """Ten times the columns may cost about ten times the time, not a hundred (the
    duplicate check was a list scan: 20,000 columns took 3 s, 200,000 minutes)."""
    small, large = _load_seconds(20_000), _load_seconds(200_000)
    assert large < 30 * small, f"20k columns: {small:.3f}s, 200k: {large:.3f}s"
