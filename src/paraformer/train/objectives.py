"""What one mini-batch optimises: a schedule, plus parts that change the loss or the data.

Schedules (one per mode):

- ``Objective`` (standard): one loss on the full model (ViTs, and ParaFormer ``joint``).
- ``ProgressiveObjective``: the ParaFormer authors' schedule. Per batch, one optimizer
  step per prefix 1..N; then a second pass over the data trains the full model.
- ``FusedObjective``: every branch once, prefix sums, the weighted mean of all N prefix
  losses, one backward and one step per batch: (N+3)/2 times fewer branch passes
  than progressive per epoch (5.5x at N = 8).
- ``DeepSupervisionObjective``: a sequential model's loss read out after every layer.

Parts plug into any schedule through one interface (``ObjectivePart``): ``prepare``
may add samples to the batch or compute targets for it once (a teacher's logits),
``loss`` adds a term to the loss of every step (for each prefix the schedule trains),
``step_loss`` adds a term once per optimizer step from the model itself (an auxiliary
head on some branches), ``param_groups`` hands the optimizer the part's own parameters
or model parameters at a scaled learning rate, and ``state_dict`` keeps what a resumed
run needs. The parts here:

- ``Distillation``: KL to a fixed teacher's softened logits (the compress fine-tune
  distils the full model; Learning without Forgetting distils the previous model on
  the old classes).
- ``Replay``: a ``ReplayBuffer`` of stored samples mixed into every batch; with stored
  logits it is DER++ (an MSE term on the replayed logits as well as their labels).

Schedules ask the model through the ``Branched`` protocol (``num_branches``,
``prefix_logits``) and the task for the loss, so they train any branched model on
any task. ``first_branch`` > 0 trains only the prefixes from that branch on: the
earlier branches are a fixed base (expansion).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paraformer.errors import ConfigError
from paraformer.models import freeze_base, is_branched

Stepper = Callable[[torch.Tensor], None]  # backward + clip + optimizer step for one loss
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
InputFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # stored samples -> model inputs


@dataclass
class Batch:
    """A training batch: inputs, targets, and what parts computed for it (``extra``).

    ``size`` is the number of rows that came from the task (replayed rows follow them).
    """

    x: torch.Tensor
    y: torch.Tensor
    size: int
    generator: torch.Generator | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class StepResult:
    loss: float  # the objective that was optimised (last step of the batch)
    logits: torch.Tensor  # of the full model on the task's rows, for training metrics


class ObjectivePart:
    """Something that changes the loss or the data stream of any schedule."""

    name = "part"

    def prepare(self, model: nn.Module, batch: Batch) -> Batch:
        """Add rows to the batch or compute per-batch targets (once, before any step)."""
        return batch

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor | None:
        """A term added to the loss of every step; ``logits`` are (B', ...) of the model trained."""
        return None

    def step_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor | None:
        """A term added once per optimizer step (not once per prefix), computed from ``model``."""
        return None

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimizer groups: the part's own parameters, or model parameters with an ``lr_scale``.

        A model parameter named here leaves the default groups; ``weight_decay`` defaults
        to the run's. The state of the part's own parameters belongs in ``state_dict``.
        """
        return []

    def spec(self) -> dict[str, Any]:
        """What the run's config.json records about this part."""
        return {"name": self.name}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def kd_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL from the teacher's softened outputs to the student's, scaled by T^2 (Hinton et al.)."""
    t = temperature
    s = F.log_softmax(logits.float().reshape(-1, logits.shape[-1]) / t, dim=-1)
    p = F.log_softmax(teacher.float().reshape(-1, teacher.shape[-1]) / t, dim=-1)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * (t * t)


class Distillation(ObjectivePart):
    """``weight * KD(student, teacher)`` on the task's rows, optionally on some classes only."""

    name = "distillation"

    def __init__(
        self,
        teacher: nn.Module,
        *,
        weight: float = 1.0,
        temperature: float = 2.0,
        classes: Sequence[int] | None = None,
        source: str | None = None,
        all_rows: bool = False,
    ) -> None:
        if not weight > 0 or not temperature > 0:
            raise ConfigError(
                f"distillation needs weight > 0 and temperature > 0, got {weight}, {temperature}."
            )
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.weight, self.temperature, self.source = weight, temperature, source
        self.classes = None if classes is None else torch.tensor(sorted(classes))
        self.all_rows = all_rows  # replayed rows too (else the task's rows only)

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.classes is None else logits[..., self.classes.to(logits.device)]

    def _rows(self, batch: Batch) -> int:
        return len(batch.x) if self.all_rows else batch.size

    def prepare(self, model: nn.Module, batch: Batch) -> Batch:
        with torch.no_grad():
            batch.extra["teacher"] = self._pick(self.teacher(batch.x[: self._rows(batch)]))
        return batch

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        student = self._pick(logits[: self._rows(batch)])
        return self.weight * kd_loss(student, batch.extra["teacher"], self.temperature)

    def spec(self) -> dict[str, Any]:
        classes = None if self.classes is None else self.classes.tolist()
        return {
            "name": self.name,
            "teacher": self.source,
            "weight": self.weight,
            "temperature": self.temperature,
            "classes": classes,
            **({"all_rows": True} if self.all_rows else {}),
        }


class ReplayBuffer:
    """Stored samples (raw inputs, labels and optionally the logits they had) to replay.

    Filled between tasks by the caller (class-balanced or herding selection:
    ``paraformer.continual``); ``nbytes`` counts what it holds, for equal-memory comparisons.
    """

    def __init__(
        self, inputs: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor | None = None
    ) -> None:
        if len(inputs) != len(labels) or (logits is not None and len(logits) != len(labels)):
            raise ConfigError("a replay buffer needs as many labels (and logits) as stored samples.")
        self.inputs, self.labels, self.logits = inputs, labels, logits

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        tensors = [self.inputs, self.labels] + ([self.logits] if self.logits is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


class Replay(ObjectivePart):
    """Experience replay: ``batch_size`` stored samples appended to every batch.

    The replayed rows join the task loss (ER); with stored logits, DER++ adds
    ``alpha * MSE(logits, stored logits)`` on them and weighs their labels by ``beta``.
    """

    name = "replay"

    def __init__(
        self, buffer: ReplayBuffer, inputs: InputFn, *, batch_size: int, alpha: float = 0.0, beta: float = 1.0
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"the replay batch size must be >= 1, got {batch_size}.")
        if alpha > 0 and buffer.logits is None:
            raise ConfigError("DER++ (alpha > 0) replays stored logits; the buffer holds none.")
        self.buffer, self.inputs, self.batch_size = buffer, inputs, batch_size
        self.alpha, self.beta = alpha, beta

    def prepare(self, model: nn.Module, batch: Batch) -> Batch:
        if not len(self.buffer):
            return batch
        gen = batch.generator or torch.Generator().manual_seed(0)
        pick = torch.randint(0, len(self.buffer), (self.batch_size,), generator=gen)
        x = self.inputs(self.buffer.inputs[pick].to(batch.x.device), gen)
        batch.x = torch.cat([batch.x, x.to(batch.x.dtype)])
        batch.y = torch.cat([batch.y, self.buffer.labels[pick].to(batch.y.device)])
        if self.buffer.logits is not None:
            batch.extra["replay_logits"] = self.buffer.logits[pick].to(batch.x.device)
        return batch

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor | None:
        if "replay_logits" not in batch.extra or self.alpha == 0:
            return None
        stored = batch.extra["replay_logits"]
        replayed = logits[batch.size :, : stored.shape[-1]].float()
        return self.alpha * F.mse_loss(replayed, stored.float())

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stored": len(self.buffer),
            "bytes": self.buffer.nbytes,
            "batch_size": self.batch_size,
            "alpha": self.alpha,
            "beta": self.beta,
        }


# ---------------------------------------------------------------------------- schedules


class Objective:
    """One optimizer step per batch on the full model's loss (plus the parts' terms).

    ``frozen_base`` records that the branches before ``first_branch`` (and the embedding)
    do not train: ``make_objective`` freezes them, and a resumed run does it again.
    """

    name = "standard"
    passes: tuple[str, ...] = ("train",)
    first_branch = 0
    frozen_base = False

    def __init__(self, loss: LossFn, parts: Sequence[ObjectivePart] = ()) -> None:
        self.task_loss = loss
        self.parts = list(parts)

    def steps_per_batch(self, pass_name: str) -> int:
        return 1

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The parts' optimizer groups (see ``ObjectivePart.param_groups``)."""
        return [group for part in self.parts for group in part.param_groups(model)]

    def with_step_terms(self, loss: torch.Tensor, model: nn.Module, batch: Batch) -> torch.Tensor:
        """``loss`` plus the parts' once-per-step terms."""
        for part in self.parts:
            term = part.step_loss(model, batch)
            if term is not None:
                loss = loss + term
        return loss

    def spec(self) -> dict[str, Any]:
        """What the run's config.json records, so that ``--resume`` rebuilds the same objective."""
        return {
            "name": self.name,
            "parts": [p.spec() for p in self.parts],
            "first_branch": self.first_branch,
            "frozen_base": self.frozen_base,
        }

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Task loss on every row (replayed rows weighed by the replay's beta) plus the parts' terms."""
        total = self.task_loss(logits[: batch.size], batch.y[: batch.size])
        if len(batch.y) > batch.size:
            beta = next((p.beta for p in self.parts if isinstance(p, Replay)), 1.0)
            total = total + beta * self.task_loss(logits[batch.size :], batch.y[batch.size :])
        for part in self.parts:
            term = part.loss(logits, batch)
            if term is not None:
                total = total + term
        return total

    def train_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        pass_name: str,
        step: Stepper,
        generator: torch.Generator | None = None,
    ) -> StepResult:
        batch = Batch(x, y, len(y), generator)
        for part in self.parts:
            batch = part.prepare(model, batch)
        return self.train_prepared(model, batch, pass_name, step)

    def train_prepared(self, model: nn.Module, batch: Batch, pass_name: str, step: Stepper) -> StepResult:
        logits = model(batch.x)
        loss = self.with_step_terms(self.loss(logits, batch), model, batch)
        step(loss)
        return StepResult(loss.item(), logits[: batch.size].detach())

    def state_dict(self) -> dict[str, Any]:
        return {str(i): p.state_dict() for i, p in enumerate(self.parts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, p in enumerate(self.parts):
            p.load_state_dict(state.get(str(i), {}))


class JointObjective(Objective):
    """A branched model trained on the loss of its full sum only."""

    name = "joint"


class ProgressiveObjective(Objective):
    """Per batch: a step on prefix 1, then prefix 2, ... prefix N; then a full-model pass."""

    name = "progressive"
    passes = ("prefixes", "full")

    def __init__(
        self, loss: LossFn, num_branches: int, first_branch: int = 0, parts: Sequence[ObjectivePart] = ()
    ) -> None:
        super().__init__(loss, parts)
        self.num_branches = num_branches
        self.first_branch = first_branch

    def steps_per_batch(self, pass_name: str) -> int:
        return self.num_branches - self.first_branch if pass_name == "prefixes" else 1

    def train_prepared(self, model: nn.Module, batch: Batch, pass_name: str, step: Stepper) -> StepResult:
        if pass_name == "full":
            return super().train_prepared(model, batch, pass_name, step)
        for k in range(self.first_branch + 1, self.num_branches + 1):
            logits = model(batch.x, branches=k)
            loss = self.with_step_terms(self.loss(logits, batch), model, batch)
            step(loss)
        return StepResult(loss.item(), logits[: batch.size].detach())


class FusedObjective(Objective):
    """All prefix losses from one forward, weighted, in one backward."""

    name = "fused"

    def __init__(
        self,
        loss: LossFn,
        num_branches: int,
        weighting: str = "uniform",
        first_branch: int = 0,
        parts: Sequence[ObjectivePart] = (),
    ) -> None:
        super().__init__(loss, parts)
        k = num_branches - first_branch
        weights = torch.ones(k) if weighting == "uniform" else torch.arange(1.0, k + 1)
        self.weights = weights / weights.sum()
        self.weighting, self.first_branch = weighting, first_branch

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "prefix_weights": self.weighting}

    def train_prepared(self, model: nn.Module, batch: Batch, pass_name: str, step: Stepper) -> StepResult:
        logits = model.prefix_logits(batch.x, start=self.first_branch)  # (K, B, ...)
        losses = torch.stack([self.loss(prefix, batch) for prefix in logits])  # (K,)
        loss = self.with_step_terms((losses * self.weights.to(losses.device)).sum(), model, batch)
        step(loss)
        return StepResult(loss.item(), logits[-1, : batch.size].detach())


class DeepSupervisionObjective(Objective):
    """A sequential model trained on the mean of the losses read out after every layer.

    The model must provide ``layer_logits(x) -> (L, B, ...)`` (the language models do).
    """

    name = "deep-supervision"

    def train_prepared(self, model: nn.Module, batch: Batch, pass_name: str, step: Stepper) -> StepResult:
        logits = model.layer_logits(batch.x)  # (L, B, ...)
        loss = self.with_step_terms(
            torch.stack([self.loss(layer, batch) for layer in logits]).mean(), model, batch
        )
        step(loss)
        return StepResult(loss.item(), logits[-1, : batch.size].detach())


def make_objective(
    model: nn.Module,
    mode: str,
    prefix_weights: str,
    loss: LossFn,
    *,
    first_branch: int = 0,
    frozen_base: bool = False,
    deep_supervision: bool = False,
    parts: Sequence[ObjectivePart] = (),
) -> Objective:
    """The schedule for ``mode`` with ``parts``; models without branches always train normally.

    ``first_branch`` > 0 trains the prefixes from that branch on; with ``frozen_base``
    the earlier branches and the embedding are frozen first (expansion).
    """
    objective = _schedule(model, mode, prefix_weights, loss, first_branch, deep_supervision, parts)
    if frozen_base:
        freeze_base(model, first_branch)
        objective.frozen_base = True
    return objective


def _schedule(
    model: nn.Module,
    mode: str,
    prefix_weights: str,
    loss: LossFn,
    first_branch: int,
    deep_supervision: bool,
    parts: Sequence[ObjectivePart],
) -> Objective:
    if first_branch and not is_branched(model):
        raise ConfigError(f"first_branch={first_branch} needs a model made of parallel branches.")
    if deep_supervision:
        if is_branched(model):
            raise ConfigError(
                "deep supervision applies to sequential models; a branched model already trains every "
                "prefix of branches (--mode fused or progressive)."
            )
        return DeepSupervisionObjective(loss, parts)
    if not is_branched(model):
        return Objective(loss, parts)
    if mode == "joint":
        return JointObjective(loss, parts)
    if mode == "progressive":
        return ProgressiveObjective(loss, model.num_branches, first_branch, parts)
    return FusedObjective(loss, model.num_branches, prefix_weights, first_branch, parts)
