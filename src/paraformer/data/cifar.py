"""CIFAR-10 / CIFAR-100 from the official python pickles (a folder or its ``.tar.gz``).

The batches are pickles, which can run arbitrary code when loaded. They are read
with an unpickler that only knows the handful of numpy globals the real files use
(array and dtype reconstruction), so a tampered file fails with ``DataError``.
"""

from __future__ import annotations

import codecs
import importlib
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paraformer.data.base import ImageDataset
from paraformer.errors import DataError


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR variant keeps its parts and which keys hold what."""

    name: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int


CIFAR10 = CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    num_classes=10,
)
CIFAR100 = CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    num_classes=100,
)


def _numpy_global(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _allowed_globals() -> dict[tuple[str, str], Any]:
    core = "numpy._core" if _numpy_global("numpy._core.multiarray", "_reconstruct") else "numpy.core"
    reconstruct = _numpy_global(f"{core}.multiarray", "_reconstruct")
    scalar = _numpy_global(f"{core}.multiarray", "scalar")
    frombuffer = _numpy_global(f"{core}.numeric", "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles from Python 3 spell bytes
    }
    for prefix in ("numpy.core", "numpy._core"):  # old files say numpy.core, numpy 2 writes numpy._core
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = frombuffer
    return {k: v for k, v in allowed.items() if v is not None}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy array/dtype globals; anything else is refused."""

    def __init__(self, file: io.BufferedIOBase, name: str) -> None:
        super().__init__(file, encoding="latin1")
        self.name = name
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        obj = self.allowed.get((module, name))
        if obj is None:
            raise DataError(
                f"{self.name} refers to {module}.{name}, which a CIFAR batch never needs; "
                "refusing to load it (the file is corrupt or not a CIFAR batch)."
            )
        return obj


def safe_unpickle(data: bytes, name: str) -> dict[str, Any]:
    """Unpickle one CIFAR batch and return it as a dict with ``str`` keys."""
    try:
        obj = SafeUnpickler(io.BytesIO(data), name).load()
    except DataError:
        raise
    except Exception as exc:  # a corrupt pickle can raise almost anything
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot unpickle {name}: {reason} (the file is truncated or corrupt).") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name} holds a {type(obj).__name__}, expected a dict as in the CIFAR batches.")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _read_parts(source: Path, layout: CifarLayout) -> dict[str, bytes]:
    """The raw bytes of every needed part, from a folder or streamed from an archive."""
    wanted = (*layout.train_files, layout.test_file, layout.meta_file)
    if source.is_dir():
        missing = [n for n in wanted if not (source / n).is_file()]
        if missing:
            raise DataError(f"{layout.name}: {source} lacks {', '.join(missing)}; is the download complete?")
        out = {}
        for n in wanted:
            try:
                out[n] = (source / n).read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read {source / n}: {exc}") from None
        return out
    out = {}
    try:
        with tarfile.open(source, "r|*") as tf:
            for member in tf:
                parts = Path(member.name).parts
                if member.isfile() and len(parts) >= 2 and parts[-2] == layout.folder and parts[-1] in wanted:
                    f = tf.extractfile(member)
                    out[parts[-1]] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {source}: {exc} (the archive is truncated or corrupt).") from None
    missing = [n for n in wanted if n not in out]
    if missing:
        raise DataError(f"{layout.name}: archive {source} lacks {layout.folder}/{', '.join(missing)}.")
    return out


def _batch(batch: dict[str, Any], layout: CifarLayout, name: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get(layout.label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{name}: 'data' should be a uint8 array of shape (N, 3072), got {got}.")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{name}: '{layout.label_key}' is missing or not a list of integers.") from None
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{name}: {data.shape[0]} images but {labels.shape[0]} labels.")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DataError(f"{name}: labels outside 0..{layout.num_classes - 1}.")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar(source: Path, layout: CifarLayout) -> tuple[ImageDataset, ImageDataset]:
    """Load (train, test) from a ``cifar-*-py*`` folder or the official ``.tar.gz``."""
    raw = _read_parts(source, layout)
    meta_name = f"{source}/{layout.meta_file}"
    names = safe_unpickle(raw[layout.meta_file], meta_name).get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.num_classes:
        raise DataError(f"{meta_name}: '{layout.names_key}' should list {layout.num_classes} class names.")
    classes = [_as_text(n) for n in names]

    def load(files: tuple[str, ...]) -> ImageDataset:
        images, labels = [], []
        for f in files:
            x, y = _batch(safe_unpickle(raw[f], f"{source}/{f}"), layout, f"{source}/{f}")
            images.append(x)
            labels.append(y)
        x = torch.from_numpy(np.ascontiguousarray(np.concatenate(images)))
        return ImageDataset(x, torch.from_numpy(np.concatenate(labels)), classes)

    return load(layout.train_files), load((layout.test_file,))
