"""Which engine encodes a build's catalog: in this process (local), or on Ray (`--engine ray`).

The local engine streams the catalog (data files or the feature store, with the change log folded
in) through the item tower here. The Ray engine reads the items table's Parquet file(s) with Ray
Data on a cluster (index_store.encode_ray); the change log is folded in the same way, so both
engines give the same ids in the same order. Ray is imported only when the engine is chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app.settings import Settings
from index_store.encode import CatalogEncoder, EncodedCatalog
from models.data import HasTowers
from models.errors import DataError, TwoTowerError
from models.runtime import TowerRunner

LOCAL = "local"
RAY = "ray"
ENGINES = (LOCAL, RAY)


def items_source(settings: Settings, schema: HasTowers) -> Path:
    """The Parquet items table the Ray engine reads: `<data_dir>/<items>.parquet` (a file, or a
    directory of part files), or a directory `<data_dir>/<items>/` of them."""
    if settings.redis_url:
        raise TwoTowerError(
            "the ray engine reads the Parquet items table of TWOTOWER_DATA_DIR, not the catalog in "
            "Redis: unset TWOTOWER_REDIS_URL for the build, or use the local engine"
        )
    if settings.data_dir is None:
        raise TwoTowerError("no catalog: set TWOTOWER_DATA_DIR")
    data_dir, stem = Path(settings.data_dir), schema.layout.items
    for candidate in (data_dir / f"{stem}.parquet", data_dir / stem):
        if candidate.exists():
            return candidate
    raise DataError(f"{data_dir / stem}.parquet: not found (the ray engine reads Parquet)")


def ray_encoder(settings: Settings, schema: HasTowers, address: str | None) -> CatalogEncoder:
    """The Ray engine for one build, the change log folded in as `changed_catalog` does."""
    from app.state.changes import CHANGES_FILE, FileChangeLog, fold
    from index_store.encode_ray import RayOptions, encode_with_ray

    source = items_source(settings, schema)
    changes = FileChangeLog(Path(settings.index_store) / CHANGES_FILE).read_since(0)
    id_field = schema.item.id_field
    options = RayOptions(address=address or None, actor_threads=settings.index.ray_actor_threads)

    def encode(runner: TowerRunner, progress: Callable[[int], None] | None) -> EncodedCatalog:
        return encode_with_ray(
            runner,
            source,
            options,
            settings.index.batch_size,
            progress,
            drop={str(c["item_id"]) for c in changes},
            append=list(fold([], changes, id_field)),  # the upserts, newest per id, in log order
        )

    return encode
