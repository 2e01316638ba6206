"""`twotower reindex --engine ray`: the same build as the local engine, on a real two-node Ray
cluster on this machine; and the bad inputs (no Ray, no cluster, no id column) refused cleanly.

Every reindex here is a real `python -m app.cli reindex` process. The cluster is started with
`ray start` and stopped by the pids it started (tests/raycluster.py), never with `ray stop`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.catalog import synthetic_items
from models.manifest import ModelManifest
from tests.conftest import free_port
from tests.data import write_dataset
from tests.raycluster import LocalCluster

ROOT = Path(__file__).resolve().parents[3]


def write_catalog(data: Path, manifest: ModelManifest, n: int, without: str | None = None) -> Path:
    data.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.items() if k != without} for r in synthetic_items(manifest, n)]
    pq.write_table(pa.Table.from_pylist(rows), data / "items.parquet", row_group_size=50_000)
    return data


def reindex(
    model_store: Path,
    data: Path,
    store: Path,
    *args: str,
    timeout: float = 240,
    prelude: str = "",
    command: str = "reindex",
    settings: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    env.update(
        TWOTOWER_MODEL_STORE=str(model_store),
        TWOTOWER_DATA_DIR=str(data),
        TWOTOWER_INDEX_STORE=str(store),
        TWOTOWER_INDEX__EXACT_THRESHOLD="0",  # an IVF index, so recall is tuned and compared
        # One kind: the kind search weighs measured query times, which differ from run to run.
        TWOTOWER_INDEX__ANN_FACTORY="IVF{nlist},Flat",
        RAY_AUTH_MODE="disabled",
        PYTHONPATH=str(ROOT),
        **(settings or {}),
    )
    code = f"{prelude}import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, command, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def current(store: Path) -> tuple[str, Path]:
    (vdir,) = [p for p in store.iterdir() if p.is_dir()]
    build = json.loads((vdir / "CURRENT").read_text())["build_id"]
    return build, vdir / build


def leftovers(store: Path) -> list[str]:
    return [p.name for v in store.iterdir() if v.is_dir() for p in v.iterdir() if p.name.startswith(".tmp-")]


@pytest.fixture
def built(tmp_path: Path, model_store: Path, manifest: ModelManifest) -> tuple[Path, Path, str]:
    """A data dir of 3,000 items and a store whose current build is the local engine's."""
    data = write_catalog(tmp_path / "data", manifest, 3000)
    store = tmp_path / "index"
    done = reindex(model_store, data, store)
    assert done.returncode == 0, done.stderr
    return data, store, current(store)[0]


def test_ray_engine_without_ray_installed(
    tmp_path: Path, model_store: Path, built: tuple[Path, Path, str]
) -> None:
    data, store, before = built
    # `import ray` fails in this process as it does where the extra is not installed.
    done = reindex(
        model_store,
        data,
        store,
        "--engine",
        "ray",
        prelude="sys_ = __import__('sys'); sys_.modules['ray'] = None; ",
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'twotower[ray]'" in done.stderr.splitlines()[-1]
    assert current(store)[0] == before
    assert leftovers(store) == []


def test_parquet_without_the_id_column(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, built: tuple[Path, Path, str]
) -> None:
    _, store, before = built
    bad = write_catalog(tmp_path / "bad", manifest, 100, without="item_id")
    done = reindex(model_store, bad, store, "--engine", "ray")
    assert done.returncode == 2, done.stderr
    last = done.stderr.splitlines()[-1]
    assert "items.parquet: no column 'item_id' (the id column)" in last, last
    assert current(store)[0] == before
    assert leftovers(store) == []


def test_unreachable_ray_address(tmp_path: Path, model_store: Path, built: tuple[Path, Path, str]) -> None:
    pytest.importorskip("ray")
    data, store, before = built
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = reindex(model_store, data, store, "--engine", "ray", "--ray-address", address, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"cannot connect to the Ray cluster at {address}" in done.stderr.splitlines()[-1]
    assert current(store)[0] == before
    assert leftovers(store) == []


def rows_per_node(stderr: str) -> dict[str, int]:
    """The split the engine logs: `... rows per node {"<ip>/<node id>": rows, ...}`."""
    (line,) = [s for s in stderr.splitlines() if "rows per node" in s]
    found = re.search(r"rows per node (\{.*\})", line)
    assert found, line
    split: dict[str, int] = json.loads(found.group(1))
    return split


def same_build(a: Path, b: Path, n: int, dim: int) -> None:
    """Two builds of one catalog: the same ids in the same order, vectors within 1e-6."""
    assert np.array_equal(np.load(a / "ids.npy"), np.load(b / "ids.npy"))
    va, vb = np.load(a / "vectors.npy"), np.load(b / "vectors.npy")
    assert va.shape == vb.shape == (n, dim)
    assert float(np.abs(va - vb).max()) <= 1e-6
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert (ma["encode_engine"], mb["encode_engine"]) == ("local", "ray")
    assert ma["index"] == mb["index"]
    assert ma["recall"]["value"] == mb["recall"]["value"] >= 0.95


@pytest.mark.slow
def test_two_node_cluster_builds_what_the_local_engine_builds(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, ray_cluster: LocalCluster
) -> None:
    data = write_catalog(tmp_path / "data", manifest, 200_000)
    local, ray = tmp_path / "local", tmp_path / "ray"
    done = reindex(model_store, data, local)
    assert done.returncode == 0, done.stderr
    done = reindex(model_store, data, ray, "--engine", "ray", "--ray-address", ray_cluster.address)
    assert done.returncode == 0, done.stderr
    same_build(current(local)[1], current(ray)[1], 200_000, manifest.dim)
    # One actor on each node (a fixed pool, 0.75 CPU an actor: two never fit on a 1-CPU node), and
    # the pool all up before the first block: both nodes encode a share, the log says how much.
    split = rows_per_node(done.stderr)
    print(*[s for s in done.stderr.splitlines() if "ray engine:" in s], sep="\n")  # -s shows them
    assert len(split) == 2 and min(split.values()) > 0 and sum(split.values()) == 200_000, split
    assert leftovers(ray) == []


@pytest.mark.slow
def test_arrow_types_and_nulls_build_what_the_local_engine_builds(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, ray_cluster: LocalCluster
) -> None:
    """The actors convert Parquet columns, not rows: integer ids, large strings and lists, a
    float year, nulls and empty lists in every column give the local engine's ids, vectors and
    filterable columns (the attributes the build process collects from the shards)."""
    data = tmp_path / "data"
    data.mkdir()
    rows = list(synthetic_items(manifest, 20_000))
    table = pa.table(
        {
            "item_id": pa.array(range(len(rows)), pa.int64()),  # read as their text
            "genres": pa.array(
                [None if n % 5 == 0 else [] if n % 11 == 0 else r["genres"] for n, r in enumerate(rows)],
                pa.large_list(pa.large_string()),
            ),
            "release_year": pa.array(
                [None if n % 3 == 0 else float(r["release_year"]) for n, r in enumerate(rows)], pa.float64()
            ),
            "title": pa.array(
                [None if n % 7 == 0 else r["title"] for n, r in enumerate(rows)], pa.large_string()
            ),
        }
    )
    pq.write_table(table, data / "items.parquet", row_group_size=5_000)
    settings = {"TWOTOWER_INDEX__BATCH_SIZE": "1000"}
    local, ray = tmp_path / "local", tmp_path / "ray"
    done = reindex(model_store, data, local, settings=settings)
    assert done.returncode == 0, done.stderr
    args = ("--engine", "ray", "--ray-address", ray_cluster.address)
    done = reindex(model_store, data, ray, *args, settings=settings)
    assert done.returncode == 0, done.stderr
    a, b = current(local)[1], current(ray)[1]
    same_build(a, b, 20_000, manifest.dim)
    assert np.load(b / "ids.npy")[:3].tolist() == ["0", "1", "2"]
    with np.load(a / "attributes.npz") as fa, np.load(b / "attributes.npz") as fb:
        assert sorted(fa.files) == sorted(fb.files) and len(fa.files) >= 4  # genres' 3 arrays, the year
        for key in fa.files:
            np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)
    # Types and nulls are this test's point; the split over both nodes is the 200k test's (these
    # 20k rows all went to one node in one CI run).
    assert sum(rows_per_node(done.stderr).values()) == 20_000


@pytest.mark.slow
@pytest.mark.parametrize("source", ["redis", "jsonl"])
def test_a_catalog_ray_cannot_read_is_streamed_to_the_cluster(
    source: str,
    tmp_path: Path,
    model_store: Path,
    manifest: ModelManifest,
    ray_cluster: LocalCluster,
    request: pytest.FixtureRequest,
) -> None:
    """The feature store (Redis) or a JSON-lines items table: read by the build process with the
    local engine's reader, encoded by both nodes' actors, the same build as the local engine's."""
    data = tmp_path / "data"
    write_dataset(data, manifest, 200, 20_000)
    # 5 blocks of 4,000 rows (4 batches a block): more than the 2 x 2 the actors take at first.
    settings = {"TWOTOWER_INDEX__BATCH_SIZE": "1000"}
    if source == "redis":
        settings["TWOTOWER_REDIS_URL"] = request.getfixturevalue("redis_url")
        done = reindex(
            model_store, data, tmp_path / "unused", "--data", str(data), command="load", settings=settings
        )
        assert done.returncode == 0, done.stderr
        (data / "items.jsonl").unlink()  # the catalog is Redis's now, and only there
    local, ray = tmp_path / "local", tmp_path / "ray"
    done = reindex(model_store, data, local, settings=settings)
    assert done.returncode == 0, done.stderr
    args = ("--engine", "ray", "--ray-address", ray_cluster.address)
    done = reindex(model_store, data, ray, *args, settings=settings)
    assert done.returncode == 0, done.stderr
    where = "the feature store (Redis)" if source == "redis" else f"{data} (read here)"
    assert f"20000 items from {where}, streamed in 5 blocks" in done.stderr, done.stderr[-3000:]
    same_build(current(local)[1], current(ray)[1], 20_000, manifest.dim)
    split = rows_per_node(done.stderr)
    print(*[s for s in done.stderr.splitlines() if "ray engine:" in s], sep="\n")
    assert len(split) == 2 and min(split.values()) > 0 and sum(split.values()) == 20_000, split
    assert leftovers(ray) == []


def test_the_serving_path_does_not_import_ray() -> None:
    code = "import sys, app.main, app.cli, app.reindex.build; sys.exit('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_node_lost_during_encoding(
    tmp_path: Path,
    model_store: Path,
    manifest: ModelManifest,
    ray_cluster: LocalCluster,
    built: tuple[Path, Path, str],
) -> None:
    """A worker node killed (SIGKILL, its raylet and actors) while the catalog is being encoded:
    Ray moves the work to the node left, and the build is whole; or the build fails with a
    message. Either way no half-written build and no temporary directory.

    The node killed is one added to the shared cluster for this test (the module's last cluster
    test: the dead node stays listed by the GCS for a while after)."""
    lost = ray_cluster.add_node()
    _, store, before = built
    # 50k rows: the kill comes with the first block back, a twelfth of the work (blocks sized for
    # 4 per actor); a bigger catalog only makes the index build after it longer.
    n = 50_000
    data = write_catalog(tmp_path / "big", manifest, n)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    env.update(
        TWOTOWER_MODEL_STORE=str(model_store),
        TWOTOWER_DATA_DIR=str(data),
        TWOTOWER_INDEX_STORE=str(store),
        TWOTOWER_INDEX__EXACT_THRESHOLD="0",
        TWOTOWER_INDEX__ANN_FACTORY="IVF{nlist},Flat",
        RAY_AUTH_MODE="disabled",
    )
    cmd = [
        sys.executable,
        "-m",
        "app.cli",
        "reindex",
        "--engine",
        "ray",
        "--ray-address",
        ray_cluster.address,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "items encoded" in line:  # the first shard is back: encoding is under way
            ray_cluster.kill_node(lost)
            break
    lines.extend(proc.stderr)
    proc.stderr.close()
    code = proc.wait(timeout=300)
    log = "".join(lines)
    print(f"node lost during encoding: exit {code}; {log.splitlines()[-1]}")  # which way it went (-s)
    assert leftovers(store) == []
    if code == 0:
        build, bdir = current(store)
        assert build != before
        ids = np.load(bdir / "ids.npy")
        assert ids.tolist() == [r["item_id"] for r in synthetic_items(manifest, n)]
        from models.runtime import TowerRunner

        runner = TowerRunner(model_store / manifest.version, manifest, "item").load()
        sample = list(synthetic_items(manifest, n))[-2000:]  # rows of the last shards
        np.testing.assert_allclose(np.load(bdir / "vectors.npy")[-2000:], runner.embed(sample), atol=1e-6)
    else:
        assert code == 2, log[-3000:]
        assert log.splitlines()[-1].startswith("error: ray engine"), log[-3000:]
        assert current(store)[0] == before
