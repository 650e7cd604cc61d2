"""Per-layer gradient accounting during training: the raw material of GFA and CascadeFlow.

``GradientStats`` is a training hook. After every backward pass (before clipping) it
adds, for each Transformer layer l (and for each of its two sub-layers, attention and
FFN), the L2 norm of the gradient of all of that layer's parameters, ``||g_l||``, and
the first-order importance ``|<g_l, w_l>|`` to running sums. That costs one fused norm
over the block parameters per step (about 1% of a step here). At the end of every epoch
the epoch's mean norms and the cumulative sums go into the metrics record
(``grad_norm``, ``grad_norm_sum``, ``grad_taylor_sum``, ``grad_steps`` and the sub-layer
sums), so they are saved with the run in the crash-safe order, and resume
continues the sums exactly (they are also in ``train_state.pt``).

The model lists its layers with ``layers()``; a layer that lives in another process
(branch parallelism) is ``None`` there, and ``reduce`` (summing over the processes that
share the model) completes the per-layer figures, so every process ends with all of them.

``GradientEqualizer`` is the GFA intervention: it rescales each layer's gradient to a
common norm before clipping (``LoopConfig.equalize_grads``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from paraformer.errors import ConfigError
from paraformer.train.hooks import Hook

if TYPE_CHECKING:
    from paraformer.train.loop import Trainer


def layer_parameters(model: nn.Module) -> list[list[nn.Parameter]]:
    """The trainable parameters of each layer, in ``model.layers()`` order (none for another process's)."""
    return [
        [] if layer is None else [p for p in layer.parameters() if p.requires_grad]
        for layer in model.layers()
    ]


SUBLAYERS = ("attn", "mlp")


def sublayer_parameters(model: nn.Module) -> list[tuple[list[nn.Parameter], list[nn.Parameter]]]:
    """Per layer, the trainable parameters of its attention sub-layer (``norm1``, ``attn``) and of
    its FFN sub-layer (``norm2``, ``mlp``); anything else in a layer counts with attention."""
    out = []
    for layer in model.layers():
        attn, mlp = [], []
        for name, p in [] if layer is None else layer.named_parameters():
            if p.requires_grad:
                (mlp if name.startswith(("norm2.", "mlp.")) else attn).append(p)
        out.append((attn, mlp))
    return out


class GradientStats(Hook):
    """Accumulates ``||grad||`` and ``|<grad, weight>|`` per layer and per sub-layer over all steps.

    Per sub-layer (attention, FFN of each layer) the record holds ``grad_norm_sum_sub`` and
    ``grad_taylor_sum_sub`` (``[[attention, FFN], ...]``) and ``sub_params`` (their
    parameter counts, 0 for a pruned sub-layer). The per-layer figures are computed from
    the same squares and dot products: a layer's squared norm is the sum of its two
    sub-layers', its dot product the sum of theirs.
    """

    def __init__(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.reduce = reduce
        self.params: list[nn.Parameter] = []
        self.owner = torch.zeros(0, dtype=torch.long)  # per parameter: 2 * layer + sub-layer
        self.sub_params = torch.zeros(0, 2, dtype=torch.float64)
        self.norm_sum = self.taylor_sum = self.epoch_norm = torch.zeros(0, dtype=torch.float64)
        self.sub_norm_sum = self.sub_taylor_sum = torch.zeros(0, 2, dtype=torch.float64)
        self.steps = self.epoch_steps = 0

    def attach(self, model: nn.Module) -> None:
        groups = sublayer_parameters(model)
        self.params, owner = [], []
        sizes = torch.zeros(len(groups), 2, dtype=torch.float64)
        for i, parts in enumerate(groups):
            for j, params in enumerate(parts):
                self.params += params
                owner += [2 * i + j] * len(params)
                sizes[i, j] = float(sum(p.numel() for p in params))
        self.owner = torch.tensor(owner, dtype=torch.long)
        if self.reduce is not None:  # the sizes of layers held by other processes
            sizes = self.reduce(sizes)
        self.sub_params = sizes
        if self.norm_sum.numel() != len(groups):
            self.norm_sum = torch.zeros(len(groups), dtype=torch.float64)
            self.taylor_sum = torch.zeros_like(self.norm_sum)
            self.epoch_norm = torch.zeros_like(self.norm_sum)
            self.sub_norm_sum = torch.zeros(len(groups), 2, dtype=torch.float64)
            self.sub_taylor_sum = torch.zeros_like(self.sub_norm_sum)

    def on_start(self, trainer: Trainer) -> None:
        self.attach(trainer.model)

    def squares_and_dots(self) -> torch.Tensor:
        """(2, layers, 2): squared gradient norm and <grad, weight> of every sub-layer, this process."""
        n = self.norm_sum.numel()
        out = torch.zeros(2, 2 * n, dtype=torch.float64)
        with torch.no_grad():
            pairs = [(p.grad, p, o) for p, o in zip(self.params, self.owner.tolist(), strict=True)]
            pairs = [(g, p, o) for g, p, o in pairs if g is not None]
            if pairs:
                grads = [g.float() for g, _, _ in pairs]
                sq = torch.stack(torch._foreach_norm(grads)).double().cpu() ** 2
                weights = [p.detach().float() for _, p, _ in pairs]
                dots = torch.stack([(g * w).sum() for g, w in zip(grads, weights, strict=True)])
                index = torch.tensor([o for _, _, o in pairs], dtype=torch.long)
                out[0].index_add_(0, index, sq)
                out[1].index_add_(0, index, dots.double().cpu())
        return out.view(2, n, 2)

    def accumulate(self) -> None:
        """Add the current gradients (one backward pass) to the sums."""
        both = self.squares_and_dots()
        if self.reduce is not None:  # squares and dots add up over the processes holding the layers
            both = self.reduce(both)
        norm = both[0].sum(dim=1).sqrt()
        self.norm_sum += norm
        self.taylor_sum += both[1].sum(dim=1).abs()
        self.epoch_norm += norm
        self.sub_norm_sum += both[0].sqrt()
        self.sub_taylor_sum += both[1].abs()
        self.steps += 1
        self.epoch_steps += 1

    def after_backward(self, trainer: Trainer) -> None:
        self.accumulate()

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        record["grad_norm"] = (self.epoch_norm / max(self.epoch_steps, 1)).tolist()
        record["grad_norm_sum"] = self.norm_sum.tolist()
        record["grad_taylor_sum"] = self.taylor_sum.tolist()
        record["grad_steps"] = self.steps
        if bool(torch.isfinite(self.sub_norm_sum).all()):  # NaN: resumed from a state without them
            record["grad_norm_sum_sub"] = self.sub_norm_sum.tolist()
            record["grad_taylor_sum_sub"] = self.sub_taylor_sum.tolist()
            record["sub_params"] = self.sub_params.long().tolist()
        self.epoch_norm = torch.zeros_like(self.norm_sum)
        self.epoch_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "norm_sum": self.norm_sum.clone(),
            "taylor_sum": self.taylor_sum.clone(),
            "epoch_norm": self.epoch_norm.clone(),
            "sub_norm_sum": self.sub_norm_sum.clone(),
            "sub_taylor_sum": self.sub_taylor_sum.clone(),
            "steps": self.steps,
            "epoch_steps": self.epoch_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.norm_sum = state["norm_sum"].double()
        self.taylor_sum = state["taylor_sum"].double()
        self.epoch_norm = state["epoch_norm"].double()
        if "sub_norm_sum" in state:
            self.sub_norm_sum = state["sub_norm_sum"].double()
            self.sub_taylor_sum = state["sub_taylor_sum"].double()
        else:  # saved before sub-layer sums existed: they would be partial, so they are not reported
            self.sub_norm_sum = torch.full((self.norm_sum.numel(), 2), math.nan, dtype=torch.float64)
            self.sub_taylor_sum = self.sub_norm_sum.clone()
        self.steps = int(state["steps"])
        self.epoch_steps = int(state["epoch_steps"])


class GradientEqualizer(Hook):
    """Rescales each layer's gradient to one common norm before clipping (a GFA intervention).

    After the backward pass (and after ``GradientStats`` read the natural gradients), the
    gradient of every layer in ``model.layers()`` is multiplied by ``target / ||g_l||``,
    where ``target`` is the mean of the per-layer norms: every layer then gets a gradient of
    the same norm, and the total stays about what it was. Parameters outside the layers
    (embeddings, final norm, width projections) are left alone. Stateless, so a resumed run
    repeats it exactly (the run records it as ``equalize_grads``).
    """

    def __init__(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.reduce = reduce
        self.groups: list[list[nn.Parameter]] = []

    def on_start(self, trainer: Trainer) -> None:
        model = trainer.model
        if not hasattr(model, "layers"):
            raise ConfigError(
                f"--equalize-grads rescales the gradient of each layer, and a {type(model).__name__} does "
                "not list its layers; use it with a language model."
            )
        self.groups = layer_parameters(model)

    def after_backward(self, trainer: Trainer) -> None:
        equalize(self.groups, self.reduce)


@torch.no_grad()
def equalize(groups: list[list[nn.Parameter]], reduce: Callable | None = None) -> torch.Tensor:
    """Scale each group's gradients to the mean group norm; return the norms before."""
    sq = torch.zeros(len(groups), dtype=torch.float64)
    for i, params in enumerate(groups):
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            sq[i] = float(sum(float(g.float().pow(2).sum()) for g in grads))
    if reduce is not None:
        sq = reduce(sq)
    norms = sq.sqrt()
    live = norms > 0
    if not bool(live.any()):
        return norms
    target = norms[live].mean()
    for i, params in enumerate(groups):
        if norms[i] > 0:
            scale = float(target / norms[i])
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(scale)
    return norms
