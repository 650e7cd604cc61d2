"""ImageFolder trees (``class/image.png``), as a folder or a tar archive read in one pass.

Layouts understood, after dropping folders that wrap the whole tree:

- ``train/<class>/...`` and ``test/<class>/...`` (or ``val/``): the two splits;
- ``<class>/...``: one pool, from which a stratified 10% is held out as test.

Images are decoded with PIL. A tree of grayscale images stays one channel, anything
else becomes RGB; images whose size differs from the most common one are resized.
Only regular files are read (a FIFO or a device named ``.png`` is refused, never
opened), and no image file may be larger than ``MAX_IMAGE_BYTES``.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import sys
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

import paraformer.data.cache as cache
from paraformer.data.base import ImageDataset, Log, quiet
from paraformer.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
HOLDOUT_FRACTION = 0.1
MAX_IMAGE_BYTES = 64 << 20  # far above any real image file; stops a runaway read
PROGRESS_MIN_IMAGES = 300
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_DECODE_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    struct.error,
    ValueError,
    SyntaxError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


@dataclass(frozen=True)
class _Entry:
    parts: tuple[str, ...]  # the path inside the tree
    read: Callable[[], bytes]
    where: str  # how to name the file in a message


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(TAR_SUFFIXES)


def _wanted(parts: tuple[str, ...]) -> bool:
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS


def _list_folder(root: Path) -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(folder) / n for n in sorted(names))
    return [f for f in files if _wanted(f.relative_to(root).parts)]


def _folder_entries(root: Path, files: list[Path]) -> list[_Entry]:
    for f in files:
        try:
            info = f.stat()  # follows a symbolic link to what it names
        except OSError as err:
            raise DataError(f"cannot read {f}: {err.strerror or err}.") from None
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{f} is not a regular file (a FIFO, device or folder); remove it from the tree.")
        if info.st_size > MAX_IMAGE_BYTES:
            raise DataError(f"{f} has {info.st_size:,} bytes, more than any image should; remove it.")
    return [_Entry(f.relative_to(root).parts, lambda f=f: _read_capped(f), str(f)) for f in files]


def _read_capped(path: Path) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise DataError(f"{path} is larger than {MAX_IMAGE_BYTES:,} bytes; it cannot be an image here.")
    return data


def _tar_entries(path: Path) -> list[_Entry]:
    entries = []
    try:
        with tarfile.open(path, "r|*") as tf:
            for member in tf:
                parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
                if member.isfile() and parts and _wanted(parts):
                    if member.size > MAX_IMAGE_BYTES:
                        raise DataError(
                            f"{path}:{member.name} has {member.size:,} bytes, more than any image should."
                        )
                    f = tf.extractfile(member)
                    data = f.read() if f is not None else b""
                    entries.append(_Entry(parts, lambda d=data: d, f"{path}:{member.name}"))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc} (the archive is truncated or corrupt).") from None
    return entries


Split = dict[str, list[_Entry]]  # class name -> its files, sorted


def _group(entries: list[_Entry], depth: int) -> Split:
    groups: Split = {}
    for e in entries:
        if len(e.parts) > depth:
            groups.setdefault(e.parts[depth - 1], []).append(e)
    return {c: sorted(groups[c], key=lambda e: e.parts) for c in sorted(groups)}


def _layout(entries: list[_Entry], source: Path) -> tuple[Split, Split | None]:
    """Class groups of the train and test splits (test is ``None`` when the tree has no split)."""
    if not entries:
        raise DataError(
            f"no images found in {source} (expected class folders of .png/.jpg files, "
            "optionally under train/ and test/)."
        )
    while all(len(e.parts) >= 3 for e in entries) and len({e.parts[0] for e in entries}) == 1:
        entries = [_Entry(e.parts[1:], e.read, e.where) for e in entries]  # a folder wrapping the tree
    tops = {e.parts[0] for e in entries if len(e.parts) >= 3}
    if "train" in tops and tops & {"test", "val"}:
        test_name = "test" if "test" in tops else "val"
        train = _group([e for e in entries if e.parts[0] == "train"], 2)
        test = _group([e for e in entries if e.parts[0] == test_name], 2)
        unknown = sorted(set(test) - set(train))
        if unknown:
            raise DataError(
                f"{source}: {test_name}/ has classes that train/ lacks ({', '.join(unknown[:5])}); "
                "both splits must use the same class folders."
            )
        return train, test
    train = _group(entries, 1)
    if not train:
        raise DataError(f"no class folders with images found in {source} (expected <class>/<image> files).")
    return train, None


def _hold_out(pool: Split) -> tuple[Split, Split]:
    gen = torch.Generator().manual_seed(0)
    train, test = {}, {}
    for c, files in pool.items():
        n = len(files)
        n_test = max(1, int(n * HOLDOUT_FRACTION + 0.5)) if n >= 2 else 0
        perm = torch.randperm(n, generator=gen).tolist()
        held = set(perm[:n_test])
        train[c] = [f for i, f in enumerate(files) if i not in held]
        test[c] = [f for i, f in enumerate(files) if i in held]
    return train, test


def _decode(entry: _Entry) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(entry.read())) as im:
            im.load()
            if im.mode in _GRAY_MODES:
                return np.asarray(im.convert("L"))
            return np.asarray(im.convert("RGB"))
    except _DECODE_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, UnidentifiedImageError) or "<_io." in reason:
            reason = "not an image file PIL can read"  # PIL's message names a BytesIO, not the file
        raise DataError(f"cannot decode image {entry.where}: {reason}; remove or replace the file.") from None


def _stack(arrays: list[np.ndarray], source: Path) -> tuple[np.ndarray, str | None]:
    """``(N, C, H, W)`` uint8 at one common size and channel count, and a note if some were resized."""
    sizes = Counter(a.shape[:2] for a in arrays)
    (h, w), _ = sizes.most_common(1)[0]
    note = None
    if len(sizes) > 1:
        odd = sum(n for s, n in sizes.items() if s != (h, w))
        note = f"note: {odd} of {len(arrays)} images in {source} are not {h}x{w}; resized them (bilinear)"
        arrays = [
            a
            if a.shape[:2] == (h, w)
            else np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR))
            for a in arrays
        ]
    rgb = any(a.ndim == 3 for a in arrays)
    out = np.empty((len(arrays), 3 if rgb else 1, h, w), dtype=np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a.transpose(2, 0, 1) if a.ndim == 3 else a[None]
    return out, note


def _decode_splits(
    train: Split, test: Split, classes: list[str], source: Path, progress: bool
) -> tuple[ImageDataset, ImageDataset, str | None]:
    jobs = [
        (split, i, e)
        for split, groups in ((0, train), (1, test))
        for i, c in enumerate(classes)
        for e in groups.get(c, [])
    ]
    bar = tqdm(
        total=len(jobs),
        desc=f"decode {source.name}",
        unit="img",
        file=sys.stderr,
        leave=False,
        disable=not progress or len(jobs) <= PROGRESS_MIN_IMAGES,
    )
    arrays = []
    with bar:
        for _, _, e in jobs:
            arrays.append(_decode(e))
            bar.update(1)
    stacked, note = _stack(arrays, source)
    del arrays
    images = torch.from_numpy(stacked)
    labels = torch.tensor([label for _, label, _ in jobs], dtype=torch.int64)
    n_train = sum(1 for split, _, _ in jobs if split == 0)  # jobs list the train split first
    train_ds = ImageDataset(images[:n_train], labels[:n_train], classes)
    test_ds = ImageDataset(images[n_train:], labels[n_train:], classes)
    return train_ds, test_ds, note


def load_imagefolder(
    source: str | os.PathLike,
    *,
    progress: bool = True,
    use_cache: bool = True,
    log: Log = quiet,
    _max_per_class: int | None = None,
) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) from an ImageFolder folder or tar archive; decoded arrays are cached.

    ``_max_per_class`` (for tests) decodes only the first images of each class and split,
    and bypasses the cache.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise DataError(f"imagefolder: {source} does not exist; pass a folder or .tar.gz of class folders.")
    archive = is_archive(source)
    if not archive and not source.is_dir():
        raise DataError(f"imagefolder: {source} is neither a folder nor a .tar/.tar.gz/.tgz archive.")
    files = [] if archive else _list_folder(source)
    key = None
    if use_cache and _max_per_class is None:
        try:
            key = cache.make_key("imagefolder", source, cache.file_stats([source] if archive else files))
        except OSError:
            key = None
        hit = cache.load(key, log) if key else None
        if hit is not None:
            for note in hit[2]:
                log(note)
            return hit[0], hit[1]
    entries = _tar_entries(source) if archive else _folder_entries(source, files)
    train, test = _layout(entries, source)
    notes = []
    if test is None:
        train, test = _hold_out(train)
        notes.append(
            f"note: {source} has no train/ and test/ folders; holding out a stratified "
            f"{HOLDOUT_FRACTION:.0%} of each class as the test split"
        )
        log(notes[-1])
    if _max_per_class is not None:
        train = {c: f[:_max_per_class] for c, f in train.items()}
        test = {c: f[:_max_per_class] for c, f in test.items()}
    classes = list(train)
    train_ds, test_ds, note = _decode_splits(train, test, classes, source, progress)
    if note is not None:
        notes.append(note)
        log(note)
    if key is not None:
        cache.save(key, train_ds, test_ds, source=str(source.resolve()), notes=notes, log=log)
    return train_ds, test_ds
