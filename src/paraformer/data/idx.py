"""Read and write IDX files (the MNIST / Fashion-MNIST format), gzipped or not.

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim``
big-endian uint32 dimensions, then the values in C order. Only unsigned bytes
(type ``0x08``) are needed for image data sets.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from paraformer.errors import DataError

UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot read {path}: {reason} (the file is truncated or corrupt; fetch it again)."
        ) from None


def parse_idx(data: bytes, ndim: int, name: str = "IDX data") -> np.ndarray:
    """Check an IDX byte string against its header and return its uint8 array."""
    if len(data) < 4:
        raise DataError(f"{name} is not an IDX file: only {len(data)} bytes.")
    zero, dtype, got_ndim = struct.unpack(">HBB", data[:4])
    magic = (dtype << 8) | got_ndim
    want = (UBYTE << 8) | ndim
    if zero != 0 or magic != want:
        raise DataError(
            f"{name} has magic number 0x{int.from_bytes(data[:4], 'big'):08x}, expected 0x{want:08x} "
            f"(an IDX file of {ndim}-d unsigned bytes); is it the right file?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name} is truncated: its header needs {header} bytes, the file has {len(data)}.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"{name} is {problem}: header dims {tuple(dims)} need {expected} bytes, the file has "
            f"{len(data)}; fetch it again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Load a ``.gz`` or plain IDX file of unsigned bytes with ``ndim`` dimensions."""
    path = Path(path)
    return parse_idx(_read_bytes(path), ndim, name=str(path))


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX bytes."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX writer supports uint8 only, got {array.dtype}")
    header = struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an IDX file; a ``.gz`` name is gzipped reproducibly (no name, mtime 0)."""
    path = Path(path)
    data = idx_bytes(array)
    if path.name.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write(data)
    else:
        path.write_bytes(data)
