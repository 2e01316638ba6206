"""Arrays of an uncompressed .npz file, memory-mapped instead of read.

`np.savez` stores each array as a plain .npy member of a zip archive (ZIP_STORED): its bytes sit
unchanged at an offset of the file. `np.load(mmap_mode=...)` maps .npy files only, so a build's
`attributes.npz` was copied into every serving process (~8 MB per process at 1M items for the demo
schema's two filterable columns). Here each member's offset comes from its zip local header and its
.npy header, and the array is a read-only `np.memmap` of the file at that offset: every process on a
host shares the pages, as it does for the build's other arrays.

A compressed member, an object array or anything the zip or .npy headers do not describe plainly
raises ValueError (the caller then reads the file as before).
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header (APPNOTE 4.3.7), 30 bytes
_LOCAL_SIGNATURE = b"PK\x03\x04"


def map_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz at `path` (member name without `.npy`), mapped read-only."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: member {info.filename} is compressed")
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{path}: member {info.filename} is not an .npy array")
            f.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if fields[0] != _LOCAL_SIGNATURE:
                raise ValueError(f"{path}: no local header for {info.filename}")
            name_len, extra_len = fields[-2], fields[-1]
            start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            f.seek(start)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"{path}: {info.filename} has .npy format {version}")
            if dtype.hasobject:
                raise ValueError(f"{path}: {info.filename} holds Python objects")
            offset = f.tell()
            if offset - start + int(np.prod(shape)) * dtype.itemsize != info.file_size:
                raise ValueError(f"{path}: {info.filename} is not the size its header says")
            order: Literal["C", "F"] = "F" if fortran else "C"
            if int(np.prod(shape)) == 0:  # np.memmap refuses an empty mapping
                arr = np.zeros(shape, dtype=dtype, order=order)
            else:
                arr = np.asarray(
                    np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
                )
            arr.setflags(write=False)
            out[info.filename[: -len(".npy")]] = arr
    return out
