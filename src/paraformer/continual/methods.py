"""One task of a continual-learning method, through the trainer: what is trained, on what, with
which objective parts, and what the method keeps afterwards.

Every method trains task 0 the same way (the whole model on its classes), so the same
seed gives the same model after task 0 whatever the method. From task 1 on:

- ``finetune``: the whole model on the new task, cross-entropy over the classes seen so far.
- ``joint``: the whole model on the data of every task so far (an upper bound).
- ``lwf``: fine-tuning plus distillation of the previous model's old-class logits
  (Learning without Forgetting, Li & Hoiem 2017).
- ``er``: fine-tuning plus a batch of stored images in every step (experience replay).
- ``derpp``: replay plus an MSE to the logits stored with each image (DER++, Buzzega et al. 2020).
- ``expand``: ``add_branches`` new zero-gated branches on top of the frozen embedding and
  old branches (``surgery.expand``); the head and the new branches train on the prefixes
  after the old ones. Options: distillation of the previous model (on replayed rows too),
  a replay memory (then the loss reads every seen class; without one only the new classes,
  so the old classes' logits are not pushed down), an auxiliary head on the new branches
  over the new classes plus "old", a learning-rate multiplier for the new gates, weight
  aligning or a class-balanced fine-tune of head and gates after the task, and experts
  for routing at test time.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paraformer.checkpoint import TRAIN_STATE_FILE
from paraformer.continual.config import REPLAY, ContinualConfig
from paraformer.continual.memory import update_memory
from paraformer.continual.parts import AuxiliaryHead, GateLearningRate, GroupHead
from paraformer.continual.predict import AuxHeads, Experts, align_weights
from paraformer.continual.training import train_in_memory
from paraformer.data import BatchTransform, ImageDataset
from paraformer.data.base import quiet
from paraformer.surgery import expand
from paraformer.tasks.image import TrainConfig
from paraformer.train.objectives import Distillation, ObjectivePart, Replay, ReplayBuffer
from paraformer.train.state import seeded

Log = Callable[[str], None]


@dataclass
class MethodState:
    """What a method carries from one task to the next."""

    model: nn.Module
    buffer: ReplayBuffer | None = None
    experts: Experts = field(default_factory=Experts)
    aux: AuxHeads = field(default_factory=AuxHeads)


@dataclass
class Context:
    """The sequence a task belongs to: settings, seed, transform and where its runs go."""

    ccfg: ContinualConfig
    tcfg: TrainConfig
    seed: int
    per_task: int
    transform: BatchTransform
    folder: Path  # the seed's folder: task runs go to task-<t>/ and task-<t>-align/
    log: Log = quiet
    progress: bool = False


@dataclass
class TaskOutcome:
    state: MethodState
    seconds: float = 0.0
    steps: int = 0
    images_seen: int = 0
    align_gamma: float | None = None
    interrupted: bool = False


def concat(datasets: list[ImageDataset]) -> ImageDataset:
    return ImageDataset(
        torch.cat([d.images for d in datasets]), torch.cat([d.labels for d in datasets]), datasets[0].classes
    )


def outputs_of(model: nn.Module, transform: BatchTransform, features: bool = False) -> Callable:
    """uint8 images -> the model's logits (or pooled features), in evaluation mode, in batches."""

    @torch.no_grad()
    def run(images: torch.Tensor) -> torch.Tensor:
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        fn = model.forward_features if features else model
        try:
            out = [
                fn(transform(images[i : i + 500].to(device), train=False)) for i in range(0, len(images), 500)
            ]
        finally:
            model.train(was)
        return torch.cat(out).float().cpu()

    return run


def _fresh_run_folder(folder: Path) -> None:
    """A task folder killed before its first checkpoint holds no state to resume: start it again."""
    if folder.is_dir() and not (folder / TRAIN_STATE_FILE).is_file():
        shutil.rmtree(folder)


def _train(
    ctx: Context,
    model: nn.Module,
    data: ImageDataset,
    cfg: TrainConfig,
    name: str,
    *,
    first: int = 0,
    frozen: bool = False,
    parts: list[ObjectivePart] | None = None,
    loss_classes: list[int],
) -> tuple[nn.Module, dict[str, Any]]:
    folder = ctx.folder / name
    _fresh_run_folder(folder)
    return train_in_memory(
        model,
        data,
        transform=ctx.transform,
        cfg=cfg,
        first_branch=first,
        frozen_base=frozen,
        parts=parts or [],
        loss_classes=loss_classes,
        out_dir=folder,
        log=quiet,
        progress=ctx.progress,
        resume=True,
    )


def run_task(ctx: Context, state: MethodState, t: int, trains: list[ImageDataset]) -> TaskOutcome:
    """Train task ``t`` (``trains[t]`` its training images) and update what the method keeps."""
    c, m, cpt = ctx.ccfg, ctx.ccfg.method, ctx.per_task
    new, seen, old = range(t * cpt, (t + 1) * cpt), list(range((t + 1) * cpt)), list(range(t * cpt))
    cfg = ctx.tcfg.replace(seed=ctx.seed * 1000 + t)
    data = concat(trains[: t + 1]) if m == "joint" else trains[t]
    model, first, frozen, parts = state.model, 0, False, []
    loss_classes = seen if t else list(new)
    aux_part: AuxiliaryHead | None = None
    replay_rows = 0
    if t > 0:
        if m in REPLAY and state.buffer is not None and len(state.buffer):
            alpha, beta = (c.get("derpp_alpha"), c.get("derpp_beta")) if m == "derpp" else (0.0, 1.0)
            device = next(model.parameters()).device
            inputs = lambda images, gen: ctx.transform(images.to(device), train=True, generator=gen)  # noqa: E731
            replay_rows = c.get("replay_batch")
            parts.append(Replay(state.buffer, inputs, batch_size=replay_rows, alpha=alpha, beta=beta))
        if m in ("lwf", "expand") and c.get("distill") > 0:
            teacher = copy.deepcopy(state.model)
            parts.append(
                Distillation(
                    teacher,
                    weight=c.get("distill"),
                    temperature=c.get("temperature"),
                    classes=old,
                    all_rows=m == "expand",
                )
            )
        if m == "expand":
            first, frozen = state.model.num_branches, True
            model = expand(state.model, c.get("add_branches"), seed=ctx.seed * 1000 + t)
            if c.get("branch_init") == "copy":
                copy_branches(model, first - 1, range(first, model.num_branches))
            if not c.get("buffer"):
                loss_classes = list(new)  # no old images: do not push the old classes' logits down
            if c.get("aux_weight") > 0:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(ctx.seed * 1000 + t + 1)
                    head = GroupHead(model.cfg.dim, cpt + 1, model.head.pool)
                head = head.to(next(model.parameters()).device)
                aux_part = AuxiliaryHead(head, (first, model.num_branches), list(new), c.get("aux_weight"))
                parts.append(aux_part)
            if c.get("gate_lr") != 1:
                parts.append(GateLearningRate(c.get("gate_lr"), first))
    trained, summary = _train(
        ctx, model, data, cfg, f"task-{t}", first=first, frozen=frozen, parts=parts, loss_classes=loss_classes
    )
    if summary.get("interrupted"):
        return TaskOutcome(state, interrupted=True)
    out = TaskOutcome(
        MethodState(trained, state.buffer, state.experts, state.aux),
        seconds=float(summary["train_seconds"]),
        steps=int(summary["steps"]),
        images_seen=int(summary["epochs_completed"]) * (len(data) + replay_rows * _batches(len(data), cfg)),
    )
    if m == "expand" and t > 0 and not _align(ctx, out, t, trains[t]):
        return TaskOutcome(state, interrupted=True)
    return after_task(ctx, state, out, t, trains[t], aux_part)


def after_first_task(ctx: Context, out: TaskOutcome, train: ImageDataset) -> TaskOutcome:
    """What a method keeps after task 0 when the trained model comes from elsewhere (the same task 0)."""
    return after_task(ctx, MethodState(out.state.model), out, 0, train, None)


def after_task(
    ctx: Context,
    before: MethodState,
    out: TaskOutcome,
    t: int,
    train: ImageDataset,
    aux_part: AuxiliaryHead | None,
) -> TaskOutcome:
    """The memory refilled, the task's expert and auxiliary head kept."""
    c, m = ctx.ccfg, ctx.ccfg.method
    new = range(t * ctx.per_task, (t + 1) * ctx.per_task)
    if m in REPLAY and c.get("buffer"):
        net = out.state.model
        out.state.buffer = update_memory(
            before.buffer,
            train.images,
            train.labels,
            c.get("buffer"),
            selection=c.get("selection"),
            generator=seeded(ctx.seed, t, 7),
            features=outputs_of(net, ctx.transform, features=True),
            logits=outputs_of(net, ctx.transform) if m == "derpp" else None,
        )
    if m == "expand":
        if c.get("routing") != "none":
            out.state.experts = copy.deepcopy(before.experts)
            out.state.experts.add(out.state.model, new)
        if aux_part is not None:
            out.state.aux = AuxHeads(
                [*before.aux.groups, aux_part.group], [*before.aux.heads, aux_part.head.eval()]
            )
    return out


def copy_branches(model: nn.Module, source: int, targets: range) -> None:
    """Start branches ``targets`` as copies of branch ``source`` (in place); their gates are left alone."""
    branches = list(model.branches)
    src = dict(branches[source].named_parameters())
    with torch.no_grad():
        for i in targets:
            for name, dst in branches[i].named_parameters():
                if name != "gate":
                    dst.copy_(src[name])


def _batches(n: int, cfg: TrainConfig) -> int:
    return -(-n // cfg.batch_size)


def _align(ctx: Context, out: TaskOutcome, t: int, train: ImageDataset) -> bool:
    """Weight aligning or the class-balanced fine-tune of head and gates; False if interrupted."""
    c, cpt = ctx.ccfg, ctx.per_task
    old, new = range(t * cpt), range(t * cpt, (t + 1) * cpt)
    if c.get("align") == "weights":
        out.state.model, out.align_gamma = align_weights(out.state.model, old, new)
        return True
    if c.get("align") != "finetune" or out.state.buffer is None:
        return True
    buffer = out.state.buffer  # the memory before this task's images join it: old classes only
    per_class = max(1, len(buffer) // max(1, len(old)))
    gen = seeded(ctx.seed, t, 11)
    picked = []
    for k in new:
        idx = torch.nonzero(train.labels == k).flatten()
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    extra = train.subset(torch.cat(picked))
    data = ImageDataset(
        torch.cat([buffer.inputs, extra.images]), torch.cat([buffer.labels, extra.labels]), train.classes
    )
    net = copy.deepcopy(out.state.model)
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith("head.") or name.endswith(".gate"))
    cfg = ctx.tcfg.replace(epochs=c.get("align_epochs"), mode="joint", seed=ctx.seed * 1000 + t + 500)
    tuned, summary = _train(ctx, net, data, cfg, f"task-{t}-align", loss_classes=list(range((t + 1) * cpt)))
    if summary.get("interrupted"):
        return False
    out.state.model = tuned
    out.seconds += float(summary["train_seconds"])
    out.steps += int(summary["steps"])
    out.images_seen += int(summary["epochs_completed"]) * len(data)
    return True
