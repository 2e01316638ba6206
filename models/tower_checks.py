"""The checks of an ONNX tower trained anywhere against a schema, before `twotower import` registers it.

Torch-free: onnxruntime reads each graph's inputs and outputs (names, types, shapes) and runs it on
sample rows synthesised from the schema, as one batch and each row alone. Every refusal is a
`TowerRefused` whose message names the tower file and the input or row at fault.

    checks = check_towers(schema, TowerFile.read("user", u), TowerFile.read("item", i))
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models.errors import TowerRefused
from models.features import FeatureSchema, Side
from models.samples import describe_row, sample_rows
from models.transform import TowerEncoder

# Alone vs in a batch: float32 sums in another order differ by ~1e-6 of the norm; a graph whose
# rows see each other (BatchNorm in train mode, mean over padded positions) differs by far more.
BATCH_RTOL = 1e-3
BATCH_ATOL = 1e-4
_ORT_TYPES = {"float": "float32", "double": "float64"}


def _dtype(ort_type: str) -> str:
    """'tensor(int64)' -> 'int64', 'tensor(float)' -> 'float32'; non-tensors keep their ORT name."""
    if not ort_type.startswith("tensor(") or not ort_type.endswith(")"):
        return ort_type
    inner = ort_type[len("tensor(") : -1]
    return _ORT_TYPES.get(inner, inner)


def _shape(shape: Sequence[Any] | None) -> list[int | str]:
    """ORT shapes hold ints for fixed axes and str/None for dynamic ones; None becomes '?'."""
    return [d if isinstance(d, int) else (d or "?") for d in (shape or [])]


@dataclass(frozen=True)
class TowerFile:
    """One tower's ONNX bytes, read once: the bytes checked are the bytes written to the store."""

    side: Side
    path: Path
    data: bytes

    @classmethod
    def read(cls, side: Side, path: Path) -> TowerFile:
        try:
            return cls(side, Path(path), Path(path).read_bytes())
        except OSError as exc:
            raise TowerRefused(f"{path}: cannot read the {side} tower ({exc.strerror})") from exc

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class TowerCheck:
    """What the checks learned about one tower."""

    side: Side
    path: Path
    dim: int
    output: str
    inputs: tuple[dict[str, Any], ...]  # {name, dtype, shape} as the graph declares them
    unused: tuple[str, ...]  # schema fields the graph has no input for
    vectors: np.ndarray  # raw outputs on the synthesised sample rows
    rows_checked: int
    notes: tuple[str, ...] = ()


def open_session(tower: TowerFile) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # ORT warns about unused initializers etc. on stderr; our report says more
    try:
        return ort.InferenceSession(tower.data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types; the message must name the file
        if "external data" in str(exc).lower():
            # torch.onnx.export(dynamo=True) writes weights to <file>.data unless told otherwise.
            raise TowerRefused(
                f"{tower.path}: keeps its weights in an external data file; a tower must be one file: "
                "export with torch.onnx.export(..., external_data=False)"
            ) from exc
        raise TowerRefused(f"{tower.path}: not a loadable ONNX model ({_first_line(exc)})") from exc


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "…"


def signature_problems(
    session: ort.InferenceSession, tower: TowerFile, schema: FeatureSchema, allow_unused: bool
) -> tuple[list[str], list[dict[str, Any]], tuple[str, ...]]:
    """Static checks of the graph's inputs and output against the schema.

    Returns (problems, inputs as declared, schema fields without an input).
    """
    where = f"{tower.path} ({tower.side} tower)"
    fields = {f.name: f for f in schema.tower(tower.side).fields}
    problems: list[str] = []
    declared: list[dict[str, Any]] = []
    for arg in session.get_inputs():
        dtype, shape = _dtype(arg.type), _shape(arg.shape)
        declared.append({"name": arg.name, "dtype": dtype, "shape": shape})
        spec = fields.get(arg.name)
        if spec is None:
            problems.append(
                f"{where}: input {arg.name!r} is not a field of the schema's {tower.side} tower, "
                f"so nothing would feed it (fields: {', '.join(sorted(fields))})"
            )
            continue
        what = f"{where}: input {arg.name!r} ({spec.kind} field)"
        if dtype != spec.dtype:
            problems.append(f"{what}: is {dtype}, the schema encodes {spec.dtype}")
        if len(shape) != spec.rank:
            want = "[batch]" if spec.rank == 1 else "[batch, length]"
            problems.append(
                f"{what}: has rank {len(shape)} {shape}, the schema encodes rank {spec.rank} {want}"
            )
            continue
        if isinstance(shape[0], int):
            problems.append(
                f"{what}: has a fixed batch axis of {shape[0]}; export it with a dynamic batch axis"
            )
        if spec.rank == 2 and isinstance(shape[1], int):
            width = spec.width(schema.vocabularies)
            if width is None:
                problems.append(
                    f"{what}: has a fixed length of {shape[1]}; the encoder pads each batch to its "
                    f"longest row (at most max_len), so export the length axis as dynamic"
                )
            elif shape[1] != width:
                problems.append(f"{what}: has width {shape[1]}, the schema encodes {width}")
    present = {d["name"] for d in declared}
    unused = tuple(name for name in fields if name not in present)
    if unused and not allow_unused:
        problems.append(
            f"{where}: has no input for schema field(s) {', '.join(repr(n) for n in unused)}; "
            "export them as inputs, remove them from the schema, or pass --allow-unused-fields "
            "if the tower deliberately ignores them (e.g. an item field kept only for filters)"
        )
    outputs = session.get_outputs()
    if not outputs:
        problems.append(f"{where}: has no output")
    else:
        out = outputs[0]
        shape = _shape(out.shape)
        if not _dtype(out.type).startswith("float"):
            problems.append(
                f"{where}: output {out.name!r} is {_dtype(out.type)}, expected float32 [batch, dim]"
            )
        if out.shape is not None and len(shape) != 2:
            problems.append(f"{where}: output {out.name!r} has shape {shape}, expected [batch, dim]")
    return problems, declared, unused


def run_rows(
    session: ort.InferenceSession,
    tower: TowerFile,
    encoder: TowerEncoder,
    rows: Sequence[Mapping[str, Any]],
    label: str = "sample",
) -> np.ndarray:
    """Run `rows` as one batch and each alone; the raw output [B, dim], or TowerRefused naming the row."""
    names = [i.name for i in session.get_inputs()]
    where = f"{tower.path} ({tower.side} tower)"

    def run(batch: Sequence[Mapping[str, Any]]) -> np.ndarray:
        arrays = encoder.encode(batch)
        feed = {n: arrays[n] for n in names}
        return np.asarray(session.run(None, feed)[0])

    try:
        out = run(rows)
    except Exception as batch_exc:
        for i, row in enumerate(rows):  # pinpoint the row: the message should say which input broke it
            try:
                run([row])
            except Exception as exc:
                raise TowerRefused(
                    f"{where}: fails on {label} row {i} {describe_row(row)}: {_first_line(exc)}"
                ) from exc
        raise TowerRefused(
            f"{where}: fails on a batch of {len(rows)} {label} rows (each alone runs): "
            f"{_first_line(batch_exc)}"
        ) from batch_exc
    if out.ndim != 2 or out.shape[0] != len(rows):
        raise TowerRefused(
            f"{where}: returns shape {list(out.shape)} for a batch of {len(rows)}, expected [batch, dim]"
        )
    if not np.issubdtype(out.dtype, np.floating):
        raise TowerRefused(f"{where}: returns {out.dtype}, expected float32 vectors")
    out = out.astype(np.float32)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "NaN" if np.isnan(out[i]).any() else "infinity"
        raise TowerRefused(f"{where}: {label} row {i} {describe_row(rows[i])} gives a vector with {what}")
    for i, row in enumerate(rows):
        alone = run([row]).astype(np.float32)
        if alone.shape != (1, out.shape[1]) or not np.allclose(
            alone[0], out[i], rtol=BATCH_RTOL, atol=BATCH_ATOL
        ):
            diff = float(np.abs(alone[0] - out[i]).max()) if alone.shape == (1, out.shape[1]) else math.inf
            raise TowerRefused(
                f"{where}: {label} row {i} {describe_row(row)} gives another vector alone than in a batch "
                f"(max difference {diff:.3g}): rows must not depend on each other or on padding "
                "(export in eval mode; mask padded positions, index 0)"
            )
    return out


def check_tower(
    tower: TowerFile,
    schema: FeatureSchema,
    allow_unused: bool = False,
    extra_rows: Sequence[Mapping[str, Any]] = (),
) -> TowerCheck:
    """Every check of one tower; raises TowerRefused listing every static problem at once."""
    session = open_session(tower)
    problems, declared, unused = signature_problems(session, tower, schema, allow_unused)
    if problems:
        raise TowerRefused("\n".join(problems))
    encoder = TowerEncoder(schema, tower.side)
    rows = sample_rows(schema, tower.side)
    vectors = run_rows(session, tower, encoder, rows)
    checked = len(rows)
    if extra_rows:
        extra = run_rows(session, tower, encoder, list(extra_rows), label="--sample-data")
        if extra.shape[1] != vectors.shape[1]:
            raise TowerRefused(
                f"{tower.path}: dim {extra.shape[1]} on data rows, {vectors.shape[1]} on samples"
            )
        checked += len(extra)
    notes = tuple(
        f"schema field {n!r} is not an input of {tower.path.name}: ignored by this tower" for n in unused
    )
    return TowerCheck(
        side=tower.side,
        path=tower.path,
        dim=int(vectors.shape[1]),
        output=session.get_outputs()[0].name,
        inputs=tuple(declared),
        unused=unused,
        vectors=vectors,
        rows_checked=checked,
        notes=notes,
    )


def check_towers(
    schema: FeatureSchema,
    user: TowerFile,
    item: TowerFile,
    allow_unused: bool = False,
    extra_rows: Mapping[Side, Sequence[Mapping[str, Any]]] | None = None,
) -> dict[Side, TowerCheck]:
    """Both towers checked, then their dims compared."""
    extra = extra_rows or {}
    checks: dict[Side, TowerCheck] = {}
    problems: list[str] = []
    for tower in (user, item):
        try:
            checks[tower.side] = check_tower(tower, schema, allow_unused, extra.get(tower.side, ()))
        except TowerRefused as exc:
            problems.append(str(exc))
    if problems:
        raise TowerRefused("\n".join(problems))
    u, i = checks["user"], checks["item"]
    if u.dim != i.dim:
        raise TowerRefused(
            f"{u.path} (user tower) gives [batch, {u.dim}] and {i.path} (item tower) gives "
            f"[batch, {i.dim}]: both towers must output vectors of the same dim"
        )
    return checks
