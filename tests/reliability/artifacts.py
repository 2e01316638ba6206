"""Broken artifacts on purpose: copies of a good index build or model version with one thing wrong."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index_store.directory import (
    CURRENT,
    DATA_FILES,
    IDS_FILE,
    INDEX_FILE,
    MANIFEST,
    VECTORS_FILE,
    new_build_id,
)

Mutation = Callable[[Path, dict[str, Any]], None]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.test-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def copy_build(
    root: Path, version: str, source: str, mutate: Mutation | None = None, rehash: bool = False
) -> str:
    """A new build of `version` copied from `source`, then `mutate(dir, manifest)`.

    With `rehash` the manifest's sha256 and sizes are recomputed after the mutation (the files are
    consistent with their manifest, and only a deeper check can refuse them)."""
    build_id = new_build_id()
    dst = root / version / build_id
    shutil.copytree(root / version / source, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["build_id"] = build_id
    if mutate is not None:
        mutate(dst, manifest)
    if rehash:
        for name in DATA_FILES:
            if (dst / name).exists():
                manifest["files"][name] = sha256(dst / name)
                manifest["sizes"][name] = (dst / name).stat().st_size
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return build_id


def publish(root: Path, version: str, build_id: str, manifest_sha: str | None = None) -> None:
    """Point CURRENT at `build_id`, as a build does (tmp + rename)."""
    sha = manifest_sha or sha256(root / version / build_id / MANIFEST)
    pointer = {"build_id": build_id, "manifest_sha256": sha}
    write_atomic(root / version / CURRENT, (json.dumps(pointer, sort_keys=True) + "\n").encode())


def current(root: Path, version: str) -> str:
    return str(json.loads((root / version / CURRENT).read_text())["build_id"])


# --- mutations ------------------------------------------------------------------------------------


def truncate(name: str) -> Mutation:
    def f(d: Path, m: dict[str, Any]) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])

    return f


def flip_bytes(name: str) -> Mutation:
    """Same size, a few bytes changed in the middle: only the checksum can tell."""

    def f(d: Path, m: dict[str, Any]) -> None:
        data = bytearray((d / name).read_bytes())
        mid = len(data) // 2
        data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
        (d / name).write_bytes(bytes(data))

    return f


def remove(name: str) -> Mutation:
    def f(d: Path, m: dict[str, Any]) -> None:
        (d / name).unlink()

    return f


def garbage(name: str) -> Mutation:
    def f(d: Path, m: dict[str, Any]) -> None:
        (d / name).write_bytes(b"not a faiss index, just bytes " * 100)

    return f


def manifest_field(key: str, value: object) -> Mutation:
    def f(d: Path, m: dict[str, Any]) -> None:
        m[key] = value

    return f


def pickled_ids(d: Path, m: dict[str, Any]) -> None:
    """ids.npy as an object array: loading it would need pickle (code execution), so it must be refused."""
    ids = np.load(d / IDS_FILE)
    np.save(d / IDS_FILE, np.array(list(ids), dtype=object), allow_pickle=True)


def nan_vectors(d: Path, m: dict[str, Any]) -> None:
    """Every stored vector NaN and an exact index over them: consistent files, useless build."""
    vectors = np.load(d / VECTORS_FILE)
    vectors[:] = np.nan
    np.save(d / VECTORS_FILE, vectors)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(d / INDEX_FILE))


def ivf_nprobe_zero(d: Path, m: dict[str, Any]) -> None:
    """A valid IVF index whose recorded search parameter makes every search raise."""
    vectors = np.load(d / VECTORS_FILE)
    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], 4, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    faiss.write_index(index, str(d / INDEX_FILE))
    m["index"] = {
        "kind": "ivf",
        "factory": "IVF4,Flat",
        "params": {"nlist": 4},
        "search_params": {"nprobe": 0},
    }


# --- model versions -------------------------------------------------------------------------------


def clone_version(store: Path, source: str, tag: str, mutate: Mutation | None = None) -> Path:
    """A copy of model version `source` under a new tag (the manifest's version follows)."""
    dst = store / tag
    shutil.copytree(store / source, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["version"] = tag
    if mutate is not None:
        mutate(dst, manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dst


def rehash_onnx(name: str) -> Mutation:
    """Garbage in an ONNX file with a manifest sha256 that matches it: only ONNX Runtime can refuse it."""

    def f(d: Path, m: dict[str, Any]) -> None:
        (d / name).write_bytes(b"\x08\x07garbage that is not a protobuf model" * 10)
        m["files"][name] = sha256(d / name)

    return f
