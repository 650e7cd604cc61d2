"""Tasks: what differs between modalities, behind the trainer's ``Task`` protocol.

``image`` (classification) and ``text`` (language modelling) each own their training
config, data record, data loading, batches, loss, metrics, evaluation and the files a
run folder keeps for them. ``TaskDef`` is the small table the rest of the package
asks: which task a config or a run folder belongs to, how to prepare it, how to
prepare it again to resume, and how to point it at data that moved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from paraformer.checkpoint import SavedRun, read_artifact
from paraformer.checkpoint import open_run as _open_run
from paraformer.data.tokenizer import tokenizer_from_json
from paraformer.errors import ConfigError
from paraformer.tasks import image, text
from paraformer.train.task import Setup

Log = Callable[[str], None]


@dataclass(frozen=True)
class TaskDef:
    """One task's entry points."""

    name: str
    config_class: type
    data_class: type
    command: str  # the command that trains (and resumes) such a run
    prepare: Callable[..., Setup]  # (cfg, log, progress, model=None) -> Setup

    @staticmethod
    def of(name: str) -> TaskDef:
        if name not in TASKS:
            raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}.")
        return TASKS[name]

    def reprepare(self, saved: SavedRun, cfg: Any, log: Log, progress: bool, model: nn.Module) -> Setup:
        """The setup of a saved run again, for ``model`` (rebuilt from the run's own config)."""
        if self.name == "text":
            tok = tokenizer_from_json(read_artifact(saved.folder, text.TOKENIZER_FILE), str(saved.folder))
            return text.prepare(cfg, log, progress, model=model, tokenizer=tok, sha256=saved.data.sha256)
        return image.prepare(cfg, log, progress, model=model, sha256=saved.data.sha256)

    def relocate(self, saved: SavedRun, data_dir: str) -> dict[str, Any]:
        """Config changes that point a saved run at its data in ``data_dir`` (checked by content hash)."""
        if self.name == "text":
            return {"data": text.find_text(saved.data, data_dir, saved.folder)}
        return {"data_dir": str(Path(data_dir).expanduser())}


TASKS: dict[str, TaskDef] = {
    image.NAME: TaskDef(
        image.NAME, image.TrainConfig, image.ImageDataInfo, "paraformer train", image.prepare
    ),
    text.NAME: TaskDef(text.NAME, text.LMTrainConfig, text.LMDataInfo, "paraformer lm train", text.prepare),
}
RUN_CLASSES = {name: (t.config_class, t.data_class) for name, t in TASKS.items()}


def task_for_config(cfg: Any) -> TaskDef:
    """The task a training config belongs to (by its class)."""
    for task in TASKS.values():
        if isinstance(cfg, task.config_class):
            return task
    raise ConfigError(f"{type(cfg).__name__} is not the training config of any task.")


def open_run(
    folder: str | Path, *, task: str | None = None, kind: str | None = None, command: str = ""
) -> SavedRun:
    """A run or checkpoint folder, read and validated (``task``/``kind``: what the caller needs)."""
    return _open_run(folder, RUN_CLASSES, task=task, kind=kind, command=command)


__all__ = ["RUN_CLASSES", "TASKS", "TaskDef", "image", "open_run", "task_for_config", "text"]
