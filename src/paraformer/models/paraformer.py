"""ParaFormer: a shallow Transformer of N parallel branches whose outputs are summed.

Every branch is a stack of ``branch_depth`` pre-LN blocks reading the same embedded
tokens. With ``S_k = b_1(x) + ... + b_k(x)``, ``head(S_k)`` is the model restricted
to its first k branches; progressive-approximation training makes every such
prefix a good classifier, which is what compression and expansion rely on.
"""

from __future__ import annotations

import torch

from paraformer.config import ParaFormerConfig
from paraformer.models.base import ImageClassifier
from paraformer.models.branches import Branch, BranchSelection, BranchStack


class ParaFormer(ImageClassifier):
    """Patch embedding, ``num_branches`` parallel block stacks (summed), norm and head."""

    def __init__(self, cfg: ParaFormerConfig) -> None:
        super().__init__(cfg)
        gated = set(cfg.gated_branches)
        self.branches = BranchStack(
            Branch((self.make_block() for _ in range(cfg.branch_depth)), gated=i in gated)
            for i in range(cfg.num_branches)
        )

    @property
    def num_branches(self) -> int:
        return self.branches.num_branches

    def forward_tokens(self, tokens: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        return self.branches(tokens, branches)  # (B, T, D)

    # What parallel execution needs to split the model around its branches (see parallel/branch.py).
    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, T, D): the tokens every branch reads."""
        return self.embed(x)

    def head_input(self, out: torch.Tensor) -> torch.Tensor:
        """(B, T, D) branch output -> the part the head reads ((B, 1, D) for the class token)."""
        return out[:, :1] if self.head.reads_class_token_only() else out

    def head_logits(self, summed: torch.Tensor) -> torch.Tensor:
        """A sum of read-out branch outputs -> logits (any leading dims)."""
        return self.head(summed)

    def prefix_logits(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(B, C, H, W) -> (N - start, B, classes): logits of prefixes start+1..N from one pass."""
        # The class-token head reads one token: sum only that one across prefixes.
        tokens = self.embed_input(x)  # (B, T, D)
        sums = self.branches.prefix_sums(tokens, start=start, readout=self.head_input)  # (K, B, T|1, D)
        return self.head_logits(sums)  # (K, B, classes)
