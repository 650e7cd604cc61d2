"""What the trainer asks of a task, and what a prepared run hands it.

The loop never looks inside a batch: it asks the task for ``(inputs, targets)`` of
the samples it picked, for the loss of some logits, for the metrics of a batch and
for an evaluation of a split. ``paraformer.tasks.image`` and ``paraformer.tasks.text``
implement this protocol; nothing in ``paraformer.train`` knows about images or text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


class EvalResult(Protocol):
    """A split's evaluation: named figures for the metrics record."""

    def metrics(self) -> dict[str, Any]: ...


class Task(Protocol):
    """The interface the training loop relies on."""

    name: str  # the run folder's "task": "image" or "text"
    # The validation metric that picks the best epoch, and whether higher is better.
    selection_metric: str
    higher_is_better: bool

    def num_samples(self, split: str) -> int: ...

    def batch(
        self, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def batch_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]: ...

    def evaluate(self, model: nn.Module, split: str, **options: bool) -> EvalResult:
        """Figures of ``split``; options ``prefixes`` (every branch prefix too), ``bf16``, ``progress``."""
        ...

    def info(self) -> dict[str, Any]: ...

    def describe(self) -> str:
        """The data in one phrase, for the line printed when a run starts."""
        ...

    def artifacts(self) -> dict[str, str]:
        """Files the run folder keeps for this task (name -> text), e.g. ``tokenizer.json``."""
        ...


@dataclass
class Setup:
    """A run ready to train: its (resolved) config, model, task and device."""

    cfg: Any  # a LoopConfig subclass: the task's training config
    model: nn.Module
    task: Task
    data_info: Any  # the task's data record: the run's config.json "data" section
    device: torch.device
