"""The sequential baseline: a standard pre-LayerNorm Vision Transformer."""

from __future__ import annotations

import torch
from torch import nn

from paraformer.config import ViTConfig
from paraformer.errors import ConfigError
from paraformer.models.base import ImageClassifier
from paraformer.models.branches import BranchSelection
from paraformer.models.paraformer import PRESETS as PARAFORMER_PRESETS
from paraformer.models.registry import register_model

# Each ParaFormer preset has a ViT twin: the same blocks stacked sequentially
# (depth = num_branches * branch_depth), hence exactly the same parameter count.
PRESETS: dict[str, tuple[str, ViTConfig]] = {
    name.replace("paraformer_", "vit_", 1): (
        f"ViT twin of {name}: the same {cfg.num_layers} blocks stacked sequentially",
        cfg.vit_twin(),
    )
    for name, (_, cfg) in PARAFORMER_PRESETS.items()
}


@register_model("vit", config=ViTConfig, modality="image", presets=PRESETS)
class ViT(ImageClassifier):
    """Patch embedding, ``depth`` blocks one after another, norm and linear head."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__(cfg)
        self.blocks = nn.Sequential(*(self.make_block() for _ in range(cfg.depth)))

    def forward_tokens(self, tokens: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        if branches is not None:
            raise ConfigError("a ViT has no branches; call it without branches=.")
        return self.blocks(tokens)  # (B, T, D)
