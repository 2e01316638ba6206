"""The `data`, `train` and `import` subcommands of `twotower`; torch is imported only inside `train`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from models.errors import TwoTowerError

DEMO_STORE = Path(__file__).resolve().parent / "demo"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("data", help="fetch a dataset and write it in the project's format")
    p.add_argument("dataset", choices=["ml-100k"], help="MovieLens-100k, from the recbole wheel on PyPI")
    p.add_argument("--out", required=True, type=Path, help="directory to create (must not exist or be empty)")
    p.set_defaults(func=cmd_data)

    p = subparsers.add_parser(
        "train", help="train both towers, evaluate, export ONNX + manifest as a new version (needs [train])"
    )
    p.add_argument(
        "--schema", required=True, type=Path, help="schema file (TOML; see docs/MODEL.md, 'Schema file')"
    )
    p.add_argument(
        "--data", required=True, type=Path, help="directory of the users, items and interactions tables"
    )
    p.add_argument("--model-store", required=True, type=Path, help="model store to write the version into")
    p.add_argument("--version", help="version tag (default: UTC timestamp); existing tags are refused")
    p.add_argument("--epochs", type=_positive_int, help="maximum epochs (early stopping on val Recall@50)")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=_positive_float)
    p.add_argument("--temperature", type=_positive_float)
    p.add_argument("--dim", type=_positive_int, help="embedding dimension (both towers)")
    p.add_argument("--field-dim", type=_positive_int, help="width of each field's embedding")
    p.add_argument("--hidden", type=_widths, help="MLP widths, e.g. 256,128; 'none' for no MLP")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-minutes", type=_positive_float, help="wall-clock cap for the training loop")
    p.add_argument("--no-senet", dest="senet", action="store_false", default=None, help="no field gating")
    p.add_argument("--no-logq", dest="logq", action="store_false", default=None, help="no logQ correction")
    p.add_argument("--mns", dest="mns", action="store_true", default=None, help="mixed negative sampling")
    p.add_argument(
        "--hard-negatives",
        dest="hard_negatives",
        action="store_true",
        default=None,
        help="hard negatives mined by the previous epoch's model (EBR)",
    )
    p.add_argument(
        "--dat",
        dest="dat",
        action="store_true",
        default=None,
        help="Dual Augmented Two-Tower (augmented vectors)",
    )
    p.add_argument(
        "--pooling", choices=["mean", "attention"], help="pooling of sequence fields (the history)"
    )
    p.set_defaults(func=cmd_train)


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}")
    return value


def _widths(raw: str) -> tuple[int, ...]:
    if raw.strip().lower() in ("", "none", "0"):
        return ()
    return tuple(_positive_int(w) for w in raw.split(","))


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {raw!r}")
    return value


def cmd_data(args: argparse.Namespace) -> int:
    from models.data import catalog_rows, user_rows
    from models.ml100k import fetch_ml100k

    try:
        fetch_ml100k(args.out)
        users = user_rows(args.out)
        items = sum(1 for _ in catalog_rows(args.out))
    except TwoTowerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    events = sum(len(u.get("history", ())) for u in users.values())
    print(f"wrote {args.out}: {len(users)} users, {items} items, {events} interactions")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401  (checked first: a clear message beats a traceback deep in the import)
    except ImportError:
        print("error: training needs PyTorch: pip install -e '.[train]'", file=sys.stderr)
        return 2
    from models.training.train import TrainConfig, train_and_export

    overrides = {
        k: getattr(args, k)
        for k in (
            "epochs",
            "batch_size",
            "lr",
            "temperature",
            "dim",
            "field_dim",
            "hidden",
            "seed",
            "max_minutes",
            "senet",
            "logq",
            "mns",
            "hard_negatives",
            "dat",
            "pooling",
        )
        if getattr(args, k) is not None
    }
    start = time.monotonic()
    try:
        path = train_and_export(
            args.schema, args.data, args.model_store, args.version, TrainConfig(**overrides)
        )
    except TwoTowerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote model version {path.name} to {path.parent} in {time.monotonic() - start:.0f}s")
    return 0


def register_import(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], default_model_store: Callable[[], Path]
) -> None:
    """`twotower import`; `default_model_store` is the service's setting, read only when needed."""
    p = subparsers.add_parser(
        "import",
        help="check a user and an item ONNX tower trained elsewhere against a schema; register them",
        description="Registers towers trained anywhere as a new immutable model version, after checking "
        "every ONNX input against the schema (name, dtype, rank), the output dims, and finite vectors "
        "on sample rows synthesised from the schema. See docs/BRING_YOUR_MODEL.md.",
    )
    p.add_argument(
        "--schema", required=True, type=Path, help="the schema file (TOML) the towers were trained on"
    )
    p.add_argument("--user-tower", required=True, type=Path, help="the user tower, ONNX")
    p.add_argument("--item-tower", required=True, type=Path, help="the item tower, ONNX")
    p.add_argument("--version", help="version tag (default: UTC timestamp); existing tags are refused")
    p.add_argument(
        "--similarity",
        choices=["cosine", "dot"],
        default="cosine",
        help="cosine: vectors L2-normalised by the service; dot: raw inner product (default: cosine)",
    )
    p.add_argument("--model-store", type=Path, help="default: TWOTOWER_MODEL_STORE")
    p.add_argument(
        "--sample-data", type=Path, help="a data directory whose rows are run through the towers too"
    )
    p.add_argument(
        "--allow-unused-fields",
        action="store_true",
        help="accept schema fields a tower has no input for (e.g. item fields kept only for filters)",
    )
    p.set_defaults(func=cmd_import, default_model_store=default_model_store)


def cmd_import(args: argparse.Namespace) -> int:
    from models.importer import import_version, load_import_schema
    from models.samples import read_sample_rows

    store: Path = args.model_store or args.default_model_store()
    if DEMO_STORE in (store.resolve(), *store.resolve().parents):
        print(
            f"error: {store} is the demo model store inside the package; "
            "set TWOTOWER_MODEL_STORE or pass --model-store",
            file=sys.stderr,
        )
        return 2
    try:
        schema = load_import_schema(args.schema)
        extra = read_sample_rows(schema, args.sample_data) if args.sample_data else None
        imported = import_version(
            store,
            schema,
            args.user_tower,
            args.item_tower,
            version=args.version,
            similarity=args.similarity,
            allow_unused=args.allow_unused_fields,
            extra_rows=extra,
            provenance={"schema_file": str(args.schema)},
        )
    except TwoTowerError as exc:
        print(f"error: refused: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the store cannot be written (full, read-only): nothing was left in it
        print(f"error: cannot write to {store}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for side, check in imported.checks.items():
        print(
            f"{side} tower {check.path}: {len(check.inputs)} inputs match the schema, output "
            f"{check.output!r} [batch, {check.dim}], {check.rows_checked} rows give finite vectors"
        )
        for note in check.notes:
            print(f"  note: {note}")
    m = imported.manifest
    print(f"wrote model version {m.version} ({m.similarity}, dim {m.dim}) to {imported.path.parent}")
    return 0
