"""bench/: the synthetic catalog and users, the data directory writer, the load client and the report."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.catalog import iter_catalog_file, read_users
from bench import report
from bench.catalog import synthetic_items, synthetic_users, write_data_dir
from bench.load import LoadResult, LoadSpec, _run, percentile, summarize
from models.features import KINDS
from models.manifest import ModelManifest
from models.schema import load_schema
from models.transform import TowerEncoder
from tests.conftest import ROOT


def test_items_are_deterministic_and_seeded(manifest: ModelManifest) -> None:
    a = list(synthetic_items(manifest, 3000, seed=3))
    assert a == list(synthetic_items(manifest, 3000, seed=3))
    other = list(synthetic_items(manifest, 3000, seed=4))
    assert [r["item_id"] for r in other] == [r["item_id"] for r in a]  # same catalog, new features
    assert sum(x != y for x, y in zip(a, other, strict=True)) > 2900
    ids = [r["item_id"] for r in a]
    assert len(set(ids)) == len(ids)
    known = manifest.features.vocabularies[manifest.features.item.field("item_id").vocab or ""]
    assert ids[: len(known)] == list(known)[: len(ids)]


def test_users_are_deterministic(manifest: ModelManifest) -> None:
    a = list(synthetic_users(manifest, 1500, seed=1))
    assert a == list(synthetic_users(manifest, 1500, seed=1))
    assert a != list(synthetic_users(manifest, 1500, seed=2))
    assert len({u["user_id"] for u in a}) == 1500
    assert all(len(u["history"]) == len(set(u["history"])) <= 50 for u in a)


def check_rows_fit(manifest: ModelManifest, n_items: int = 2000, n_users: int = 500) -> None:
    """Generated rows pass the service's validation and encode with no missing input."""
    schema = manifest.features
    items = TowerEncoder(schema, "item")
    users = TowerEncoder(schema, "user")
    item_rows = list(synthetic_items(manifest, n_items, seed=0))
    user_rows = list(synthetic_users(manifest, n_users, seed=0))
    for row in item_rows:
        items.validate({k: v for k, v in row.items() if k != schema.item.id_field})
    for row in user_rows:
        users.validate({k: v for k, v in row.items() if k != schema.user.id_field})
    for enc, rows in ((items, item_rows), (users, user_rows)):
        arrays = enc.encode(rows)
        for f in enc.tower.fields:
            a = arrays[f.name]
            if f.kind == "multi_hot":
                assert a.sum(axis=1).min() >= 1, f.name  # no value outside the vocabulary
            elif f.kind in ("categorical", "bucket", "hashed") and f.source != enc.tower.id_field:
                assert a.min() >= 1, f.name  # never the missing / unknown index
            elif f.kind in ("numeric", "vector"):
                assert np.isfinite(a).all() and a.std() > 0, f.name
            elif f.kind == "hashed_words":
                assert (a[:, 0] > 0).all(), f.name


def test_rows_pass_the_model_schema(manifest: ModelManifest) -> None:
    check_rows_fit(manifest)


def test_every_kind_is_generated_from_the_schema(tmp_path: Path) -> None:
    """The shop schema has every kind but bucket; the MovieLens one has bucket: both are driven
    by the manifest alone."""
    sf = load_schema(ROOT / "examples" / "shop" / "schema.toml")
    schema = sf.learn(
        [{"customer": f"u{i}", "bought": [f"i{i}"]} for i in range(30)],
        [{"sku": f"i{i}", "brand": f"b{i % 4}", "price": 10.0 + i, "tags": [f"t{i % 5}"]} for i in range(30)],
    )
    shop = ModelManifest(version="shop", dim=8, similarity="cosine", features=schema, files={})
    assert {f.kind for _, f in sf.fields} | {"bucket"} == set(KINDS)
    check_rows_fit(shop, n_items=300, n_users=100)
    counts = write_data_dir(tmp_path, shop, n_items=50, n_users=10, seed=1)
    assert counts == {"items": 50, "users": 10}
    # under the shop's own names (products, sku), as the version's manifest says; known ids first
    assert [r["sku"] for r in iter_catalog_file(tmp_path, schema)][:3] == ["i0", "i1", "i10"]
    price = [r["price"] for r in synthetic_items(shop, 2000)]
    mean = schema.item.field("price").mean
    assert mean is not None and abs(float(np.mean(np.log1p(price))) - mean) < 0.1  # learned statistics


def test_generating_is_fast_enough_to_stream(manifest: ModelManifest) -> None:
    # Past 65,536 rows the generator cycles its pre-drawn pools with a stride; ids stay unique.
    rows = synthetic_items(manifest, 70_000, seed=0)
    ids = {r["item_id"] for r in rows}
    assert len(ids) == 70_000


def test_data_dir_round_trips_through_the_service_readers(manifest: ModelManifest, tmp_path: Path) -> None:
    counts = write_data_dir(tmp_path, manifest, n_items=800, n_users=120, seed=5)
    assert counts == {"items": 800, "users": 120}
    assert list(iter_catalog_file(tmp_path)) == list(synthetic_items(manifest, 800, seed=5))
    users = read_users(tmp_path)
    for row in synthetic_users(manifest, 120, seed=5):
        stored = users[row["user_id"]]
        assert stored["history"] == row["history"]
        assert {k: v for k, v in stored.items() if k != "history"} == {
            k: v for k, v in row.items() if k not in ("user_id", "history")
        }


# --- the load client ---------------------------------------------------------------------------


async def _serve_and_load(spec_args: dict[str, Any]) -> LoadResult:
    """A minimal HTTP server answering like /recall, and the client against it, in one loop."""
    hits = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hits
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = json.loads(await reader.readexactly(length))
                hits += 1
                build = "b1" if hits <= 20 else "b2"
                out = json.dumps({"index_build": build, "items": [{"item_id": body["user_id"], "score": 1}]})
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(out)).encode()
                    + b"\r\n\r\n"
                    + out.encode()
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        spec = LoadSpec(port=port, path="/recall", bodies_file="-", **spec_args)
        bodies = [json.dumps({"user_id": f"u{i}"}).encode() for i in range(3)]
        return await _run(spec, bodies)


def test_load_client_closed_loop_records_builds() -> None:
    res = asyncio.run(_serve_and_load({"concurrency": 2, "duration_s": 0.3, "record": True}))
    assert len(res.t) > 20 and set(res.status) == {200}
    assert res.builds == ["b1", "b2"]
    assert {(s["req"], res.builds[s["build"]]) for s in res.samples} == {
        (r, b) for r in range(3) for b in ("b1", "b2")
    }
    s = summarize(res)
    assert s["failed"] == 0 and s["rps"] > 0 and s["p50_ms"] <= s["p99_ms"]


def test_load_client_open_loop_keeps_the_rate() -> None:
    res = asyncio.run(_serve_and_load({"concurrency": 4, "duration_s": 0.5, "rate": 200.0}))
    assert 80 <= len(res.t) <= 101  # 100 due in the window
    assert summarize(res)["failed"] == 0


def test_load_client_counts_connection_errors() -> None:
    spec = LoadSpec(port=1, path="/recall", bodies_file="-", concurrency=1, duration_s=0.1, timeout_s=1)
    res = asyncio.run(_run(spec, [b"{}"]))
    assert res.status and set(res.status) == {0} and res.errors
    assert summarize(res)["failed"] == len(res.t)


def test_percentile_nearest_rank() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 50) == 50 and percentile(xs, 99) == 99 and percentile(xs, 100) == 100
    assert math.isnan(percentile([], 50))


# --- the report --------------------------------------------------------------------------------


def _level(c: int, p50: float) -> dict[str, Any]:
    return {
        "concurrency": c,
        "p50_ms": p50,
        "p95_ms": p50 * 2,
        "p99_ms": p50 * 3,
        "rps": 1000.0 * c / (c + 1),
        "server_cpu_ms_per_req": 0.5,
        "client_cpu_ms_per_req": 0.1,
        "failed": 0,
    }


def _phase(p99: float) -> dict[str, Any]:
    return {"requests": 100, "failed": 0, "p50_ms": 1.0, "p99_ms": p99, "max_ms": p99 * 2, "rps": 100.0}


def fake_results() -> dict[str, Any]:
    timing = {"p50_ms": 0.4, "p95_ms": 0.6, "p99_ms": 0.9, "mean_ms": 0.45, "n": 10, "cpu_ms": 0.4}
    http = {
        "kind": "ivf",
        "levels": [_level(1, 1.0), _level(8, 3.0)],
        "max_rps": 888.9,
        "max_at": 8,
        "half_rate": {"rate": 444.4, "p50_ms": 1.2, "p95_ms": 2.0, "p99_ms": 4.0, "rps": 444.0, "failed": 0},
    }
    swap = {
        "kind": "ivf",
        "nice": 0,
        "rate": 444.4,
        "failed": 0,
        "errors": {},
        "phases": {
            k: _phase(p)
            for k, p in (("before", 4.0), ("during_reindex", 12.0), ("at_swap", 6.0), ("after", 4.0))
        },
        "marks": {
            "reindex_start_s": 2.0,
            "reindex_end_s": 5.0,
            "swapped_s": 6.0,
            "first_new_response_s": 6.0,
        },
        "consistency": {"checked": 400, "inconsistent": 0, "users_whose_results_differ": 32, "users": 32},
        "timeline": [{"t_s": 0.5 * i, "p50_ms": 1.0, "p99_ms": 3.0 + i, "n": 50} for i in range(16)],
        "reindex": {
            "items": 1000,
            "wall_s": 2.0,
            "peak_rss_mb": 300.0,
            "timings": {"encode_s": 1.0},
            "index": {},
        },
    }
    return {
        "plan": {"name": "full", "items": 1_000_000, "users": 10, "kinds": ["exact", "ivf"]},
        "machine": {"cpu": "Fake CPU", "cores": 2, "python": "3.11"},
        "command": "python -m bench.run",
        "wall_s": 12.0,
        "calibration": {
            "start": {"python_loop_ms": 245.0, "matmul_ms": 60.0},
            "steps": {"data": 247},
            "end": {"python_loop_ms": 250.0, "matmul_ms": 61.0},
        },
        "foreign_cpu": {"data": {"core_s": 0.1, "share": 0.01}, "swap": {"core_s": 30.0, "share": 0.25}},
        "http": [
            {**http, "label": "exact", "kind": "exact", "compute_in_thread": None},
            {
                **http,
                "label": "twotower ivf, 1 process",
                "server": "twotower",
                "processes": 1,
                "compute_in_thread": None,
                "score": {
                    "1": {"p50_ms": 5.0, "p95_ms": 6.0, "p99_ms": 7.0, "rps": 190.0, "failed": 0},
                    "4": {"p50_ms": 9.0, "p95_ms": 9.5, "p99_ms": 10.0, "rps": 400.0, "failed": 0},
                    "request_bytes": 25000,
                },
                "wrk": {
                    "concurrency": 8,
                    "rps": 900.0,
                    "p50_ms": 3.0,
                    "p90_ms": 5.0,
                    "p99_ms": 9.0,
                    "failed": 0,
                },
            },
            {**http, "label": "ivf in a thread", "compute_in_thread": True},
            {
                **http,
                "label": "twotower ivf, 2 processes",
                "server": "twotower",
                "processes": 2,
                "compute_in_thread": None,
                "max_rps": 3100.0,
                "max_at": 16,
                "half_rate": {**http["half_rate"], "rate": 1550.0, "p99_ms": 8.0},
            },
            {
                **http,
                "label": "glue peer ivf, 1 process",
                "server": "glue",
                "processes": 1,
                "compute_in_thread": None,
                "max_rps": 400.0,
            },
            {
                **http,
                "label": "glue peer ivf, 2 processes",
                "server": "glue",
                "processes": 2,
                "compute_in_thread": None,
                "max_rps": 1240.0,
            },
        ],
        "compute": {
            "floor": {"exact": timing, "ivf": timing},
            "throughput": {"ivf": {"1": 2000.0, "2": 2100.0}},
            "score": {
                "candidates": 1000,
                "tile": timing,
                "naive": {**timing, "p50_ms": 20.0},
                "tower_once": timing,
                "tower_repeated": {**timing, "p50_ms": 18.0},
                "ratio_p50": 50.0,
                "tower_ratio_p50": 45.0,
                "max_abs_score_diff": 1e-7,
            },
            "faiss_threads": {"ivf": {"1": timing, "2": timing}},
            "ort_spinning": [{"intra_threads": 1, "spinning": s, **timing} for s in (False, True)],
            "recall": {
                "ivf": {
                    "settings": [
                        {
                            "param": "nprobe",
                            "value": v,
                            "tuned": v == 8,
                            "recall": 0.9,
                            "id_overlap": 0.9,
                            "search_p50_ms": 0.1,
                        }
                        for v in (4, 8)
                    ],
                    "exact_search_p50_ms": 5.0,
                    "build_recall": {
                        "param": "nprobe",
                        "k": 100,
                        "value": 0.95,
                        "queries": 200,
                        "query_noise": 0.3,
                    },
                }
            },
        },
        "reindex": {
            "ivf": {
                "items": 1_000_000,
                "wall_s": 25.0,
                "peak_rss_mb": 900.0,
                "timings": {"encode_s": 20.0, "encode_items_per_s": 50000.0, "index_s": 4.0, "train_s": 1.0},
                "index": {"factory": "IVF1000,Flat", "search_params": {"nprobe": 8}},
            }
        },
        "swap": [swap, {**swap, "nice": 19}],
    }


def test_report_renders_every_section() -> None:
    md = report.render_markdown(fake_results())
    for title in (
        "Targets",
        "/recall over HTTP",
        "Compute floor",
        "/score",
        "Reindex",
        "Swap under load",
        "ANN recall@100",
        "Hot-path choices",
        "Fake CPU",
    ):
        assert title in md, title
    assert (
        "| /recall highest throughput (ivf, k=100, 2 processes) | >= 3,000 req/s | 3,100 req/s at "
        "concurrency 16 (glue peer: 1,240 req/s at 8) | met |"
    ) in md
    assert (
        "| /recall p99 at half that rate (2 processes) | <= 10 ms (at >= 1,500 req/s) | 8.00 ms at 1,550"
        in md
    )
    # the ratio to the glue peer at equal processes: 889/400 met, 3100/1240 = 2.5x met
    assert (
        "| /recall vs the glue peer, 1 process each (best concurrency) | >= 2x "
        "| 2.22x (889 / 400 req/s) | met" in md
    )
    assert "| /recall vs the glue peer, 2 processes each (best concurrency) | >= 2x | 2.50x" in md
    assert "service overhead at p50 (HTTP, 1 in flight / compute floor) | <= 1.5x | 2.50x" in md
    assert "**missed**" in md
    assert "re-encode + index 1,000,000 items (ivf) | <= 15 s (machine idle) | 25.0 s | **missed**" in md
    assert "| glue peer, 2 processes | ivf | – | closed, 8 in flight |" in md
    assert (
        "nice 19" in md
        and "wrk" in md
        and "estimated" in md
        and "swap 25%" in md
        and "start 245, after data 247, end 250" in md
    )
    # every table row has as many cells as its header
    for block in md.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.startswith("|")]
        if lines:
            assert len({ln.count(" | ") for ln in lines if not ln.startswith("|--") and "---" not in ln}) == 1


def test_report_tolerates_a_partial_run() -> None:
    partial = {k: v for k, v in fake_results().items() if k not in ("http", "swap")}
    partial["plan"] = {**partial["plan"], "items": 1000}
    md = report.render_markdown(partial)
    assert "(quick run)" in md and "Swap under load" not in md


def test_readme_block_is_replaced_in_place(tmp_path: Path) -> None:
    text = f"# bench\n\nintro\n\n{report.START}\nold\n{report.END}\n\ntail\n"
    once = report.replace_block(text, "new table")
    assert "old" not in once and "new table" in once and once.endswith("tail\n")
    assert report.replace_block(once, "new table") == once
    assert report.START in report.replace_block("# no markers\n", "x")


def test_write_all_writes_json_markdown_png_and_readme(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{report.START}\n{report.END}\n")
    paths = report.write_all(fake_results(), tmp_path / "out", readme)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["wall_s"] == 12.0
    assert (tmp_path / "out" / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert "Fake CPU" in readme.read_text() and readme in paths
    assert (tmp_path / "latency.png").exists() and "](latency.png)" in readme.read_text()
