"""Objective parts that only continual learning uses: an auxiliary head on the newest branch
group, and a learning-rate multiplier for the new branches' gates.

Both plug into any schedule of ``paraformer.train.objectives`` (``ObjectivePart``): the
auxiliary head adds its loss once per optimizer step and hands its parameters to the
optimizer; its weights travel in the part's ``state_dict`` (the run's resume state).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paraformer.errors import ConfigError
from paraformer.train.objectives import Batch, ObjectivePart


class GroupHead(nn.Module):
    """A classifier on the read-out output of some branches: LayerNorm, pooling, linear.

    It pools as the model's own head does (``pool``: the class token, or the mean of the
    other tokens), so a copy of part of that head computes the same logits.
    """

    def __init__(self, dim: int, outputs: int, pool: str = "cls") -> None:
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, outputs)

    def forward(self, readout: torch.Tensor) -> torch.Tensor:
        """(B, T', D) read-out tokens (T' = 1: the class token alone) -> (B, outputs)."""
        if self.pool == "cls":
            return self.fc(self.norm(readout[..., 0, :]))
        return self.fc(self.norm(readout)[..., 1:, :].mean(dim=-2))


class AuxiliaryHead(ObjectivePart):
    """Cross-entropy of a head on branches ``start..stop-1`` alone: the new classes plus one "old" class.

    Rows whose label is not one of ``classes`` (replayed samples of earlier tasks) are
    the "old" class, so the new branches learn what tells the new classes from the old
    ones instead of copying what the frozen base already knows (DER's auxiliary loss,
    Yan et al. 2021). Its loss is added once per optimizer step.
    """

    name = "auxiliary-head"

    def __init__(self, head: GroupHead, group: tuple[int, int], classes: Sequence[int], weight: float = 1.0):
        if not weight > 0:
            raise ConfigError(f"the auxiliary head's loss weight must be > 0, got {weight}.")
        if head.fc.out_features != len(classes) + 1:
            raise ConfigError(
                f"an auxiliary head over {len(classes)} classes needs {len(classes) + 1} outputs."
            )
        self.head, self.group, self.weight = head, group, weight
        self.classes = [int(c) for c in classes]

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels -> the head's targets: the index of a new class, or ``len(classes)`` ("old")."""
        out = torch.full_like(labels, len(self.classes))
        for k, c in enumerate(self.classes):
            out[labels == c] = k
        return out

    def step_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        tokens = model.embed_input(batch.x)  # (B', T, D)
        group = model.branches.group_sum(tokens, *self.group)  # (B', T, D)
        logits = self.head(model.head_input(group))  # (B', classes + 1)
        return self.weight * F.cross_entropy(logits.float(), self.targets(batch.y))

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return [
            {"params": [self.head.fc.weight]},
            {"params": [self.head.fc.bias, *self.head.norm.parameters()], "weight_decay": 0.0},
        ]

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "branches": list(self.group),
            "classes": self.classes,
            "weight": self.weight,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"head": {k: v.detach().clone() for k, v in self.head.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "head" in state:
            self.head.load_state_dict(state["head"])


class GateLearningRate(ObjectivePart):
    """The gates of branches ``first..N-1`` train at ``scale`` times the learning rate.

    A zero-initialised scalar gate moves by about the learning rate per Adam step, so in
    a short task it stays near 0 and the new branches barely contribute; a larger step
    for the gates alone lets them open while the output at expansion time is unchanged.
    """

    name = "gate-lr"

    def __init__(self, scale: float, first: int) -> None:
        if not scale > 0:
            raise ConfigError(f"the gate learning-rate multiplier must be > 0, got {scale}.")
        self.scale, self.first = scale, first

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        gates = [b.gate for b in list(model.branches)[self.first :] if b.gate is not None]
        gates = [g for g in gates if g.requires_grad]
        return [{"params": gates, "lr_scale": self.scale, "weight_decay": 0.0}] if gates else []

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale, "first_branch": self.first}
