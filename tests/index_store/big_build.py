"""One large synthetic build through the real pipeline, with its figures (not collected by pytest).

.venv/bin/python -m tests.index_store.big_build --items 1000000 --root /tmp/twotower-index
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

from bench.catalog import synthetic_items
from index_store.build import IndexConfig
from index_store.store import IndexStore
from models.manifest import list_versions, load_version
from tests.index_store.conftest import DEMO_STORE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--model-store", type=Path, default=DEMO_STORE)
    parser.add_argument("--version", default=None)
    parser.add_argument("--factory", default=IndexConfig.ann_factory)
    parser.add_argument("--exact-threshold", type=int, default=IndexConfig.exact_threshold)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    version = args.version or list_versions(args.model_store)[-1]
    model = load_version(args.model_store, version)
    config = IndexConfig(ann_factory=args.factory, exact_threshold=args.exact_threshold)
    store = IndexStore(args.root)
    started = time.monotonic()
    build_id = store.build(args.model_store, version, synthetic_items(model, args.items), config)
    wall = time.monotonic() - started
    built_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.monotonic()
    snap = store.load(version, model)
    load_s = time.monotonic() - t
    m = snap.manifest
    print(
        json.dumps(
            {
                "items": m["item_count"],
                "build_id": build_id,
                "build_wall_s": round(wall, 2),
                "index": m["index"],
                "recall": {k: m["recall"][k] for k in ("k", "value", "id_overlap", "queries")}
                if m["recall"]
                else None,
                "timings": m["timings"],
                "peak_rss_mb_after_build": round(built_rss),
                "load_s": round(load_s, 2),
                "peak_rss_mb_after_load": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
