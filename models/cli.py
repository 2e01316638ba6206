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
    p.add_argument("--data", required=True, type=Path, help="a data directory in the project's format")
    p.add_argument("--model-store", required=True, type=Path, help="model store to write the version into")
    p.add_argument("--version", help="version tag (default: UTC timestamp); existing tags are refused")
    p.add_argument("--epochs", type=_positive_int, help="maximum epochs (early stopping on val Recall@50)")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=_positive_float)
    p.add_argument("--temperature", type=_positive_float)
    p.add_argument("--dim", type=_positive_int, help="embedding dimension")
    p.add_argument("--history-len", type=_positive_int)
    p.add_argument("--seed", type=int)
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


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {raw!r}")
    return value


def cmd_data(args: argparse.Namespace) -> int:
    from models.data import fetch_ml100k, load_dataset

    try:
        fetch_ml100k(args.out)
        ds = load_dataset(args.out)
    except TwoTowerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: {len(ds.users)} users, {len(ds.items)} items, {len(ds.interactions)} interactions"
    )
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
            "history_len",
            "seed",
            "senet",
            "logq",
            "mns",
        )
        if getattr(args, k) is not None
    }
    start = time.monotonic()
    try:
        path = train_and_export(args.data, args.model_store, args.version, TrainConfig(**overrides))
    except TwoTowerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote model version {path.name} to {path.parent} in {time.monotonic() - start:.0f}s")
    return 0
