"""The API every paraformer model shares."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from paraformer.config import ImageModelConfig
from paraformer.flops import count_flops
from paraformer.layers import ClassifierHead, PatchEmbedding

BranchSelection = int | Sequence[int] | None


class ImageClassifier(nn.Module):
    """Patch embedding -> (family-specific body) -> norm, pooling, linear head."""

    def __init__(self, cfg: ImageModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = PatchEmbedding(cfg)
        self.head = ClassifierHead(cfg)

    def forward_tokens(self, tokens: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        """(B, T, D) embedded tokens -> (B, T, D) body output."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        """(B, C, H, W) images -> (B, D) pooled, normalised features."""
        return self.head.pooled(self.forward_tokens(self.embed(x), branches))

    def forward(self, x: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.head.fc(self.forward_features(x, branches))

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops(self) -> int:
        """Forward FLOPs for one image (attention included)."""
        cfg = self.cfg
        device = next(self.parameters()).device
        example = torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
        return count_flops(self, example, tokens=cfg.num_patches + 1, dim=cfg.dim, layers=cfg.num_layers)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not be weight-decayed (embeddings, norms, biases)."""
        names = {"embed.pos_embed", "embed.cls_token"}
        for name, param in self.named_parameters():
            if param.ndim <= 1:
                names.add(name)
        return names
