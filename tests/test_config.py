"""Settings: environment beats .env, secrets are masked everywhere, sane TLS defaults."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from microservices.shared.database import config
from microservices.shared.database.config import (
    admin_conninfo,
    load_settings,
    mask_dsn,
    service_conninfo,
    service_user_name,
)
from microservices.shared.database.core.errors import ConfigError
from microservices.shared.database.core.secrets_store import SecretStore
from microservices.shared.database.topology import default_topology

SECRET = "s3cr3t-P@ss/word"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("DATABASE_", "EDULINK_DB_", "SUPABASE_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    config._dotenv.cache_clear()


def test_every_seed_variable_is_read_and_env_beats_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "SUPABASE_URL=https://example.supabase.co\nSUPABASE_ANON_KEY=anon\n"
        "SUPABASE_SERVICE_ROLE_KEY=service\nDATABASE_HOST=db.example.com\nDATABASE_PORT=5432\n"
        "DATABASE_NAME=postgres\nDATABASE_USER=postgres\nDATABASE_PASSWORD=from-dotenv\n"
        "DATABASE_POOL_SIZE=10\nDATABASE_MAX_OVERFLOW=20\nDATABASE_POOL_TIMEOUT=30\n"
    )
    monkeypatch.setenv("DATABASE_POOL_SIZE", "3")
    s = load_settings()
    assert s.supabase_url == "https://example.supabase.co"
    assert s.database_pool_size == 3  # environment wins
    assert s.database_max_overflow == 20 and s.database_pool_timeout == 30
    assert s.database_password is not None
    assert s.database_password.get_secret_value() == "from-dotenv"
    params = admin_conninfo(s)
    assert params["host"] == "db.example.com" and params["sslmode"] == "require"


def test_secrets_never_appear_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:{SECRET}@db.example.com/postgres")
    monkeypatch.setenv("DATABASE_PASSWORD", SECRET)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SECRET)
    s = load_settings()
    assert SECRET not in repr(s) and SECRET not in str(s)


def test_mask_dsn_hides_passwords_in_every_form() -> None:
    assert SECRET not in mask_dsn(f"postgresql://u:{SECRET.replace('/', '%2F')}@h:5432/d")
    assert SECRET not in mask_dsn(f"host=h user=u password='{SECRET}'")
    assert SECRET not in mask_dsn({"host": "h", "password": SECRET})
    assert mask_dsn("postgresql://u:p@h:5432/d") == "postgresql://u:****@h:5432/d"
    assert "not-a-dsn" not in mask_dsn("not-a-dsn = = password=")


def test_invalid_settings_name_the_variable_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_POOL_SIZE", "lots")
    with pytest.raises(ConfigError, match="DATABASE_POOL_SIZE") as exc:
        load_settings()
    assert "lots" not in str(exc.value)


def test_sslmode_require_only_for_remote_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@127.0.0.1:5432/d")
    assert "sslmode" not in admin_conninfo(load_settings())
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db.example.com:5432/d")
    assert admin_conninfo(load_settings())["sslmode"] == "require"
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db.example.com:5432/d?sslmode=verify-full")
    assert admin_conninfo(load_settings())["sslmode"] == "verify-full"


def test_services_log_in_as_their_own_role(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres:admin-pw@db.example.com:5432/postgres")
    monkeypatch.setenv("EDULINK_DB_USER_PASSWORD", "user-pw")
    params = service_conninfo(default_topology().service("user"), load_settings())
    assert params["user"] == "user_service_role" and params["password"] == "user-pw"
    with pytest.raises(ConfigError, match="EDULINK_DB_AUTH_PASSWORD"):
        service_conninfo(default_topology().service("auth"), load_settings())


def test_per_service_url_for_a_service_on_another_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres:pw@127.0.0.1/postgres")
    monkeypatch.setenv("EDULINK_DB_INTERNSHIP_URL",
                       "postgresql://internship_service_role:x@other.example.com/edulink")
    params = service_conninfo(default_topology().service("internship"), load_settings())
    assert params["host"] == "other.example.com" and params["sslmode"] == "require"


def test_supavisor_tenant_suffix_is_kept() -> None:
    assert service_user_name("postgres.abcdefgh", "user_service_role") == \
        "user_service_role.abcdefgh"
    assert service_user_name("postgres", "user_service_role") == "user_service_role"


def test_embedded_not_running_is_a_clear_error() -> None:
    from microservices.shared.database.core.errors import DatabaseNotRunningError

    with pytest.raises(DatabaseNotRunningError, match="edulink-db up"):
        admin_conninfo(load_settings())


def test_secret_store_is_private_and_refuses_loose_permissions(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "home" / "secrets.json")
    value = store.get_or_create("k", lambda: "v1")
    assert value == "v1" and store.get_or_create("k", lambda: "v2") == "v1"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert "v1" not in repr(store)
    store.path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        store.get("k")


def test_home_is_found_from_a_subdirectory(tmp_path: Path) -> None:
    home = tmp_path / ".edulink-db"
    home.mkdir()
    (home / "state.json").write_text('{"port": 1}')
    sub = tmp_path / "services" / "user"
    sub.mkdir(parents=True)
    assert config.find_home(sub) == home


def test_patroni_urls_are_validated_and_their_credentials_masked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_PATRONI_URLS",
                       f"http://patroni:{SECRET.replace('@', '%40').replace('/', '%2F')}"
                       "@pg1:8008, https://[fd00::2]:8008/")
    s = load_settings()
    assert SECRET not in repr(s) and "%40" not in repr(s)
    assert "http://patroni:****@pg1:8008,https://[fd00::2]:8008" in repr(s)
    endpoints = config.parse_patroni_urls(s.database_patroni_urls.get_secret_value()
                                          if s.database_patroni_urls else "")
    assert [(e.url, e.username, e.password) for e in endpoints] == [
        ("http://pg1:8008", "patroni", SECRET), ("https://[fd00::2]:8008", None, None)]
    assert SECRET not in repr(endpoints)
    assert (s.database_patroni_refresh_interval, s.database_patroni_max_lag_bytes,
            s.database_patroni_timeout) == (5.0, 16 * 1024 * 1024, 1.0)


@pytest.mark.parametrize(("value", "why"), [
    ("pg1:8008", "the scheme must be http or https"),
    ("postgresql://pg1:5432", "the scheme must be http or https"),
    ("http://pg1", "no port"),
    ("http://pg1:80a8", "the port is not a number"),
    ("http://pg1:8008/cluster", "a path, query or fragment"),
    ("http://pg1:8008,,http://pg2:8008", "entry 2"),
    (f"http://u:{SECRET}@pg1:8008", "percent-encoded"),  # an unescaped / ends the host
])
def test_bad_patroni_urls_name_the_entry_without_echoing_it(
        monkeypatch: pytest.MonkeyPatch, value: str, why: str) -> None:
    monkeypatch.setenv("DATABASE_PATRONI_URLS", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert "DATABASE_PATRONI_URLS" in text and why in text and "http://HOST:PORT" in text
    assert value not in text and SECRET not in text


def test_patroni_lag_limit_and_intervals_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_PATRONI_MAX_LAG_BYTES", "off")
    assert load_settings().database_patroni_max_lag_bytes is None
    monkeypatch.setenv("DATABASE_PATRONI_URLS", "")
    assert load_settings().database_patroni_urls is None
    for key, value in (("MAX_LAG_BYTES", "-1"), ("REFRESH_INTERVAL", "0"), ("TIMEOUT", "-2")):
        monkeypatch.setenv(f"DATABASE_PATRONI_{key}", value)
        with pytest.raises(ConfigError, match=f"DATABASE_PATRONI_{key}"):
            load_settings()
        monkeypatch.delenv(f"DATABASE_PATRONI_{key}")
