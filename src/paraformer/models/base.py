"""The API every paraformer image model shares."""

from __future__ import annotations

import torch
from torch import nn

from paraformer.config import ImageModelConfig
from paraformer.layers import Block, ClassifierHead, PatchEmbedding
from paraformer.models.branches import BranchSelection
from paraformer.models.flops import count_flops


class ImageClassifier(nn.Module):
    """Patch embedding -> (family-specific body) -> norm, pooling, linear head."""

    def __init__(self, cfg: ImageModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = PatchEmbedding(cfg.image_size, cfg.patch_size, cfg.in_channels, cfg.dim, cfg.emb_dropout)
        self.head = ClassifierHead(cfg.dim, cfg.num_classes, cfg.pool)

    def make_block(self) -> Block:
        return Block(**self.cfg.block_sizes())

    def forward_tokens(self, tokens: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        """(B, T, D) embedded tokens -> (B, T, D) body output."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        """(B, C, H, W) images -> (B, D) pooled, normalised features."""
        return self.head.pooled(self.forward_tokens(self.embed(x), branches))

    def forward(self, x: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.head.fc(self.forward_features(x, branches))

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A zero batch of the shape the model takes, on its device."""
        cfg = self.cfg
        device = next(self.parameters()).device
        return torch.zeros(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops(self) -> int:
        """Forward FLOPs for one image (attention included)."""
        cfg = self.cfg
        return count_flops(
            self, self.example_input(), tokens=cfg.num_patches + 1, dim=cfg.dim, layers=cfg.num_layers
        )

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not be weight-decayed (embeddings, norms, biases, gates)."""
        names = {"embed.pos_embed", "embed.cls_token"}
        for name, param in self.named_parameters():
            if param.ndim <= 1:
                names.add(name)
        return names
