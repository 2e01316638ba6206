"""`twotower`: one console script, a subcommand per everyday path (see DESIGN.md, Commands)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import secrets
import sys
from pathlib import Path

from pydantic import SecretStr

from app.settings import load_settings
from models import cli as models_cli
from models.errors import TwoTowerError

log = logging.getLogger("twotower")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


# --- the commands: each parses nothing more and calls the module that does the work -------------


def cmd_reindex(args: argparse.Namespace) -> int:
    from app.reindex.build import reindex

    return reindex(
        load_settings(),
        model_version=args.model_version,
        if_missing=args.if_missing,
        build_id=args.build_id,
        fence_token=args.fence_token,
        json_progress=args.json_progress,
        allow_shrink=args.allow_shrink,
    )


def cmd_load(args: argparse.Namespace) -> int:
    from app.catalog import data_schema, describe, version_schema
    from app.state import ALIAS_FILE
    from app.state.aliases import AliasFile
    from app.state.load import load_into_redis, redis_aliases
    from models.data import HasTowers
    from models.layout import DataLayout
    from models.manifest import list_versions
    from models.schema import load_schema

    settings = load_settings()
    if not settings.redis_url:
        print(
            "TWOTOWER_REDIS_URL is not set: the in-process store reads the data files directly",
            file=sys.stderr,
        )
        return 2
    schema: HasTowers | None
    if args.schema:
        schema, whose = load_schema(args.schema), f"schema {args.schema}"
    elif args.model_version:
        tag = args.model_version
        if tag not in list_versions(Path(settings.model_store)):  # an alias names a version too
            tag = redis_aliases(settings.redis_url, settings.redis_prefix).get(tag, tag)
        schema, whose = version_schema(settings, tag), f"model version {tag}"
    else:
        aliases = redis_aliases(settings.redis_url, settings.redis_prefix)
        if not aliases:  # a Redis restarted empty: the mirror beside the index store still knows
            aliases = AliasFile(Path(settings.index_store) / ALIAS_FILE).read() or {}
        schema = data_schema(settings, aliases)
        whose = "the served model versions" if schema is not None else "no model version: the defaults"
    layout = schema.layout if schema is not None else DataLayout()
    log.info("reading %s with the names of %s: %s", args.data, whose, describe(layout))
    users, items = load_into_redis(settings.redis_url, Path(args.data), settings.redis_prefix, schema=schema)
    print(f"loaded {users} users and {items} items into {settings.redis_url.split('@')[-1]} ({whose})")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app.reindex.worker import run_worker

    asyncio.run(run_worker(load_settings()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from app.serve import serve
    from app.supervisor import Supervisor, default_workers

    settings = load_settings()
    workers = args.workers if args.workers is not None else default_workers(settings)
    if workers > 1 and not settings.redis_url:
        print(
            "--workers above 1 needs TWOTOWER_REDIS_URL: jobs, locks and replica records are shared "
            "through Redis (the in-process store lives in one process)",
            file=sys.stderr,
        )
        return 2
    if workers == 1:
        serve(settings, args.host, args.port, no_worker=args.no_worker, announce=args.announce)
        return 0
    if args.no_worker:
        settings.worker = False
    if args.announce and settings.admin_token is None:  # one token for every process
        settings.admin_token = SecretStr(secrets.token_urlsafe(24))
    return Supervisor(settings, args.host, args.port, workers, args.announce).run()


def cmd_bench(args: argparse.Namespace) -> int:
    if (Path.cwd() / "bench" / "run.py").exists():
        sys.path.insert(0, str(Path.cwd()))  # the console script's sys.path holds its own dir, not cwd
    try:
        run = importlib.import_module("bench.run")
    except ImportError:
        print("twotower bench runs from a source checkout (the bench/ folder)", file=sys.stderr)
        return 2
    return int(run.main(args.rest))


def _positive(raw: str) -> int:
    n = int(raw)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twotower", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    models_cli.register(sub)
    models_cli.register_import(sub, lambda: load_settings().model_store)

    p = sub.add_parser("load", help="load user features and the item catalog into Redis")
    p.add_argument("--data", required=True, help="a data directory (Parquet, CSV or JSON lines)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--schema", help="read the files with this schema file's names")
    which.add_argument(
        "--model-version",
        help="read them with this version's (or alias's) names (default: the served versions')",
    )
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("reindex", help="build, verify and activate an index (same code path as the worker)")
    p.add_argument("--model-version", help="one version (default: every version in the model store)")
    p.add_argument("--if-missing", action="store_true", help="only versions without a current build")
    p.add_argument(
        "--allow-shrink",
        action="store_true",
        help="build even if the catalog shrank below index.max_shrink of the current build's",
    )
    p.add_argument("--build-id", help=argparse.SUPPRESS)
    p.add_argument("--fence-token", help=argparse.SUPPRESS)
    p.add_argument("--json-progress", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("worker", help="the reindex worker alone (for deployments that run it apart)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("serve", help="the API (uvicorn), with the worker inside unless --no-worker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-worker", action="store_true")
    p.add_argument(
        "--workers",
        type=_positive,
        help="serving processes on the port, each a full replica "
        "(default: the usable cores with TWOTOWER_REDIS_URL, else 1)",
    )
    p.add_argument("--announce", action="store_true", help="print an admin token and a working curl")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help="the benchmark (from a source checkout)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(load_settings().log_level if args.command != "train" else "INFO")
    try:
        return int(args.func(args))
    except TwoTowerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
