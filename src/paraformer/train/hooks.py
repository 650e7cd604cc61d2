"""Hooks: the points around the training step where other concerns plug in.

Distributed training reduces gradients after backward and writes files on one rank
only; gradient accounting (per-layer norms for fan-in analysis or pruning) reads the
gradients before the optimizer step. None of them needs a branch inside the loop:
each is a ``Hook`` passed to ``train``/``resume``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from paraformer.train.loop import Trainer


class Hook:
    """Override what you need; every method is a no-op by default."""

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

    def state_dict(self) -> dict[str, Any]:
        """What to keep in ``train_state.pt`` to resume exactly (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Hooks(Hook):
    """Several hooks called in order; saves each one's state under its index."""

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self.hooks = list(hooks)

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

    def state_dict(self) -> dict[str, Any]:
        return {str(i): h.state_dict() for i, h in enumerate(self.hooks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, h in enumerate(self.hooks):
            h.load_state_dict(state.get(str(i), {}))
