"""Files: atomic writes and strict JSON, the one way paraformer writes anything.

``atomic_write`` writes a temporary file in the same folder, fsyncs it, then moves it
into place with ``os.replace``: a crash, Ctrl-C or power cut mid-write leaves the old
file (or none), never a half-written one. A failed write (full disk, read-only
folder, a path under a file) raises ``WriteError`` with a one-line reason and removes
the temporary file, so the previous version stays intact.

JSON is strict everywhere, in files and on stdout (``json_text``): a non-finite number
is written as ``null``, never as ``NaN`` or ``Infinity``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paraformer.errors import CheckpointError

TMP_SUFFIX = ".tmp"
_LOW_SPACE_BYTES = 64 << 20


class WriteError(CheckpointError):
    """A file could not be written; the previous version of it is unchanged."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some filesystems do not open folders; the data fsync still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_failure_reason(err: BaseException, folder: Path) -> str:
    """A short reason for a failed write, naming a full disk even when torch hides it."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return "the disk is full"
    try:
        if shutil.disk_usage(folder).free < _LOW_SPACE_BYTES:
            return "the disk is full"
    except OSError:
        pass
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, fsync it, then move the finished file onto ``path``.

    The file gets the usual permissions (0666 less the umask), not the private 0600
    that temporary files are created with.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise WriteError(f"cannot write {path}: {write_failure_reason(err, path.parent)}.") from None
    try:
        write(Path(tmp))
        _fsync_path(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        reason = write_failure_reason(err, path.parent)
        raise WriteError(f"cannot write {path}: {reason}; the previous version is unchanged.") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_orphans(folder: Path) -> list[Path]:
    """Delete temporary files that an interrupted ``atomic_write`` left in ``folder``."""
    removed = []
    if folder.is_dir():
        for p in folder.glob(f".*{TMP_SUFFIX}"):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def json_safe(data: Any) -> Any:
    """``data`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def json_text(data: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``data`` (non-finite numbers become ``null``)."""
    return json.dumps(json_safe(data), indent=indent, allow_nan=False)


def write_json(path: Path, data: Any) -> None:
    text = json_text(data) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or a one-line ``CheckpointError`` naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; is {path.parent} a paraformer run or checkpoint folder?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file is corrupt.") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}.") from None
