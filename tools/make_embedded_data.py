"""Regenerate the ``embedded`` data set shipped in ``src/paraformer/data/embedded/``.

It is a balanced subset of Fashion-MNIST: the first ``--train-per-class`` images of
each class of the official train file, and the first ``--test-per-class`` of each
class of the official test file, kept in their official order and written as
reproducible IDX ``.gz`` files (no file name, mtime 0), with a ``README.json``.

    python tools/make_embedded_data.py --source /path/to/fashion-mnist
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from paraformer.data.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_FILES  # noqa: E402
from paraformer.data.idx import read_idx, write_idx  # noqa: E402

DEFAULT_OUT = ROOT / "src" / "paraformer" / "data" / "embedded"


def first_per_class(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """Indices of the first ``per_class`` samples of each class, in file order."""
    keep = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)[:per_class]
        if len(idx) < per_class:
            raise SystemExit(f"class {c} has only {len(idx)} samples, fewer than {per_class}")
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find(source: Path, name: str) -> Path:
    for candidate in (source / name, source / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"{source} lacks {name}; pass --source with the four official Fashion-MNIST files")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="folder with the four official IDX files")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the package's)"
    )
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    meta: dict = {
        "description": "Balanced subset of Fashion-MNIST: the first images of each class, in official order.",
        "source": "Fashion-MNIST (Zalando Research), https://github.com/zalandoresearch/fashion-mnist, MIT",
        "classes": FASHION_MNIST_CLASSES,
        "format": "IDX, gzip (no name, mtime 0)",
        "splits": {},
        "files": {},
    }
    for split, prefix, per_class in (
        ("train", "train", args.train_per_class),
        ("test", "t10k", args.test_per_class),
    ):
        img_src = find(args.source, f"{prefix}-images-idx3-ubyte.gz")
        lab_src = find(args.source, f"{prefix}-labels-idx1-ubyte.gz")
        images, labels = read_idx(img_src, 3), read_idx(lab_src, 1)
        keep = first_per_class(labels, per_class, len(FASHION_MNIST_CLASSES))
        write_idx(args.out / f"{prefix}-images-idx3-ubyte.gz", images[keep])
        write_idx(args.out / f"{prefix}-labels-idx1-ubyte.gz", labels[keep])
        meta["splits"][split] = {
            "count": int(len(keep)),
            "per_class": per_class,
            "source_images": {"file": img_src.name, "sha256": sha256(img_src)},
            "source_labels": {"file": lab_src.name, "sha256": sha256(lab_src)},
            "source_indices_first": [int(i) for i in keep[:10]],
            "source_index_last": int(keep[-1]),
        }
    for name in FASHION_MNIST_FILES:
        path = args.out / name
        meta["files"][name] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
    (args.out / "README.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(f["bytes"] for f in meta["files"].values())
    print(
        f"wrote {args.out} ({total:,} bytes): "
        + ", ".join(f"{s} {v['count']}" for s, v in meta["splits"].items())
    )


if __name__ == "__main__":
    main()
