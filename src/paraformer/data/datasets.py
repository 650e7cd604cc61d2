"""``load_dataset(name)``: find (or fetch) a named data set's files and load both splits."""

from __future__ import annotations

import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

import paraformer.data.cache as cache
import paraformer.data.download as dl
from paraformer.data.base import DataSplits, ImageDataset, Log, quiet
from paraformer.data.cifar import CIFAR10, CIFAR100, CifarLayout, read_cifar
from paraformer.data.idx import read_idx
from paraformer.data.imagefolder import load_imagefolder
from paraformer.errors import DataError

DATASET_NAMES: tuple[str, ...] = ("embedded", "fashion-mnist", "cifar10", "cifar100")
IMAGEFOLDER_PREFIX = "imagefolder:"
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR10_JPEG_NAMES = ("cifar10-jpeg.tar.gz", "cifar10-jpeg.tgz", "cifar10-jpeg.tar", "cifar10-jpeg")
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
}


_READ_ERRORS = (OSError, EOFError, zlib.error, tarfile.TarError, struct.error, ValueError, pickle.PickleError)


def default_data_dir() -> Path:
    """``$PARAFORMER_DATA_DIR``, else ``~/.cache/paraformer/data``."""
    env = os.environ.get("PARAFORMER_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "paraformer" / "data"


# ---------------------------------------------------------------------------- IDX (Fashion-MNIST)


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _find_idx_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    for folder in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw"):
        if all(_idx_file(folder, n) for n in names):
            return folder
    return None


def read_idx_splits(folder: Path, classes: list[str]) -> tuple[ImageDataset, ImageDataset]:
    """Train and test splits from the four standard IDX files in ``folder``."""
    out = []
    for prefix in ("train", "t10k"):
        img_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte.gz")
        lab_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte.gz")
        assert img_path is not None and lab_path is not None
        images, labels = read_idx(img_path, 3), read_idx(lab_path, 1)
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{img_path} holds {images.shape[0]} images but {lab_path} holds {labels.shape[0]} labels; "
                "the files do not belong together."
            )
        if labels.size and labels.max() >= len(classes):
            raise DataError(f"{lab_path} has label {labels.max()}, outside 0..{len(classes) - 1}.")
        x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, H, W)
        out.append(ImageDataset(x, torch.from_numpy(labels.astype(np.int64)), list(classes)))
    return out[0], out[1]


def _load_embedded() -> DataSplits:
    if _find_idx_folder(EMBEDDED_DIR, FASHION_MNIST_FILES) != EMBEDDED_DIR:
        raise DataError(
            f"embedded: the bundled files are missing from {EMBEDDED_DIR}; reinstall paraformer or "
            "regenerate them with tools/make_embedded_data.py --source DIR."
        )
    train, test = read_idx_splits(EMBEDDED_DIR, FASHION_MNIST_CLASSES)
    return DataSplits("embedded", train, test, natural_images=False)


def _offline() -> bool:
    return os.environ.get("PARAFORMER_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _missing(name: str, where: str, expected: str, url: str, dest: Path, failure: str | None) -> DataError:
    if failure:
        why = f" (download failed: {failure})"
    elif _offline():
        why = " (downloads are off because PARAFORMER_OFFLINE is set)"
    else:
        why = ""
    return DataError(
        f"{name}: files not found in {where} (expected {expected}){why}. "
        f"Download them from {url} into {dest}, or pass --data-dir DIR."
    )


def _load_fashion_mnist(root: Path, download_ok: bool, progress: bool) -> DataSplits:
    folder = _find_idx_folder(root, FASHION_MNIST_FILES)
    failure = None
    if folder is None and download_ok:
        dest = root / "fashion-mnist"
        failure = dl.fetch_all(dl.FASHION_MNIST_URL, dl.FASHION_MNIST_MD5, dest, progress=progress)
        folder = _find_idx_folder(root, FASHION_MNIST_FILES)
    if folder is None:
        where = f"{root}, {root / 'fashion-mnist'} or {root / 'FashionMNIST' / 'raw'}"
        raise _missing(
            "fashion-mnist",
            where,
            ", ".join(FASHION_MNIST_FILES),
            dl.FASHION_MNIST_URL,
            root / "fashion-mnist",
            failure,
        )
    train, test = read_idx_splits(folder, FASHION_MNIST_CLASSES)
    return DataSplits("fashion-mnist", train, test, natural_images=False)


# ---------------------------------------------------------------------------- CIFAR


def _find_cifar(root: Path, layout: CifarLayout) -> Path | None:
    if root.name in CIFAR10_JPEG_NAMES:
        return None
    if root.is_file():
        return root if root.name.lower().endswith((".tar.gz", ".tgz", ".tar")) else None
    if (root / layout.train_files[0]).is_file() and (root / layout.meta_file).is_file():
        return root  # the batches folder itself
    for base in (root, root / layout.name):
        if (base / layout.folder).is_dir():
            return base / layout.folder
        if (base / layout.archive).is_file():
            return base / layout.archive
    return None


def _find_cifar10_jpeg(root: Path) -> Path | None:
    if root.name in CIFAR10_JPEG_NAMES and root.exists():
        return root
    for base in (root, root / "cifar10"):
        for name in CIFAR10_JPEG_NAMES:
            if (base / name).exists():
                return base / name
    return None


def _cached_cifar(source: Path, layout: CifarLayout, log: Log) -> tuple[ImageDataset, ImageDataset]:
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    try:
        key = cache.make_key(layout.name, source, cache.file_stats(files))
    except OSError:
        key = None
    hit = cache.load(key, log) if key else None
    if hit is not None:
        return hit[0], hit[1]
    train, test = read_cifar(source, layout)
    if key:
        cache.save(key, train, test, source=str(source.resolve()), log=log)
    return train, test


def _load_cifar(
    root: Path,
    layout: CifarLayout,
    download_ok: bool,
    progress: bool,
    log: Log,
    max_per_class: int | None = None,
) -> DataSplits:
    source = _find_cifar(root, layout)
    if source is None and layout is CIFAR10 and (jpeg := _find_cifar10_jpeg(root)) is not None:
        log(
            f"note: cifar10 from {jpeg}, the JPEG re-encoded copy (pixels differ slightly from the "
            "official batches)"
        )
        train, test = load_imagefolder(jpeg, progress=progress, log=log, _max_per_class=max_per_class)
        if train.num_classes != layout.num_classes:
            raise DataError(f"cifar10: {jpeg} has {train.num_classes} class folders, expected 10.")
        return DataSplits(layout.name, train, test, natural_images=True)
    failure = None
    if source is None and download_ok:
        md5 = {layout.archive: dl.CIFAR_MD5[layout.archive]}
        failure = dl.fetch_all(dl.CIFAR_URL, md5, root, progress=progress)
        source = _find_cifar(root, layout)
    if source is None:
        expected = f"{layout.folder}/ or {layout.archive}"
        raise _missing(layout.name, str(root), expected, dl.CIFAR_URL + layout.archive, root, failure)
    train, test = _cached_cifar(source, layout, log)
    return DataSplits(layout.name, train, test, natural_images=True)


# ---------------------------------------------------------------------------- entry point


def _load_imagefolder(
    spec: str, root: Path, progress: bool, log: Log, max_per_class: int | None
) -> DataSplits:
    if not spec:
        raise DataError(
            "imagefolder: no path given; use imagefolder:PATH with a folder or .tar.gz of images."
        )
    path = Path(spec).expanduser()
    if not path.exists() and not path.is_absolute() and (root / path).exists():
        path = root / path
    if not path.exists():
        raise DataError(f"imagefolder: {path} does not exist; pass a folder or .tar.gz of class folders.")
    train, test = load_imagefolder(path, progress=progress, log=log, _max_per_class=max_per_class)
    return DataSplits(f"imagefolder:{path}", train, test, natural_images=True)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: bool = True,
    log: Log = quiet,
    _max_per_class: int | None = None,
) -> DataSplits:
    """Load a named data set's train and test splits as uint8 tensors.

    ``name`` is one of ``DATASET_NAMES`` or ``imagefolder:PATH``. Files are looked for in
    ``data_dir`` (default ``$PARAFORMER_DATA_DIR`` or ``~/.cache/paraformer/data``) and,
    when missing and ``download`` is true (and ``$PARAFORMER_OFFLINE`` is not set), fetched
    from the official site. Any missing, truncated or corrupt file raises ``DataError``
    with a one-line explanation. Notes (a re-encoded copy, resized images, a damaged
    cache entry) go to ``log``, which prints nothing by default.
    ``_max_per_class`` (tests only) decodes just a few images per class of an image folder
    (``imagefolder:`` or the JPEG copy of CIFAR-10).
    """
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    download = download and not _offline()
    if name.startswith(IMAGEFOLDER_PREFIX):
        key = "imagefolder"
    else:
        key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    try:
        if key == "embedded":
            splits = _load_embedded()
        elif key == "fashion-mnist":
            splits = _load_fashion_mnist(root, download, progress)
        elif key in ("cifar10", "cifar100"):
            layout = CIFAR10 if key == "cifar10" else CIFAR100
            splits = _load_cifar(root, layout, download, progress, log, _max_per_class)
        elif key == "imagefolder":
            splits = _load_imagefolder(name[len(IMAGEFOLDER_PREFIX) :], root, progress, log, _max_per_class)
        else:
            valid = ", ".join(DATASET_NAMES)
            raise DataError(f"unknown dataset {name!r}; choose one of {valid}, or imagefolder:PATH.")
    except DataError:
        raise
    except _READ_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{name}: cannot load the data in {root}: {reason}") from None
    check_usable(splits)
    return splits


def check_usable(splits: DataSplits) -> None:
    """A classifier needs two classes or more and images in both the train and test splits."""
    present = int(splits.train.labels.unique().numel()) if len(splits.train) else 0
    if present < 2:
        raise DataError(
            f"{splits.name}: the training split has images of {present} class(es); a classifier "
            "needs at least 2 (one folder of images per class)."
        )
    if len(splits.test) == 0:
        raise DataError(
            f"{splits.name}: the test split has no images; add a test/ folder, or give each class at "
            "least 2 images so that 10% can be held out."
        )
