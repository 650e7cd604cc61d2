"""ParaFormer: a shallow Transformer of N parallel branches whose outputs are summed.

Every branch is a stack of ``branch_depth`` pre-LN blocks reading the same embedded
tokens. With ``S_k = b_1(x) + ... + b_k(x)``, ``head(S_k)`` is the model restricted
to its first k branches; progressive-approximation training makes every such
prefix a good classifier, which is what compression and expansion rely on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from paraformer.config import ParaFormerConfig
from paraformer.errors import ConfigError
from paraformer.layers import Block
from paraformer.models.base import BranchSelection, ImageClassifier


class ParaFormer(ImageClassifier):
    """Patch embedding, ``num_branches`` parallel block stacks (summed), norm and head."""

    def __init__(self, cfg: ParaFormerConfig) -> None:
        super().__init__(cfg)
        self.branches = nn.ModuleList(
            nn.Sequential(*(Block(cfg) for _ in range(cfg.branch_depth))) for _ in range(cfg.num_branches)
        )

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    def branch_indices(self, branches: BranchSelection = None) -> list[int]:
        """Resolve ``None`` (all), ``k`` (the first k) or explicit indices to a list."""
        n = self.num_branches
        if branches is None:
            return list(range(n))
        if isinstance(branches, int) and not isinstance(branches, bool):
            if not 1 <= branches <= n:
                raise ConfigError(f"branches={branches} is out of range: this model has {n} branch(es).")
            return list(range(branches))
        if isinstance(branches, Sequence) and len(branches) > 0:
            indices = [int(i) for i in branches]
            if len(set(indices)) != len(indices) or not all(0 <= i < n for i in indices):
                raise ConfigError(f"branch indices {indices} must be distinct and in [0, {n - 1}].")
            return indices
        raise ConfigError(
            f"branches must be None, a count k, or a non-empty list of indices; got {branches!r}."
        )

    def branch_outputs(self, tokens: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        """(B, T, D) tokens -> (K, B, T, D), the output of each selected branch."""
        return torch.stack([self.branches[i](tokens) for i in self.branch_indices(branches)])

    def forward_tokens(self, tokens: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        return self.branch_outputs(tokens, branches).sum(dim=0)  # (B, T, D)

    def prefix_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (N, B, classes): logits of every prefix 1..N from one pass."""
        outputs = self.branch_outputs(self.embed(x))  # (N, B, T, D)
        if self.cfg.pool == "cls":
            outputs = outputs[:, :, :1]  # (N, B, 1, D): the head reads only the class token
        prefix_sums = outputs.cumsum(dim=0)  # (N, B, T or 1, D)
        return self.head(prefix_sums)  # (N, B, classes)
