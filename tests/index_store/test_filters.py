"""Filters over attribute columns: every operator and column type against a brute-force filtered
search over the same vectors, the exact count, validation errors naming the path, persistence."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index_store import filtered
from index_store.attributes import ATTRIBUTES_FILE, AttributeCollector, from_bytes, to_bytes
from index_store.build import IndexConfig, recall_queries
from index_store.directory import MANIFEST
from index_store.filter_cache import MaskCache
from index_store.filters import filter_mask
from index_store.snapshot import Snapshot
from index_store.store import IndexStore
from models.errors import ArtifactError, FeatureError
from models.features import FieldSpec, TowerSchema
from models.manifest import ModelManifest
from tests.index_store.conftest import snapshot_of, unit_vectors

N = 600
BRANDS = ["acme", "bolt", "cora", "dyna", "eon"]
TAGS = ["red", "blue", "green", "big", "small", "eco"]
TOWER = TowerSchema(
    side="item",
    id_field="item_id",
    fields=(
        FieldSpec("item_id", "categorical", "item_id", vocab="item_id"),
        FieldSpec("brand", "categorical", "brand", vocab="brand", filterable=True),
        FieldSpec("tags", "multi_hot", "tags", vocab="tag", filterable=True),
        FieldSpec("price", "numeric", "price", filterable=True),
        FieldSpec("year", "bucket", "year", boundaries=(1990.0, 2000.0, 2010.0), filterable=True),
        FieldSpec("in_stock", "categorical", "in_stock", vocab="flag", filterable=True),
        FieldSpec("emb", "vector", "emb", dim=2, filterable=True),
        FieldSpec("title", "hashed_words", "title", hash_size=100, max_len=4),
    ),
)


def make_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Items with every kind of value, some missing (None / absent) so missing never passes."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"item_id": f"i{i}", "title": "a thing"}
        if i % 17:
            row["brand"] = rng.choice(BRANDS)
        if i % 13:
            row["tags"] = rng.sample(TAGS, rng.randint(1, 3))
        if i % 11:
            row["price"] = round(rng.uniform(0, 100), 2)
        if i % 19:
            row["year"] = rng.randint(1980, 2020)
        if i % 23:
            row["in_stock"] = rng.random() < 0.7
        rows.append(row)
    return rows


def passes(row: dict[str, Any], flt: dict[str, dict[str, Any]]) -> bool:
    """The reference semantics, written plainly over the raw rows."""
    for name, ops in flt.items():
        value = row.get(name)
        for op, arg in ops.items():
            if op in ("any", "all", "none"):
                have = set(value if isinstance(value, list) else [] if value is None else [value])
                ok = {
                    "any": bool(have & set(arg)),
                    "all": set(arg) <= have,
                    "none": not have & set(arg),
                }[op]
            elif isinstance(arg, bool):
                ok = value is arg
            else:
                ok = (
                    value is not None
                    and {
                        "gt": value > arg,
                        "gte": value >= arg,
                        "lt": value < arg,
                        "lte": value <= arg,
                        "eq": value == arg,
                    }[op]
                )
            if not ok:
                return False
    return True


def with_attributes(snap: Snapshot, rows: list[dict[str, Any]]) -> Snapshot:
    collector = AttributeCollector(TOWER)
    list(collector.watch(rows))
    return dataclasses.replace(snap, attributes=collector.finish())


def brute(
    vectors: np.ndarray, ids: list[str], q: np.ndarray, k: int, keep: Callable[[int], bool]
) -> list[tuple[str, float]]:
    scores = vectors @ q
    rows = sorted((r for r in range(len(ids)) if keep(r)), key=lambda r: -scores[r])[:k]
    return [(ids[r], float(scores[r])) for r in rows]


FILTERS: list[dict[str, dict[str, Any]]] = [
    {"brand": {"any": ["acme", "cora"]}},
    {"brand": {"none": ["acme"]}},
    {"brand": {"all": ["bolt"]}},
    {"tags": {"any": ["red", "eco"]}},
    {"tags": {"all": ["red", "big"]}},
    {"tags": {"none": ["blue", "green"]}},
    {"tags": {"any": ["no-such-tag"]}},  # a value no item has: nothing passes
    {"tags": {"all": ["red", "no-such-tag"]}},
    {"price": {"gt": 20, "lte": 60.5}},
    {"price": {"gte": 99.0}},
    {"price": {"lt": 3}},
    {"price": {"eq": 50}},
    {"year": {"gte": 1990, "lt": 2000}},
    {"year": {"eq": 2001}},
    {"in_stock": {"eq": True}},
    {"in_stock": {"eq": False}},
    {"brand": {"any": ["dyna"]}, "tags": {"none": ["small"]}, "price": {"lt": 70}, "in_stock": {"eq": True}},
]


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: json.dumps(f, sort_keys=True))
@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_filtered_search_is_exact_on_a_small_catalog(flt: dict[str, Any], kind: str) -> None:
    rows = make_rows(N)
    vectors = unit_vectors(N, 16, seed=3, clusters=8)
    ids = [r["item_id"] for r in rows]
    config = IndexConfig(exact_threshold=N if kind == "exact" else 0, recall_floor=0.9, recall_k=10)
    if kind == "hnsw":
        config = dataclasses.replace(config, ann_factory="HNSW16")
    snap = with_attributes(snapshot_of(vectors, config, ids=ids), rows)
    assert snap.kind == kind
    mask = filter_mask(flt, TOWER, snap.attributes)  # type: ignore[arg-type]
    assert mask is not None
    expected_rows = [i for i, r in enumerate(rows) if passes(r, flt)]
    assert np.flatnonzero(mask).tolist() == expected_rows
    assert filter_mask(flt, TOWER, snap.attributes) is mask  # type: ignore[arg-type]  # cached
    assert snap.attributes.masks.entry_of(mask) is not None  # type: ignore[union-attr]
    assert not mask.flags.writeable  # shared by every request asking the same filter
    excluded = {ids[r] for r in expected_rows[:3]}
    recalls = []
    queries = recall_queries(vectors, dataclasses.replace(config, sample_queries=20, seed=5))
    # the cached rows (count, bitmap, row numbers made once) and a request's own mask (a copy)
    for q, allowed in [(q, m) for q in queries for m in (mask, mask.copy())]:
        for k in (1, 10, 500):
            got = snap.search(q, k, [excluded], allowed=allowed, exact_below=0.02)[0]
            want = brute(vectors, ids, q, k, lambda r: bool(mask[r]) and ids[r] not in excluded)
            assert len(got) == len(want) == min(k, len(expected_rows) - len(excluded & set(ids)))
            assert all(passes(rows[int(i[1:])], flt) and i not in excluded for i, _ in got)
            scores = [s for _, s in got]
            assert scores == sorted(scores, reverse=True)
            if kind == "exact":  # the same scores in the same order (ids may differ on ties)
                assert np.allclose(scores, [s for _, s in want], atol=1e-5)
            elif want and k == config.recall_k:
                recalls.append(sum(s >= want[-1][1] - 1e-5 for s in scores) / len(want))
    if recalls:  # an ANN index: at its floor (recall@recall_k) against the exact filtered search
        assert np.mean(recalls) >= config.recall_floor


@pytest.mark.parametrize(
    ("flt", "path", "says"),
    [
        ({"colour": {"any": ["red"]}}, "filter.colour", "unknown item field"),
        ({"item_id": {"any": ["i1"]}}, "filter.item_id", "unknown item field"),
        ({"title": {"any": ["a"]}}, "filter.title", "not filterable"),
        ({"emb": {"gt": 1}}, "filter.emb", "cannot be filtered"),
        ({"brand": {"gt": 1}}, "filter.brand.gt", "unknown operator"),
        ({"price": {"any": ["1"]}}, "filter.price.any", "unknown operator"),
        ({"in_stock": {"any": ["x"]}}, "filter.in_stock.any", "unknown operator"),
        ({"brand": {"any": "acme"}}, "filter.brand.any", "list of strings"),
        ({"brand": {"any": []}}, "filter.brand.any", "non-empty"),
        ({"tags": {"all": ["red", 3]}}, "filter.tags.all.1", "expected a string"),
        ({"price": {"gt": "10"}}, "filter.price.gt", "expected a number"),
        ({"price": {"gt": True}}, "filter.price.gt", "expected a number"),
        ({"price": {"lt": 10**400}}, "filter.price.lt", "finite"),
        ({"in_stock": {"eq": 1}}, "filter.in_stock.eq", "true or false"),
        ({"brand": {}}, "filter.brand", "operator"),
        ({"brand": ["acme"]}, "filter.brand", "operator"),
        ({"brand": {"any": ["x"] * 1001}}, "filter.brand.any", "at most 1000"),
    ],
)
def test_bad_filters_name_the_path(flt: dict[str, Any], path: str, says: str) -> None:
    collector = AttributeCollector(TOWER)
    list(collector.watch(make_rows(50)))
    with pytest.raises(FeatureError) as err:
        filter_mask(flt, TOWER, collector.finish())
    assert err.value.field == path
    assert says in err.value.message


def test_columns_round_trip_and_types() -> None:
    collector = AttributeCollector(TOWER)
    rows = make_rows(200)
    assert list(collector.watch(rows)) == rows  # rows pass through unchanged, in order
    attrs = collector.finish()
    assert attrs.describe() == {
        "brand": "values",
        "tags": "values",
        "price": "number",
        "year": "number",
        "in_stock": "bool",
    }
    back = from_bytes(to_bytes(attrs), attrs.describe(), 200, "x")
    for flt in FILTERS:
        a, b = filter_mask(flt, TOWER, attrs), filter_mask(flt, TOWER, back)
        assert a is not None and b is not None and np.array_equal(a, b)
    assert math.isnan(float(back.columns["price"].x[0]))  # type: ignore[union-attr]  # row 0: no price
    with pytest.raises(ArtifactError, match="does not cover"):
        from_bytes(to_bytes(attrs), attrs.describe(), 201, "x")


def test_columns_persist_with_the_build_and_are_checked(
    tmp_path: Path, model_store: Path, demo_version: str, manifest: ModelManifest, catalog: Any
) -> None:
    store = IndexStore(tmp_path / "index")
    rows = list(catalog(300))
    build = store.build(model_store, demo_version, rows, IndexConfig())
    snap = store.load(demo_version, manifest)
    assert snap.attributes is not None
    assert snap.attributes.describe() == {"genres": "values", "release_year": "number"}
    bdir = tmp_path / "index" / demo_version / build
    written = json.loads((bdir / MANIFEST).read_text())
    assert ATTRIBUTES_FILE in written["files"] and written["attributes"] == snap.attributes.describe()
    mask = filter_mask({"genres": {"any": ["Comedy"]}}, manifest.features.item, snap.attributes)
    assert mask is not None
    assert np.flatnonzero(mask).tolist() == [i for i, r in enumerate(rows) if "Comedy" in r["genres"]]
    # a changed column file is refused like any other file of the build
    data = bytearray((bdir / ATTRIBUTES_FILE).read_bytes())
    data[-40] ^= 0xFF
    (bdir / ATTRIBUTES_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        store.load(demo_version, manifest, build)


def test_mask_cache_is_bounded_and_known_by_identity() -> None:
    cache = MaskCache(budget_bytes=3300)  # an entry costs mask + bitmap + 8 B a kept row: 2.5-5 kB here
    masks = [np.arange(1000) % (i + 2) == 0 for i in range(5)]
    entries = [cache.put(f"f{i}", m) for i, m in enumerate(masks)]
    assert [e.count for e in entries] == [int(m.sum()) for m in masks]
    assert len(cache) == 1 and cache.get("f4") is entries[4]
    assert cache.get("f0") is None  # over the budget on its own: used once, never kept
    assert cache.get("f3") is None  # kept, then pushed out by f4 (least recently used first)
    assert cache.entry_of(masks[4]) is entries[4] and cache.entry_of(masks[4].copy()) is None
    assert cache.entry_of(masks[0]) is None  # evicted: a request still holding it searches uncached
    e = entries[4]
    assert np.array_equal(np.unpackbits(e.bits, bitorder="little")[:1000].astype(bool), e.mask)
    assert e.rows.tolist() == np.flatnonzero(e.mask).tolist()
    big = cache.put("big", np.ones(10_000, dtype=bool))  # over the whole budget: used, not kept
    assert big.count == 10_000 and cache.get("big") is None and cache.get("f4") is entries[4]


# --- columns collected a batch at a time are the columns of row by row

ODD_ROW: dict[str, Any] = {  # a value of an unusual type in every field: forces the per-row path
    "brand": 7,
    "tags": ["red", 3, True, None, ["x"], "red"],
    "price": 10**400,
    "year": True,
    "in_stock": False,
    "emb": "oops",
}


def _plain_and_messy_rows(n: int) -> list[dict[str, Any]]:
    rows = make_rows(n, seed=3)
    for i, row in enumerate(rows):  # still plain: repeats, tuples, NaN, infinity, big ints, empty lists
        if i % 7 == 0:
            row["tags"] = ("red", "red", "eco") if i % 2 else []
        if i % 9 == 0:
            row["price"] = [math.nan, math.inf, 2**70, 3][i % 4]
        if i % 23 == 0:
            row["brand"] = None
    return rows


def _columns(attrs: Any, size: int) -> dict[str, Any]:
    """Each column as plain data over rows < size."""
    out: dict[str, Any] = {}
    for name, col in attrs.columns.items():
        if hasattr(col, "rows"):
            out[name] = {
                v: [r for r in col.rows_of(i).tolist() if r < size] for i, v in enumerate(col.values)
            }
            out[name] = {v: r for v, r in out[name].items() if r}
        else:
            arr = col.x if hasattr(col, "x") else col.b
            out[name] = (type(col).__name__, np.asarray(arr[:size]).tobytes())
    return out


def test_columns_per_batch_equal_row_by_row() -> None:
    rows = _plain_and_messy_rows(300)
    # Reference: the per-row path, which every batch holding the odd row takes for every field.
    row_by_row = AttributeCollector(TOWER)
    row_by_row.add_rows([*rows, ODD_ROW])
    batched = AttributeCollector(TOWER)
    for start in range(0, len(rows), 64):
        batched.add_columns(
            {k: [r.get(k) for r in rows[start : start + 64]] for k in batched.sources},
            64 if start + 64 <= len(rows) else len(rows) - start,
        )
    got = batched.finish()
    assert got.size == len(rows)
    assert _columns(got, len(rows)) == _columns(row_by_row.finish(), len(rows))
    assert got.describe() == {
        "brand": "values",
        "tags": "values",
        "price": "number",
        "year": "number",
        "in_stock": "bool",
    }


def test_messy_columns_per_batch_equal_one_row_at_a_time() -> None:
    rows = [*_plain_and_messy_rows(40), ODD_ROW, *_plain_and_messy_rows(40)]
    one_by_one = AttributeCollector(TOWER)
    for row in rows:
        one_by_one.add_rows([row])
    watched = AttributeCollector(TOWER)
    assert list(watched.watch(rows)) == rows
    a, b = one_by_one.finish(), watched.finish()
    assert _columns(a, len(rows)) == _columns(b, len(rows))


def _arrays(attrs: Any) -> dict[str, list[np.ndarray]]:
    """Every array of every column, exactly (values, ptr and rows; x; b)."""
    return {name: [np.asarray(a) for a in dataclasses.astuple(col)] for name, col in attrs.columns.items()}


def test_arrow_columns_equal_python_columns() -> None:
    """`add_arrow` (the Ray engine's shards) gives what `add_columns` gives for the same values as
    Python: the array path for strings, lists of strings and numbers (nulls, empty lists, repeated
    members, NaN, infinity, ints), the Python path for the rest (a list with a missing member,
    booleans, a null to fill with a default), batch after batch, chunked and sliced arrays."""
    pa = pytest.importorskip("pyarrow")
    tower = dataclasses.replace(
        TOWER,
        fields=(
            *TOWER.fields,
            FieldSpec("shade", "categorical", "shade", vocab="shade", filterable=True, default="grey"),
            FieldSpec("weight", "numeric", "weight", filterable=True, default=1),
            FieldSpec("sizes", "multi_hot", "sizes", vocab="size", filterable=True),
        ),
    )
    rows = _plain_and_messy_rows(300)
    for i, row in enumerate(rows):
        row["tags"] = list(row["tags"]) if isinstance(row.get("tags"), tuple) else row.get("tags")
        if row.get("price") == 2**70:  # no float64 in Arrow (the Python path's NaN)
            row["price"] = None
        row["shade"] = None if i % 5 == 0 else ["red", "blue", ""][i % 3]
        row["weight"] = None if i % 6 == 0 else float(i)
        row["sizes"] = ["s", None, "m"] if i == 150 else ["s", "s"] if i % 4 == 0 else None
    types = {
        "brand": pa.large_string(),
        "tags": pa.list_(pa.string()),
        "price": pa.float64(),
        "year": pa.int64(),
        "in_stock": pa.bool_(),
        "shade": pa.string(),
        "weight": pa.float64(),
        "sizes": pa.large_list(pa.large_string()),
    }
    python, arrow = AttributeCollector(tower), AttributeCollector(tower)
    # uneven batches, one of them the row whose list holds a missing member
    for start, end in [(0, 100), (100, 150), (150, 151), (151, 200), (200, 250)]:
        batch = rows[start:end]
        n = len(batch)
        python.add_columns({k: [r.get(k) for r in batch] for k in python.sources}, n)
        table = pa.table({k: pa.array([r.get(k) for r in batch], t) for k, t in types.items()})
        if n > 2:  # a chunked column and a sliced one, as blocks of the object store may be
            table = pa.concat_tables([table.slice(0, 1), table.slice(1)])
        arrow.add_arrow({k: table.column(k) for k in types}, n)
    a, b = python.finish(), arrow.finish()
    assert a.size == b.size == 250 and a.describe() == b.describe()
    assert b.describe()["in_stock"] == "bool"
    pa_, pb = _arrays(a), _arrays(b)
    assert pa_.keys() == pb.keys()
    for name in pa_:
        assert len(pa_[name]) == len(pb[name])
        for x, y in zip(pa_[name], pb[name], strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


@pytest.mark.parametrize("factory", ["IVF{nlist},Flat", "IVF{nlist},SQ8"])
def test_a_broad_filter_post_filtered_gives_the_selector_search_answer(factory: str) -> None:
    """IVF, a filter keeping >= POST_FILTER_SHARE: the plain search's eligible rows are exactly what
    the selector search returns at the same nprobe, or the plain path steps aside (None) and the
    selector search answers: the same answer either way, lossy codes included."""
    n = 8000
    vectors = unit_vectors(n, 16, seed=7, clusters=8)
    config = IndexConfig(exact_threshold=0, recall_floor=0.9, recall_k=10, ann_factory=factory)
    snap = snapshot_of(vectors, config)
    assert snap.kind == "ivf" and snap.lossy == ("SQ8" in factory)
    rng = np.random.default_rng(11)
    queries = recall_queries(vectors, dataclasses.replace(config, sample_queries=20, seed=5))
    nearest = np.argmax(vectors @ queries.T, axis=0)
    # a broad filter anywhere, and one keeping the rows far from each query: short -> None
    masks = [rng.random(n) < share for share in (0.4, 0.6, 0.9)]
    post, stepped_aside = 0, 0
    for q, near in zip(queries, nearest, strict=True):
        far = (vectors @ vectors[near]) < 0.0
        for mask in [*masks, far]:
            share = float(mask.mean())
            if share < filtered.POST_FILTER_SHARE:
                continue
            bits = np.packbits(mask, bitorder="little")
            for want in (1, 10, 100):
                selected = filtered._selected(snap, q, bits, want, share)
                plain = filtered._post_filtered(snap, q, mask, want, share)
                if plain is None:
                    stepped_aside += 1
                else:
                    post += 1
                    assert [i for i, _ in plain] == [i for i, _ in selected]
                    assert np.allclose([s for _, s in plain], [s for _, s in selected], atol=1e-6)
                got = snap.search(q, want, allowed=mask)[0]  # through the service's entry point
                if len(selected) == want:  # (a short selector search falls back to the exact scan)
                    assert [i for i, _ in got] == [i for i, _ in selected]
    assert post > 0 and stepped_aside > 0, (post, stepped_aside)
