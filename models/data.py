"""The dataset level: users, items and interactions read together and checked against each other
(`load_dataset`, for training), and what a feature store (`user_rows`) and an index build
(`catalog_rows`) read from a data directory.

Tables are read by `models.readers` (formats, columns and value conversion: its docstring says how
each kind of field is read) and the catalog's column path is `models.catalog_batches`. Their public
names are re-exported here, so `from models.data import ...` keeps working for every caller.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from models.catalog_batches import CatalogBatch, CatalogFile, arrow_catalog_batch
from models.catalog_batches import _unchanged_columns as _unchanged_columns  # tests import it from here
from models.errors import DataError
from models.features import FieldSpec, TowerSchema
from models.layout import DataLayout
from models.readers import (
    Column,
    _check_header,
    _timestamp,
    columns_of,
    has_table,
    iter_jsonl,
    iter_rows,
    read_table,
    table_path,
)

__all__ = [
    # the dataset level (this module)
    "Dataset",
    "HasTowers",
    "Interaction",
    "catalog_rows",
    "check_catalog_columns",
    "load_dataset",
    "read_interactions",
    "user_rows",
    # re-exported from models.readers
    "Column",
    "columns_of",
    "has_table",
    "iter_jsonl",
    "iter_rows",
    "read_table",
    "table_path",
    # re-exported from models.catalog_batches
    "CatalogBatch",
    "CatalogFile",
    "arrow_catalog_batch",
]


class Interaction(NamedTuple):
    user_id: str
    item_id: str
    timestamp: float  # the row number when the data has no timestamp column: file order is time order


class HasTowers(Protocol):
    """A schema file (`models.schema.SchemaFile`) or a resolved schema (`FeatureSchema`)."""

    @property
    def user(self) -> TowerSchema: ...

    @property
    def item(self) -> TowerSchema: ...

    @property
    def layout(self) -> DataLayout: ...


@dataclass(frozen=True)
class Dataset:
    """Users and items keyed by id (raw feature dicts, id included), interactions in file order."""

    users: Mapping[str, dict[str, Any]]
    items: Mapping[str, dict[str, Any]]
    interactions: list[Interaction] = field(default_factory=list)
    layout: DataLayout = field(default_factory=DataLayout)

    def histories(self) -> dict[str, list[Interaction]]:
        """Each user's interactions in timestamp order (ties keep file order)."""
        out: dict[str, list[Interaction]] = {}
        for it in self.interactions:
            out.setdefault(it.user_id, []).append(it)
        for rows in out.values():
            rows.sort(key=lambda r: r.timestamp)
        return out


def read_interactions(
    path: Path,
    layout: DataLayout,
    users: Collection[str] | None = None,
    items: Collection[str] | None = None,
) -> list[Interaction]:
    """The interactions table in file order; a missing timestamp column makes file order the time.
    With `users` / `items`, an interaction naming anything else is an error."""
    cols: dict[str, tuple[Column, FieldSpec | None]] = {
        layout.inter_user: ("id", None),
        layout.inter_item: ("id", None),
    }
    out: list[Interaction] = []
    ts_col = layout.timestamp
    labels = {
        layout.inter_user: "the interactions' user column",
        layout.inter_item: "the interactions' item column",
        **({ts_col: "the interactions' timestamp column"} if ts_col else {}),
    }
    read = iter_rows(path, cols | ({ts_col: ("any", None)} if ts_col else {}), labels=labels)
    for n, (where, row) in enumerate(read):
        uid, iid = row[layout.inter_user], row[layout.inter_item]
        if uid is None or iid is None:
            raise DataError(f"{where}: a user and an item are required, got {uid!r}, {iid!r}")
        if users is not None and uid not in users:
            raise DataError(f"{where}: unknown user {uid!r} (not in the users table)")
        if items is not None and iid not in items:
            raise DataError(f"{where}: unknown item {iid!r} (not in the items table)")
        if ts_col is None:
            ts = float(n)
        elif row.get(ts_col) is None:
            raise DataError(f"{where}: column {ts_col!r}: missing timestamp")
        else:
            ts = _timestamp(row[ts_col], where, ts_col)
        out.append(Interaction(uid, iid, ts))
    return out


def load_dataset(data_dir: Path, schema: HasTowers) -> Dataset:
    """Read and check users, items and interactions as the schema describes them (training)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a directory")
    layout = schema.layout
    users = read_table(table_path(data_dir, layout.users), schema.user, layout.user_id)
    items = read_table(table_path(data_dir, layout.items), schema.item, layout.item_id)
    path = table_path(data_dir, layout.interactions)
    inter = read_interactions(path, layout, users, items)
    if not inter:
        raise DataError(f"{path}: no interactions")
    return Dataset(users=users, items=items, interactions=inter, layout=layout)


def user_rows(
    data_dir: Path,
    layout: DataLayout | None = None,
    schema: HasTowers | None = None,
    keep_others: bool = False,
) -> dict[str, dict[str, Any]]:
    """What a feature store keeps per user: {user_id: features, with every history key holding the
    user's items in time order}. The id is the key, not a feature. With a schema, its layout names
    the tables and columns and its user fields are checked and converted; `keep_others` keeps the
    columns it does not read as well."""
    layout = schema.layout if schema is not None else (layout or DataLayout())
    users = read_table(
        table_path(data_dir, layout.users), schema.user if schema else None, layout.user_id, keep_others
    )
    events = read_interactions(table_path(data_dir, layout.interactions), layout)
    for row in users.values():
        row.pop(layout.user_id, None)
        for key in layout.history:
            row[key] = []
    for it in sorted(events, key=lambda e: e.timestamp):
        user = users.get(it.user_id)
        if user is None:
            user = users[it.user_id] = {key: [] for key in layout.history}
        for key in layout.history:
            user[key].append(it.item_id)
    return users


def catalog_rows(
    data_dir: Path,
    layout: DataLayout | None = None,
    schema: HasTowers | None = None,
    keep_others: bool = False,
) -> CatalogFile:
    """Stream the items table (id included, as a string): the catalog an index build encodes.
    With a schema, as `user_rows`. The result iterates rows; its `batches()` gives the same
    rows as columns (the index build's path)."""
    layout = schema.layout if schema is not None else (layout or DataLayout())
    path = table_path(data_dir, layout.items)
    columns: dict[str, tuple[Column, FieldSpec | None]] = (
        columns_of(schema.item) if schema is not None else {layout.item_id: ("id", None)}
    )
    return CatalogFile(path, columns, layout.item_id, keep_others or schema is None)


# Here, not in models.catalog_batches: it takes a schema (`HasTowers`, this module's), and the
# column path must not import the dataset level.
def check_catalog_columns(path: Path, names: Collection[str], schema: HasTowers) -> None:
    """Refuse a catalog file (read elsewhere, e.g. by Ray Data) whose columns `names` lack the id
    column or a field without a default: the message `catalog_rows` gives for the same file."""
    _check_header(path, set(names), columns_of(schema.item), {})
