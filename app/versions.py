"""The model versions a process serves: their ONNX sessions, loaded at start and whenever a new
version appears in the model store (train, import or a copy), without a restart."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import anyio

from app.settings import Settings
from app.state import FeatureStore
from models.errors import TwoTowerError
from models.manifest import ModelManifest, list_versions, load_version
from models.runtime import TowerRunner

log = logging.getLogger("app.service")


@dataclass(frozen=True)
class ServedVersion:
    """One model version's towers, loaded once at start (never per request)."""

    tag: str
    manifest: ModelManifest
    user: TowerRunner
    item: TowerRunner


class ModelVersions:
    """Every served version by tag; replaced copy-on-write, so readers never see it half-added."""

    def __init__(self, settings: Settings, store: FeatureStore) -> None:
        self.settings = settings
        self.store = store
        self.versions: dict[str, ServedVersion] = {}
        self._model_refused: dict[str, object] = {}  # version -> files as they were when it failed
        self._gone: set[str] = set()  # served versions whose directory left the model store

    def load_all(self) -> None:
        """ONNX sessions for every version in the model store (or the configured list)."""
        for tag in self.wanted():
            self.try_load(tag)
        if not self.versions:
            log.error("no usable model version in %s", self.settings.model_store)

    def wanted(self) -> list[str]:
        """Complete versions in the model store (only the configured ones, if a list is set)."""
        present = list_versions(Path(self.settings.model_store))
        wanted = self.settings.model_versions
        return [t for t in wanted if t in present] if wanted else present

    def try_load(self, tag: str) -> ServedVersion | None:
        """Verify the manifest and every file's sha256, then load both towers; None (logged) if any
        check fails: a version copied in file by file fails here until the copy is complete."""
        store = Path(self.settings.model_store)
        rt = self.settings.runtime
        seen = _fingerprint(store / tag)
        try:
            manifest = load_version(store, tag)
            runners = [
                TowerRunner(store / tag, manifest, side, rt.onnx_intra_threads, rt.onnx_spinning)
                for side in ("user", "item")
            ]
            for r in runners:
                r.load()
        except Exception as exc:  # onnxruntime raises its own types for a corrupt file
            reason = str(exc) if isinstance(exc, TwoTowerError | OSError) else f"cannot load ONNX: {exc}"
            log.error("model version %s refused: %s", tag, reason)
            self._model_refused[tag] = seen  # not tried again until a file in it changes
            return None
        served = ServedVersion(tag, manifest, runners[0], runners[1])
        self.versions = {**self.versions, tag: served}  # copy-on-write: readers never see it half-added
        self._model_refused.pop(tag, None)
        log.info("model version %s loaded (dim %d)", tag, manifest.dim)
        return served

    async def discover(self) -> list[str]:
        """Load versions that appeared in the model store (train, import or a copy) since the last
        look, without a restart; returns their tags. A build of each that has none is queued by the
        caller (the job queue coalesces per version, so the replicas that all find it build it once)."""
        try:
            wanted = await anyio.to_thread.run_sync(self.wanted)
        except OSError as exc:
            log.error(
                "model store %s unreadable, served versions unchanged: %s", self.settings.model_store, exc
            )
            return []
        gone = sorted(set(self.versions) - set(wanted) - self._gone)
        for tag in gone:
            log.warning("model version %s left the model store: it keeps serving from memory", tag)
        self._gone = (self._gone | set(gone)) & set(self.versions)
        found: list[str] = []
        store = Path(self.settings.model_store)
        for tag in wanted:
            if tag in self.versions:
                continue
            seen = await anyio.to_thread.run_sync(_fingerprint, store / tag)
            if self._model_refused.get(tag) == seen:
                continue
            served = await anyio.to_thread.run_sync(self.try_load, tag)
            if served is not None:
                # The in-process store read the data files before this version existed.
                await anyio.to_thread.run_sync(self.store.version_added, tag, served.manifest.features.layout)
                found.append(tag)
        return found


def _fingerprint(path: Path) -> object:
    """Names, sizes and mtimes of a version directory's files: changes while a copy is running."""
    try:
        files = []
        for p in sorted(path.iterdir()):
            st = p.stat()
            files.append((p.name, st.st_size, st.st_mtime_ns))
        return tuple(files)
    except OSError:
        return None
