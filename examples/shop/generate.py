"""Generate the shop example's data: products.parquet, customers.csv, purchases.jsonl.

    python examples/shop/generate.py --out data/shop [--users 600] [--items 400] [--seed 0]

A made-up shop with a hidden taste structure the towers can learn: every item has a style, which
shapes its brand, tags, price and precomputed text embedding (`text_emb`, 16 floats); every user
prefers a style, which shapes their country, and buys mostly items of that style over time. The
three tables use the three formats the reader accepts, so the example exercises each of them,
and none of the default names (users/items/interactions, user_id/item_id/timestamp): the schema
names them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

STYLES = ("outdoor", "office", "kids", "sport", "home", "luxury")
BRANDS = {s: [f"{s[:3]}-brand-{k}" for k in range(4)] for s in STYLES}
TAGS = {s: [f"{s}-{t}" for t in ("new", "classic", "eco", "bundle")] for s in STYLES}
COUNTRIES = {
    s: [f"{c}" for c in ("DE", "FR", "NL", "IT", "ES", "PL", "SE", "AT")[i : i + 3]]
    for i, s in enumerate(STYLES)
}
PRICE = {"outdoor": 60.0, "office": 25.0, "kids": 15.0, "sport": 45.0, "home": 35.0, "luxury": 400.0}
WORDS = ("bag", "shoe", "lamp", "desk", "ball", "coat", "cup", "toy", "pen", "tent", "mat", "watch")
DIM = 16
START = 1_767_225_600  # 2026-01-01T00:00:00Z


def generate(out: Path, n_users: int = 600, n_items: int = 400, seed: int = 0, per_user: int = 12) -> None:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    centroids = {s: [rng.gauss(0.0, 1.0) for _ in range(DIM)] for s in STYLES}

    items: list[dict[str, Any]] = []
    by_style: dict[str, list[str]] = {s: [] for s in STYLES}
    for i in range(n_items):
        style = STYLES[i % len(STYLES)]
        item_id = f"sku-{i:05d}"
        by_style[style].append(item_id)
        items.append(
            {
                "sku": item_id,
                "brand": rng.choice(BRANDS[style]) if rng.random() > 0.05 else None,  # some unbranded
                "price": round(PRICE[style] * math.exp(rng.gauss(0.0, 0.4)), 2),
                "text_emb": [round(c + rng.gauss(0.0, 0.5), 4) for c in centroids[style]],
                "tags": sorted(set(rng.sample(TAGS[style], rng.randint(1, 3)))),
                "title": f"{style} {rng.choice(WORDS)} {rng.choice(WORDS)}",
            }
        )
    pq.write_table(pa.Table.from_pylist(items), out / "products.parquet")

    with (
        open(out / "customers.csv", "w", newline="", encoding="utf-8") as fu,
        open(out / "purchases.jsonl", "w", encoding="utf-8") as fi,
    ):
        w = csv.writer(fu, lineterminator="\n")
        w.writerow(("customer", "country", "age"))
        ts = START
        for u in range(n_users):
            style = STYLES[rng.randrange(len(STYLES))]
            age = (
                "" if rng.random() < 0.1 else rng.randint(16, 80)
            )  # empty cell: missing, the default applies
            w.writerow((f"u{u:05d}", rng.choice(COUNTRIES[style]), age))
            for _ in range(per_user):
                pool = by_style[style] if rng.random() < 0.85 else by_style[rng.choice(STYLES)]
                ts += rng.randint(1, 600)
                fi.write(json.dumps({"customer": f"u{u:05d}", "sku": rng.choice(pool), "at": ts}) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--users", type=int, default=600)
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    generate(args.out, args.users, args.items, args.seed)
    print(f"wrote {args.out}: {args.users} users, {args.items} items, {args.users * 12} interactions")


if __name__ == "__main__":
    main()
