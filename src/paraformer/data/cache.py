"""A disk cache of decoded train/test arrays, so slow sources are decoded once.

Each entry is a folder ``<cache>/decoded/<key>/`` with four ``.npy`` arrays and a
``meta.json`` written last. The key hashes the source's absolute path, sizes and
mtimes, so editing the source invalidates it. A damaged entry is ignored and
rebuilt; failing to write one only costs the next run another decode.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from paraformer.data.base import ImageDataset, Log, quiet
from paraformer.files import WriteError, atomic_write

FORMAT_VERSION = 1
_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def cache_base() -> Path | None:
    """``$PARAFORMER_CACHE_DIR`` (default ``~/.cache/paraformer``), or ``None`` when
    ``PARAFORMER_NO_CACHE`` is set."""
    if os.environ.get("PARAFORMER_NO_CACHE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    return Path(os.environ.get("PARAFORMER_CACHE_DIR") or Path.home() / ".cache" / "paraformer").expanduser()


def cache_root() -> Path | None:
    """The folder of decoded datasets, or ``None`` when caching is off."""
    base = cache_base()
    return None if base is None else base / "decoded"


def file_stats(paths: list[Path]) -> list[tuple[str, int, int]]:
    """``(absolute path, size, mtime_ns)`` of each file, the raw material of a cache key."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
    return out


def make_key(kind: str, source: Path, stats: list[tuple[str, int, int]]) -> str:
    blob = json.dumps([FORMAT_VERSION, kind, str(source.resolve()), stats]).encode()
    return f"{kind}-{hashlib.sha256(blob).hexdigest()[:20]}"


def entry(key: str) -> Path | None:
    """The folder of a complete cache entry (its ``meta.json`` is written last), or None."""
    root = cache_root()
    if root is None or not (root / key / "meta.json").is_file():
        return None
    return root / key


def load(key: str, log: Log = quiet) -> tuple[ImageDataset, ImageDataset, list[str]] | None:
    """The cached (train, test, notes) for ``key``, or ``None`` if absent, disabled or damaged."""
    folder = entry(key)
    if folder is None:
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != FORMAT_VERSION:
            return None
        classes = [str(c) for c in meta["classes"]]
        arrays = {}
        for name in _ARRAYS:
            path = folder / f"{name}.npy"
            if path.stat().st_size != meta["sizes"][name]:
                raise ValueError(f"{path} has the wrong size")
            arrays[name] = np.load(path, allow_pickle=False)
        splits = []
        for split in ("train", "test"):
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            ok = images.dtype == np.uint8 and images.ndim == 4 and labels.dtype == np.int64
            ok = ok and labels.shape == (images.shape[0],)
            ok = ok and (labels.size == 0 or (labels.min() >= 0 and labels.max() < len(classes)))
            if not ok:
                raise ValueError(f"inconsistent {split} arrays")
            splits.append(ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), classes))
        return splits[0], splits[1], [str(n) for n in meta.get("notes", [])]
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        log(f"note: ignoring damaged cache entry {folder} ({exc}); decoding again")
        return None


def save(
    key: str,
    train: ImageDataset,
    test: ImageDataset,
    source: str,
    notes: Sequence[str] = (),
    log: Log = quiet,
) -> None:
    """Store (train, test) and the loader's notes under ``key``; failing to write only prints a note."""
    root = cache_root()
    if root is None:
        return
    folder = root / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").unlink(missing_ok=True)  # the entry is incomplete until meta is back
        sizes = {}
        for split, ds in (("train", train), ("test", test)):
            for part, tensor in (("images", ds.images), ("labels", ds.labels)):
                name = f"{split}_{part}"
                array = tensor.contiguous().numpy()
                atomic_write(folder / f"{name}.npy", lambda tmp, a=array: _save_npy(tmp, a))
                sizes[name] = (folder / f"{name}.npy").stat().st_size
        meta = {"version": FORMAT_VERSION, "source": source, "classes": list(train.classes)}
        meta.update(sizes=sizes, notes=list(notes))
        atomic_write(folder / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    except (OSError, WriteError) as exc:
        log(f"note: cannot write the decoded-data cache in {folder} ({exc})")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a bare name
        np.save(f, array, allow_pickle=False)
