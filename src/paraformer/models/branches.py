"""The branch stack: N parallel branches that read the same input and are summed.

``BranchStack`` is the one place that knows how branches run: the outputs of a
selection of branches, their sum, the prefix sums of all branches from one pass, and
the partial sum of a contiguous group (what one rank computes in branch parallelism).
Models built on it (``Branched``) expose ``num_branches`` and ``prefix_logits``; the
training loop, compression, expansion and parallelism ask that protocol, never a class.

Surgery is pure: ``select_branches`` and ``append_branches`` return a new model and
leave the given one untouched. Parameters are named ``branches.<i>.<...>`` in every
model, so checkpoints keep one format whatever the surgery or execution path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from paraformer.errors import ConfigError
from paraformer.models.registry import build_model

BranchSelection = int | Sequence[int] | None
BRANCH_KEY = re.compile(r"^branches\.(\d+)\.(.+)$")


class Branch(nn.Sequential):
    """One branch: its blocks in sequence, optionally scaled by a learned ``gate``.

    A gate starts at 0, so a newly added branch contributes nothing until it learns to.
    """

    def __init__(self, blocks: Iterable[nn.Module], gated: bool = False) -> None:
        super().__init__(*blocks)
        self.gate = nn.Parameter(torch.zeros(())) if gated else None

    def forward(self, x: torch.Tensor, cache: Any = None, first_layer: int = 0) -> torch.Tensor:
        """(B, T, D) -> (B, T, D). With a ``KVCache``, block j uses entry ``first_layer + j``."""
        if cache is None:
            for block in self:
                x = block(x)
        else:
            for j, block in enumerate(self):
                x = block(x, cache, first_layer + j)
        return x if self.gate is None else x * self.gate


class BranchOps:
    """What every branch stack offers, given ``num_branches`` and ``run(x, indices)``.

    ``BranchStack`` runs its branch modules one after another; an execution path
    applied from outside (``paraformer.parallel``) implements ``run`` differently and
    inherits the rest, so selections, sums and prefixes mean the same everywhere.
    """

    @property
    def num_branches(self) -> int:
        raise NotImplementedError

    def run(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor] | torch.Tensor:
        """The output of each branch in ``indices`` (a list, or a stacked ``(K, ...)`` tensor)."""
        raise NotImplementedError

    def resolve(self, selection: BranchSelection = None) -> list[int]:
        """``None`` (all), ``k`` (the first k) or explicit distinct indices, as a list."""
        n = self.num_branches
        if selection is None:
            return list(range(n))
        if isinstance(selection, int) and not isinstance(selection, bool):
            if not 1 <= selection <= n:
                raise ConfigError(f"branches={selection} is out of range: this model has {n} branch(es).")
            return list(range(selection))
        if isinstance(selection, Sequence) and not isinstance(selection, str) and len(selection) > 0:
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in selection):
                raise ConfigError(f"branch indices must be integers, got {list(selection)!r}.")
            indices = list(selection)
            if len(set(indices)) != len(indices) or not all(0 <= i < n for i in indices):
                raise ConfigError(f"branch indices {indices} must be distinct and in [0, {n - 1}].")
            return indices
        raise ConfigError(
            f"branches must be None, a count k, or a non-empty list of indices; got {selection!r}."
        )

    def outputs(self, x: torch.Tensor, selection: BranchSelection = None) -> torch.Tensor:
        """(B, T, D) -> (K, B, T, D): the output of each selected branch."""
        return _stacked(self.run(x, self.resolve(selection)))

    def forward(self, x: torch.Tensor, selection: BranchSelection = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D): the sum of the selected branches."""
        return _sum(self.run(x, self.resolve(selection)))

    def group_sum(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """(B, T, D) -> (B, T, D): the partial sum of branches ``start..stop-1``."""
        if not 0 <= start < stop <= self.num_branches:
            raise ConfigError(f"branch group [{start}, {stop}) is not inside [0, {self.num_branches}).")
        return _sum(self.run(x, range(start, stop)))

    def prefix_sums(
        self,
        x: torch.Tensor,
        *,
        start: int = 0,
        readout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Sums of branches ``0..k-1`` for every ``k`` in ``start+1..N``, from one pass.

        ``readout`` picks what each output contributes (for example only the class
        token) before summing. Returns ``(N - start, B, ...)``.
        """
        if not 0 <= start < self.num_branches:
            raise ConfigError(f"prefix start {start} must be in [0, {self.num_branches - 1}].")
        outs = self.run(x, range(self.num_branches))  # N x (B, T, D)
        if readout is not None:
            outs = [readout(o) for o in outs]  # read out before stacking: no (N, B, T, D) copy
        outs = _stacked(outs)  # (N, B, ...)
        sums = outs[start:].cumsum(dim=0)  # (N - start, B, ...)
        if start:
            sums = sums + outs[:start].sum(dim=0)
        return sums


class BranchStack(BranchOps, nn.ModuleList):
    """Branches ``0..N-1`` reading the same tokens ``(B, T, D)``; their sum is the model body."""

    @property
    def num_branches(self) -> int:
        return len(self)

    def run(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """The output of each branch in ``indices``: the reference execution, one after another."""
        return [self[i](x) for i in indices]


def _stacked(outputs: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    return outputs if isinstance(outputs, torch.Tensor) else torch.stack(outputs)


def _sum(tensors: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(tensors, torch.Tensor):
        return tensors.sum(dim=0)
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


@runtime_checkable
class Branched(Protocol):
    """A model whose body is a ``BranchStack``: what training, surgery and parallelism ask."""

    cfg: Any
    branches: BranchStack

    @property
    def num_branches(self) -> int: ...

    def prefix_logits(self, x: torch.Tensor, start: int = 0) -> torch.Tensor: ...


def is_branched(model: nn.Module) -> bool:
    """Whether ``model`` is made of parallel branches (and so has prefixes to train)."""
    return isinstance(model, Branched)


def require_branched(model: nn.Module, what: str) -> Branched:
    if not isinstance(model, Branched):
        family = getattr(getattr(model, "cfg", None), "family", type(model).__name__)
        raise ConfigError(f"{what} needs a model made of parallel branches (a ParaFormer); got a {family}.")
    return model


# ---------------------------------------------------------------------------- pure surgery


def select_branches(model: nn.Module, selection: BranchSelection) -> nn.Module:
    """A new model holding only the selected branches, in the given order.

    Embedding, head and everything else are copied unchanged, so the new model's
    logits equal ``model(x, branches=selection)``. ``model`` is not modified.
    """

    model = require_branched(model, "selecting branches")
    indices = model.branches.resolve(selection)
    gated = set(model.cfg.gated_branches)
    cfg = model.cfg.replace(
        num_branches=len(indices),
        gated_branches=tuple(new for new, old in enumerate(indices) if old in gated),
    )
    state = {}
    for key, value in model.state_dict().items():
        match = BRANCH_KEY.match(key)
        if match is None:
            state[key] = value.clone()
        elif int(match.group(1)) in indices:
            state[f"branches.{indices.index(int(match.group(1)))}.{match.group(2)}"] = value.clone()
    return rebuilt_like(build_model(cfg), state, model)


def append_branches(model: nn.Module, count: int, *, seed: int | None = None) -> nn.Module:
    """A new model with ``count`` freshly initialised, gated branches after the existing ones.

    The new branches' gates start at 0, so the new model's output equals the old one's
    until they are trained. ``model`` is not modified.
    """

    model = require_branched(model, "adding branches")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"the number of branches to add must be an integer >= 1, got {count!r}.")
    n = model.num_branches
    cfg = model.cfg.replace(
        num_branches=n + count,
        gated_branches=tuple(model.cfg.gated_branches) + tuple(range(n, n + count)),
    )
    with torch.random.fork_rng(devices=[]):  # seeding here must not disturb the caller's RNG
        if seed is not None:
            torch.manual_seed(seed)
        new = build_model(cfg)
    state = new.state_dict()
    state.update({k: v.clone() for k, v in model.state_dict().items()})
    return rebuilt_like(new, state, model)


def freeze_base(model: nn.Module, old_branches: int) -> nn.Module:
    """Stop gradients to the embedding and the first ``old_branches`` branches (in place).

    ``old_branches=0`` freezes nothing. Expansion trains new branches on top of this fixed base.
    """
    model = require_branched(model, "freezing branches")
    if isinstance(old_branches, bool) or not isinstance(old_branches, int):
        raise ConfigError(f"old_branches must be an integer, got {old_branches!r}.")
    if not 0 <= old_branches < model.num_branches:
        raise ConfigError(
            f"old_branches={old_branches}: the model has {model.num_branches} branches, so 0..."
            f"{model.num_branches - 1} of them can be the frozen base (expand it first)."
        )
    if old_branches == 0:
        return model  # no base: everything trains
    embedding = getattr(model, "embed", None)  # a language model's embedding is its (tied) head: not frozen
    base = ([embedding] if isinstance(embedding, nn.Module) else []) + list(model.branches)[:old_branches]
    for module in base:
        for param in module.parameters():
            param.requires_grad_(False)
    return model


def rebuilt_like(new: nn.Module, state: dict[str, torch.Tensor], old: nn.Module) -> nn.Module:
    """``new`` loaded with ``state``, on ``old``'s device and in its training mode."""
    new.load_state_dict(state)
    param = next(old.parameters())
    return new.to(param.device).train(old.training)
