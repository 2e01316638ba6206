"""The ablation runner: each configuration trained with several seeds on the same temporal split,
Recall@10/50/100 and NDCG@10 on validation and test as mean ± std, next to most-popular and ALS.

    python -m models.training.ablation --schema examples/movielens/schema.toml --data data/ml-100k \
        --seeds 5 --epochs 12 --results var/ablation.jsonl --table docs/ablation-table.md

Every finished run is appended to `--results` (JSON lines) and skipped when the command is run
again, so a long run can be stopped and resumed; the table is rendered from that file.
Each run uses a fixed epoch budget and keeps the epoch with the best validation Recall@50 (the
same rule `twotower train` uses); validation picks, test only reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.data import load_dataset
from models.schema import load_schema
from models.training.baselines import AlsParams, als_scores
from models.training.evaluate import KS, eval_set, popularity_scores, rank_metrics
from models.training.prepare import Prepared, prepare, with_history_len
from models.training.train import TrainConfig, run_eval, train_model

log = logging.getLogger(__name__)

METRICS = tuple(f"recall@{k}" for k in KS) + ("ndcg@10",)
STAGES = ("valid", "test")


@dataclass(frozen=True)
class Row:
    name: str
    what: str
    overrides: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields
    history: int | None = None  # max_len of the from_interactions fields (None: the schema's)
    baseline: bool = True  # overrides apply on top of BASELINE (False: on TrainConfig's defaults)


# The configuration the ablation started from (the defaults before it): each row changes one thing
# from it, so each row measures one technique. `shipped` is TrainConfig as it is now.
BASELINE: Mapping[str, Any] = {"pooling": "mean"}
ROWS: tuple[Row, ...] = (
    Row("baseline", "the defaults before the ablation (mean pooling, history 50)"),
    Row("shipped", "the shipped TrainConfig (attention pooling)", baseline=False),
    Row("logq-off", "no logQ correction", {"logq": False}),
    Row("temp-0.05", "temperature 0.05", {"temperature": 0.05}),
    Row("temp-0.1", "temperature 0.1", {"temperature": 0.1}),
    Row("temp-0.2", "temperature 0.2", {"temperature": 0.2}),
    Row("senet-off", "no SENet field gating", {"senet": False}),
    Row("mns-1024", "mixed negative sampling, 1024 uniform items a step", {"mns": True, "mns_uniform": 1024}),
    Row("mns-4096", "mixed negative sampling, 4096 uniform items a step", {"mns": True, "mns_uniform": 4096}),
    Row("hard-neg", "hard negatives (EBR), ranks 20-200 by the previous epoch", {"hard_negatives": True}),
    Row("dat", "Dual Augmented Two-Tower: augmented vectors + mimic + category alignment", {"dat": True}),
    Row("hist-10", "history: last 10 items", history=10),
    Row("hist-20", "history: last 20 items", history=20),
    Row("hist-100", "history: last 100 items", history=100),
    Row(
        "attention", "attention pooling over the history (learned query + recency)", {"pooling": "attention"}
    ),
    # from the default (attention pooling): history lengths with attention, one thing changed each
    Row("att-hist-10", "attention, history: last 10 items", {"pooling": "attention"}, history=10),
    Row("att-hist-20", "attention, history: last 20 items", {"pooling": "attention"}, history=20),
    Row("att-hist-100", "attention, history: last 100 items", {"pooling": "attention"}, history=100),
)
ROW_BY_NAME = {r.name: r for r in ROWS}


def parse_row(spec: str) -> Row:
    """A named row, or an ad-hoc one: `name:key=value,key=value` (history=N sets the history)."""
    if spec in ROW_BY_NAME:
        return ROW_BY_NAME[spec]
    name, _, rest = spec.partition(":")
    if not rest:
        raise SystemExit(f"unknown row {spec!r}; known: {', '.join(ROW_BY_NAME)} or name:key=value,...")
    known = TrainConfig().to_dict()
    overrides: dict[str, Any] = {}
    history = None
    for part in rest.split(","):
        key, _, raw = part.partition("=")
        if key == "history":
            history = int(raw)
            continue
        if key not in known:
            raise SystemExit(f"row {name}: unknown TrainConfig field {key!r}")
        default = known[key]
        value: Any
        if isinstance(default, bool):
            value = raw.lower() in ("1", "true", "on", "yes")
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
        else:
            value = raw
        overrides[key] = value
    return Row(name, rest.replace(",", ", "), overrides, history)


def _stage_metrics(model_metrics: Mapping[str, float]) -> dict[str, float]:
    return {m: float(model_metrics[m]) for m in METRICS}


def run_row(prep: Prepared, row: Row, seed: int, base: TrainConfig) -> dict[str, Any]:
    config = replace(base, **{**(BASELINE if row.baseline else {}), **row.overrides, "seed": seed})
    model, info = train_model(prep, config)
    out: dict[str, Any] = {"row": row.name, "seed": seed, "config": config.to_dict()}
    for stage in STAGES:
        out[stage] = _stage_metrics(run_eval(model, prep, stage, baseline=False)["two_tower"])
    out.update(
        best_epoch=info["best_epoch"], epochs_run=info["epochs_run"], seconds=info["seconds"], what=row.what
    )
    return out


def run_baselines(
    prep: Prepared, seeds: Sequence[int], als: AlsParams, popular: bool = True
) -> list[dict[str, Any]]:
    """Most-popular (deterministic: one run) and ALS (one run per seed), on the same users."""
    out: list[dict[str, Any]] = []
    if popular:
        pop: dict[str, Any] = {"row": "most-popular", "seed": 0, "what": "train-split click counts"}
        for stage in STAGES:
            es = eval_set(prep.split, stage)
            scores = popularity_scores(prep.split, prep.item_ids, len(es.users))
            pop[stage] = _stage_metrics(rank_metrics(scores, prep.item_ids, es))
        out.append(pop)
    for seed in seeds:
        t0 = time.monotonic()
        rec: dict[str, Any] = {"row": "als", "seed": seed, "what": als.describe()}
        for stage in STAGES:
            es = eval_set(prep.split, stage)
            rec[stage] = _stage_metrics(rank_metrics(als_scores(prep, es, als, seed), prep.item_ids, es))
        rec["seconds"] = round(time.monotonic() - t0, 1)
        out.append(rec)
    return out


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fmt(values: Sequence[float]) -> str:
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.3f}"
    # sample standard deviation over seeds
    return f"{mean:.3f} ± {float(np.std(values, ddof=1)):.3f}"


def render_table(results: Sequence[Mapping[str, Any]], command: str) -> str:
    """Markdown: one row per configuration (in first-seen order), mean ± std over its seeds."""
    by_row: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    head = ["row", "what", "seeds"]
    head += [f"val {m.replace('recall', 'R').replace('ndcg', 'NDCG')}" for m in METRICS]
    head += [f"test {m.replace('recall', 'R').replace('ndcg', 'NDCG')}" for m in METRICS]
    head += ["epochs (best)", "s/run"]
    lines = [
        f"`{command}`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * 3 + " ---: |" * (len(head) - 3),
    ]
    for name, runs in by_row.items():
        cells = [name, str(runs[0].get("what", "")), str(len(runs))]
        for stage in STAGES:
            cells += [_fmt([r[stage][m] for r in runs]) for m in METRICS]
        best = [r["best_epoch"] for r in runs if "best_epoch" in r]
        cells.append(f"{runs[0]['epochs_run']} ({np.mean(best):.1f})" if best else "")
        secs = [r["seconds"] for r in runs if "seconds" in r]
        cells.append(f"{np.median(secs):.0f}" if secs else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.training.ablation", description=__doc__.split("\n")[0])
    p.add_argument("--schema", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--rows", default=",".join(r.name for r in ROWS), help="comma-separated row names")
    p.add_argument(
        "--row", action="append", default=[], help="an extra ad-hoc row: name:key=value,... (repeatable)"
    )
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=12, help="fixed epoch budget per run (no early stop)")
    p.add_argument("--results", required=True, type=Path, help="JSON lines, appended; done runs are skipped")
    p.add_argument("--table", type=Path, help="write the Markdown table here")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--tiny", action="store_true", help="small towers, for the CI smoke test")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: see TrainConfig)")
    p.add_argument(
        "--only-seeds", help="run just these of the seeds (e.g. 4,5): split one ablation over processes"
    )
    p.add_argument(
        "--render-only", action="store_true", help="train nothing: render the table from --results"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = [parse_row(s) for s in args.rows.split(",") if s] + [parse_row(s) for s in args.row]
    seeds = list(range(1, args.seeds + 1))
    if args.only_seeds:
        seeds = [int(x) for x in args.only_seeds.split(",")]
    base = TrainConfig(epochs=args.epochs, patience=args.epochs, threads=args.threads, max_minutes=1e6)
    if args.tiny:
        base = replace(base, dim=16, field_dim=8, hidden=(32,), batch_size=256)
    als = AlsParams.tiny() if args.tiny else AlsParams()
    command = " ".join(["python -m models.training.ablation", *(argv if argv is not None else sys.argv[1:])])
    if args.render_only:
        table = render_table(read_results(args.results), command)
        if args.table:
            args.table.write_text(table)
        print(table)
        return 0
    schema_file = load_schema(args.schema)
    data = load_dataset(args.data, schema_file)
    done = {(r["row"], r["seed"]) for r in read_results(args.results)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    preps: dict[int, Prepared] = {}

    def prep_for(row: Row) -> Prepared:
        sf = with_history_len(schema_file, row.history) if row.history else schema_file
        key = row.history or 0  # 0: the schema's own length
        if key not in preps:
            preps[key] = prepare(data, sf)
        return preps[key]

    def append(rec: Mapping[str, Any]) -> None:
        with args.results.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    if not args.no_baselines:
        # most-popular goes with seed 1, so processes splitting the seeds do not both write it
        popular = 1 in seeds and ("most-popular", 0) not in done
        todo = [s for s in seeds if ("als", s) not in done]
        if popular or todo:
            for rec in run_baselines(prep_for(Row("default", "")), todo, als, popular):
                append(rec)
    for seed in seeds:  # seed-major: every row gets its first seed before any gets its fifth
        for row in rows:
            if (row.name, seed) in done:
                continue
            rec = run_row(prep_for(row), row, seed, base)
            log.info(
                "%s seed %d: val R@50 %.4f test R@50 %.4f (%.0fs)",
                row.name,
                seed,
                rec["valid"]["recall@50"],
                rec["test"]["recall@50"],
                rec["seconds"],
            )
            append(rec)
    table = render_table(read_results(args.results), command)
    if args.table:
        args.table.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
