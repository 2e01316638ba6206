"""ONNX export of both towers, a parity check against PyTorch, and writing the version to the model store."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from models.errors import ArtifactError
from models.features import FeatureSchema, Side
from models.manifest import ITEM_TOWER, USER_TOWER, ModelManifest, write_version
from models.training.towers import Tower, TwoTower, to_tensors
from models.transform import TowerEncoder

log = logging.getLogger(__name__)

OUTPUT = "embedding"
PARITY_TOL = 1e-5
OPSET = 18
FILES: dict[Side, str] = {"user": USER_TOWER, "item": ITEM_TOWER}


class _Positional(nn.Module):
    """torch.export cannot take dynamic shapes for **kwargs; positional args in field order can."""

    def __init__(self, tower: Tower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.tower(**dict(zip(self.tower.field_names, args, strict=True)))
        return out


def tower_inputs(schema: FeatureSchema, side: Side) -> list[dict[str, Any]]:
    """The ONNX inputs of one tower as the manifest records them: name, dtype, shape (str = dynamic)."""
    out: list[dict[str, Any]] = []
    for f in schema.tower(side).fields:
        width = f.width(schema.vocabularies)
        if f.rank == 1:
            shape: list[str | int] = ["batch"]
        elif width is not None:
            shape = ["batch", width]
        else:
            shape = ["batch", f"{f.name}_len"]
        out.append({"name": f.name, "dtype": f.dtype, "shape": shape})
    return out


def _rename_output(path: Path) -> None:
    """Name the graph output `embedding`. The exporter names nn.Embedding lookups `embedding` too,
    so an internal value may hold that name first; it is renamed out of the way."""
    model = onnx.load(str(path))
    graph = model.graph
    old = graph.output[0].name
    rename = {}
    if old != OUTPUT:
        rename[OUTPUT] = f"{OUTPUT}_lookup"
    rename[old] = OUTPUT
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for vi in (*graph.value_info, *graph.output):
        vi.name = rename.get(vi.name, vi.name)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_tower(tower: Tower, schema: FeatureSchema, side: Side, path: Path) -> None:
    """Export with the dynamo exporter: dynamic batch axis, dynamic length axis for lists."""
    tower.eval()
    specs = schema.tower(side).fields
    example = random_batch(schema, side, batch=3, seed=0)
    batch = torch.export.Dim("batch")
    dyn: list[dict[int, Any]] = []
    for f in specs:
        if f.rank == 2 and f.width(schema.vocabularies) is None:
            dyn.append({0: batch, 1: torch.export.Dim(f"{f.name}_len")})
        else:
            dyn.append({0: batch})
    wrapped = _Positional(tower).eval()
    # the exporter and its optimizer log every pass at INFO; keep `twotower train` readable
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # "torchvision is not installed" is irrelevant here: no vision ops
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    args = tuple(torch.from_numpy(example[f.name]) for f in specs)
    # the exporter prints progress lines, and torch's own pytree code trips a FutureWarning about
    # LeafSpec (raised from copyreg, so a module filter on torch.* does not catch it)
    with redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
        )
        torch.onnx.export(
            wrapped,
            args,
            str(path),
            dynamo=True,
            external_data=False,
            opset_version=OPSET,
            input_names=[f.name for f in specs],
            dynamic_shapes=(tuple(dyn),),
        )
    _rename_output(path)


def random_batch(schema: FeatureSchema, side: Side, batch: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Arbitrary valid inputs: any index in range (0 included), padded lists of mixed length."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for f in schema.tower(side).fields:
        card = f.cardinality(schema.vocabularies)
        if f.kind == "multi_hot":
            out[f.name] = (rng.random((batch, card)) < 0.15).astype(np.float32)
        elif f.kind == "numeric":
            out[f.name] = rng.normal(size=batch).astype(np.float32)
        elif f.kind == "vector":
            out[f.name] = rng.normal(size=(batch, f.dim)).astype(np.float32)
        elif f.rank == 2:
            width = int(rng.integers(1, max(2, f.max_len) + 1))
            arr = rng.integers(1, card, size=(batch, width), dtype=np.int64)
            lengths = rng.integers(0, width + 1, size=batch)
            arr[np.arange(width)[None, :] >= lengths[:, None]] = 0
            out[f.name] = arr
        else:
            out[f.name] = rng.integers(0, card, size=batch, dtype=np.int64)
    return out


def parity(tower: Tower, onnx_path: Path, batches: Sequence[Mapping[str, np.ndarray]]) -> float:
    """Largest |ONNX Runtime - PyTorch| over the batches."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    tower.eval()
    for b in batches:
        got = sess.run([OUTPUT], dict(b))[0]
        with torch.no_grad():
            want = tower(**to_tensors(b)).numpy()
        if got.shape != want.shape:
            raise ArtifactError(f"{onnx_path.name}: output shape {got.shape} != PyTorch {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def export_version(
    model: TwoTower,
    schema: FeatureSchema,
    store: Path,
    version: str,
    real_rows: Mapping[Side, Sequence[Mapping[str, Any]]],
    metrics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Export both towers, check parity on a random and a real batch, write the version atomically.

    A tower whose ONNX output differs from PyTorch by `PARITY_TOL` or more is refused: nothing is
    written to the store.
    """
    model.eval()
    checks: dict[str, float] = {}

    def write_files(tmp: Path) -> None:
        for side in ("user", "item"):
            tower = model.tower(side)
            path = tmp / FILES[side]
            export_tower(tower, schema, side, path)
            real = TowerEncoder(schema, side).encode(list(real_rows[side]))
            worst = parity(tower, path, [random_batch(schema, side, seed=1), real])
            if not worst < PARITY_TOL:
                raise ArtifactError(
                    f"{FILES[side]}: ONNX Runtime differs from PyTorch by {worst:.2e} (>= {PARITY_TOL})"
                )
            checks[side] = worst
            log.info("exported %s tower: parity max abs diff %.2e", side, worst)

    def make_manifest(digests: Mapping[str, str]) -> ModelManifest:
        return ModelManifest(
            version=version,
            dim=model.user.dim,
            similarity="cosine",
            features=schema,
            files=digests,
            metrics=dict(metrics or {}),
            training={**(training or {}), "parity_max_abs_diff": checks, "opset": OPSET},
            inputs={side: tower_inputs(schema, side) for side in ("user", "item")},
            created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    return write_version(store, version, write_files, make_manifest)
