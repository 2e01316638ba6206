"""`twotower import`: two ONNX towers trained anywhere, checked against a schema
(models/tower_checks.py), then registered as a new immutable version.

Nothing reaches the model store unless every check passes; the written files are loaded by the
serving runtime and must give the vectors the checks saw.

    path = import_version(store, schema, u, i, similarity="dot")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import SchemaError, TowerRefused, VersionExists
from models.features import FeatureSchema, Side
from models.manifest import (
    ITEM_TOWER,
    USER_TOWER,
    ModelManifest,
    check_tag,
    load_version,
    new_version_tag,
    write_version,
)
from models.runtime import TowerRunner
from models.samples import sample_rows
from models.schema import load_schema
from models.tower_checks import BATCH_ATOL, BATCH_RTOL, TowerCheck, TowerFile, check_towers

SIMILARITIES = ("cosine", "dot")
FILES: dict[Side, str] = {"user": USER_TOWER, "item": ITEM_TOWER}


@dataclass(frozen=True)
class Imported:
    path: Path
    manifest: ModelManifest
    checks: Mapping[Side, TowerCheck] = field(default_factory=dict)


def load_import_schema(path: Path) -> FeatureSchema:
    """The schema file, resolved from what it gives: an imported tower was trained elsewhere, so
    nothing can be learned here. A vocabulary without `vocab_file` or a numeric field without
    `mean`/`std` is refused, naming the field (identity is `mean = 0.0, std = 1.0`)."""
    schema_file = load_schema(path)
    for side, spec in schema_file.fields:
        at = f"{side}.fields.{spec.name}"
        if spec.vocab is not None and spec.vocab not in schema_file.vocab_files:
            raise SchemaError(
                str(path),
                at,
                f"vocabulary {spec.vocab!r} has no vocab_file: an imported tower's vocabulary must be "
                "given (one value per line, line n = index n; index 0 is unknown)",
            )
        if spec.kind == "numeric" and spec.mean is None:
            raise SchemaError(
                str(path),
                at,
                "numeric field has no mean/std: give the normalisation the tower was trained with "
                "(mean = 0.0, std = 1.0 feeds raw values)",
            )
    return schema_file.resolve()


def import_version(
    store: Path,
    schema: FeatureSchema,
    user_tower: Path,
    item_tower: Path,
    version: str | None = None,
    similarity: str = "cosine",
    allow_unused: bool = False,
    extra_rows: Mapping[Side, Sequence[Mapping[str, Any]]] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Imported:
    """Check both towers, then write them as a new immutable version (nothing is written on failure)."""
    if similarity not in SIMILARITIES:
        raise TowerRefused(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
    tag = check_tag(version or new_version_tag())
    if (Path(store) / tag).exists():  # refused before the checks, not after them
        raise VersionExists(f"model version {tag!r} already exists in {store}; versions are immutable")
    towers: dict[Side, TowerFile] = {
        "user": TowerFile.read("user", user_tower),
        "item": TowerFile.read("item", item_tower),
    }
    checks = check_towers(schema, towers["user"], towers["item"], allow_unused, extra_rows)
    dim = checks["user"].dim
    written: list[Path] = []

    def write_files(tmp: Path) -> None:
        written.append(tmp)
        for side, tower in towers.items():
            with open(tmp / FILES[side], "wb") as f:
                f.write(tower.data)

    def make_manifest(digests: Mapping[str, str]) -> ModelManifest:
        manifest = ModelManifest(
            version=tag,
            dim=dim,
            similarity=similarity,
            features=schema,
            files=dict(digests),
            training={
                "imported_from": {
                    side: {
                        "file": str(t.path),
                        "sha256": t.sha256,
                        "unused_fields": list(checks[side].unused),
                    }
                    for side, t in towers.items()
                },
                "sample_rows_checked": {side: c.rows_checked for side, c in checks.items()},
                **dict(provenance or {}),
            },
            inputs={side: list(c.inputs) for side, c in checks.items()},
            outputs={side: c.output for side, c in checks.items()},
            created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            source="import",
        )
        _check_as_served(written[0], manifest, schema, checks)
        return manifest

    path = write_version(store, tag, write_files, make_manifest)
    return Imported(path, manifest=load_version(path.parent, path.name), checks=checks)


def _check_as_served(
    tmp: Path, manifest: ModelManifest, schema: FeatureSchema, checks: Mapping[Side, TowerCheck]
) -> None:
    """The written files, loaded by the serving runtime, give the vectors the checks saw."""
    for side, check in checks.items():
        runner = TowerRunner(tmp, manifest, side).load()
        got = runner.embed(sample_rows(schema, side))
        want = check.vectors
        if manifest.similarity == "cosine":
            want = want / np.maximum(np.linalg.norm(want, axis=1, keepdims=True), np.float32(1e-12))
        if not np.allclose(got, want, rtol=BATCH_RTOL, atol=BATCH_ATOL):
            raise TowerRefused(f"{check.path}: the runtime's vectors differ from the checked ones")
