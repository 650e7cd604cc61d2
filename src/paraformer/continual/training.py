"""Continual learning on in-memory image data: new classes, one task after another.

``train_expansion(model, old_branches, train, ...)`` trains an expanded ParaFormer's new
branches on top of the frozen old ones (its embedding and first ``old_branches``
branches come out bit-identical) with the run's mode (fused or progressive
approximation) on the prefixes ``old_branches + 1 .. N`` only: the old prefix is a fixed
base, each new branch reduces the loss it leaves. ``old_branches=0`` trains the whole
model. It returns ``(new_model, summary)`` and leaves the given model unchanged.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from paraformer.checkpoint import BEST_DIR, MODEL_FILE, load_model
from paraformer.data import BatchTransform, ImageDataset, channel_stats
from paraformer.data.base import quiet
from paraformer.errors import ConfigError
from paraformer.launch import train_setup
from paraformer.models import require_branched
from paraformer.tasks.image import TrainConfig, in_memory_setup
from paraformer.train.config import LoopConfig
from paraformer.train.objectives import ObjectivePart

Log = Callable[[str], None]


def train_in_memory(
    model: nn.Module,
    train: ImageDataset,
    *,
    val: ImageDataset | None = None,
    test: ImageDataset | None = None,
    transform: BatchTransform | None = None,
    cfg: LoopConfig | None = None,
    first_branch: int = 0,
    frozen_base: bool = False,
    parts: Sequence[ObjectivePart] = (),
    loss_classes: Sequence[int] | None = None,
    out_dir: str | Path | None = None,
    log: Log = quiet,
    progress: bool = False,
    resume: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a copy of ``model`` on in-memory images through the library's trainer.

    ``first_branch``/``frozen_base`` train only the prefixes after a frozen base; ``parts``
    (replay, distillation, an auxiliary head) join the objective. The epoch with the best
    accuracy on ``val`` is returned (the last one without ``val``); ``test``, if given, is
    evaluated once at the end. ``transform`` defaults to normalising with ``train``'s
    channel statistics, no augmentation. The run folder goes to ``out_dir`` (a temporary
    folder by default). ``loss_classes`` restricts the loss to those classes' logits.
    ``resume`` continues the run in ``out_dir`` from its training state (called again with
    the same arguments); an interrupted run returns the given model and
    ``{"interrupted": True, ...}``.
    """
    cfg = cfg or TrainConfig()
    if loss_classes is not None:
        extra = sorted(set(train.labels.unique().tolist()) - set(loss_classes))
        if extra:
            raise ConfigError(
                f"the training images have classes {extra} outside loss_classes {loss_classes}."
            )
    net = copy.deepcopy(model)
    if transform is None:
        mean, std = channel_stats(train)
        transform = BatchTransform(mean, std, out_size=net.cfg.image_size)
    setup = in_memory_setup(net, cfg, train, val, test, transform, loss_classes)
    objective = {"first_branch": first_branch, "frozen_base": frozen_base}
    with tempfile.TemporaryDirectory(prefix="paraformer-run-") as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp) / "run"
        summary = train_setup(
            setup, folder, objective=objective, parts=parts, log=log, progress=progress, resume=resume
        )
        if summary.get("interrupted"):
            return model, summary
        selected = folder / BEST_DIR if (folder / BEST_DIR / MODEL_FILE).is_file() else folder
        trained = load_model(selected, setup.device).train(model.training)
    return trained, summary


def train_expansion(
    model: nn.Module,
    old_branches: int,
    train: ImageDataset,
    *,
    val: ImageDataset | None = None,
    test: ImageDataset | None = None,
    transform: BatchTransform | None = None,
    cfg: LoopConfig | None = None,
    out_dir: str | Path | None = None,
    unfreeze: bool = False,
    loss_classes: Sequence[int] | None = None,
    log: Log = quiet,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train an expanded model's new branches on in-memory images; return ``(model, summary)``.

    ``model`` comes from ``expand(old, m)``: its first ``old_branches`` branches (and the
    embedding) stay frozen unless ``unfreeze``. ``old_branches=0`` trains a model whole,
    every prefix (a first task, or the fine-tuning baseline of continual learning).
    ``cfg`` sets epochs, lr, mode, batch size and seed (default ``TrainConfig()``).
    ``loss_classes`` (class-incremental learning: the new task's classes) restricts the
    loss to those classes' logits, so that learning them does not push the old classes'
    logits down; without it the head forgets the old classes. See ``train_in_memory``
    for ``val``, ``test``, ``transform`` and ``out_dir``.
    """
    require_branched(model, "expansion training")
    return train_in_memory(
        model,
        train,
        val=val,
        test=test,
        transform=transform,
        cfg=cfg,
        first_branch=old_branches,
        frozen_base=not unfreeze,
        loss_classes=loss_classes,
        out_dir=out_dir,
        log=log,
        progress=progress,
    )
