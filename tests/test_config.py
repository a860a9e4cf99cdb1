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
