"""Fetch the official data files, verified by md5, into a data directory."""

from __future__ import annotations

import hashlib
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from paraformer.errors import DataError
from paraformer.files import WriteError, atomic_write

CONNECT_TIMEOUT_S = 10.0

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__


def fetch(url: str, dest: Path, md5: str, *, progress: bool = True) -> None:
    """Download ``url`` to ``dest`` through a temporary file; keep it only if the md5 matches.

    Raises ``DataError`` with a short reason (network error or checksum mismatch).
    """

    def download(tmp: Path) -> None:
        digest = hashlib.md5()
        try:
            resp = urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S)
        except (OSError, ValueError) as exc:  # URLError and socket timeouts are OSErrors
            raise DataError(f"cannot download {url}: {_reason(exc)}") from None
        with open(tmp, "wb") as out, resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"download {dest.name}",
                file=sys.stderr,
                disable=not progress,
                leave=False,
            )
            with bar:
                while chunk := _read(resp, url):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise DataError(f"checksum mismatch for {url} (md5 {digest.hexdigest()}, expected {md5})")

    try:
        atomic_write(dest, download)
    except WriteError as exc:
        raise DataError(f"cannot download {url}: {exc}") from None


def _read(resp: Any, url: str) -> bytes:
    try:
        return resp.read(1 << 20)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot download {url}: {_reason(exc)}") from None


def fetch_all(base_url: str, names: dict[str, str], dest_dir: Path, *, progress: bool = True) -> str | None:
    """Fetch each missing ``name -> md5`` from ``base_url`` into ``dest_dir``.

    Returns ``None`` on success, otherwise a short reason why the download failed (and
    the folders it created for the download are removed again if they stayed empty).
    """
    created = [p for p in (dest_dir, *dest_dir.parents) if not p.exists()]  # deepest first
    try:
        for name, md5 in names.items():
            if not (dest_dir / name).is_file():
                fetch(base_url + name, dest_dir / name, md5, progress=progress)
    except DataError as exc:
        failure = str(exc)
    except OSError as exc:  # for example a read-only data directory
        failure = f"cannot write to {dest_dir}: {_reason(exc)}"
    else:
        return None
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            break
    return failure
