"""Per-layer gradient accounting during training: the raw material of GFA and CascadeFlow.

``GradientStats`` is a training hook. After every backward pass (before clipping) it
adds, for each Transformer layer l, the L2 norm of the gradient of all of that layer's
parameters, ``||g_l||``, and the first-order importance ``|<g_l, w_l>|`` to running
sums. That costs one fused norm over the block parameters per step (about 1% of a
step here). At the end of every epoch the epoch's mean norms and the cumulative sums
go into the metrics record (``grad_norm``, ``grad_norm_sum``, ``grad_taylor_sum``,
``grad_steps``), so they are saved with the run in the crash-safe order, and resume
continues the sums exactly (they are also in ``train_state.pt``).

The model lists its layers with ``layers()``; a layer that lives in another process
(branch parallelism) is ``None`` there, and ``reduce`` (summing over the processes that
share the model) completes the per-layer figures, so every process ends with all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from paraformer.train.hooks import Hook

if TYPE_CHECKING:
    from paraformer.train.loop import Trainer


def layer_parameters(model: nn.Module) -> list[list[nn.Parameter]]:
    """The trainable parameters of each layer, in ``model.layers()`` order (none for another process's)."""
    return [
        [] if layer is None else [p for p in layer.parameters() if p.requires_grad]
        for layer in model.layers()
    ]


class GradientStats(Hook):
    """Accumulates ``||grad||`` and ``|<grad, weight>|`` per layer over all optimizer steps."""

    def __init__(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.reduce = reduce
        self.groups: list[list[nn.Parameter]] = []
        self.norm_sum = self.taylor_sum = self.epoch_norm = torch.zeros(0, dtype=torch.float64)
        self.steps = self.epoch_steps = 0

    def attach(self, model: nn.Module) -> None:
        self.groups = layer_parameters(model)
        if self.norm_sum.numel() != len(self.groups):
            self.norm_sum = torch.zeros(len(self.groups), dtype=torch.float64)
            self.taylor_sum = torch.zeros_like(self.norm_sum)
            self.epoch_norm = torch.zeros_like(self.norm_sum)

    def on_start(self, trainer: Trainer) -> None:
        self.attach(trainer.model)

    def accumulate(self) -> None:
        """Add the current gradients (one backward pass) to the sums."""
        norms, dots = [], []
        with torch.no_grad():
            for params in self.groups:
                pairs = [(p.grad, p) for p in params if p.grad is not None]
                if not pairs:
                    norms.append(torch.zeros(()))
                    dots.append(torch.zeros(()))
                    continue
                grads = [g.float() for g, _ in pairs]
                norms.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).cpu())
                dots.append(
                    sum((g * p.detach().float()).sum() for g, (_, p) in zip(grads, pairs, strict=True)).cpu()
                )
        both = torch.stack([torch.stack(norms).double() ** 2, torch.stack(dots).double()])
        if self.reduce is not None:  # squares and dots add up over the processes holding the layers
            both = self.reduce(both)
        norm = both[0].sqrt()
        self.norm_sum += norm
        self.taylor_sum += both[1].abs()
        self.epoch_norm += norm
        self.steps += 1
        self.epoch_steps += 1

    def after_backward(self, trainer: Trainer) -> None:
        self.accumulate()

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        record["grad_norm"] = (self.epoch_norm / max(self.epoch_steps, 1)).tolist()
        record["grad_norm_sum"] = self.norm_sum.tolist()
        record["grad_taylor_sum"] = self.taylor_sum.tolist()
        record["grad_steps"] = self.steps
        self.epoch_norm = torch.zeros_like(self.norm_sum)
        self.epoch_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "norm_sum": self.norm_sum.clone(),
            "taylor_sum": self.taylor_sum.clone(),
            "epoch_norm": self.epoch_norm.clone(),
            "steps": self.steps,
            "epoch_steps": self.epoch_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.norm_sum = state["norm_sum"].double()
        self.taylor_sum = state["taylor_sum"].double()
        self.epoch_norm = state["epoch_norm"].double()
        self.steps = int(state["steps"])
        self.epoch_steps = int(state["epoch_steps"])
