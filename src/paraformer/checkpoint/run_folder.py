"""The run folder: its layout, what is written when, how it is read back, and who owns it.

A run folder holds ``config.json`` (what the folder is, the model, training, data and
objective settings, provenance), ``model.safetensors`` (latest weights), ``best/`` (the
best-validation checkpoint), ``train_state.pt`` (everything ``--resume`` needs),
``metrics.jsonl``, ``summary.json``, ``curves.png`` and the task's own files
(``tokenizer.json`` for language models). A *checkpoint* folder holds only weights and
config (a pruned or exported model).

Write order at the end of an epoch (each file atomic):

1. ``train_state.pt``: position, optimizer, RNG, history *and the weights*. It is
   the record of the epoch, so everything below can be rebuilt from it.
2. ``model.safetensors`` + ``config.json``: the latest weights.
3. ``best/`` when the epoch is the best by validation so far.
4. ``metrics.jsonl``.

A kill between two of these leaves a run that ``--resume`` repairs from the state
(latest weights, ``best/`` and metrics rewritten) before it continues. Nothing is
saved from weights or losses that are not finite, so the last good checkpoint
always survives divergence.

One process owns a folder at a time: ``lock`` takes an exclusive lock (``.lock``,
holding the owner's PID) for the whole command. The kernel releases it when its
process dies, so a lock left by a killed process is simply taken over.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paraformer.checkpoint.weights import (
    CONFIG_FILE,
    MODEL_FILE,
    TRAIN_STATE_FILE,
    load_config,
    save_train_state,
    save_weights,
)
from paraformer.config import ModelConfig
from paraformer.errors import CheckpointError, ConfigError, ParaformerError
from paraformer.fields import from_mapping
from paraformer.files import json_text, read_json, remove_orphans, write_json, write_text
from paraformer.models import modality_of

BEST_DIR = "best"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
FORMAT = 2  # config.json layout version; folders without "format" are format 1 and still load
KINDS = ("run", "checkpoint")
TASK_NAMES = {"image": "image-classification", "text": "language-model"}
MODEL_KINDS = {"image": "an image classifier", "text": "a language model"}
# summary.json fields that commands read, and the type each must have.
SUMMARY_NUMBERS = ("test_acc", "val_acc", "test_loss", "val_loss", "test_ppl", "val_ppl", "train_seconds")
SUMMARY_INTEGERS = ("epochs_completed", "selected_epoch", "steps", "epochs", "num_params")


def describe_kind(task: str, kind: str) -> str:
    """``"an image-classification run"``, ``"a language-model checkpoint"``..."""
    name = f"{TASK_NAMES.get(task, task)} {kind}"
    return ("an " if name[0] in "aeiou" else "a ") + name


# ------------------------------------------------------------------------------ ownership


@contextmanager
def lock(folder: str | Path) -> Iterator[None]:
    """Own ``folder`` for the duration: a second process gets a one-line error naming the owner."""
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {folder}: {parent} is a file, not a folder; choose another --out.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ConfigError(f"cannot use the folder {folder}: {err.strerror or err}.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(
                f"{folder} is in use by process {owner}; wait for it to finish (or stop it), "
                "or choose another --out."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays, harmless


# ------------------------------------------------------------------------------ writing


def prepare_out_dir(out_dir: Path) -> None:
    """Check that ``out_dir`` can hold a new run (not a file, not an existing run) and create it."""
    for parent in [out_dir, *out_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {out_dir}: {parent} is a file, not a folder; choose another --out.")
    if (out_dir / TRAIN_STATE_FILE).exists():
        raise ConfigError(
            f"{out_dir} already holds a run; continue it with --resume or choose another --out."
        )
    if (out_dir / CONFIG_FILE).exists():
        raise ConfigError(
            f"{out_dir} already holds a run or checkpoint that cannot be resumed (no {TRAIN_STATE_FILE}); "
            "choose another --out."
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the run folder {out_dir}: {err.strerror or err}.") from None


def run_header(task: str, kind: str = "run") -> dict[str, Any]:
    """The first keys of a ``config.json``: layout version, kind and task."""
    return {"format": FORMAT, "kind": kind, "task": task}


def weights_are_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class RunFolder:
    """The files of one run, written in an order that a kill cannot make inconsistent."""

    def __init__(self, path: Path, config_json: dict[str, Any]) -> None:
        self.path = Path(path)
        self.config_json = config_json

    def write_config(self, cfg: ModelConfig) -> None:
        """``config.json`` alone: what the folder is, before any weights exist."""
        write_json(self.path / CONFIG_FILE, {"model": cfg.to_dict(), **self.config_json})

    def save(self, state: dict[str, Any], cfg: ModelConfig) -> None:
        """Mid-epoch or interrupt: the resume state, then the latest weights (``state["model"]``)."""
        save_train_state(self.path, state)
        save_weights(self.path, state["model"], cfg, self.config_json)

    def save_epoch(
        self, state: dict[str, Any], cfg: ModelConfig, history: list[dict[str, Any]], best_epoch: int | None
    ) -> None:
        """End of an epoch, in the documented order."""
        self.save(state, cfg)
        if best_epoch == history[-1]["epoch"]:
            save_weights(self.path / BEST_DIR, state["model"], cfg, {**self.config_json, "epoch": best_epoch})
        self.write_metrics(history)

    def repair(
        self, state: dict[str, Any], cfg: ModelConfig, best_epoch: int | None, at_epoch_end: bool
    ) -> list[str]:
        """After a kill: rewrite what the resume state says should be there. Returns what was fixed.

        ``best/`` can be rebuilt only from a state saved at the end of the best epoch.
        """
        history = [json.loads(line) for line in state["history_json"]]
        orphans = remove_orphans(self.path) + remove_orphans(self.path / BEST_DIR)
        fixed = [f"removed {p.name}" for p in orphans]
        save_weights(self.path, state["model"], cfg, self.config_json)
        self.write_metrics(history)
        last = history[-1]["epoch"] if history else None
        stale = best_epoch is not None and best_epoch_on_disk(self.path) != best_epoch
        if stale and at_epoch_end and best_epoch == last:
            save_weights(self.path / BEST_DIR, state["model"], cfg, {**self.config_json, "epoch": best_epoch})
            fixed.append(f"{BEST_DIR}/ (epoch {best_epoch})")
        return fixed

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        write_text(self.path / METRICS_FILE, "".join(json_text(h, indent=None) + "\n" for h in history))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / SUMMARY_FILE, summary)

    def write_artifact(self, name: str, text: str) -> None:
        """A file the task keeps with the run (``tokenizer.json``), written atomically."""
        write_text(self.path / name, text)


# ------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class SavedRun:
    """A run or checkpoint folder read back and validated."""

    folder: Path
    kind: str  # "run" (trainable, resumable) or "checkpoint" (weights and config only)
    task: str  # "image" or "text"
    model_cfg: ModelConfig
    config_json: dict[str, Any]
    train_cfg: Any = None  # the task's training config (None for a checkpoint)
    data: Any = None  # the task's data record (None for a checkpoint)

    @property
    def description(self) -> str:
        return describe_kind(self.task, self.kind)

    @property
    def objective(self) -> dict[str, Any]:
        value = self.config_json.get("objective")
        return value if isinstance(value, dict) else {}


def open_run(
    folder: str | Path,
    classes: dict[str, tuple[type, type]],
    *,
    task: str | None = None,
    kind: str | None = None,
    command: str = "",
) -> SavedRun:
    """Read and validate a run (or checkpoint) folder; errors name the file and the field.

    ``classes`` maps a task name to its (training config, data record) classes.
    ``task``/``kind``, when given, are what the calling ``command`` needs: a folder of
    another kind is refused in one line that names the kind it found.
    """
    folder = Path(folder)
    model_cfg, saved = load_config(folder)
    path = folder / CONFIG_FILE
    found_task = saved.get("task", modality_of(model_cfg))
    found_kind = saved.get("kind", "run" if "train" in saved and "data" in saved else "checkpoint")
    if found_task not in TASK_NAMES or found_kind not in KINDS:
        raise CheckpointError(f"{path}: unknown kind {found_kind!r} of task {found_task!r}.")
    if found_task != modality_of(model_cfg):
        raise CheckpointError(
            f"{path}: a {model_cfg.family} model cannot be the model of a {found_task} run."
        )
    found = describe_kind(found_task, found_kind)
    if task is not None and found_task != task:
        hint = (
            "use `paraformer lm ...`"
            if found_task == "text"
            else "use the image commands (`paraformer eval`...)"
        )
        raise CheckpointError(
            f"{folder} is {found} (a {model_cfg.family} model), not {MODEL_KINDS[task]}; {hint}."
        )
    if kind == "run" and found_kind != "run":
        raise CheckpointError(
            f"{folder} is {found} (weights and config only, no training or data settings); "
            f"{command or 'this command'} needs a training run folder."
        )
    train_cls, data_cls = classes[found_task]
    train_cfg = data = None
    if found_kind == "run":
        missing = [section for section in ("train", "data") if section not in saved]
        if missing:
            raise CheckpointError(
                f"{path} has no {' or '.join(repr(s) for s in missing)} section; it is not a training run "
                "(a model exported or compressed without its data settings?)."
            )
        try:
            train_cfg = from_mapping(train_cls, saved["train"], "'train' section")
            data = from_mapping(data_cls, saved["data"], "'data' section")
        except ParaformerError as err:
            raise CheckpointError(f"{path}: {err}") from None
    return SavedRun(folder, found_kind, found_task, model_cfg, saved, train_cfg, data)


def checkpoint_folder(run_dir: Path, weights: str) -> Path:
    """The folder holding the weights to use: ``best/`` (when present) or the run's latest."""
    if weights not in ("best", "last"):
        raise ConfigError(f"weights must be 'best' or 'last', got {weights!r}.")
    if weights == "best" and (run_dir / BEST_DIR / MODEL_FILE).is_file():
        on_disk, selected = best_epoch_on_disk(run_dir), read_summary(run_dir).get("selected_epoch")
        if isinstance(selected, int) and isinstance(on_disk, int) and selected != on_disk:
            raise CheckpointError(
                f"{run_dir / BEST_DIR} holds epoch {on_disk} but the run selected epoch {selected} (it was "
                f"interrupted while saving); repair it with `--resume --out {run_dir}`."
            )
        return run_dir / BEST_DIR
    return run_dir


def best_epoch_on_disk(run_dir: Path) -> int | None:
    path = run_dir / BEST_DIR / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        epoch = read_json(path).get("epoch")
    except (CheckpointError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def read_summary(folder: Path) -> dict[str, Any]:
    """``summary.json`` (empty when absent), validated: a known field of the wrong type is an error."""
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object; the file is corrupt.")
    for key in SUMMARY_NUMBERS + SUMMARY_INTEGERS:
        value = data.get(key)
        if value is None:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and key in SUMMARY_INTEGERS:
            ok = isinstance(value, int)
        if not ok:
            what = "an integer" if key in SUMMARY_INTEGERS else "a number"
            raise CheckpointError(f"{path}: {key} must be {what}, got {value!r}; the file is corrupt.")
    return data


def read_history(folder: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl`` (empty when absent)."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return []
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); the file is corrupt.") from None
    if not all(isinstance(r, dict) for r in records):
        raise CheckpointError(f"{path} must hold one JSON object per line; the file is corrupt.")
    return records


def read_artifact(folder: Path, name: str) -> str:
    """A task file of a run (``tokenizer.json``): in the folder, or in its run folder for ``best/``."""
    folder = Path(folder)
    for candidate in (folder / name, folder.parent / name):
        if candidate.is_file():
            try:
                return candidate.read_text()
            except (OSError, UnicodeDecodeError) as err:
                raise CheckpointError(f"cannot read {candidate}: {err}.") from None
    raise CheckpointError(f"{folder / name} is missing; the run folder is incomplete.")


__all__ = [
    "BEST_DIR",
    "METRICS_FILE",
    "MODEL_FILE",
    "SUMMARY_FILE",
    "RunFolder",
    "SavedRun",
    "checkpoint_folder",
    "lock",
    "open_run",
    "prepare_out_dir",
    "read_history",
    "read_summary",
]
