"""index_store/npzmap.py: the arrays of an uncompressed .npz, memory-mapped, equal to np.load's."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from index_store.npzmap import map_npz


def test_maps_every_array_of_savez(tmp_path: Path) -> None:
    arrays = {
        "0.values": np.array(["Drama", "Comedy", "é"], dtype=str),
        "0.ptr": np.array([0, 2, 5, 9], dtype=np.int64),
        "1.x": np.linspace(0, 1, 1000, dtype=np.float32),
        "2.b": np.array([True, False, True]),
        "3.empty": np.zeros(0, dtype=np.int32),
        "4.fortran": np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)),
    }
    path = tmp_path / "a.npz"
    np.savez(path, allow_pickle=False, **arrays)
    mapped = map_npz(path)
    assert set(mapped) == set(arrays)
    for name, want in arrays.items():
        got = mapped[name]
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert not got.flags.writeable
    # Really a mapping of the file (shared between processes), not a copy.
    maps = Path("/proc/self/maps").read_text()
    assert str(path) in maps


def test_refuses_what_it_cannot_map(tmp_path: Path) -> None:
    compressed = tmp_path / "c.npz"
    np.savez_compressed(compressed, x=np.arange(10))
    with pytest.raises(ValueError, match="compressed"):
        map_npz(compressed)
    short = tmp_path / "s.npz"
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.arange(10, dtype=np.int64))
    with zipfile.ZipFile(short, "w") as zf:  # a member cut short: its header says 10 values
        zf.writestr("x.npy", buf.getvalue()[:-8])
    with pytest.raises(ValueError, match="size"):
        map_npz(short)
    with zipfile.ZipFile(tmp_path / "o.npz", "w") as zf:
        zf.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match="not an .npy"):
        map_npz(tmp_path / "o.npz")
