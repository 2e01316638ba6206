"""Which engine encodes a build's catalog: in this process (local), or on Ray (`--engine ray`).

The local engine streams the catalog (data files or the feature store, with the change log folded
in) through the item tower here. The Ray engine encodes on a cluster (index_store.encode_ray):
- a Parquet items table (`<items>.parquet`, a file or a directory of part files, or `<items>/`)
  is read by Ray Data's read tasks on the cluster, the change log folded in the same way;
- any other catalog (the feature store in Redis, a CSV or JSON-lines items table) is read here by
  the local engine's own reader, change log folded in, and streamed to the cluster to encode.
Either way both engines give the same ids in the same order. Ray is imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from app.settings import Settings
from index_store.encode import CatalogEncoder, EncodedCatalog
from models.data import HasTowers
from models.errors import TwoTowerError
from models.runtime import TowerRunner

LOCAL = "local"
RAY = "ray"
ENGINES = (LOCAL, RAY)


def parquet_source(settings: Settings, schema: HasTowers) -> Path | None:
    """The Parquet items table Ray Data reads itself: `<data_dir>/<items>.parquet` (a file, or a
    directory of part files), or a directory `<data_dir>/<items>/` of them. None when the catalog
    is elsewhere: in Redis (`TWOTOWER_REDIS_URL`, what the local engine reads then too), or a CSV
    or JSON-lines items table."""
    if settings.redis_url:
        return None
    if settings.data_dir is None:
        raise TwoTowerError("no catalog: set TWOTOWER_DATA_DIR or TWOTOWER_REDIS_URL")
    data_dir, stem = Path(settings.data_dir), schema.layout.items
    for candidate in (data_dir / f"{stem}.parquet", data_dir / stem):
        if candidate.exists():
            return candidate
    return None


def ray_encoder(
    settings: Settings, schema: HasTowers, address: str | None, rows: Iterable[Mapping[str, Any]]
) -> CatalogEncoder:
    """The Ray engine for one build. `rows` is the catalog as the local engine would encode it
    (`changed_catalog`): streamed to the cluster when Ray Data cannot read the catalog itself."""
    from app.state.changes import CHANGES_FILE, FileChangeLog, fold
    from index_store.encode_ray import RayOptions, encode_rows_with_ray, encode_with_ray

    options = RayOptions(address=address or None, actor_threads=settings.index.ray_actor_threads)
    batch_size = settings.index.batch_size
    source = parquet_source(settings, schema)
    if source is None:
        where = "the feature store (Redis)" if settings.redis_url else f"{settings.data_dir} (read here)"

        def stream(runner: TowerRunner, progress: Callable[[int], None] | None) -> EncodedCatalog:
            return encode_rows_with_ray(runner, rows, options, batch_size, progress, where)

        return stream

    # Without Redis the change log is the file beside the index store (as in `changed_catalog`).
    changes = FileChangeLog(Path(settings.index_store) / CHANGES_FILE).read_since(0)
    id_field = schema.item.id_field
    parquet: Path = source

    def encode(runner: TowerRunner, progress: Callable[[int], None] | None) -> EncodedCatalog:
        return encode_with_ray(
            runner,
            parquet,
            options,
            batch_size,
            progress,
            drop={str(c["item_id"]) for c in changes},
            append=list(fold([], changes, id_field)),  # the upserts, newest per id, in log order
        )

    return encode
