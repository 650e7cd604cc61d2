"""The run folder: what is written when, how a run is read back, and Ctrl-C handling.

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
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paraformer.atomic import atomic_write, remove_orphans
from paraformer.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    TRAIN_STATE_FILE,
    json_text,
    load_config,
    read_json,
    save_train_state,
    save_weights,
    write_json,
)
from paraformer.config import ImageModelConfig, ModelConfig
from paraformer.errors import CheckpointError, ConfigError, ParaformerError
from paraformer.fields import check_fields, from_mapping
from paraformer.train.config import LoopConfig, TrainConfig

BEST_DIR = "best"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class ImageDataInfo:
    """The ``data`` section of an image run's ``config.json``: enough to evaluate it again."""

    dataset: str
    classes: tuple[str, ...]
    num_train: int
    num_val: int
    num_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.mean or len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ConfigError(
                f"mean and std need one value per channel, std > 0; got {self.mean}, {self.std}."
            )


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


def weights_are_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class RunFolder:
    """The files of one run, written in an order that a kill cannot make inconsistent."""

    def __init__(self, path: Path, config_json: dict[str, Any]) -> None:
        self.path = Path(path)
        self.config_json = config_json

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
        stale = best_epoch is not None and self.best_epoch_on_disk() != best_epoch
        if stale and at_epoch_end and best_epoch == last:
            save_weights(self.path / BEST_DIR, state["model"], cfg, {**self.config_json, "epoch": best_epoch})
            fixed.append(f"{BEST_DIR}/ (epoch {best_epoch})")
        return fixed

    def best_epoch_on_disk(self) -> int | None:
        path = self.path / BEST_DIR / CONFIG_FILE
        if not path.is_file():
            return None
        try:
            epoch = read_json(path).get("epoch")
        except (CheckpointError, AttributeError):
            return None
        return epoch if isinstance(epoch, int) else None

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        text = "".join(json_text(h, indent=None) + "\n" for h in history)
        atomic_write(self.path / METRICS_FILE, lambda tmp: tmp.write_text(text))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / SUMMARY_FILE, summary)


@dataclass(frozen=True)
class SavedRun:
    """A run folder read back and validated: its model, training and data settings."""

    folder: Path
    model_cfg: ModelConfig
    train_cfg: LoopConfig
    data: Any  # ImageDataInfo or LMDataInfo
    config_json: dict[str, Any]


def read_run(folder: Path, cls: type[LoopConfig] = TrainConfig, data_cls: type = ImageDataInfo) -> SavedRun:
    """Read and validate every section of a run's ``config.json``; errors name file and field."""
    folder = Path(folder)
    model_cfg, saved = load_config(folder)
    path = folder / CONFIG_FILE
    if data_cls is ImageDataInfo and not isinstance(model_cfg, ImageModelConfig):
        raise CheckpointError(
            f"{folder} holds a {model_cfg.family} model, not an image classifier; "
            "use the `paraformer lm` commands for language models."
        )
    if "train" not in saved or "data" not in saved:
        missing = [s for s in ("train", "data") if s not in saved]
        raise CheckpointError(
            f"{path} has no {' or '.join(repr(s) for s in missing)} section; it is not a training run "
            "(a model exported or compressed without its data settings?)."
        )
    try:
        train_cfg = from_mapping(cls, saved["train"], "'train' section")
        data = from_mapping(data_cls, saved["data"], "'data' section")
    except ParaformerError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if isinstance(data, ImageDataInfo) and len(data.mean) != getattr(
        model_cfg, "in_channels", len(data.mean)
    ):
        raise CheckpointError(f"{path}: the 'data' section's mean/std do not match the model's channels.")
    return SavedRun(folder, model_cfg, train_cfg, data, saved)


class StopFlag:
    """First Ctrl-C asks the loop to save and stop at the next batch boundary; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def graceful_interrupt() -> Iterator[StopFlag]:
    flag = StopFlag()
    try:
        previous = signal.signal(signal.SIGINT, flag.handle)
    except ValueError:  # not the main thread: no handler, plain KeyboardInterrupt
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["BEST_DIR", "MODEL_FILE", "RunFolder", "SavedRun", "graceful_interrupt", "read_run"]
