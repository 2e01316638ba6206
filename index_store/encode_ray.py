"""The Ray engine: a Parquet catalog read by Ray Data and encoded on a Ray cluster.

    ray.data.read_parquet(files)                      read tasks, anywhere in the cluster
      .map_batches(ItemTowerActor, concurrency=n)     one ONNX Runtime session per actor
    -> shards of (ids, vectors, filterable values) streamed back to the build, in catalog order

The actors convert each row exactly as the local reader does (models.data.convert_catalog_rows)
and run the same item tower, so both engines give the same vectors (the ONNX graph is the same
per row; tests check them within 1e-6) and the same ids in the same order (`preserve_order`).
The tower's bytes travel with the actor's constructor: a worker node needs the package
installed, not the model store. Ray sets OMP_NUM_THREADS=1 in its workers; ONNX Runtime's threads
are set explicitly on each session instead (`actor_threads`).

Ray is an extra (`pip install 'twotower[ray]'`): only this module imports it, and nothing on the
serving path imports this module.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index_store.attributes import AttributeCollector
from index_store.encode import EncodedCatalog
from models.data import check_catalog_columns, columns_of, convert_catalog_rows
from models.errors import BuildRefused, DataError, TwoTowerError
from models.manifest import ITEM_TOWER, ModelManifest
from models.runtime import TowerRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine encodes.

    address None starts a one-node Ray inside the build process (and stops it after); otherwise
    `ray.init(address=...)` joins a running cluster ("auto", "127.0.0.1:6379", "ray://host:10001").
    """

    address: str | None = None
    actors: int | None = None  # actor pool size; None: one per CPU of the cluster
    actor_cpus: float = 0.5  # CPUs each actor reserves; the rest is left to the read tasks
    read_cpus: float = 0.5  # CPUs each read task reserves (a pool that takes every CPU deadlocks)
    actor_threads: int = 1  # ONNX Runtime intra-op threads per actor
    connect_timeout_s: float = 30.0


class ItemTowerActor:
    """One ONNX Runtime session of the item tower; called on pyarrow batches of the catalog."""

    def __init__(self, manifest: ModelManifest, tower: bytes, threads: int, filterable: list[str]) -> None:
        where = tempfile.mkdtemp(prefix="twotower-tower-")
        try:  # the runner verifies the bytes against the manifest's sha256 and loads them
            Path(where, ITEM_TOWER).write_bytes(tower)
            self.runner = TowerRunner(Path(where), manifest, "item", intra_threads=threads).load()
        finally:
            shutil.rmtree(where, ignore_errors=True)
        self.schema = manifest.features
        self.id_field = manifest.features.item.id_field
        self.filterable = filterable
        import ray

        self.node = ray.get_runtime_context().get_node_id()[:8]

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        paths = batch.column("path").to_pylist() if "path" in batch.column_names else ["catalog"]
        rows = list(convert_catalog_rows(batch.drop_columns(["path"]).to_pylist(), self.schema, paths[0]))
        vectors = self.runner.embed(rows)
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            item = rows[int(np.flatnonzero(bad)[0])][self.id_field]
            raise DataError(f"item {item!r}: the item tower returned NaN or infinity")
        out = {
            "id": np.array([r[self.id_field] for r in rows], dtype=str),
            "vector": vectors,
            "node": np.full(len(rows), self.node),
        }
        if self.filterable:
            out["attrs"] = np.array(
                [json.dumps({k: r.get(k) for k in self.filterable}) for r in rows], dtype=str
            )
        return out


def parquet_files(source: Path) -> list[Path]:
    """A Parquet file, or every *.parquet file under a directory (sorted: the catalog's order)."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*.parquet") if p.is_file())
        if not files:
            raise DataError(f"{source}: no .parquet files")
        return files
    if source.suffix != ".parquet" or not source.is_file():
        raise DataError(f"{source}: the ray engine reads Parquet catalogs (a .parquet file or a directory)")
    return [source]


def connect(options: RayOptions) -> Any:
    """`ray` after ray.init, or a clear TwoTowerError: not installed, or the cluster unreachable."""
    try:
        import ray
    except ImportError as exc:
        raise TwoTowerError(
            "the ray engine needs Ray: pip install 'twotower[ray]' (or use the local engine)"
        ) from exc
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if options.address:
        _probe(options.address, options.connect_timeout_s)
        kwargs["address"] = options.address
    else:
        kwargs.update(include_dashboard=False, num_cpus=os.cpu_count() or 1)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray retries an unreachable GCS for a minute by default; a wrong address should fail sooner.
    os.environ.setdefault("RAY_gcs_rpc_server_connect_timeout_s", str(int(options.connect_timeout_s)))
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(int(options.connect_timeout_s)))
    try:
        ray.init(**kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: ray's own choice per case
        where = options.address or "a local Ray instance"
        raise TwoTowerError(f"ray engine: cannot connect to {where}: {_first_line(exc)}") from exc
    return ray


def _probe(address: str, timeout_s: float) -> None:
    """Fail fast on a GCS address nobody listens on: ray.init waits on it without end (measured:
    still waiting after 10 minutes). Only for plain host:port ("auto" and ray:// go to ray.init)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=min(timeout_s, 10.0)).close()
    except OSError as exc:
        raise TwoTowerError(f"ray engine: cannot connect to the Ray cluster at {address}: {exc}") from exc


def encode_with_ray(
    runner: TowerRunner,
    source: Path,
    options: RayOptions,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    drop: Iterable[str] = (),
    append: Iterable[Mapping[str, Any]] = (),
) -> EncodedCatalog:
    """Encode the Parquet catalog at `source` on Ray with `runner`'s tower (verified by the build).

    `drop` (ids) and `append` (rows) fold the catalog's change log in as the local engine does:
    rows whose id is in `drop` are left out, `append` is encoded here (a handful of rows) and added
    at the end.
    """
    manifest = runner.manifest
    schema = manifest.features
    files = parquet_files(source)
    total, data_bytes, names = _parquet_meta(files, schema)
    columns = [c for c in columns_of(schema.item) if c in names]
    collector = AttributeCollector(schema.item)
    filterable = sorted({f.source for f in collector.specs})
    tower = (runner.model_dir / ITEM_TOWER).read_bytes()
    ray = connect(options)
    started = time.monotonic()
    try:
        from ray.data import DataContext

        DataContext.get_current().execution_options.preserve_order = True
        cpus = float(ray.cluster_resources().get("CPU", 1))
        actors = options.actors or max(1, int(cpus))
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        log.info(
            "ray engine: %d items in %d Parquet file(s) on %d node(s), %g CPUs, %d actors",
            total,
            len(files),
            nodes,
            cpus,
            actors,
        )
        context = DataContext.get_current()
        context.enable_progress_bars = False
        # A block goes to one actor, and a read task cuts its output into blocks of at most this
        # size: a few blocks per actor give every actor work, one file or many (a repartition op
        # would need a whole CPU of its own).
        context.target_max_block_size = int(
            min(context.target_max_block_size or 128 << 20, max(1 << 20, data_bytes // (4 * actors)))
        )
        ds = ray.data.read_parquet(
            [str(f) for f in files],
            columns=columns,
            include_paths=True,
            num_cpus=options.read_cpus,
        ).map_batches(
            ItemTowerActor,
            fn_constructor_kwargs={
                "manifest": manifest,
                "tower": tower,
                "threads": options.actor_threads,
                "filterable": filterable,
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            # Start with one actor and grow: the file listing and the reads need a CPU of their
            # own first (a full pool on a 2-CPU cluster leaves them none, and waits forever).
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            num_cpus=options.actor_cpus,
        )
        ids: list[str] = []
        vectors = np.empty((total, manifest.dim), dtype=np.float32)
        per_node: Counter[str] = Counter()
        dropped = set(drop)
        attr_rows: list[Mapping[str, Any]] = []
        done = 0
        for shard in ds.iter_batches(batch_format="numpy", batch_size=None):
            shard_ids = shard["id"].tolist()
            keep = np.array([i not in dropped for i in shard_ids], dtype=bool) if dropped else None
            vec = np.asarray(shard["vector"], dtype=np.float32)
            attrs = shard["attrs"].tolist() if "attrs" in shard else None
            if keep is not None:
                shard_ids = [i for i, k in zip(shard_ids, keep, strict=True) if k]
                vec = vec[keep]
                attrs = [a for a, k in zip(attrs, keep, strict=True) if k] if attrs is not None else None
            vectors[len(ids) : len(ids) + len(shard_ids)] = vec
            ids.extend(shard_ids)
            if attrs is not None:
                attr_rows.extend(json.loads(a) for a in attrs)
            per_node.update(Counter(shard["node"].tolist()))
            done += len(shard["id"])
            if progress is not None:
                progress(done)
    except TwoTowerError:
        raise
    except Exception as exc:  # a UDF's own error comes back wrapped in Ray's exception types
        raise _unwrap(exc) from exc
    finally:
        if not options.address:
            ray.shutdown()
    log.debug("ray engine: %s", ds.stats())
    if done != total:
        raise BuildRefused(f"ray engine: {done} of {total} catalog rows came back")
    elapsed = time.monotonic() - started
    log.info(
        "ray engine: encoded %d items in %.1fs (%.0f items/s); rows per node %s",
        done,
        elapsed,
        done / max(elapsed, 1e-9),
        dict(per_node),
    )
    vectors = vectors[: len(ids)]
    extra = list(append)
    if extra:
        vectors = np.concatenate([vectors, runner.embed(extra)])
        ids.extend(str(r[schema.item.id_field]) for r in extra)
    if filterable:
        rows: Iterable[Mapping[str, Any]] = [*attr_rows, *extra]
    else:
        rows = ({} for _ in range(len(ids)))
    for _ in collector.watch(rows):
        pass
    return EncodedCatalog(ids, np.ascontiguousarray(vectors), collector.finish(), "ray")


def _parquet_meta(files: list[Path], schema: Any) -> tuple[int, int, set[str]]:
    """Row count and uncompressed bytes of all files, and the columns every file has; a file
    without the id column (or a field without a default) is refused here, before any cluster work."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    total, size, names = 0, 0, set[str]()
    for n, path in enumerate(files):
        try:
            meta = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        have = set(meta.schema_arrow.names)
        check_catalog_columns(path, have, schema)
        names = have if n == 0 else names & have
        total += meta.metadata.num_rows
        size += sum(meta.metadata.row_group(i).total_byte_size for i in range(meta.metadata.num_row_groups))
    return total, size, names


def _unwrap(exc: BaseException) -> TwoTowerError:
    """The project's own error inside Ray's wrappers, else one line naming what Ray reported."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        cause = getattr(cur, "cause", None)  # RayTaskError: the exception the actor raised
        if isinstance(cause, TwoTowerError):
            return _plain(cause)
        if isinstance(cur, TwoTowerError) and not hasattr(cur, "cause"):
            return _plain(cur)
        cur = cause if isinstance(cause, BaseException) else (cur.__cause__ or cur.__context__)
    return BuildRefused(f"ray engine: encoding failed ({type(exc).__name__}: {_first_line(exc)})")


def _plain(exc: TwoTowerError) -> TwoTowerError:
    """The error with its own message: Ray's wrappers append a remote traceback to str()."""
    if isinstance(exc, DataError):
        return DataError(_first_line(exc))
    return BuildRefused(_first_line(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
