"""The `data` and `train` subcommands of `twotower`; torch is imported only inside `train`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from models.errors import TwoTowerError


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
