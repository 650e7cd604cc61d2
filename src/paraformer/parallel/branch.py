"""Branch parallelism: each rank of a process group owns a contiguous group of branches.

``BranchParallel`` wraps a branched model for one rank. The rank keeps the embedding,
the head and only its own branches (``select_branches``). A forward pass embeds the
input on every rank, runs the local branches, and combines the groups with one
collective: an all-reduce of the partial sums for a plain forward (or a prefix of
branches), an all-gather of the per-branch read-outs for ``prefix_logits`` (the fused
schedule needs every prefix sum; each rank then scans the gathered outputs). Only
what the head reads travels: the class token, ``(B, 1, D)`` per branch.

Every rank ends with the same logits, so the loss and the optimizer step are the same
on every rank; the collectives' backward passes (``collectives.py``) make each rank's
branch gradients exact and the replicated embedding and head gradients identical.
The wrapper satisfies the ``Branched`` protocol, so the training strategies run on it
unchanged. ``state_dict()`` gathers the full model under its single-process names (a
collective: call it on every rank); ``load_state_dict`` takes a full state dict.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from paraformer.errors import ConfigError
from paraformer.models.branches import BranchOps, BranchSelection, require_branched, select_branches
from paraformer.parallel.collectives import copy_to_group, gather_from_group, reduce_from_group

BRANCH_KEY = re.compile(r"^branches\.(\d+)\.(.+)$")
SPLIT_METHODS = ("embed_input", "head_input", "head_logits")


def split_branches(num_branches: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous groups ``[start, stop)`` as even as possible (sizes differ by at most one)."""
    if not 1 <= parts <= num_branches:
        raise ConfigError(
            f"cannot split {num_branches} branch(es) over {parts} ranks: use at most {num_branches} ranks "
            "for branch parallelism (each rank needs a branch)."
        )
    base, extra = divmod(num_branches, parts)
    bounds, start = [], 0
    for r in range(parts):
        stop = start + base + (1 if r < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


class BranchParallel(nn.Module):
    """One rank's share of a branched model; forward passes are collectives over ``group``."""

    def __init__(self, model: nn.Module, group: Any, rank: int, size: int) -> None:
        super().__init__()
        model = require_branched(model, "branch parallelism")
        missing = [m for m in SPLIT_METHODS if not hasattr(model, m)]
        if missing:
            raise ConfigError(f"{type(model).__name__} cannot be split by branches (it lacks {missing}).")
        self.cfg = model.cfg
        self.group, self.rank, self.size = group, rank, size
        self.bounds = split_branches(model.num_branches, size)
        self.start, self.stop = self.bounds[rank]
        self.sizes = [b - a for a, b in self.bounds]
        self.local = select_branches(model, list(range(self.start, self.stop)))
        self._total = model.num_branches
        per_branch = sum(p.numel() for p in self.local.branches.parameters()) // (self.stop - self.start)
        shared = sum(p.numel() for n, p in self.local.named_parameters() if not n.startswith("branches."))
        self._num_params = shared + per_branch * self._total

    # -- the Branched protocol -----------------------------------------------------------
    @property
    def num_branches(self) -> int:
        return self._total

    @property
    def branches(self) -> nn.Module:
        """This rank's branches (indices ``start..stop-1`` of the full model)."""
        return self.local.branches

    def num_params(self) -> int:
        """Parameters of the whole model, all ranks together."""
        return self._num_params

    def layers(self) -> list[nn.Module | None]:
        """Every layer of the whole model in its order; ``None`` for those on other ranks."""
        depth = len(self.local.branches[0])
        mine = {self.start + i: list(branch) for i, branch in enumerate(self.local.branches)}
        return [mine[b][j] if b in mine else None for b in range(self._total) for j in range(depth)]

    def no_weight_decay(self) -> set[str]:
        return {f"local.{n}" for n in self.local.no_weight_decay()}

    def forward(self, x: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        """Logits of the selected branches' sum, identical on every rank of the group."""
        selected = BranchOps.resolve(self, branches)
        tokens = copy_to_group(self.local.embed_input(x), self.group)  # (B, T, D)
        mine = [i - self.start for i in selected if self.start <= i < self.stop]
        if mine:
            part = sum(self.local.head_input(o) for o in self.local.branches.run(tokens, mine))
        else:  # still part of the graph, so this rank joins the backward all-reduce
            part = self.local.head_input(tokens) * 0
        return self.local.head_logits(reduce_from_group(part, self.group))

    def prefix_logits(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(N - start, B, classes): every prefix from one pass, identical on every rank."""
        if not 0 <= start < self._total:
            raise ConfigError(f"prefix start {start} must be in [0, {self._total - 1}].")
        tokens = copy_to_group(self.local.embed_input(x), self.group)
        outs = self.local.branches.run(tokens, range(self.stop - self.start))
        mine = torch.stack([self.local.head_input(o) for o in outs])  # (n_r, B, 1|T, D)
        every = gather_from_group(mine, self.group, self.sizes, self.rank)  # (N, B, 1|T, D)
        sums = every[start:].cumsum(dim=0)
        if start:
            sums = sums + every[:start].sum(dim=0)
        return self.local.head_logits(sums)

    # -- checkpoints in the single-process format ---------------------------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """The full model's state dict, gathered from every rank (collective)."""
        local = {}
        for key, value in self.local.state_dict().items():
            match = BRANCH_KEY.match(key)
            if match is not None:
                key = f"branches.{self.start + int(match.group(1))}.{match.group(2)}"
            elif self.rank != 0:
                continue  # replicated: rank 0's copy is the one kept
            local[key] = value.detach().cpu()
        parts: list[dict[str, torch.Tensor]] = [{} for _ in range(self.size)]
        dist.all_gather_object(parts, local, group=self.group)  # in memory, between our own ranks
        full: dict[str, torch.Tensor] = {}
        for part in parts:
            full.update(part)
        return full

    def load_state_dict(
        self, state: dict[str, torch.Tensor], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load a full (single-process) state dict: this rank takes the shared weights and its branches."""
        local = {}
        for key, value in state.items():
            match = BRANCH_KEY.match(key)
            if match is None:
                local[key] = value
            elif self.start <= int(match.group(1)) < self.stop:
                local[f"branches.{int(match.group(1)) - self.start}.{match.group(2)}"] = value
        return self.local.load_state_dict(local, strict=strict, assign=assign)
