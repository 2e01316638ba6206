"""The ONNX tower runtime: one tower of a model version, raw feature dicts in, embeddings out.

Torch-free: the service, the index builder and `twotower import` all run towers through this.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models.errors import ArtifactError, ManifestError
from models.features import Side
from models.manifest import ITEM_TOWER, USER_TOWER, ModelManifest
from models.transform import TowerEncoder

log = logging.getLogger(__name__)


class TowerRunner:
    """One tower of one model version: raw feature dicts -> embeddings [B, dim] (float32).

        runner = TowerRunner(store / version, manifest, "item", intra_threads=2)
        runner.load()
        vectors = runner.embed([{"item_id": "50", "brand": "acme"}])

    Under cosine similarity the output is L2-normalised here as well (idempotent when the tower
    already does it), so an inner product is the trained similarity everywhere.
    """

    def __init__(
        self,
        model_dir: Path,
        manifest: ModelManifest,
        side: Side,
        intra_threads: int = 1,
        spinning: bool = False,
    ) -> None:
        if side not in ("user", "item"):
            raise ValueError(f"side must be 'user' or 'item', got {side!r}")
        if intra_threads < 1:
            raise ValueError(f"intra_threads must be >= 1, got {intra_threads}")
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.side: Side = side
        self.intra_threads = intra_threads
        self.spinning = spinning
        self._session: ort.InferenceSession | None = None
        self._encoder: TowerEncoder | None = None
        self._inputs: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def encoder(self) -> TowerEncoder:
        if self._encoder is None:
            raise RuntimeError("TowerRunner.load() has not been called")
        return self._encoder

    def load(self) -> TowerRunner:
        """Verify the tower file against the manifest and create the session."""
        name = USER_TOWER if self.side == "user" else ITEM_TOWER
        path = self.model_dir / name
        digest = self.manifest.files.get(name)
        if digest is None:
            raise ManifestError(f"{self.model_dir / 'manifest.json'}: no sha256 for {name}")
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactError(f"{path}: missing") from exc
        # Hash the very bytes the session is built from, so a file swapped after a check cannot slip in.
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ArtifactError(f"{path}: sha256 {actual[:12]}… does not match manifest {digest[:12]}…")
        opts = ort.SessionOptions()
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = self.intra_threads
        opts.inter_op_num_threads = 1
        # ORT's default spin-wait keeps a core busy after every call; a server with 2 cores cannot afford it.
        spin = "1" if self.spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        try:
            session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types; the message must name the file
            raise ArtifactError(f"{path}: not a loadable ONNX model ({exc})") from exc
        encoder = TowerEncoder(self.manifest.features, self.side)
        names = {i.name for i in session.get_inputs()}
        missing = sorted(names - set(encoder.input_names))
        if missing:
            raise ManifestError(f"{path}: ONNX inputs {missing} are not in the {self.side} feature schema")
        self._inputs = tuple(n for n in encoder.input_names if n in names)
        self._session, self._encoder = session, encoder
        log.info(
            "loaded %s tower of %s (dim %d, intra_op threads %d)",
            self.side,
            self.manifest.version,
            self.dim,
            self.intra_threads,
        )
        return self

    def embed(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Raw feature dicts -> float32 [len(rows), dim]."""
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_arrays(self.encoder.encode(rows))

    def embed_arrays(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Encoder arrays (see `TowerEncoder.encode`) -> float32 [B, dim]."""
        if self._session is None:
            raise RuntimeError("TowerRunner.load() has not been called")
        feed = {name: arrays[name] for name in self._inputs}
        out = np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise ManifestError(
                f"{self.side} tower of {self.manifest.version} returned shape {out.shape}, "
                f"manifest dim is {self.dim}"
            )
        if self.manifest.similarity == "cosine":
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.maximum(norms, np.float32(1e-12))
        return np.ascontiguousarray(out, dtype=np.float32)
