"""The Ray engine: a catalog encoded on a Ray cluster with Ray Data.

    a Parquet catalog:  ray.data.read_parquet(files)        read tasks on any node, 0.25 CPU each
    any other catalog:  rows read here -> the object store   the feature store, CSV, JSON lines
      .map_batches(ItemTowerActor, ActorPoolStrategy(size=n))  an ONNX Runtime session per actor
    -> shards of (ids, vectors, filterable values, node) streamed back to the build, in catalog order

The actors (index_store.ray_actor) convert each Parquet batch a column at a time exactly as the
local reader converts its rows (models.catalog_batches.arrow_catalog_batch) and run the local engine's
per-batch transform and the same item tower on it; rows the driver streams were read by the local
engine's own reader and go through the tower as they are. So both engines give the same vectors
(the ONNX graph is the same per row; tests check them within 1e-6) and the same ids in the same
order (`preserve_order`). The shards come back as Arrow tables (ids, a float32 vector buffer, the
filterable columns), assembled here without a Python object per vector. The tower's bytes travel
with the actor's constructor: a worker node needs the package installed, not the model store. Ray
sets OMP_NUM_THREADS=1 in its workers; ONNX Runtime's threads are set explicitly on each session
instead (`actor_threads`).

Ray is an extra (`pip install 'twotower[ray]'`): only this module (and the actor, on the workers)
imports it, and nothing on the serving path imports either.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index_store.attributes import AttributeCollector
from index_store.encode import EncodedCatalog
from index_store.ray_actor import ATTR, ItemTowerActor, row_blocks
from models.data import check_catalog_columns
from models.errors import BuildRefused, DataError, TwoTowerError
from models.manifest import ITEM_TOWER
from models.readers import columns_of
from models.runtime import TowerRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine encodes.

    address None starts a one-node Ray inside the build process (and stops it after); otherwise
    `ray.init(address=...)` joins a running cluster ("auto", "127.0.0.1:6379", "ray://host:10001").

    CPUs: an actor reserves 0.75 CPU and a read task 0.25, so a node of one CPU holds exactly one
    actor with one read task beside it. The pool is fixed at one actor per CPU of every node
    (`pool_size`): two actors never fit on a 1-CPU node, so every node gets its actor, and the
    reads always find room. (Actors of 0.5 let two share one node while another idles, and a pool
    that grows from one actor may finish a catalog before it grows; actors of a whole CPU leave the
    reads none and the pool waits for ever: all three seen on the two-node test cluster.)
    """

    address: str | None = None
    actors: int | None = None  # actor pool size; None: one per CPU on every node (pool_size)
    actor_cpus: float = 0.75  # CPUs each actor reserves
    read_cpus: float = 0.25  # CPUs each Parquet read task reserves
    actor_threads: int = 1  # ONNX Runtime intra-op threads per actor
    connect_timeout_s: float = 30.0
    pool_timeout_s: float = 300.0  # for every actor of the pool to start (then a clear error)


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
    if _stopping is not None:  # the last encoding's one-node Ray, still going down
        _stopping.join()
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
    started = time.monotonic()
    try:
        ray.init(**kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: ray's own choice per case
        where = options.address or "a local Ray instance"
        raise TwoTowerError(f"ray engine: cannot connect to {where}: {_first_line(exc)}") from exc
    # Part of the engine's fixed cost (a one-node Ray started here: its processes start now).
    what = "connected" if options.address else "started Ray"
    log.info("ray engine: %s in %.1fs", what, time.monotonic() - started)
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


def pool_size(node_cpus: Iterable[float], options: RayOptions) -> int:
    """Actors for a cluster whose live nodes have these CPUs: one per CPU of each node, as many as
    fit beside one read task (a 1-CPU node: 1; 2 CPUs: 2; 16: 16; half a CPU: none)."""
    if options.actors:
        return options.actors
    cpus = list(node_cpus)
    fit = [min(math.floor(c), math.floor((c - options.read_cpus) / options.actor_cpus + 1e-9)) for c in cpus]
    actors = sum(max(0, k) for k in fit)
    if actors < 1:
        raise BuildRefused(
            f"ray engine: no node has room for an actor ({options.actor_cpus} CPU) beside a read "
            f"task ({options.read_cpus} CPU); nodes' CPUs: {sorted(cpus)}"
        )
    return actors


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
    with _session(options) as ray:
        context, actors = _prepare(ray, options, f"{total} items in {len(files)} Parquet file(s)")
        # A block goes to one actor, and a read task cuts its output into blocks of at most this
        # size: a few blocks per actor give every actor work, one file or many (a repartition op
        # would need a whole CPU of its own).
        context.target_max_block_size = int(
            min(context.target_max_block_size or 128 << 20, max(1 << 20, data_bytes // (4 * actors)))
        )
        # One file: the actors are told its path, and Ray Data adds no path column (a copy of the
        # path in every row, through the object store) for the error location of a bad value.
        one = str(files[0]) if len(files) == 1 else None
        ds = ray.data.read_parquet(
            [str(f) for f in files],
            columns=columns,
            include_paths=one is None,
            num_cpus=options.read_cpus,
        )
        ds = _encoded(ray, ds, runner, options, actors, batch_size, filterable, one)
        shards = _collect(ds, total, manifest.dim, progress, set(drop), collector)
    ids, vectors = shards.ids, shards.vectors
    extra = list(append)
    if extra:
        vectors = np.concatenate([vectors, runner.embed(extra)])
        ids.extend(str(r[schema.item.id_field]) for r in extra)
        collector.add_rows(extra)
    return EncodedCatalog(ids, np.ascontiguousarray(vectors), collector.finish(), "ray")


def encode_rows_with_ray(
    runner: TowerRunner,
    rows: Iterable[Mapping[str, Any]],
    options: RayOptions,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    source: str = "the catalog",
) -> EncodedCatalog:
    """Encode catalog rows read here (the feature store, CSV or JSON lines, the change log already
    folded in) on Ray: the rows go to the object store in blocks, the actors encode them.

    Why the driver reads and the cluster only encodes: the rows are what the local engine encodes,
    read by the same reader, in the same order, with the change log folded in once; worker nodes
    need no route to Redis nor a copy of the data files; and reading is the cheap half (a Redis
    HSCAN or a file stream is far faster than the tower). Read tasks scanning Redis in ranges would
    need all three: a hash has no ranges to split (HSCAN cursors are opaque), so the order would
    differ from the local engine's. The object store holds the rows until they are encoded (Ray
    spills it to disk past its memory), the driver one block of them at a time.
    """
    manifest = runner.manifest
    id_field = manifest.features.item.id_field
    collector = AttributeCollector(manifest.features.item)
    with _session(options) as ray:
        refs, total = [], 0
        # A block is one map_batches call on one actor: 4 batches a block keeps the object store's
        # per-block cost (a metadata task each) small and still gives a pool blocks to share.
        for block in row_blocks(collector.watch(rows), 4 * batch_size, id_field):
            refs.append(ray.put(block))
            total += block.num_rows
        if total == 0:
            return EncodedCatalog([], np.zeros((0, manifest.dim), np.float32), collector.finish(), "ray")
        _, actors = _prepare(ray, options, f"{total} items from {source}, streamed in {len(refs)} blocks")
        ds = _encoded(ray, ray.data.from_arrow_refs(refs), runner, options, actors, batch_size, [], None)
        del refs  # the dataset holds them; its blocks are freed as they are encoded
        shards = _collect(ds, total, manifest.dim, progress, set())
    return EncodedCatalog(shards.ids, shards.vectors, collector.finish(), "ray")


@contextmanager
def _session(options: RayOptions) -> Iterator[Any]:
    """`ray`, connected for one encoding: a UDF's own error comes back wrapped in Ray's exception
    types and leaves unwrapped; a cluster started here (no address) is shut down on the way out."""
    ray = connect(options)
    try:
        yield ray
    except TwoTowerError:
        raise
    except Exception as exc:
        raise _unwrap(exc) from exc
    finally:
        if not options.address:
            _shutdown_behind(ray)


_stopping: threading.Thread | None = None  # a one-node Ray this process started, going down


def _shutdown_behind(ray: Any) -> None:
    """Stop the one-node Ray started for this encoding on a thread, while the build goes on to
    its index: its processes take ~2 s to stop (1.8 s measured at 1.5M items, load 4), time the
    build had waited for. Not a daemon thread: the process exits once Ray is down; and the next
    encoding in this process waits for it before starting Ray again (`connect`)."""
    global _stopping
    _stopping = threading.Thread(target=ray.shutdown, name="ray-shutdown")
    _stopping.start()


def _prepare(ray: Any, options: RayOptions, what: str) -> tuple[Any, int]:
    """Ray Data's context for one encoding, and the actor pool's size (logged with the cluster)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    # Ray Data's newer Parquet reader lists the files in a task of its own that asks for a whole
    # CPU (and cannot be told otherwise): with every node's actor placed it never runs. The older
    # reader lists and plans in the driver, and its read tasks take `read_cpus`.
    if hasattr(context, "use_datasource_v2"):
        context.use_datasource_v2 = False
    # The whole pool up before the first block is handed out, so that the first blocks go to every
    # node's actor (not all queued on the first one ready); a pool that cannot be placed is an
    # error after this long, not a wait without end.
    context.wait_for_min_actors_s = int(options.pool_timeout_s)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in nodes]
    actors = pool_size(cpus, options)
    log.info(
        "ray engine: %s on %d node(s) (%g CPUs); %d actors of %g CPU, read tasks of %g CPU",
        what,
        len(nodes),
        sum(cpus),
        actors,
        options.actor_cpus,
        options.read_cpus,
    )
    return context, actors


def _encoded(
    ray: Any,
    ds: Any,
    runner: TowerRunner,
    options: RayOptions,
    actors: int,
    batch_size: int,
    filterable: list[str],
    path: str | None,
) -> Any:
    return ds.map_batches(
        ItemTowerActor,
        fn_constructor_kwargs={
            "manifest": runner.manifest,
            "tower": (runner.model_dir / ITEM_TOWER).read_bytes(),
            "threads": options.actor_threads,
            "filterable": filterable,
            "path": path,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        # A fixed pool: all actors start at once and are placed by their CPUs (see RayOptions),
        # rather than a pool that grows only when its queue backs up.
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=options.actor_cpus,
    )


@dataclass
class _Shards:
    ids: list[str]
    vectors: np.ndarray


def _collect(
    ds: Any,
    total: int,
    dim: int,
    progress: Callable[[int], None] | None,
    dropped: set[str],
    collector: AttributeCollector | None = None,
) -> _Shards:
    """Run the dataset and assemble its shards (Arrow tables, see `ray_actor.shard`) in order,
    leaving out the `dropped` ids; the shards' filterable columns go to `collector`, as the local
    engine gives it every batch's. Logs the rows each node's actors encoded (the split)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    started = time.monotonic()
    ids: list[str] = []
    vectors = np.empty((total, dim), dtype=np.float32)
    per_node: Counter[str] = Counter()
    done = 0
    drop = pa.array(sorted(dropped), pa.string()) if dropped else None
    first: float | None = None  # when the first shard came back: the pool's start-up, the first block
    for shard in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        first = first if first is not None else time.monotonic() - started
        rows = shard.num_rows
        for pair in pc.value_counts(shard.column("node")).to_pylist():
            per_node[str(pair["values"])] += int(pair["counts"])
        if drop is not None:
            shard = shard.filter(pc.invert(pc.is_in(shard.column("id"), value_set=drop)))
        n = shard.num_rows
        if len(ids) + n > total:
            raise BuildRefused(f"ray engine: more rows came back than the catalog's {total}")
        at = len(ids)
        for chunk in shard.column("vector").chunks:  # one copy, out of the object store's buffer
            vectors[at : at + len(chunk)] = chunk.flatten().to_numpy().reshape(len(chunk), dim)
            at += len(chunk)
        ids.extend(shard.column("id").to_pylist())
        if collector is not None:
            attrs = [c for c in shard.column_names if c.startswith(ATTR)]
            collector.add_arrow({c[len(ATTR) :]: shard.column(c) for c in attrs}, n)
        done += rows
        if progress is not None:
            progress(done)
    log.debug("ray engine: %s", ds.stats())
    elapsed = time.monotonic() - started
    log.info(
        "ray engine: encoded %d items in %.1fs (%.0f items/s; the first shard after %.1fs) on %d "
        "node(s): %s; rows per node %s",
        done,
        elapsed,
        done / max(elapsed, 1e-9),
        first or 0.0,
        len(per_node),
        " / ".join(f"{100 * n / max(done, 1):.0f}%" for _, n in sorted(per_node.items())),
        json.dumps(dict(sorted(per_node.items()))),
    )
    if done != total:  # dropped rows included: every catalog row must come back once
        raise BuildRefused(f"ray engine: {done} of {total} catalog rows came back")
    return _Shards(ids, vectors[: len(ids)])


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
