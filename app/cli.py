"""`twotower`: one console script, a subcommand per everyday path (see DESIGN.md, Commands)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from app.settings import Settings, load_settings
from models import cli as models_cli
from models.errors import BuildRefused, TwoTowerError

log = logging.getLogger("twotower")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


# --- reindex ------------------------------------------------------------------------------------


def _catalog(settings: Settings) -> Iterator[dict[str, Any]]:
    from app.features import RedisStore, iter_catalog_file

    if settings.redis_url:
        return RedisStore(settings.redis_url, settings.redis_timeout_s, settings.redis_prefix).iter_catalog()
    if settings.data_dir is None:
        raise TwoTowerError("no catalog: set TWOTOWER_DATA_DIR or TWOTOWER_REDIS_URL")
    return iter_catalog_file(Path(settings.data_dir))


class _SyncLock:
    """The version lock for a standalone `twotower reindex` against Redis (the worker holds its own)."""

    def __init__(self, settings: Settings, version: str) -> None:
        import redis

        self.client = redis.Redis.from_url(
            settings.redis_url or "", socket_timeout=settings.redis_timeout_s * 4
        )
        self.key = f"{settings.redis_prefix}lock:{version}"
        self.token = uuid.uuid4().hex
        self.ttl_ms = int(settings.lock_ttl_s * 1000)
        self._stop = threading.Event()

    def __enter__(self) -> _SyncLock:
        while not self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            log.info("waiting for the lock on %s (another worker is building it)", self.key)
            time.sleep(1.0)
        threading.Thread(target=self._renew, daemon=True).start()
        return self

    def _renew(self) -> None:
        from app.features import _RENEW

        while not self._stop.wait(self.ttl_ms / 3000):
            with contextlib.suppress(Exception):
                self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms)

    def __exit__(self, *exc: object) -> None:
        from app.features import _RELEASE

        self._stop.set()
        with contextlib.suppress(Exception):
            self.client.eval(_RELEASE, 1, self.key, self.token)

    def holder(self) -> str | None:
        from app.features import _text

        raw = self.client.get(self.key)
        return _text(raw)


def index_config(settings: Settings) -> Any:
    from index_store.build import IndexConfig

    s = settings.index
    config = IndexConfig(
        exact_threshold=s.exact_threshold,
        recall_floor=s.recall_floor,
        recall_k=s.recall_k,
        batch_size=s.batch_size,
        threads=s.build_threads,
        keep_builds=s.keep_builds,
    )
    return dataclasses.replace(config, ann_factory=s.ann_factory) if s.ann_factory else config


def cmd_reindex(args: argparse.Namespace) -> int:
    from app.features import sample_users
    from index_store.store import IndexStore
    from index_store.threads import set_faiss_threads
    from models.manifest import list_versions

    settings = load_settings()
    if args.json_progress and settings.index.build_nice:  # a worker's child: yield the CPU to requests
        os.nice(settings.index.build_nice)
    set_faiss_threads(settings.index.build_threads)
    versions = (
        [args.model_version]
        if args.model_version
        else (settings.model_versions or list_versions(Path(settings.model_store)))
    )
    if not versions:
        print(f"no model version in {settings.model_store}", file=sys.stderr)
        return 2
    store = IndexStore(Path(settings.index_store), keep=settings.index.keep_builds)
    for version in versions:
        if args.if_missing and store.current_build(version) is not None:
            print(f"{version}: build {store.current_build(version)} is current; nothing to do")
            continue

        def progress(n: int, version: str = version) -> None:
            if args.json_progress:
                print(json.dumps({"items": n}), flush=True)
            else:
                log.info("%s: %d items encoded", version, n)

        with contextlib.ExitStack() as stack:
            fence: Callable[[], None] | None = None
            if settings.redis_url and args.fence_token:
                from app.features import RedisStore

                rs = RedisStore(settings.redis_url, settings.redis_timeout_s, settings.redis_prefix)
                token = args.fence_token

                def fence(rs: RedisStore = rs, token: str = token, version: str = version) -> None:
                    if rs.lock_holder(version) != token:
                        raise BuildRefused(
                            f"lock on {version} lost before publish: stale build not published"
                        )

            elif settings.redis_url:
                lock = stack.enter_context(_SyncLock(settings, version))

                def fence(lock: _SyncLock = lock, version: str = version) -> None:
                    if lock.holder() != lock.token:
                        raise BuildRefused(
                            f"lock on {version} lost before publish: stale build not published"
                        )

            build_id = store.build(
                Path(settings.model_store),
                version,
                _catalog(settings),
                index_config(settings),
                fence=fence,
                build_id=args.build_id,
                progress=progress,
                users=sample_users(settings, index_config(settings).sample_queries),
            )
        if args.json_progress:
            print(json.dumps({"build_id": build_id, "model_version": version}), flush=True)
        else:
            print(f"{version}: build {build_id} is current in {settings.index_store}")
    return 0


# --- load, worker, serve ------------------------------------------------------------------------


def cmd_load(args: argparse.Namespace) -> int:
    from app.features import load_into_redis

    settings = load_settings()
    if not settings.redis_url:
        print(
            "TWOTOWER_REDIS_URL is not set: the in-process store reads the data files directly",
            file=sys.stderr,
        )
        return 2
    users, items = load_into_redis(settings.redis_url, Path(args.data), settings.redis_prefix)
    print(f"loaded {users} users and {items} items into {settings.redis_url.split('@')[-1]}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app.features import make_store
    from app.metrics import Metrics
    from app.worker import Worker
    from models.manifest import list_versions

    settings = load_settings()

    async def main() -> None:
        metrics = Metrics()
        store = make_store(settings, on_error=lambda op: metrics.store_errors.labels(op).inc())
        worker = Worker(
            settings,
            store,
            metrics,
            lambda: settings.model_versions or list_versions(Path(settings.model_store)),
        )
        task = asyncio.create_task(worker.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        log.info("worker started (store: %s)", store.kind)
        try:
            await task
        except asyncio.CancelledError:
            worker.stop()
        finally:
            await store.close()

    asyncio.run(main())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = load_settings()
    if args.no_worker:
        settings.worker = False
    if args.announce and settings.admin_token is None:
        settings.admin_token = SecretStr(secrets.token_urlsafe(24))
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
    )

    class DrainingServer(uvicorn.Server):
        """On SIGTERM: readiness turns 503 first, the listener closes after the drain delay."""

        draining = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.draining or settings.shutdown_drain_s <= 0:
                super().handle_exit(sig, frame)
                return
            self.draining = True
            service = getattr(app.state, "service", None)
            if service is not None:
                service.draining = True
            log.info("signal %s: draining for %.1fs before closing", sig, settings.shutdown_drain_s)
            threading.Timer(settings.shutdown_drain_s, super().handle_exit, (sig, frame)).start()

    server = DrainingServer(config)
    if args.announce:
        threading.Thread(target=_announce, args=(server, settings, args.host, args.port), daemon=True).start()
    server.run()
    return 0


def _announce(server: Any, settings: Settings, host: str, port: int) -> None:
    while not server.started:
        time.sleep(0.1)
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    base = f"http://{host}:{port}"
    # Printed once to the terminal for the person who ran `make serve`; never to the log.
    print(
        f"\ntwotower is serving on {base}\n"
        f"  admin token: {token}\n"
        f"  try: curl -s -X POST {base}/recall -H 'content-type: application/json' "
        '-d \'{"user_id":"196","k":10}\'\n'
        f"       curl -s -X POST {base}/admin/reindex -H 'authorization: Bearer {token}'\n",
        flush=True,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    if (Path.cwd() / "bench" / "run.py").exists():
        sys.path.insert(0, str(Path.cwd()))  # the console script's sys.path holds its own dir, not cwd
    try:
        run = importlib.import_module("bench.run")
    except ImportError:
        print("twotower bench runs from a source checkout (the bench/ folder)", file=sys.stderr)
        return 2
    return int(run.main(args.rest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twotower", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    models_cli.register(sub)
    models_cli.register_import(sub, lambda: load_settings().model_store)

    p = sub.add_parser("load", help="load user features and the item catalog into Redis")
    p.add_argument("--data", required=True, help="a data directory in the project's format")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("reindex", help="build, verify and activate an index (same code path as the worker)")
    p.add_argument("--model-version", help="one version (default: every version in the model store)")
    p.add_argument("--if-missing", action="store_true", help="only versions without a current build")
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
