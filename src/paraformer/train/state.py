"""The resume state of a run: where training stands and everything needed to continue exactly."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any

import torch

from paraformer.checkpoint import TRAIN_STATE_FILE
from paraformer.errors import CheckpointError
from paraformer.train.metrics import EpochStats

if TYPE_CHECKING:
    from paraformer.train.loop import Trainer


@dataclass
class Position:
    """Where training stands: the next batch to run and the optimizer steps taken."""

    epoch: int = 0
    pass_index: int = 0
    batch: int = 0
    step: int = 0


def seeded(*parts: int) -> torch.Generator:
    """A CPU generator seeded by a tuple such as (seed, epoch, pass, batch)."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + part) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def capture_state(trainer: Trainer) -> dict[str, Any]:
    """Tensors and plain values only, so ``torch.load(weights_only=True)`` reads it back."""
    state = {
        "position": list(astuple(trainer.pos)),
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "epoch_stats": trainer.stats.state_dict(),
        "history_json": [json.dumps(h) for h in trainer.history],
        "hooks": trainer.hooks.state_dict(),
        "objective": trainer.objective.state_dict(),
        "train_config_json": json.dumps(trainer.cfg.to_dict(), sort_keys=True),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_state(trainer: Trainer, state: dict[str, Any]) -> None:
    try:
        trainer.pos = Position(*[int(v) for v in state["position"]])
        trainer.model.load_state_dict(state["model"])
        if not trainer.hooks.owns_optimizer_state():
            trainer.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        trainer.stats = EpochStats.from_state(state["epoch_stats"])
        trainer.history = [json.loads(line) for line in state["history_json"]]
        trainer.hooks.load_state_dict(state.get("hooks", {}))
        trainer.objective.load_state_dict(state.get("objective", {}))
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{trainer.folder.path / TRAIN_STATE_FILE} does not match this run's config ({err})."
        ) from None
    trainer.stepper.step = trainer.pos.step


class StopFlag:
    """First Ctrl-C asks the loop to save and stop at the next batch boundary; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def graceful_interrupt() -> Iterator[StopFlag]:
    flag = StopFlag()
    try:
        previous = signal.signal(signal.SIGINT, flag.handle)
    except ValueError:  # not the main thread: no handler, plain KeyboardInterrupt
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
