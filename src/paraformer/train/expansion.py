"""Training an expanded ParaFormer: new branches learn on top of the frozen sum of the old ones.

``expand`` (``paraformer.surgery``) appends zero-gated branches; training them here
freezes the patch embedding and the first ``old_branches`` branches (their weights
come out bit-identical) and trains the new branches and the head with the run's
mode (fused or progressive approximation) on the prefixes ``old_branches + 1 .. N``
only: the old prefix is a fixed base, each new branch reduces the loss it leaves.

- ``train_expansion(model, old_branches, train, val=..., test=..., cfg=...)`` trains on
  in-memory ``ImageDataset`` splits (for example ``select_classes(train, [2, 3])``,
  one task of a class-incremental sequence) and returns ``(new_model, summary)``;
  the given model is not changed. ``old_branches=0`` trains the whole model.
- ``train_expanded(setup, out_dir, old_branches)`` is the same on a prepared run (what
  ``paraformer expand`` calls).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from paraformer.checkpoint import load_model
from paraformer.data import BatchTransform, ImageDataset, channel_stats
from paraformer.data.base import quiet
from paraformer.errors import ConfigError
from paraformer.models import require_branched
from paraformer.train.checkpointing import BEST_DIR, ImageDataInfo, prepare_out_dir
from paraformer.train.config import LoopConfig, TrainConfig
from paraformer.train.devices import resolve_device
from paraformer.train.loop import Trainer
from paraformer.train.setup import Setup
from paraformer.train.tasks import ImageClassificationTask

Log = Callable[[str], None]


def freeze_base(model: nn.Module, old_branches: int) -> nn.Module:
    """Stop gradients to the embedding and the first ``old_branches`` branches (in place).

    ``old_branches=0`` freezes nothing.
    """
    model = require_branched(model, "freezing branches")
    if isinstance(old_branches, bool) or not isinstance(old_branches, int):
        raise ConfigError(f"old_branches must be an integer, got {old_branches!r}.")
    if not 0 <= old_branches < model.num_branches:
        raise ConfigError(
            f"old_branches={old_branches}: the model has {model.num_branches} branches, so 0..."
            f"{model.num_branches - 1} of them can be the frozen base (expand it first)."
        )
    if old_branches == 0:
        return model  # no base: everything trains
    for module in (model.embed, *list(model.branches)[:old_branches]):
        for param in module.parameters():
            param.requires_grad_(False)
    return model


def train_expanded(
    setup: Setup,
    out_dir: str | Path,
    old_branches: int,
    *,
    unfreeze: bool = False,
    log: Log = print,
    progress: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the prepared, expanded ``setup.model`` into the run folder ``out_dir``; its summary.

    Only the prefixes after ``old_branches`` are trained; with ``unfreeze`` every weight
    may change, else the embedding and the old branches are frozen.
    """
    out_dir = Path(out_dir)
    if unfreeze:
        require_branched(setup.model, "expansion training")
    else:
        freeze_base(setup.model, old_branches)
    prepare_out_dir(out_dir)
    trainer = Trainer(
        setup, out_dir, log=log, progress=progress, first_branch=old_branches, command="paraformer expand"
    )
    trainer.folder.config_json.update(extra_config or {})
    return trainer.run()


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
    ``cfg`` sets epochs, lr, mode, batch size and seed (default ``TrainConfig()``). The
    epoch with the best accuracy on ``val`` is returned (the last one without ``val``);
    ``test``, if given, is evaluated once at the end. ``transform`` defaults to
    normalising with ``train``'s channel statistics, no augmentation. The run folder
    goes to ``out_dir`` (a temporary folder by default). The given model is not changed.
    ``loss_classes`` (class-incremental learning: the new task's classes) restricts the
    loss to those classes' logits, so that learning them does not push the old classes'
    logits down; without it the head forgets the old classes.
    """
    cfg = cfg or TrainConfig()
    if loss_classes is not None:
        extra = sorted(set(train.labels.unique().tolist()) - set(loss_classes))
        if extra:
            raise ConfigError(
                f"the training images have classes {extra} outside loss_classes {loss_classes}."
            )
    device = resolve_device(cfg.device)
    net = copy.deepcopy(require_branched(model, "expansion training")).to(device)
    if transform is None:
        mean, std = channel_stats(train)
        transform = BatchTransform(mean, std, out_size=net.cfg.image_size)
    val = val if val is not None else ImageDataset(train.images[:0], train.labels[:0], train.classes)
    splits = {"train": train, "val": val} | ({"test": test} if test is not None else {})
    info = ImageDataInfo(
        "in-memory",
        tuple(train.classes),
        len(train),
        len(val),
        len(test) if test is not None else 0,
        transform.mean,
        transform.std,
    )
    task = ImageClassificationTask(
        splits,
        transform,
        device,
        label_smoothing=cfg.label_smoothing,
        eval_batch_size=cfg.eval_batch_size,
        info=asdict(info),
        loss_classes=loss_classes,
    )
    with tempfile.TemporaryDirectory(prefix="paraformer-expand-") as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp) / "run"
        setup = Setup(cfg, net, task, info, device)
        summary = train_expanded(setup, folder, old_branches, unfreeze=unfreeze, log=log, progress=progress)
        selected = folder / BEST_DIR if (folder / BEST_DIR / "model.safetensors").is_file() else folder
        trained = load_model(selected, device).train(model.training)
    return trained, summary
