"""How one mini-batch trains the model: one small strategy object per mode.

- ``StandardStrategy``: one loss on the full model (ViTs, and ParaFormer ``joint``).
- ``ProgressiveStrategy``: the ParaFormer authors' schedule. Per batch, one optimizer
  step per prefix 1..N; then a second pass over the data trains the full model.
- ``FusedStrategy``: every branch once, prefix sums, the weighted mean of all N prefix
  losses, one backward and one step per batch: (N+3)/2 times fewer branch passes
  than progressive per epoch (5.5x at N = 8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from paraformer.models import ImageClassifier, ParaFormer


@dataclass
class StepResult:
    loss: float  # the objective that was optimised (last step of the batch)
    logits: torch.Tensor  # (B, classes) of the full model, for training accuracy


Stepper = Callable[[torch.Tensor], None]  # backward + clip + optimizer step for one loss


class StandardStrategy:
    """One optimizer step per batch on the full model's loss."""

    passes: tuple[str, ...] = ("train",)

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    def steps_per_batch(self, pass_name: str) -> int:
        return 1

    def train_batch(
        self, model: ImageClassifier, x: torch.Tensor, y: torch.Tensor, pass_name: str, step: Stepper
    ) -> StepResult:
        logits = model(x)
        loss = self.loss(logits, y)
        step(loss)
        return StepResult(loss.item(), logits.detach())


class ProgressiveStrategy(StandardStrategy):
    """Per batch: a step on prefix 1, then prefix 2, ... prefix N; then a full-model pass."""

    passes = ("prefixes", "full")

    def __init__(self, num_branches: int, label_smoothing: float = 0.0) -> None:
        super().__init__(label_smoothing)
        self.num_branches = num_branches

    def steps_per_batch(self, pass_name: str) -> int:
        return self.num_branches if pass_name == "prefixes" else 1

    def train_batch(
        self, model: ImageClassifier, x: torch.Tensor, y: torch.Tensor, pass_name: str, step: Stepper
    ) -> StepResult:
        if pass_name == "full":
            return super().train_batch(model, x, y, pass_name, step)
        for k in range(1, self.num_branches + 1):
            logits = model(x, branches=k)
            loss = self.loss(logits, y)
            step(loss)
        return StepResult(loss.item(), logits.detach())


class FusedStrategy(StandardStrategy):
    """All N prefix losses from one forward, weighted, in one backward."""

    def __init__(self, num_branches: int, weighting: str = "uniform", label_smoothing: float = 0.0) -> None:
        super().__init__(label_smoothing)
        weights = torch.ones(num_branches) if weighting == "uniform" else torch.arange(1.0, num_branches + 1)
        self.weights = weights / weights.sum()

    def train_batch(
        self, model: ImageClassifier, x: torch.Tensor, y: torch.Tensor, pass_name: str, step: Stepper
    ) -> StepResult:
        assert isinstance(model, ParaFormer)
        logits = model.prefix_logits(x)  # (N, B, classes)
        n, b, c = logits.shape
        per_sample = F.cross_entropy(
            logits.float().reshape(n * b, c),
            y.repeat(n),
            label_smoothing=self.label_smoothing,
            reduction="none",
        )
        loss = (per_sample.view(n, b).mean(dim=1) * self.weights.to(per_sample.device)).sum()
        step(loss)
        return StepResult(loss.item(), logits[-1].detach())


def make_strategy(
    model: ImageClassifier, mode: str, prefix_weights: str, label_smoothing: float
) -> StandardStrategy:
    """The strategy for ``mode``; non-ParaFormer models always train normally."""
    if not isinstance(model, ParaFormer) or mode == "joint":
        return StandardStrategy(label_smoothing)
    if mode == "progressive":
        return ProgressiveStrategy(model.num_branches, label_smoothing)
    return FusedStrategy(model.num_branches, prefix_weights, label_smoothing)
