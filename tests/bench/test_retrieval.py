"""bench/retrieval.py, filter_picks.py and retrieval_report.py: the synthetic catalog carries the
demo's filterable fields, the filters the step picks keep close to 50% and 1% of it, and its report
rows render from a results dict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import filter_picks, report, targets
from bench.catalog import synthetic_items
from index_store.attributes import ATTRIBUTES_FILE, AttributeCollector, to_bytes
from index_store.filters import filter_mask
from models.manifest import ModelManifest


def test_filters_near_50_and_1_percent(manifest: ModelManifest, tmp_path: Path) -> None:
    item = manifest.features.item
    assert {"genres", "release_year"} <= {f.name for f in item.filterable}
    collector = AttributeCollector(item)
    n = 20_000
    list(collector.watch(synthetic_items(manifest, n, seed=0)))
    attributes = collector.finish()
    (tmp_path / ATTRIBUTES_FILE).write_bytes(to_bytes(attributes))
    built = {"item_count": n, "attributes": attributes.describe()}
    (tmp_path / "manifest.json").write_text(json.dumps(built))
    picked = filter_picks.pick_filters(tmp_path, manifest)
    for label, lo, hi in (("50%", 0.45, 0.55), ("1%", 0.007, 0.013)):
        mask = filter_mask(picked[label]["filter"], item, attributes)
        assert mask is not None
        assert lo <= mask.mean() <= hi and mask.mean() == pytest.approx(picked[label]["share"])
    fresh = filter_picks.distinct(picked["50%"]["filter"], 7)  # new to the cache, the same rows
    assert json.dumps(fresh) != json.dumps(picked["50%"]["filter"])
    again = filter_mask(fresh, item, attributes)
    assert again is not None and (again == filter_mask(picked["50%"]["filter"], item, attributes)).all()


def test_report_rows() -> None:
    row = {
        "rps": 100.0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "server_cpu_ms_per_req": 1.0,
        "failed": 0,
        "requests": 9,
    }
    sbs = {
        "unfiltered": {**row, "cost_x": 1.0, "rps_x": 1.0},
        "filter 50%": {**row, "server_cpu_ms_per_req": 1.2, "cost_x": 1.2, "rps_x": 0.9},
        "filter 1%": {**row, "cost_x": 1.1, "rps_x": 0.95},
        "filter 50%, new each request": {**row, "cost_x": 1.6, "rps_x": 0.7},
        "/similar": {**row, "cost_x": 0.9, "rps_x": 1.1},
    }
    phase = {
        "rps": 50.0,
        "p50_ms": 1.0,
        "p99_ms": 3.0,
        "failed": 0,
        "requests": 500,
        "a_cpu_s": 1,
        "b_cpu_s": 1,
    }
    up = {**phase, "items": 1000, "recallable": 1000, "lag_p50_s": 0.4, "lag_p99_s": 0.9, "lag_max_s": 1.0}
    results = {
        "plan": {"items": 1_000_000, "kinds": ["ivf"]},
        "retrieval": {
            "kind": "ivf",
            "concurrency": 8,
            "filters": {
                "50%": {"filter": {"release_year": {"gte": 1964}}, "share": 0.5},
                "1%": {"filter": {"genres": {"any": ["Crime"]}}, "share": 0.01},
            },
            "side_by_side": sbs,
            "upserts": {"rate": 50.0, "window_s": 10, "steady": phase, "upserts": {**up, "error_count": 0}},
        },
    }
    rows = {r[0]: r for r in targets.targets(results)}
    verdicts = [r[3] for name, r in rows.items() if "filter" in name or "upsert" in name]
    assert verdicts == ["met", "**missed**", "met", "met"]
    md = report.render_markdown(results)
    assert "#### Filters, /similar and catalog changes" in md and "keeps 50.00%" in md and "p99 0.90 s" in md
