"""Render the README's configuration table from the Settings class (`python -m app.settings_doc`)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pydantic import BaseModel

from app.settings import Settings

DESCRIPTIONS = {
    "MODEL_STORE": "model store: `<dir>/<version>/{user_tower,item_tower}.onnx` + `manifest.json`",
    "INDEX_STORE": "index store: `<dir>/<version>/<build_id>/` and a `CURRENT` pointer per version",
    "DATA_DIR": "data files for the in-process feature store and for builds without Redis",
    "MODEL_VERSIONS": "JSON list of versions to serve; empty = every version in the model store",
    "REDIS_URL": "Redis for features, catalog, aliases, jobs and locks; unset = in-process store (one node)",
    "REDIS_TIMEOUT_S": "timeout of every Redis call",
    "REDIS_PREFIX": "key prefix in Redis",
    "ADMIN_TOKEN": "bearer token of the admin routes; unset = admin disabled (403)",
    "WORKER": "run the reindex worker inside the API process",
    "REINDEX_INTERVAL_S": "periodic reindex of every served version; 0 = only on request",
    "REINDEX_ON_START": "queue a build for a version that has no index at start",
    "POLL_INTERVAL_S": "how often a replica looks for new builds and aliases",
    "MODEL_POLL_S": "how often a replica looks for new versions in the model store (loaded, then "
    "built once, without a restart); 0 = only at start",
    "CHANGES_POLL_S": "how often a replica reads the catalog change log (`PUT`/`DELETE /admin/items` taken "
    "by other replicas)",
    "REPLICA_TTL_S": "a replica's record of what it serves expires this long after its last poll (at least "
    "3 polls); alias moves wait only for live replicas",
    "LOCK_TTL_S": "expiry of a version's build lock (renewed every third of it)",
    "SHUTDOWN_DRAIN_S": "on SIGTERM, readiness answers 503 this long before the listener closes",
    "LOG_LEVEL": "log level",
    "LIMITS__MAX_K": "largest `k`",
    "LIMITS__DEFAULT_K": "`k` when omitted",
    "LIMITS__MAX_SCORE_ITEMS": "largest `/score` batch",
    "LIMITS__MAX_EXCLUDE": "exclusion budget of one `/recall`: `exclude_item_ids` (422 beyond) plus the "
    "most recent history entries that fit (older ones are not excluded)",
    "LIMITS__MAX_BODY_BYTES": "largest request body (413 beyond, before parsing)",
    "LIMITS__MAX_ID_LENGTH": "longest id a client sends: `user_id`, `items[].item_id`, `exclude_item_ids`, "
    "history entries",
    "LIMITS__MAX_UPSERT_ITEMS": "most items in one `PUT /admin/items` (422 beyond, nothing applied)",
    "INDEX__EXACT_THRESHOLD": "catalogs up to this size get an exact inner-product index, larger ones ANN",
    "INDEX__ANN_FACTORY": "Faiss factory string of the ANN kind; unset = the cheapest measured of IVF-Flat "
    "(two nlist) and IVF-SQ8 at the recall floor (docs/INDEX.md)",
    "INDEX__RECALL_FLOOR": "an ANN build must reach this recall@k against exact search, or is refused",
    "INDEX__RECALL_K": "the k of that recall",
    "INDEX__BATCH_SIZE": "items per item-tower batch during a build",
    "INDEX__BUILD_THREADS": "ONNX Runtime and Faiss threads of a build run by hand (`twotower reindex`)",
    "INDEX__KEEP_BUILDS": "builds kept per version (the current one is never pruned)",
    "INDEX__BUILD_CHILD_THREADS": "threads of the worker's build child, beside the serving processes",
    "INDEX__BUILD_SCHED": "scheduling class of the worker's build child: `idle` (Linux SCHED_IDLE: only CPU "
    "no request wants) or `normal` (at `BUILD_NICE`)",
    "INDEX__BUILD_NICE": "niceness of the worker's build child when `BUILD_SCHED=normal`",
    "INDEX__BUILD_CPU_SHARE": "share of the wall clock the worker's build child may run "
    "(a SIGSTOP/SIGCONT duty cycle); 1 = no cap",
    "INDEX__BUILD_MIN_SHARE": "a SCHED_IDLE build child that queued for a CPU most of a 10 s window yet ran "
    "under this share of a core moves to the normal class at `BUILD_NICE` (0 = never)",
    "INDEX__MAX_SHRINK": "a build whose catalog is smaller than this share of the current build's is "
    'refused (0 = off; override: `reindex --allow-shrink`, `{"allow_shrink": true}`)',
    "INDEX__ENGINE": "who encodes the catalog in a build: `local` or `ray` (the ray extra; docs/SCALE.md)",
    "INDEX__RAY_ADDRESS": "the Ray cluster of the ray engine; unset = a one-node Ray inside the build",
    "INDEX__RAY_ACTOR_THREADS": "ONNX Runtime threads of each Ray actor (Ray sets OMP_NUM_THREADS=1)",
    "RUNTIME__ONNX_INTRA_THREADS": "ONNX Runtime threads per request (user tower, item tower in /score)",
    "RUNTIME__ONNX_SPINNING": "let ONNX Runtime spin-wait between calls (burns a core; off)",
    "RUNTIME__FAISS_THREADS": "Faiss threads per search (one query per request: 1 is fastest here)",
    "RUNTIME__COMPUTE_IN_THREAD": "tower + search in a worker thread (true) or inline (false); "
    "unset = inline except searches of a large exact index",
    "RUNTIME__THREAD_ABOVE_EXACT_ITEMS": "with the above unset: exact indexes over this size use a thread",
    "FILTERS__EXACT_BELOW": "a `filter` keeping at most this share of the catalog is answered by an exact "
    "scan of its rows; broader ones search the index (with a Faiss IDSelector, or, on IVF from 35% kept, "
    "unfiltered and kept afterwards: the same answer)",
    "FILTERS__EXACT_BELOW_HNSW": "the same share for an HNSW index",
    "FILTERS__MAX_VALUES": "most values in one `any` / `all` / `none` list of a `filter`",
}


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += rows(ann, f"{prefix}{name.upper()}__")
            continue
        default = field.default
        if name == "model_store":
            shown = "the packaged demo"
        elif default is None:
            shown = "unset"
        elif isinstance(default, Path | str):
            shown = str(default)
        else:
            shown = json.dumps(default)
        out.append((f"{prefix}{name.upper()}", shown))
    return out


def table() -> str:
    lines = ["| variable | default | what |", "| --- | --- | --- |"]
    for key, default in rows(Settings):
        lines.append(f"| `TWOTOWER_{key}` | `{default}` | {DESCRIPTIONS.get(key, '')} |")
    return "\n".join(lines)


def update_readme(path: Path) -> bool:
    """Rewrite the table between the README's settings markers; True if it changed."""
    text = path.read_text()
    new = re.sub(
        r"(<!-- settings:start -->\n).*?(\n<!-- settings:end -->)",
        lambda m: m.group(1) + table() + m.group(2),
        text,
        flags=re.S,
    )
    path.write_text(new)
    return new != text


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        update_readme(Path("README.md"))
    else:
        print(table())
