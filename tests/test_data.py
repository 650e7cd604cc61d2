"""Data loading, splits and batch transforms (paraformer.data)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from paraformer.data import (
    DATASET_NAMES,
    BatchTransform,
    ImageDataset,
    augment,
    cache,
    channel_stats,
    datasets,
    download,
    imagefolder,
    limit_dataset,
    load_dataset,
    train_val_split,
    transform_for,
)
from paraformer.data.idx import idx_bytes, read_idx, write_idx
from paraformer.errors import DataError

# Real dataset files: ../shared/datasets beside the clone, or $PARAFORMER_TEST_DATA_DIR.
SHARED = Path(
    os.environ.get("PARAFORMER_TEST_DATA_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
)
FMNIST = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Keep every test away from the home directory and from the real network."""
    monkeypatch.setenv("PARAFORMER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PARAFORMER_NO_CACHE", raising=False)
    monkeypatch.delenv("PARAFORMER_DATA_DIR", raising=False)
    monkeypatch.setattr(download, "FASHION_MNIST_URL", "http://127.0.0.1:9/")
    monkeypatch.setattr(download, "CIFAR_URL", "http://127.0.0.1:9/")


def need_shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


# ---------------------------------------------------------------------------- file writers


def write_fmnist(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8))


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` opcodes, as in the official CIFAR pickles."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def cifar_pickle(obj: object, style: str = "py2") -> bytes:
    if style == "py3":
        return pickle.dumps(obj, protocol=4)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(folder: Path, per_batch: int = 4, n_test: int = 3, style: str = "py2") -> Path:
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for i in range(1, 6):
        batch = {
            b"batch_label": b"training batch",
            b"labels": [(i + j) % 10 for j in range(per_batch)],
            b"data": cifar_images(per_batch, i),
            b"filenames": [b"x.png"] * per_batch,
        }
        (batches / f"data_batch_{i}").write_bytes(cifar_pickle(batch, style))
    test = {b"labels": [j % 10 for j in range(n_test)], b"data": cifar_images(n_test, 99)}
    (batches / "test_batch").write_bytes(cifar_pickle(test, style))
    meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
    (batches / "batches.meta").write_bytes(cifar_pickle(meta, style))
    return batches


def write_cifar100(folder: Path, n_train: int = 6, n_test: int = 4) -> Path:
    root = folder / "cifar-100-python"
    root.mkdir(parents=True)
    for name, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        part = {
            b"fine_labels": [(7 * j) % 100 for j in range(n)],
            b"coarse_labels": [j % 20 for j in range(n)],
            b"data": cifar_images(n, seed),
        }
        (root / name).write_bytes(cifar_pickle(part))
    meta = {
        b"fine_label_names": [f"c{i:02d}".encode() for i in range(100)],
        b"coarse_label_names": [f"s{i}".encode() for i in range(20)],
    }
    (root / "meta").write_bytes(cifar_pickle(meta))
    return root


def make_tar(src: Path, dest: Path, arcname: str) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname=arcname)
    return dest


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_imagefolder(
    root: Path, classes=("cat", "dog", "emu"), per_class=10, split=True, size=8, gray=False
):
    rng = np.random.default_rng(0)
    shape = (size, size) if gray else (size, size, 3)
    for split_name, n in (("train", per_class), ("test", 3)) if split else ((".", per_class),):
        for c in classes:
            for i in range(n):
                write_png(root / split_name / c / f"{i:03d}.png", rng.integers(0, 256, shape, dtype=np.uint8))
    return root


# ---------------------------------------------------------------------------- real data


def test_real_fashion_mnist():
    root = need_shared("fashion-mnist")
    splits = load_dataset("fashion-mnist", root.parent, download=False, progress=False)
    assert (len(splits.train), len(splits.test)) == (60_000, 10_000)
    assert splits.train.images.shape[1:] == (1, 28, 28) and not splits.natural_images
    assert splits.train.labels.bincount().tolist() == [6000] * 10
    assert splits.train.classes[0] == "T-shirt/top" and splits.train.classes[9] == "Ankle boot"


def test_embedded_loads_without_data_dir(monkeypatch):
    monkeypatch.setenv("PARAFORMER_DATA_DIR", "/nonexistent")
    splits = load_dataset("embedded", progress=False)
    assert splits.name == "embedded" and not splits.natural_images
    assert splits.train.labels.bincount().tolist() == [600] * 10
    assert splits.test.labels.bincount().tolist() == [100] * 10
    assert splits.train.images.shape == (6000, 1, 28, 28)


def test_embedded_matches_official_files():
    root = need_shared("fashion-mnist")
    embedded = load_dataset("embedded")
    for split, prefix, k in (("train", "train", 600), ("test", "t10k", 100)):
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 1)
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz", 3)
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:k] for c in range(10)]))
        got = getattr(embedded, split)
        assert torch.equal(got.images[:, 0], torch.from_numpy(images[keep].copy()))
        assert torch.equal(got.labels, torch.from_numpy(labels[keep].astype(np.int64)))


def test_real_cifar10_jpeg_tarball_subset(capsys):
    root = need_shared("cifar10", "cifar10-jpeg.tar.gz").parents[1]
    notes: list[str] = []
    splits = load_dataset("cifar10", root, download=False, progress=False, log=notes.append, _max_per_class=3)
    assert any("JPEG" in n for n in notes)
    assert capsys.readouterr().err == ""  # library calls stay quiet: notes go to the log callback
    assert splits.natural_images and splits.train.classes == CIFAR10_NAMES
    assert splits.train.images.shape == (30, 3, 32, 32) and splits.test.images.shape == (30, 3, 32, 32)
    assert splits.train.labels.bincount().tolist() == [3] * 10
    assert splits.train.images.float().std() > 20  # real pictures, not blank


@pytest.mark.slow
def test_real_cifar10_jpeg_tarball_full():
    root = need_shared("cifar10", "cifar10-jpeg.tar.gz").parents[1]
    splits = load_dataset("cifar10", root, download=False, progress=False)
    assert splits.train.images.shape == (50_000, 3, 32, 32) and len(splits.test) == 10_000
    assert splits.train.labels.bincount().tolist() == [5000] * 10
    assert splits.test.labels.bincount().tolist() == [1000] * 10
    again = load_dataset("cifar10", root, download=False, progress=False)  # from the cache
    assert torch.equal(again.train.images, splits.train.images)


# ---------------------------------------------------------------------------- standard formats


@pytest.mark.parametrize("layout", ["flat", "fashion-mnist", "FashionMNIST/raw"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_files(tmp_path, layout, gz):
    folder = tmp_path if layout == "flat" else tmp_path / layout
    write_fmnist(folder, gz=gz)
    splits = load_dataset("fashion-mnist", tmp_path, download=False)
    assert (len(splits.train), len(splits.test)) == (20, 10)
    expected = read_idx(folder / ("train-images-idx3-ubyte" + (".gz" if gz else "")), 3)
    assert torch.equal(splits.train.images[:, 0], torch.from_numpy(expected.copy()))
    assert splits.train.labels.tolist() == [i % 10 for i in range(20)]


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar10_folder(tmp_path, style):
    batches = write_cifar10(tmp_path, style=style)
    for data_dir in (tmp_path, batches):
        splits = load_dataset("cifar10", data_dir, download=False)
        assert splits.train.images.shape == (20, 3, 32, 32) and splits.natural_images
        assert splits.train.classes == CIFAR10_NAMES
        first = cifar_images(4, 1)[0].reshape(3, 32, 32)
        assert torch.equal(splits.train.images[0], torch.from_numpy(first))
        assert splits.train.labels[:4].tolist() == [1, 2, 3, 4] and len(splits.test) == 3


def test_cifar10_and_100_archives(tmp_path):
    write_cifar10(tmp_path / "src10")
    make_tar(
        tmp_path / "src10" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py"
    )
    write_cifar100(tmp_path / "src100")
    make_tar(
        tmp_path / "src100" / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz", "cifar-100-python"
    )
    c10 = load_dataset("cifar10", tmp_path, download=False)
    assert len(c10.train) == 20 and c10.train.num_classes == 10
    c100 = load_dataset("cifar100", tmp_path, download=False)
    assert c100.train.num_classes == 100 and c100.train.classes[7] == "c07"
    assert c100.train.labels.tolist() == [(7 * j) % 100 for j in range(6)]
    assert torch.equal(c100.test.images[1], torch.from_numpy(cifar_images(4, 2)[1].reshape(3, 32, 32)))
    assert torch.equal(load_dataset("cifar100", tmp_path / "src100").train.images, c100.train.images)


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("target", ["system", "exec"])
def test_cifar_pickle_cannot_run_code(tmp_path, target):
    batches = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    func = os.system if target == "system" else exec
    arg = f"touch {marker}" if target == "system" else f"open({str(marker)!r}, 'w').close()"
    (batches / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(func, arg), b"labels": []}))
    with pytest.raises(DataError, match="data_batch_1.*refusing"):
        load_dataset("cifar10", tmp_path, download=False)
    assert not marker.exists()


def test_imagefolder_with_split(tmp_path):
    root = write_imagefolder(tmp_path / "tree")
    splits = load_dataset(f"imagefolder:{root}", progress=False)
    assert splits.train.classes == ["cat", "dog", "emu"] and splits.natural_images
    assert splits.train.images.shape == (30, 3, 8, 8) and splits.test.images.shape == (9, 3, 8, 8)
    expected = np.asarray(Image.open(root / "train" / "dog" / "004.png")).transpose(2, 0, 1)
    assert torch.equal(splits.train.images[14], torch.from_numpy(expected.copy()))
    assert splits.train.labels.bincount().tolist() == [10, 10, 10]


def test_imagefolder_without_split_holds_out_10_percent(tmp_path, capsys):
    root = write_imagefolder(tmp_path / "pool", split=False, per_class=20, gray=True)
    notes: list[str] = []
    splits = load_dataset(f"imagefolder:{root}", log=notes.append)
    assert any("10%" in n for n in notes)
    assert splits.train.channels == 1 and splits.test.labels.bincount().tolist() == [2, 2, 2]
    assert len(splits.train) == 54
    again = load_dataset(f"imagefolder:{root}")  # deterministic (and from the cache)
    assert torch.equal(again.test.images, splits.test.images)


def test_imagefolder_tarball_wrapped_with_val_and_mixed_sizes(tmp_path, capsys):
    root = write_imagefolder(tmp_path / "wrap" / "tree", per_class=4)
    (root / "test").rename(root / "val")
    write_png(root / "train" / "cat" / "big.png", np.zeros((16, 12), np.uint8))  # gray and another size
    (root / "README.txt").write_text("not an image")
    tar = make_tar(tmp_path / "wrap", tmp_path / "tree.tgz", "wrap")
    notes: list[str] = []
    splits = load_dataset(f"imagefolder:{tar}", progress=False, log=notes.append)
    assert any("resized" in n for n in notes)
    assert splits.train.images.shape == (13, 3, 8, 8) and len(splits.test) == 9
    from_dir = load_dataset(f"imagefolder:{tmp_path / 'wrap'}", progress=False)
    assert torch.equal(from_dir.train.images, splits.train.images)


def test_imagefolder_test_with_unknown_class(tmp_path):
    root = write_imagefolder(tmp_path / "tree", per_class=2)
    write_png(root / "test" / "yak" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="yak"):
        load_dataset(f"imagefolder:{root}")


# ---------------------------------------------------------------------------- downloads


def test_download_verifies_md5(tmp_path, monkeypatch):
    server = tmp_path / "server"
    write_fmnist(server)
    md5 = {n: hashlib.md5((server / n).read_bytes()).hexdigest() for n in FMNIST}
    monkeypatch.setattr(download, "FASHION_MNIST_URL", server.as_uri() + "/")
    monkeypatch.setattr(download, "FASHION_MNIST_MD5", md5)
    splits = load_dataset("fashion-mnist", tmp_path / "data", progress=False)
    assert len(splits.train) == 20 and (tmp_path / "data" / "fashion-mnist" / FMNIST[0]).is_file()

    monkeypatch.setattr(download, "FASHION_MNIST_MD5", {**md5, FMNIST[0]: "0" * 32})
    with pytest.raises(DataError, match="checksum mismatch") as err:
        load_dataset("fashion-mnist", tmp_path / "other", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "other").exists()  # nothing half-written kept, no empty folders left


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "cifar100"])
@pytest.mark.parametrize("allow_download", [False, True])
def test_missing_files_one_line_error(tmp_path, name, allow_download):
    with pytest.raises(DataError) as err:
        load_dataset(name, tmp_path / "nothing", download=allow_download, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "nothing") in msg and "--data-dir" in msg
    assert ("download failed" in msg) == allow_download


def test_offline_env_disables_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("PARAFORMER_OFFLINE", "1")
    monkeypatch.setattr(download, "fetch", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(DataError, match="PARAFORMER_OFFLINE"):
        load_dataset("cifar10", tmp_path, download=True)


# ---------------------------------------------------------------------------- bad input


def test_truncated_idx(tmp_path):
    write_fmnist(tmp_path)
    path = tmp_path / FMNIST[0]
    path.write_bytes(path.read_bytes()[:-300])  # a cut-off gzip stream
    with pytest.raises(DataError, match=FMNIST[0]):
        load_dataset("fashion-mnist", tmp_path, download=False)
    data = idx_bytes(np.zeros((20, 28, 28), np.uint8))[:-5]  # a complete gzip of a short IDX body
    path.write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match="truncated"):
        load_dataset("fashion-mnist", tmp_path, download=False)


def test_idx_wrong_magic_and_mismatched_counts(tmp_path):
    write_fmnist(tmp_path)
    write_idx(tmp_path / FMNIST[2], np.zeros(10, np.uint8))  # a labels file where images belong
    with pytest.raises(DataError, match="magic"):
        load_dataset("fashion-mnist", tmp_path, download=False)
    write_fmnist(tmp_path)
    write_idx(tmp_path / FMNIST[1], np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="19 labels"):
        load_dataset("fashion-mnist", tmp_path, download=False)
    write_idx(tmp_path / FMNIST[1], np.full(20, 10, np.uint8))
    with pytest.raises(DataError, match="outside"):
        load_dataset("fashion-mnist", tmp_path, download=False)


def test_corrupt_images_and_archives(tmp_path):
    root = write_imagefolder(tmp_path / "tree", per_class=2)
    (root / "train" / "dog" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="001.png"):
        load_dataset(f"imagefolder:{root}")
    tar = make_tar(root, tmp_path / "tree.tar.gz", "tree")
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(DataError, match="tree.tar.gz"):
        load_dataset(f"imagefolder:{tar}")
    batches = write_cifar10(tmp_path / "c10")
    (batches / "test_batch").write_bytes((batches / "test_batch").read_bytes()[:100])
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", tmp_path / "c10", download=False)


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(DataError, match="fashion-mnist, cifar10"):
        load_dataset("mnist3000")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    assert DATASET_NAMES == ("embedded", "fashion-mnist", "cifar10", "cifar100")


# ---------------------------------------------------------------------------- cache


def test_cache_hit_and_rebuild(tmp_path, monkeypatch):
    root = write_imagefolder(tmp_path / "tree", per_class=3)
    first = load_dataset(f"imagefolder:{root}")
    [entry] = (tmp_path / "cache" / "decoded").iterdir()
    assert (entry / "meta.json").is_file()

    def fail(entry):
        raise AssertionError("decoded again instead of using the cache")

    with monkeypatch.context() as m:
        m.setattr(imagefolder, "_decode", fail)
        second = load_dataset(f"imagefolder:{root}")
    assert torch.equal(second.train.images, first.train.images) and second.test.classes == first.test.classes

    (entry / "train_images.npy").write_bytes(b"not a numpy file")
    third = load_dataset(f"imagefolder:{root}")
    assert torch.equal(third.train.images, first.train.images)
    assert np.array_equal(np.load(entry / "train_images.npy"), first.train.images.numpy())  # rebuilt


def test_cache_disabled_and_invalidated(tmp_path, monkeypatch):
    root = write_imagefolder(tmp_path / "tree", per_class=2)
    monkeypatch.setenv("PARAFORMER_NO_CACHE", "1")
    load_dataset(f"imagefolder:{root}")
    assert cache.cache_root() is None and not (tmp_path / "cache").exists()
    monkeypatch.delenv("PARAFORMER_NO_CACHE")
    load_dataset(f"imagefolder:{root}")
    write_png(root / "train" / "cat" / "new.png", np.zeros((8, 8, 3), np.uint8))
    assert len(load_dataset(f"imagefolder:{root}").train) == 7
    assert len(list((tmp_path / "cache" / "decoded").iterdir())) == 2


# ---------------------------------------------------------------------------- splits


def toy_dataset(counts=(12, 8, 5, 1), size=4) -> ImageDataset:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, size, size)
    return ImageDataset(images.contiguous(), labels, [f"c{c}" for c in range(len(counts))])


def test_train_val_split():
    ds = toy_dataset()
    train, val = train_val_split(ds, 0.25, seed=3)
    assert val.labels.bincount(minlength=4).tolist() == [3, 2, 1, 0]
    ids = torch.cat([train.images[:, 0, 0, 0], val.images[:, 0, 0, 0]]).sort().values
    assert torch.equal(ids, torch.arange(len(ds), dtype=torch.uint8))  # disjoint and complete
    again, val2 = train_val_split(ds, 0.25, seed=3)
    assert torch.equal(val2.images, val.images) and torch.equal(again.labels, train.labels)
    other = [train_val_split(ds, 0.25, seed=s)[1].images[:, 0, 0, 0].tolist() for s in range(4, 8)]
    assert any(o != val.images[:, 0, 0, 0].tolist() for o in other)
    same, empty = train_val_split(ds, 0.0, seed=0)
    assert same is ds and empty.images.shape == (0, 1, 4, 4) and empty.classes == ds.classes
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="val_fraction"):
            train_val_split(ds, bad, seed=0)


def test_limit_dataset():
    ds = toy_dataset()
    small = limit_dataset(ds, 10, seed=0)
    assert small.labels.bincount(minlength=4).tolist() == [3, 3, 3, 1]
    assert torch.equal(limit_dataset(ds, 10, seed=0).images, small.images)
    assert limit_dataset(ds, 6, seed=0).labels.bincount(minlength=4).tolist() == [2, 2, 1, 1]
    assert limit_dataset(ds, 100, seed=0) is ds
    picks = {tuple(limit_dataset(ds, 10, seed=s).images[:, 0, 0, 0].tolist()) for s in range(5)}
    assert len(picks) > 1


# ---------------------------------------------------------------------------- transforms


def batch(b=8, c=3, size=32, seed=0) -> torch.Tensor:
    return torch.randint(
        0, 256, (b, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_transform_eval_is_resize_and_normalise():
    tf = BatchTransform(
        (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), out_size=48, crop_padding=4, hflip=True, strong=True
    )
    x = batch()
    out = tf(x, train=False)
    assert out.shape == (8, 3, 48, 48) and out.dtype == torch.float32
    ref = F.interpolate(x.float() / 255, size=(48, 48), mode="bilinear", align_corners=False)
    ref = (ref - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(
        1, 3, 1, 1
    )
    assert torch.allclose(out, ref, atol=1e-6) and torch.equal(out, tf(x, train=False))
    gray = BatchTransform((0.5,), (0.25,), out_size=32)(batch(c=1, size=28), train=False)
    assert gray.shape == (8, 1, 32, 32)
    down = BatchTransform((0.5,), (0.25,), out_size=14)(batch(c=1, size=28), train=False)
    assert down.shape == (8, 1, 14, 14)


@pytest.mark.parametrize("strong", [False, True])
def test_transform_train_is_seeded(strong):
    tf = BatchTransform((0.5,) * 3, (0.25,) * 3, out_size=40, crop_padding=5, hflip=True, strong=strong)
    x = batch(b=16)
    a = tf(x, train=True, generator=torch.Generator().manual_seed(1))
    b = tf(x, train=True, generator=torch.Generator().manual_seed(1))
    c = tf(x, train=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (16, 3, 40, 40) and torch.isfinite(a).all()


def test_hflip_flips_whole_images():
    x = torch.zeros(32, 3, 8, 8, dtype=torch.uint8)
    x[..., :3] = 255  # bright on the left only
    tf = BatchTransform((0.0,) * 3, (1.0,) * 3, hflip=True)
    out = tf(x, train=True, generator=torch.Generator().manual_seed(0))
    ref = x.float() / 255
    flipped = torch.tensor([torch.equal(o, r.flip(-1)) for o, r in zip(out, ref, strict=True)])
    kept = torch.tensor([torch.equal(o, r) for o, r in zip(out, ref, strict=True)])
    assert (flipped | kept).all() and 4 < int(flipped.sum()) < 28


def test_random_crop_shifts_content():
    x = torch.full((16, 1, 8, 8), 255, dtype=torch.uint8)
    tf = BatchTransform((0.0,), (1.0,), crop_padding=2)
    out = tf(x, train=True, generator=torch.Generator().manual_seed(0))
    padded = F.pad(x.float() / 255, (2, 2, 2, 2))
    shifted = 0
    for o, p in zip(out, padded, strict=True):
        offsets = [(i, j) for i in range(5) for j in range(5) if torch.equal(o, p[:, i : i + 8, j : j + 8])]
        assert offsets, "the output is not a crop of the padded image"
        shifted += (2, 2) not in offsets
    assert shifted >= 8


def test_strong_ops_keep_shape_and_range():
    x = batch(b=6, size=16).float() / 255
    sign = torch.tensor([1.0, -1.0] * 3)
    for op in augment.ops_for(3):
        y = op(x, sign, 0.8).clamp(0, 1)
        assert y.shape == x.shape and torch.isfinite(y).all(), op.__name__
    gray = BatchTransform((0.5,), (0.25,), strong=True, strong_ops=3, strong_magnitude=30)
    out = gray(batch(c=1), train=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (8, 1, 32, 32) and torch.isfinite(out).all()


def test_translate_is_relative_to_input_size():
    x = torch.zeros(1, 1, 20, 20)
    x[..., 10] = 1.0  # a bright column
    shifted = augment.GEOMETRIC_OPS[3](x, torch.tensor([1.0]), 1.0)  # translate_x at M=30: 30% = 6 px
    assert int(shifted[0, 0, 10].argmax()) in (4, 16)


def test_channel_stats_and_transform_for():
    ds = ImageDataset(
        torch.full((4, 2, 3, 3), 51, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ["a"]
    )
    mean, std = channel_stats(ds)
    assert mean == (0.2, 0.2) and std == (0.001, 0.001)
    splits = load_dataset("embedded")
    tf = transform_for(splits, 32, strong=True)
    assert tf.out_size == 32 and tf.crop_padding == 2 and not tf.hflip and tf.strong  # not natural: 1/16
    assert transform_for(splits, 28, crop_padding=0).crop_padding == 0
    assert 0.2 < tf.mean[0] < 0.4 and 0.25 < tf.std[0] < 0.45
    assert datasets.default_data_dir().name == "data"
