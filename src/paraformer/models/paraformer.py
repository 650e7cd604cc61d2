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
from paraformer.models.registry import register_model

# CPU-scale presets train for a few epochs, where dropout only slows convergence; on
# CPU it also costs about half of the step time (random masks are slow to draw there).
_NO_DROPOUT = dict(dropout=0.0, emb_dropout=0.0)
_FMNIST = dict(image_size=28, patch_size=4, in_channels=1, num_classes=10, **_NO_DROPOUT)
_CIFAR = dict(image_size=32, patch_size=4, in_channels=3, num_classes=10, **_NO_DROPOUT)
_PAPER = dict(image_size=224, patch_size=16, in_channels=3, num_classes=10)
_TINY = dict(dim=96, heads=3, mlp_dim=384)
_SMALL = dict(dim=192, heads=3, mlp_dim=768)

PRESETS: dict[str, tuple[str, ParaFormerConfig]] = {
    "paraformer_tiny_fmnist": (
        "28x28 grayscale, patch 4, dim 96, 4 branches x depth 2 (CPU scale)",
        ParaFormerConfig(**_FMNIST, **_TINY, num_branches=4, branch_depth=2),
    ),
    "paraformer_tiny_cifar": (
        "32x32 RGB, patch 4, dim 96, 4 branches x depth 2 (CPU scale)",
        ParaFormerConfig(**_CIFAR, **_TINY, num_branches=4, branch_depth=2),
    ),
    "paraformer_small_fmnist": (
        "28x28 grayscale, patch 4, dim 192, 8 branches x depth 2 (paper width at CPU resolution)",
        ParaFormerConfig(**_FMNIST, **_SMALL, num_branches=8, branch_depth=2),
    ),
    "paraformer_small_cifar": (
        "32x32 RGB, patch 4, dim 192, 8 branches x depth 2 (paper width at CPU resolution)",
        ParaFormerConfig(**_CIFAR, **_SMALL, num_branches=8, branch_depth=2),
    ),
    "paraformer_paper": (
        "the paper's model: 224 px, patch 16, dim 192, 3 heads, MLP 768, 8 branches x depth 2",
        ParaFormerConfig(**_PAPER, **_SMALL, num_branches=8, branch_depth=2),
    ),
}


@register_model("paraformer", config=ParaFormerConfig, modality="image", presets=PRESETS)
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
