"""Model families. Each is built from its config; ``build_model`` picks the class."""

from __future__ import annotations

from paraformer.config import ImageModelConfig, ParaFormerConfig, ViTConfig
from paraformer.errors import ConfigError
from paraformer.models.base import ImageClassifier
from paraformer.models.paraformer import ParaFormer
from paraformer.models.vit import ViT

__all__ = ["ImageClassifier", "ParaFormer", "ViT", "build_model"]


def build_model(cfg: ImageModelConfig) -> ImageClassifier:
    """Instantiate the model described by ``cfg``."""
    if isinstance(cfg, ParaFormerConfig):
        return ParaFormer(cfg)
    if isinstance(cfg, ViTConfig):
        return ViT(cfg)
    raise ConfigError(f"no model class for config type {type(cfg).__name__}.")
