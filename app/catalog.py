"""The data files and the feature store as catalog sources: users with their history, items.

Readers of the data tables (Parquet, CSV or JSON lines, through models/data.py), the choice of
which model version's schema they read with, and the seeded user sample a build checks its recall on.

Which names the data files use (tables, id columns, interactions columns, the history keys) comes
from a model version's manifest (the schema it was trained or imported with):
- a build reads the catalog, and its recall sample of users, with ITS version's schema;
- the in-process store and `twotower load` read with the schema of the served versions
  (`data_schema`); where they disagree on the files, the default alias's wins, with a log line.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from app.settings import Settings
from models.data import HasTowers, catalog_rows, has_table, iter_jsonl, user_rows
from models.errors import TwoTowerError
from models.features import FeatureSchema
from models.layout import DataLayout
from models.manifest import list_versions, read_manifest

log = logging.getLogger(__name__)
DEFAULT_ALIAS = "default"  # app.service.DEFAULT_ALIAS (not imported: app.service imports the stores)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Stream a JSON-lines file (errors name file and line)."""
    return (row for _, row in iter_jsonl(path))


def version_schema(settings: Settings, version: str) -> FeatureSchema:
    """The resolved schema of one model version (its manifest): the names its data files use."""
    return read_manifest(Path(settings.model_store) / version).features


def data_schema(settings: Settings, aliases: Mapping[str, str] | None = None) -> FeatureSchema | None:
    """The schema a feature store reads the data files with: that of the served versions (the
    configured list, else every version in the model store). None when there is no readable
    version: then the default layout (users/items/interactions, user_id/item_id, history).

    Versions that agree on the tables and columns share one reading, with each user's history
    under every history key they read. Where they disagree, the default alias's version is used
    (the newest version before any alias exists) and a warning names the others: their users are
    served cold or with the wrong features until the data is reloaded for them.
    """
    store = Path(settings.model_store)
    schemas: dict[str, FeatureSchema] = {}
    for tag in settings.model_versions or list_versions(store):
        try:
            schemas[tag] = read_manifest(store / tag).features
        except (TwoTowerError, OSError):
            continue  # the service refuses (and logs) an unreadable version itself
    if not schemas:
        return None
    default = (aliases or {}).get(DEFAULT_ALIAS)
    tag = default if default in schemas else max(schemas)
    chosen = schemas[tag]

    def files(layout: DataLayout) -> DataLayout:
        return replace(layout, history=())

    agree = [t for t, s in sorted(schemas.items()) if files(s.layout) == files(chosen.layout)]
    differ = sorted(set(schemas) - set(agree))
    if differ:
        log.warning(
            "model versions disagree on the data files: reading them as version %s does (%s); "
            "%s read them otherwise and are served from these rows; load their data apart",
            tag,
            describe(chosen.layout),
            ", ".join(f"{t} ({describe(schemas[t].layout)})" for t in differ),
        )
    history = tuple(dict.fromkeys(k for t in [tag, *agree] for k in schemas[t].layout.history))
    return replace(chosen, layout=replace(chosen.layout, history=history))


def describe(layout: DataLayout) -> str:
    """One line naming the tables and columns a layout reads (for logs and `twotower load`)."""
    return (
        f"users {layout.users!r} by {layout.user_id!r}, items {layout.items!r} by {layout.item_id!r}, "
        f"interactions {layout.interactions!r} ({layout.inter_user!r}, {layout.inter_item!r}, "
        f"{layout.timestamp!r}), history under {', '.join(repr(h) for h in layout.history) or 'no key'}"
    )


def read_users(
    data_dir: Path, schema: HasTowers | None = None, keep_others: bool = True
) -> dict[str, dict[str, Any]]:
    """The users table and the interactions (Parquet, CSV or JSON lines; see models/data.py) ->
    {user_id: features with the schema's history keys in time order}. The schema's user columns
    are checked and converted; `keep_others` keeps the columns it does not read too (a store
    serves every version, and their schemas may read different columns)."""
    return user_rows(data_dir, schema=schema, keep_others=keep_others)


def sample_users(settings: Settings, limit: int, schema: HasTowers | None = None) -> list[dict[str, Any]]:
    """A seeded sample of real users (features and history) for the build's recall check, each
    with its id under the schema's user id column (what the version's user tower reads)."""
    layout = schema.layout if schema is not None else DataLayout()
    id_key = layout.user_id
    rows: list[dict[str, Any]] = []
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=max(settings.redis_timeout_s, 5.0))
        try:
            for key in client.scan_iter(f"{settings.redis_prefix}user:*", count=1000):
                raw = client.get(key)
                if raw:
                    # The key after the prefix is the id: an id may itself hold ':'.
                    uid = key.decode()[len(f"{settings.redis_prefix}user:") :]
                    rows.append({**json.loads(raw), id_key: uid})
                if len(rows) >= 20 * limit:
                    break
        finally:
            client.close()
    elif settings.data_dir is not None and has_table(Path(settings.data_dir), layout.users):
        users = read_users(Path(settings.data_dir), schema, keep_others=False)
        rows = [{**f, id_key: uid} for uid, f in users.items()]
    rows.sort(key=lambda r: str(r[id_key]))
    random.Random(0).shuffle(rows)
    return rows[:limit]


def iter_catalog_file(
    data_dir: Path, schema: HasTowers | None = None, keep_others: bool = True
) -> Iterator[dict[str, Any]]:
    """Stream the items table (Parquet, CSV or JSON lines), ids as strings, item columns checked
    and converted by the schema's item fields (see read_users for `keep_others`)."""
    return catalog_rows(data_dir, schema=schema, keep_others=keep_others)
