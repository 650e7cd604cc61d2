"""Hooks: the points around the training step where other concerns plug in.

Distributed training reduces gradients after backward and writes files on one rank
only; gradient accounting (per-layer norms for fan-in analysis or pruning) reads the
gradients before the optimizer step. None of them needs a branch inside the loop:
each is a ``Hook`` passed to ``train``/``resume``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from paraformer.train.loop import Trainer


class Hook:
    """Override what you need; every method is a no-op by default."""

    def bind(self, trainer: Trainer) -> None:
        """The trainer this hook serves, as soon as it exists (before any state is loaded)."""

    def on_start(self, trainer: Trainer) -> None:
        """After the model, optimizer and state are ready, before the first batch."""

    def after_backward(self, trainer: Trainer) -> None:
        """Gradients are computed (not yet clipped); reduce or read them here."""

    def before_step(self, trainer: Trainer) -> None:
        """Gradients are clipped; the optimizer steps next."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """Add figures to the epoch's metrics record before it is saved."""

    def writes_files(self, trainer: Trainer) -> bool:
        """Whether this process writes checkpoints and metrics (False on all ranks but one)."""
        return True

    def select_batch(self, trainer: Trainer, indices: torch.Tensor) -> torch.Tensor:
        """The samples of the batch ``indices`` this process trains on (a data-parallel shard)."""
        return indices

    def agree(self, trainer: Trainer, flags: tuple[bool, ...]) -> tuple[bool, ...]:
        """Make per-batch decisions (stop, save) the same on every process."""
        return flags

    def owns_optimizer_state(self) -> bool:
        """True when this hook saves and restores the optimizer state itself (per rank)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """What to keep in ``train_state.pt`` to resume exactly (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Hooks(Hook):
    """Several hooks called in order; saves each one's state under its index."""

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self.hooks = list(hooks)

    def bind(self, trainer: Trainer) -> None:
        for h in self.hooks:
            h.bind(trainer)

    def on_start(self, trainer: Trainer) -> None:
        for h in self.hooks:
            h.on_start(trainer)

    def after_backward(self, trainer: Trainer) -> None:
        for h in self.hooks:
            h.after_backward(trainer)

    def before_step(self, trainer: Trainer) -> None:
        for h in self.hooks:
            h.before_step(trainer)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        for h in self.hooks:
            h.on_epoch_end(trainer, record)

    def writes_files(self, trainer: Trainer) -> bool:
        return all(h.writes_files(trainer) for h in self.hooks)

    def select_batch(self, trainer: Trainer, indices: torch.Tensor) -> torch.Tensor:
        for h in self.hooks:
            indices = h.select_batch(trainer, indices)
        return indices

    def agree(self, trainer: Trainer, flags: tuple[bool, ...]) -> tuple[bool, ...]:
        for h in self.hooks:
            flags = h.agree(trainer, flags)
        return flags

    def owns_optimizer_state(self) -> bool:
        return any(h.owns_optimizer_state() for h in self.hooks)

    def state_dict(self) -> dict[str, Any]:
        return {str(i): h.state_dict() for i, h in enumerate(self.hooks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, h in enumerate(self.hooks):
            h.load_state_dict(state.get(str(i), {}))
