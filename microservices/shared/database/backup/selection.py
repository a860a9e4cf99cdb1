"""Which schemas a backup dumps, and where a restore given --target-db goes."""

from __future__ import annotations

from typing import Any

from psycopg.conninfo import conninfo_to_dict

from ..config import Settings, admin_conninfo, apply_tls
from ..connections.location import META_SCHEMA
from ..core.errors import ConfigError
from ..core.platform import is_platform_schema


def select_schemas(settings: Settings, present: list[str], schemas: list[str] | None,
                   exclude: list[str], include: list[str]) -> tuple[list[str], list[str]]:
    """(schemas to dump, notes for the manifest).

    *schemas* None is a full backup: the topology's schemas that are present and the
    project's metadata schema, then *include* (any schema, a platform one too). A
    platform schema never gets in by default: it is the platform's to back up, and its
    dump does not restore outside the platform. *exclude*: schemas this set dumps
    from where they moved (their home copies are empty). A schema backup whose every
    schema moved keeps the registry (edulink_db_meta) in its home part."""
    if schemas is None:
        wanted = [s for s in settings.topology().schemas if s in present]
        if META_SCHEMA in present:
            wanted.append(META_SCHEMA)
        wanted += [s for s in include if s not in wanted]
    else:
        wanted = list(schemas)
    chosen = [s for s in wanted if s not in exclude]
    if not chosen and exclude and META_SCHEMA in present:
        chosen = [META_SCHEMA]
    if not chosen:
        raise ConfigError("Nothing to back up: the database has none of the topology's "
                          "schemas. Provision it ('edulink-db provision') or name schemas "
                          "with 'backup schema'.")
    notes = [f"{s}: a platform schema, included because it was asked for"
             for s in chosen if is_platform_schema(s)]
    return chosen, notes


def target_params(target_db: str | None, settings: Settings) -> dict[str, Any]:
    """Connection parameters of *target_db* (a connection string, with the settings'
    TLS applied), or the admin's when it is empty; ConfigError when it does not parse."""
    if not target_db:
        return admin_conninfo(settings)
    try:
        params = dict(conninfo_to_dict(target_db))
    except Exception:
        raise ConfigError("--target-db is not a valid connection string.") from None
    return apply_tls(params, settings)
