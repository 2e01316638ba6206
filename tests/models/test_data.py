"""The one reader: Parquet, CSV and JSON lines give the same rows; errors name file, row and column."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.data import (
    Interaction,
    _unchanged_columns,
    arrow_catalog_batch,
    catalog_rows,
    columns_of,
    load_dataset,
    read_interactions,
    table_path,
    user_rows,
)
from models.errors import DataError
from models.layout import DataLayout
from models.schema import SchemaFile, load_schema
from tests.models.test_schema import FULL, write

USERS = [
    {"customer_id": "c1", "segment": "pro", "country": "DE", "age": 33},
    {"customer_id": "c2", "segment": None, "country": "FR", "age": None},
]
ITEMS = [
    {
        "item_id": "i1",
        "price_eur": 9.5,
        "weight": 2,
        "emb": [0.5, 1.0, -1.0, 0.0],
        "tags": ["a", "b"],
        "title": "Red Shoe",
    },
    {"item_id": "i2", "price_eur": 120.0, "weight": 3, "emb": None, "tags": [], "title": None},
]
ORDERS = [
    {"customer": "c2", "sku": "i1", "ts": 30, "qty": 1},
    {"customer": "c1", "sku": "i2", "ts": 10, "qty": 1},
    {"customer": "c1", "sku": "i1", "ts": 20, "qty": 2},
]
FORMATS = ("parquet", "csv", "jsonl")


def write_table(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """The same rows in the format `path`'s suffix names (lists as JSON in CSV cells)."""
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist([dict(r) for r in rows]), path)
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(rows[0]))
            for r in rows:
                w.writerow(
                    ["" if v is None else json.dumps(v) if isinstance(v, list) else v for v in r.values()]
                )
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def schema(tmp_path: Path) -> SchemaFile:
    return load_schema(write(tmp_path, FULL))


def dataset(tmp_path: Path, fmt: tuple[str, str, str]) -> Path:
    out = tmp_path / "data"
    out.mkdir(exist_ok=True)
    write_table(out / f"customers.{fmt[0]}", USERS)
    write_table(out / f"catalog.{fmt[1]}", ITEMS)
    write_table(out / f"orders.{fmt[2]}", ORDERS)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_gives_the_same_rows(tmp_path: Path, schema: SchemaFile, fmt: str) -> None:
    ds = load_dataset(dataset(tmp_path, (fmt, fmt, fmt)), schema)
    assert ds.users["c1"] == {
        "customer_id": "c1",
        "segment": "pro",
        "country": "DE",
        "age": 33,
    }
    assert ds.users["c2"]["age"] is None and ds.users["c2"]["segment"] is None
    assert ds.items["i1"] == {
        "item_id": "i1",
        "price_eur": 9.5,
        "weight": 2,
        "emb": [0.5, 1.0, -1.0, 0.0],
        "tags": ["a", "b"],
        "title": "Red Shoe",
    }
    assert ds.items["i2"]["emb"] is None and ds.items["i2"]["tags"] == []
    assert ds.interactions == [
        Interaction("c2", "i1", 30.0),
        Interaction("c1", "i2", 10.0),
        Interaction("c1", "i1", 20.0),
    ]
    assert [r.item_id for r in ds.histories()["c1"]] == ["i2", "i1"]


def test_formats_mix_and_store_rows_carry_the_history(tmp_path: Path, schema: SchemaFile) -> None:
    data = dataset(tmp_path, ("csv", "parquet", "jsonl"))
    users = user_rows(data, schema=schema)
    assert users["c1"] == {"segment": "pro", "country": "DE", "age": 33, "recent": ["i2", "i1"]}
    assert users["c2"]["recent"] == ["i1"]
    assert [r["item_id"] for r in catalog_rows(data, schema=schema)] == ["i1", "i2"]


def test_parquet_integers_ids_and_timestamps(tmp_path: Path, schema: SchemaFile) -> None:
    data = dataset(tmp_path, ("jsonl", "jsonl", "parquet"))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"customer": "c1", "sku": "i1", "ts": t0.replace(hour=2)},
                {"customer": "c1", "sku": "i2", "ts": t0.replace(hour=1)},
            ]
        ),
        data / "orders.parquet",
    )
    ds = load_dataset(data, schema)
    assert [r.item_id for r in ds.histories()["c1"]] == ["i2", "i1"]
    # integer ids in Parquet are read as their text
    (data / "catalog.jsonl").unlink()
    write_table(data / "catalog.parquet", [{**ITEMS[0], "item_id": 1}, {**ITEMS[1], "item_id": 2}])
    assert [r["item_id"] for r in catalog_rows(data, schema=schema)] == ["1", "2"]


def test_iso_timestamps_and_no_timestamp_means_file_order(tmp_path: Path) -> None:
    path = write_table(
        tmp_path / "inter.csv",
        [{"u": "a", "i": "x", "t": "2026-01-02T00:00:00+00:00"}, {"u": "a", "i": "y", "t": "2026-01-01"}],
    )
    with_ts = read_interactions(path, DataLayout(inter_user="u", inter_item="i", timestamp="t"))
    assert with_ts[0].timestamp > with_ts[1].timestamp
    no_ts = read_interactions(path, DataLayout(inter_user="u", inter_item="i", timestamp=None))
    assert [r.timestamp for r in no_ts] == [0.0, 1.0]


def test_without_a_schema_csv_cells_are_inferred(tmp_path: Path) -> None:
    write_table(
        tmp_path / "users.csv", [{"user_id": "007", "age": "49", "zip": "02139", "tags": '["a"]', "g": "M"}]
    )
    write_table(tmp_path / "interactions.csv", [{"user_id": "007", "item_id": "5", "timestamp": "1"}])
    users = user_rows(tmp_path)
    assert users == {"007": {"age": 49, "zip": "02139", "tags": ["a"], "g": "M", "history": ["5"]}}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_missing_column_names_file_and_column(tmp_path: Path, schema: SchemaFile, fmt: str) -> None:
    data = dataset(tmp_path, (fmt, fmt, fmt))
    (data / f"catalog.{fmt}").unlink()
    path = write_table(data / f"catalog.{fmt}", [{k: v for k, v in r.items() if k != "tags"} for r in ITEMS])
    with pytest.raises(DataError) as info:
        load_dataset(data, schema)
    assert str(info.value).startswith(f"{path}: no column 'tags' (field 'tags')")


def test_a_column_with_a_default_may_be_absent(tmp_path: Path, schema: SchemaFile) -> None:
    data = dataset(tmp_path, ("csv", "csv", "csv"))
    (data / "catalog.csv").unlink()
    write_table(data / "catalog.csv", [{k: v for k, v in r.items() if k != "price_eur"} for r in ITEMS])
    assert load_dataset(data, schema).items["i1"]["price_eur"] is None  # the encoder uses the default


def test_missing_and_ambiguous_files(tmp_path: Path, schema: SchemaFile) -> None:
    data = dataset(tmp_path, ("csv", "csv", "csv"))
    (data / "orders.csv").unlink()
    with pytest.raises(DataError, match=r"orders\.\{parquet,csv,jsonl\}: not found"):
        load_dataset(data, schema)
    write_table(data / "orders.csv", ORDERS)
    write_table(data / "orders.jsonl", ORDERS)
    with pytest.raises(DataError, match="both orders.csv and orders.jsonl"):
        load_dataset(data, schema)
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(tmp_path / "nope", schema)
    with pytest.raises(DataError, match="not found"):
        table_path(data, "orders.parquet")


BAD_ITEMS = [
    ({"price_eur": "cheap"}, "column 'price_eur': expected a number"),
    ({"price_eur": True}, "column 'price_eur': expected a number"),
    ({"emb": [1.0, 2.0]}, "column 'emb': expected 4 numbers, got 2"),
    ({"emb": [1.0, 2.0, 3.0, "x"]}, "column 'emb': every number must be finite"),
    ({"tags": "a,b"}, "column 'tags': expected a"),
    ({"tags": [1.5]}, "column 'tags': expected a list of strings"),
    ({"title": 3.5}, "column 'title': expected text"),
    ({"item_id": ""}, "column 'item_id'"),
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(("change", "message"), BAD_ITEMS)
def test_bad_values_name_file_row_and_column(
    tmp_path: Path, schema: SchemaFile, fmt: str, change: dict[str, Any], message: str
) -> None:
    if fmt == "csv" and change in ({"price_eur": True}, {"title": 3.5}):
        pytest.skip("a CSV cell has no type: 'True' is not a number and 3.5 is text")
    data = dataset(tmp_path, (fmt, fmt, fmt))
    path = write_table(data / f"catalog.{fmt}", [ITEMS[0], {**ITEMS[1], **change}])
    with pytest.raises(DataError) as info:
        load_dataset(data, schema)
    row = 3 if fmt == "csv" else 2  # CSV counts the header line
    assert str(info.value).startswith(f"{path}:{row}: "), str(info.value)
    assert message in str(info.value)


def test_csv_list_cell_must_be_json(tmp_path: Path, schema: SchemaFile) -> None:
    data = dataset(tmp_path, ("csv", "csv", "csv"))
    path = data / "catalog.csv"
    path.write_text(path.read_text().replace('"[""a"", ""b""]"', "a|b"))
    with pytest.raises(DataError, match=r"catalog.csv:2: column 'tags': expected a JSON list in the cell"):
        load_dataset(data, schema)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"customer": "nobody", "sku": "i1", "ts": 1}, "unknown user 'nobody'"),
        ({"customer": "c1", "sku": "nothing", "ts": 1}, "unknown item 'nothing'"),
        ({"customer": "c1", "sku": "i1", "ts": "yesterday"}, "column 'ts': not a timestamp"),
        ({"customer": "c1", "sku": "i1", "ts": None}, "column 'ts': missing timestamp"),
    ],
)
def test_bad_interactions_name_the_row(
    tmp_path: Path, schema: SchemaFile, row: dict[str, Any], message: str
) -> None:
    data = dataset(tmp_path, ("jsonl", "jsonl", "jsonl"))
    path = write_table(data / "orders.jsonl", [*ORDERS, row])
    with pytest.raises(DataError) as info:
        load_dataset(data, schema)
    assert str(info.value).startswith(f"{path}:4: ") and message in str(info.value)


def test_duplicate_ids_and_broken_files(tmp_path: Path, schema: SchemaFile) -> None:
    data = dataset(tmp_path, ("jsonl", "jsonl", "jsonl"))
    write_table(data / "customers.jsonl", [USERS[0], USERS[0]])
    with pytest.raises(DataError, match=r"customers.jsonl:2: duplicate customer_id 'c1'"):
        load_dataset(data, schema)
    (data / "customers.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match=r"customers.jsonl:1: not valid JSON"):
        load_dataset(data, schema)
    (data / "customers.jsonl").unlink()
    (data / "customers.parquet").write_bytes(b"PAR1 nonsense")
    with pytest.raises(DataError, match=r"customers.parquet: not a readable Parquet file"):
        load_dataset(data, schema)
    (data / "customers.parquet").unlink()
    (data / "customers.csv").write_text("customer_id,segment\nc1\n")
    with pytest.raises(DataError, match=r"customers.csv:2: expected 2 columns, got 1"):
        load_dataset(data, schema)


def test_a_jsonl_key_that_is_null_everywhere_is_present(tmp_path: Path, schema: SchemaFile) -> None:
    data = dataset(tmp_path, ("jsonl", "jsonl", "jsonl"))
    write_table(data / "catalog.jsonl", [{**r, "title": None} for r in ITEMS])
    assert [r["title"] for r in load_dataset(data, schema).items.values()] == [None, None]


# --- the catalog read in batches (the index build's path) gives the rows and the errors of the row path


MESSY_ITEMS = [
    *ITEMS,
    {"item_id": 7, "price_eur": 3, "weight": 2.5, "emb": [1, 2, 3, 4], "tags": ["x", 5], "title": 12},
    {"item_id": "i8", "price_eur": 2**70, "weight": None, "tags": ["a", "a"], "title": "ÄÖ İstanbul"},
    {"item_id": "i9", "price_eur": 1e300, "weight": -1, "emb": None, "tags": None},
    {"item_id": "i10", "price_eur": 0.1, "weight": 3, "emb": [0, 0, 0, 0], "tags": [], "title": ""},
]


def _batches_as_rows(data: Path, schema: SchemaFile, size: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for batch in catalog_rows(data, schema=schema).batches(size):
        assert batch.size == len(batch.rows()) <= size
        out += batch.rows()
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 1000])
def test_catalog_batches_hold_the_rows_of_the_row_path(tmp_path: Path, schema: SchemaFile, size: int) -> None:
    data = dataset(tmp_path, ("jsonl", "jsonl", "jsonl"))
    # Pieces of plain values (taken as they are) around pieces the per-row path converts.
    plain = [ITEMS[0], ITEMS[1], {"item_id": "i", "weight": 1, "title": "x", "tags": None, "emb": None}]
    columns = columns_of(schema.item)
    assert _unchanged_columns([{**r} for r in plain], columns) is not None  # the batch path's own case
    assert _unchanged_columns([MESSY_ITEMS[-1]], columns) is None  # int numbers in a vector: per row
    some = [*plain * 200, *MESSY_ITEMS * 50, *plain * 100]
    rows = [{**r, "item_id": r["item_id"] if r["item_id"] == 7 else f"i{n}"} for n, r in enumerate(some)]
    text = "".join(json.dumps(r) + ("\n\n" if n % 500 == 0 else "\n") for n, r in enumerate(rows))
    (data / "catalog.jsonl").write_text(" \t" + text + "  \n")  # blank lines and spaces around values
    expected = list(catalog_rows(data, schema=schema))
    assert len(expected) == len(rows)
    got = _batches_as_rows(data, schema, size)
    assert got == expected
    # the same types too (an int id becomes text in both, 2.5 stays a float, 2**70 an int)
    assert [{k: type(v) for k, v in r.items()} for r in got] == [
        {k: type(v) for k, v in r.items()} for r in expected
    ]


@pytest.mark.parametrize(("change", "message"), BAD_ITEMS)
def test_catalog_batches_raise_the_row_paths_error(
    tmp_path: Path, schema: SchemaFile, change: dict[str, Any], message: str
) -> None:
    data = dataset(tmp_path, ("jsonl", "jsonl", "jsonl"))
    good = [{**ITEMS[n % 2], "item_id": f"i{n}"} for n in range(700)]
    # the bad row deep in a batch, and a broken line after it: the bad row is reported first
    path = write_table(data / "catalog.jsonl", [*good, {**ITEMS[1], **change}, *good[:3]])
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(DataError) as by_row:
        list(catalog_rows(data, schema=schema))
    with pytest.raises(DataError) as by_batch:
        _batches_as_rows(data, schema, 256)
    assert str(by_batch.value) == str(by_row.value)
    assert str(by_row.value).startswith(f"{path}:701: ") and message in str(by_row.value)


def test_catalog_batches_raise_a_broken_line_after_the_rows_before_it(
    tmp_path: Path, schema: SchemaFile
) -> None:
    data = dataset(tmp_path, ("jsonl", "jsonl", "jsonl"))
    path = data / "catalog.jsonl"
    for tail in ("[1, 2]\n", '{"item_id": "x"} {}\n', "\ufeff{}\n", "{not json\n"):
        path.write_text(
            "".join(json.dumps({**ITEMS[0], "item_id": f"i{n}"}) + "\n" for n in range(300)) + tail
        )
        with pytest.raises(DataError) as by_row:
            list(catalog_rows(data, schema=schema))
        with pytest.raises(DataError) as by_batch:
            _batches_as_rows(data, schema, 100)
        assert str(by_batch.value) == str(by_row.value) and f"{path}:301: " in str(by_row.value)
    path.write_text(json.dumps({k: v for k, v in ITEMS[0].items() if k != "weight"}) + "\n")
    with pytest.raises(DataError) as by_row:
        list(catalog_rows(data, schema=schema))
    with pytest.raises(DataError) as by_batch:
        _batches_as_rows(data, schema, 100)
    assert str(by_batch.value) == str(by_row.value) and "no column 'weight'" in str(by_row.value)


def test_catalog_batches_without_a_schema_hold_the_asked_keys(tmp_path: Path, schema: SchemaFile) -> None:
    data = dataset(tmp_path, ("jsonl", "jsonl", "jsonl"))
    rows = list(catalog_rows(data, layout=schema.layout))  # every column kept, as read
    keys = ["item_id", "title", "tags", "no_such_key"]
    got = [r for b in catalog_rows(data, layout=schema.layout).batches(1, keys) for r in b.rows()]
    assert got == [{k: r.get(k) for k in keys} for r in rows]
    assert got[0]["title"] == "Red Shoe"


# --- a Parquet catalog read as Arrow columns (the Ray engine's actors) gives the rows and the errors
# of the row path, from a column's Arrow values when they need no conversion (`arrow` is then set)

_ARROW = {"item_id": pa.string(), "price_eur": pa.float64(), "weight": pa.int64()}
_LISTS = {"emb": pa.list_(pa.float64()), "tags": pa.list_(pa.string()), "title": pa.string()}


def _arrow_table(rows: Sequence[Mapping[str, Any]], **types: pa.DataType) -> pa.Table:
    kinds = {**_ARROW, **_LISTS, **types}
    names = [k for k in kinds if any(k in r for r in rows)]
    return pa.table({k: pa.array([r.get(k) for r in rows], kinds[k]) for k in names})


NULLS = [
    *ITEMS,
    {"item_id": "i3", "price_eur": None, "weight": None, "emb": None, "tags": None, "title": None},
    {"item_id": "i4", "price_eur": 1e30, "weight": -1, "emb": [0.0, 0.0, 0.0, 0.0], "tags": [], "title": ""},
]


@pytest.mark.parametrize(
    ("rows", "types", "as_read"),
    [
        (NULLS, {}, True),  # nulls in every kind of column, empty lists and texts
        ([{**r, "item_id": n} for n, r in enumerate(NULLS)], {"item_id": pa.int64()}, True),  # int ids
        ([{**r, "title": 7} for r in ITEMS], {"title": pa.int32()}, True),  # an int text column
        (NULLS, {"title": pa.large_string(), "tags": pa.large_list(pa.large_string())}, True),
        (NULLS, {"price_eur": pa.float32(), "emb": pa.list_(pa.float32(), 4)}, True),
        ([{k: v for k, v in r.items() if k != "price_eur"} for r in NULLS], {}, True),  # has a default
        ([{**r, "emb": [1, 2, 3, 4]} for r in ITEMS], {"emb": pa.list_(pa.int64())}, False),  # -> floats
        ([{**r, "tags": [5, 6]} for r in ITEMS], {"tags": pa.list_(pa.int64())}, False),  # -> texts
    ],
)
def test_an_arrow_batch_holds_the_rows_of_the_row_path(
    tmp_path: Path,
    schema: SchemaFile,
    rows: list[dict[str, Any]],
    types: dict[str, pa.DataType],
    as_read: bool,
) -> None:
    data = dataset(tmp_path, ("jsonl", "parquet", "jsonl"))
    path = data / "catalog.parquet"
    table = _arrow_table(rows, **types)
    pq.write_table(table, path)
    expected = list(catalog_rows(data, schema=schema))
    batch = arrow_catalog_batch(table, columns_of(schema.item), "item_id", str(path))
    assert batch.size == len(rows)
    assert batch.rows() == expected
    assert [{k: type(v) for k, v in r.items()} for r in batch.rows()] == [
        {k: type(v) for k, v in r.items()} for r in expected
    ]
    assert (batch.arrow is not None) == as_read
    if batch.arrow is not None:
        assert {c: a.to_pylist() for c, a in batch.arrow.items()} == batch.columns


@pytest.mark.parametrize(
    ("change", "types", "message"),
    [
        ({"price_eur": float("nan")}, {}, "column 'price_eur': must be a finite number"),
        ({"price_eur": True}, {"price_eur": pa.bool_()}, "column 'price_eur': expected a number"),
        ({"tags": ["a", None]}, {}, "column 'tags': expected a list of strings, got None in it"),
        ({"emb": [1.0, 2.0]}, {}, "column 'emb': expected 4 numbers, got 2"),
        ({"title": 3.5}, {"title": pa.float64()}, "column 'title': expected text"),
        ({"item_id": ""}, {}, "column 'item_id': the id must be a non-empty string"),
        ({"item_id": None}, {}, "column 'item_id' must be a non-empty id, got None"),
    ],
)
def test_an_arrow_batch_raises_the_row_paths_error(
    tmp_path: Path, schema: SchemaFile, change: dict[str, Any], types: dict[str, pa.DataType], message: str
) -> None:
    data = dataset(tmp_path, ("jsonl", "parquet", "jsonl"))
    path = data / "catalog.parquet"
    # A column of another Arrow type is wrong in every row (the first one reported); a bad value
    # of the right type only in the last one.
    rows = [{**r, **change} for r in ITEMS] if types else [*ITEMS, {**ITEMS[0], "item_id": "i3", **change}]
    table = _arrow_table(rows, **types)
    pq.write_table(table, path)
    with pytest.raises(DataError) as by_row:
        list(catalog_rows(data, schema=schema))
    with pytest.raises(DataError) as by_batch:
        arrow_catalog_batch(table, columns_of(schema.item), "item_id", str(path))
    assert str(by_batch.value) == str(by_row.value)
    row = 1 if types else 3
    assert str(by_row.value).startswith(f"{path}:row {row}: ") and message in str(by_row.value)


@pytest.mark.parametrize("size", [1, 2, 3, 1000])
@pytest.mark.parametrize("types", [{}, {"item_id": pa.int64(), "tags": pa.list_(pa.int64())}])
def test_parquet_catalog_batches_hold_the_rows_of_the_row_path(
    tmp_path: Path, schema: SchemaFile, size: int, types: dict[str, pa.DataType]
) -> None:
    """The local engine's Parquet batches: the converter above, batch after batch of the file
    (integer ids and tags: every batch through the per-row conversion)."""
    data = dataset(tmp_path, ("jsonl", "parquet", "jsonl"))
    rows = [{**r, "item_id": n if types else f"i{n}"} for n, r in enumerate(NULLS * 300)]
    if types:
        rows = [{**r, "tags": None if r["tags"] is None else [7] * len(r["tags"])} for r in rows]
    pq.write_table(_arrow_table(rows, **types), data / "catalog.parquet", row_group_size=500)
    expected = list(catalog_rows(data, schema=schema))
    assert len(expected) == len(rows)
    got = _batches_as_rows(data, schema, size)
    assert got == expected
    assert [{k: type(v) for k, v in r.items()} for r in got] == [
        {k: type(v) for k, v in r.items()} for r in expected
    ]


def test_parquet_catalog_batches_raise_the_row_paths_error(tmp_path: Path, schema: SchemaFile) -> None:
    data = dataset(tmp_path, ("jsonl", "parquet", "jsonl"))
    good = [{**ITEMS[n % 2], "item_id": f"i{n}"} for n in range(700)]
    path = data / "catalog.parquet"
    pq.write_table(
        _arrow_table([*good, {**ITEMS[1], "tags": ["a", None]}, *good[:3]]), path, row_group_size=300
    )
    with pytest.raises(DataError) as by_row:
        list(catalog_rows(data, schema=schema))
    with pytest.raises(DataError) as by_batch:
        _batches_as_rows(data, schema, 256)
    assert str(by_batch.value) == str(by_row.value)
    assert str(by_row.value).startswith(f"{path}:row 701: column 'tags'"), str(by_row.value)
    pq.write_table(_arrow_table([{k: v for k, v in r.items() if k != "weight"} for r in good]), path)
    with pytest.raises(DataError) as by_row:
        list(catalog_rows(data, schema=schema))
    with pytest.raises(DataError) as by_batch:
        _batches_as_rows(data, schema, 100)
    assert str(by_batch.value) == str(by_row.value) and "no column 'weight'" in str(by_row.value)
