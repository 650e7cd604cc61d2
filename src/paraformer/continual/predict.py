"""Predicting without a task id: the model's own head, or routing to the prefix whose classes fit.

Classes are numbered in the order they arrive (task ``j`` owns classes
``j*c .. (j+1)*c - 1``), so the classes seen after task ``t`` are ``0 .. (t+1)*c - 1``.

- **Class-incremental** (no task id): the argmax over every class seen so far.
- **Task-incremental** (task id given): the argmax over that task's classes.

An expanded ParaFormer keeps every earlier model inside it: the branches that existed when
task ``j`` ended are frozen, so their prefix with a copy of the head taken then
(``Experts``) is exactly the model of task ``j``. Routing asks those experts:

- ``maxlogit``: every expert scores its own classes; the largest logit wins.
- ``aux``: the auxiliary heads (new classes plus "old") say, from the newest task down,
  how likely an input is to belong to an earlier task; the probability of task ``j`` is
  ``p_j(not old) * prod_{u > j} p_u(old)``, times the expert's class probabilities.

``align_weights`` is weight aligning (Zhao et al. 2020): the new classes' head rows are
scaled so that their mean norm equals the old classes' (a fix for the bias towards the
newest classes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from paraformer.continual.parts import GroupHead
from paraformer.data import BatchTransform, ImageDataset
from paraformer.errors import ConfigError
from paraformer.models import is_branched

ROUTINGS = ("none", "maxlogit", "aux")


@dataclass
class Experts:
    """Per task so far: the prefix length it ended with and a copy of the head over its classes."""

    prefixes: list[int] = field(default_factory=list)
    heads: list[GroupHead] = field(default_factory=list)

    def add(self, model: nn.Module, classes: range) -> None:
        """Snapshot the model's head for ``classes`` at its current number of branches."""
        head = GroupHead(model.cfg.dim, len(classes), model.head.pool).to(next(model.parameters()).device)
        with torch.no_grad():
            head.norm.load_state_dict(model.head.norm.state_dict())
            head.fc.weight.copy_(model.head.fc.weight[classes.start : classes.stop])
            head.fc.bias.copy_(model.head.fc.bias[classes.start : classes.stop])
        self.prefixes.append(model.num_branches)
        self.heads.append(head.eval())

    def num_params(self) -> int:
        return sum(p.numel() for h in self.heads for p in h.parameters())

    def state(self) -> dict[str, torch.Tensor]:
        return {f"expert.{i}.{k}": v for i, h in enumerate(self.heads) for k, v in h.state_dict().items()}


@dataclass
class AuxHeads:
    """The trained auxiliary heads, one per expansion: (first branch, stop branch) and the head."""

    groups: list[tuple[int, int]] = field(default_factory=list)
    heads: list[GroupHead] = field(default_factory=list)

    def num_params(self) -> int:
        return sum(p.numel() for h in self.heads for p in h.parameters())

    def state(self) -> dict[str, torch.Tensor]:
        return {f"aux.{i}.{k}": v for i, h in enumerate(self.heads) for k, v in h.state_dict().items()}


@dataclass
class Predictions:
    """Per input: the class-IL prediction, and the task-IL prediction given its true task."""

    class_il: torch.Tensor  # (B,)
    task_il: torch.Tensor  # (B,)
    class_il_plain: torch.Tensor  # (B,) the model's own head, whatever the routing


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    task: torch.Tensor,
    seen_tasks: int,
    per_task: int,
    *,
    routing: str = "none",
    experts: Experts | None = None,
    aux: AuxHeads | None = None,
) -> Predictions:
    """Predictions for model-ready inputs ``x`` (B, C, H, W) whose true tasks are ``task`` (B,)."""
    if routing not in ROUTINGS:
        raise ConfigError(f"routing must be one of {ROUTINGS}, got {routing!r}.")
    seen = seen_tasks * per_task
    if routing == "none" or not is_branched(model):
        logits = model(x)[:, :seen].float()  # (B, seen)
        plain = logits.argmax(-1)
        return Predictions(plain, _within_task(logits, task, per_task), plain)
    if experts is None or len(experts.prefixes) < seen_tasks:
        raise ConfigError("routing needs the experts of every task seen so far.")
    tokens = model.embed_input(x)  # (B, T, D)
    read = torch.stack([model.head_input(o) for o in model.branches.outputs(tokens)])  # (N, B, T', D)
    sums = read.cumsum(dim=0)  # (N, B, T', D)
    plain = model.head_logits(sums[-1])[:, :seen].float().argmax(-1)  # (B,)
    expert = torch.stack(
        [experts.heads[j](sums[experts.prefixes[j] - 1]).float() for j in range(seen_tasks)]
    )  # (J, B, c)
    b = x.shape[0]
    rows = torch.arange(b, device=x.device)
    task_il = expert[task, rows].argmax(-1) + task * per_task
    if routing == "maxlogit":
        scores = expert.permute(1, 0, 2).reshape(b, seen)  # (B, J * c), classes in order
    else:
        if aux is None or len(aux.heads) < seen_tasks - 1:
            raise ConfigError("aux routing needs an auxiliary head for every task after the first.")
        log_task = torch.zeros(seen_tasks, b, device=x.device)  # log P(task j)
        for j in range(1, seen_tasks):
            start, stop = aux.groups[j - 1]
            p = aux.heads[j - 1](read[start:stop].sum(dim=0)).float().log_softmax(-1)  # (B, c + 1)
            old = p[:, -1]
            new = torch.log1p(-old.exp().clamp(max=1 - 1e-6))
            log_task[j] += new
            log_task[:j] += old  # every earlier task is "old" for head j
        scores = (log_task.unsqueeze(-1) + expert.log_softmax(-1)).permute(1, 0, 2).reshape(b, seen)
    return Predictions(scores.argmax(-1), task_il, plain)


def _within_task(logits: torch.Tensor, task: torch.Tensor, per_task: int) -> torch.Tensor:
    """(B, seen) logits, (B,) tasks -> the argmax over each row's task's classes."""
    rows = torch.arange(len(task), device=logits.device)
    cols = task.unsqueeze(-1) * per_task + torch.arange(per_task, device=logits.device)  # (B, c)
    return logits[rows.unsqueeze(-1), cols].argmax(-1) + task * per_task


def accuracy_rows(
    model: nn.Module,
    datasets: list[ImageDataset],
    transform: BatchTransform,
    per_task: int,
    *,
    routing: str = "none",
    experts: Experts | None = None,
    aux: AuxHeads | None = None,
    batch_size: int = 500,
) -> dict[str, list[float]]:
    """Class-IL and task-IL accuracy on each task's images (``datasets[j]`` is task ``j``'s)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, list[float]] = {"class_il": [], "task_il": [], "class_il_plain": []}
    try:
        for j, data in enumerate(datasets):
            hits = {k: 0 for k in out}
            for start in range(0, len(data), batch_size):
                images = data.images[start : start + batch_size].to(device)
                labels = data.labels[start : start + batch_size].to(device)
                task = torch.full_like(labels, j)
                p = predict(
                    model,
                    transform(images, train=False),
                    task,
                    len(datasets),
                    per_task,
                    routing=routing,
                    experts=experts,
                    aux=aux,
                )
                for key in out:
                    hits[key] += int((getattr(p, key) == labels).sum())
            for key in out:
                out[key].append(hits[key] / max(len(data), 1))
    finally:
        model.train(was_training)
    return out


def align_weights(model: nn.Module, old: range, new: range) -> tuple[nn.Module, float]:
    """A copy of ``model`` whose new classes' logits are scaled so that their head rows' mean norm
    equals the old classes' (weight aligning); returns it and the factor."""
    if len(old) == 0 or len(new) == 0:
        return copy.deepcopy(model), 1.0
    out = copy.deepcopy(model)
    fc = out.head.fc
    with torch.no_grad():
        norms = fc.weight.norm(dim=1)
        gamma = float(
            norms[old.start : old.stop].mean() / norms[new.start : new.stop].mean().clamp_min(1e-12)
        )
        fc.weight[new.start : new.stop] *= gamma
        fc.bias[new.start : new.stop] *= gamma
    return out, gamma
