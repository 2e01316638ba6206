"""Build files hashed as they are written: the same bytes as numpy's and Faiss's own writers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import faiss
import numpy as np
import pytest

from index_store.hashed import HashedFile, save_npy, write_bytes, write_index

ARRAYS = {
    "float32 2-d": np.random.default_rng(0).random((1000, 64), dtype=np.float32),
    "unicode ids": np.array(["a", "bcd", "é", "x" * 40]),
    "int32 table": np.arange(-5, 11, dtype=np.int32),
    "empty rows": np.zeros((0, 64), dtype=np.float32),
    "scalar": np.float32(3.5),
    "fortran order": np.asfortranarray(np.random.default_rng(1).random((5, 3))),
    "strided view": np.random.default_rng(2).random((10, 4))[:, ::2],
    "structured": np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_save_npy_writes_what_np_save_writes(tmp_path: Path, name: str) -> None:
    array = ARRAYS[name]
    np.save(tmp_path / "ref.npy", array, allow_pickle=False)
    written = save_npy(tmp_path / "out.npy", array)
    data = (tmp_path / "out.npy").read_bytes()
    assert data == (tmp_path / "ref.npy").read_bytes()
    assert written.sha256 == hashlib.sha256(data).hexdigest() and written.size == len(data)


def test_write_index_writes_what_faiss_writes(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((3000, 16), dtype=np.float32)
    index = faiss.index_factory(16, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    faiss.write_index(index, str(tmp_path / "ref.faiss"))
    written = write_index(tmp_path / "out.faiss", index)
    data = (tmp_path / "out.faiss").read_bytes()
    assert data == (tmp_path / "ref.faiss").read_bytes()
    assert written.sha256 == hashlib.sha256(data).hexdigest() and written.size == len(data)
    assert faiss.read_index(str(tmp_path / "out.faiss")).ntotal == 3000


def test_digest_covers_every_write_and_existing_files_are_refused(tmp_path: Path) -> None:
    with HashedFile(tmp_path / "f") as f:
        f.write(b"abc")
        f.write(memoryview(b"def"))
        with pytest.raises(RuntimeError, match="still open"):
            _ = f.written
    assert f.written.sha256 == hashlib.sha256(b"abcdef").hexdigest() and f.written.size == 6
    with pytest.raises(FileExistsError):  # a build never writes over a file
        write_bytes(tmp_path / "f", b"x")
    assert (tmp_path / "f").read_bytes() == b"abcdef"
