"""Model families. Each is built from its config; ``build_model`` picks the class by family."""

from __future__ import annotations

from torch import nn

from paraformer.config import ModelConfig
from paraformer.errors import ConfigError
from paraformer.models.base import ImageClassifier
from paraformer.models.branches import (
    Branched,
    BranchStack,
    append_branches,
    is_branched,
    require_branched,
    select_branches,
)
from paraformer.models.lm import CausalLM, CausalLMBase, ParaFormerLM
from paraformer.models.paraformer import ParaFormer
from paraformer.models.vit import ViT

__all__ = [
    "Branched",
    "BranchStack",
    "CausalLM",
    "CausalLMBase",
    "ImageClassifier",
    "ParaFormer",
    "ParaFormerLM",
    "ViT",
    "append_branches",
    "build_model",
    "count_params",
    "is_branched",
    "register_model",
    "require_branched",
    "select_branches",
]

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "vit": ViT,
    "paraformer": ParaFormer,
    "lm": CausalLM,
    "paraformer_lm": ParaFormerLM,
}


def register_model(family: str, cls: type[nn.Module]) -> None:
    """Make ``build_model`` build ``cls`` for configs of ``family``."""
    MODEL_CLASSES[family] = cls


def count_params(model: nn.Module) -> int:
    """All parameters of a model, including those a distributed wrapper holds on other ranks."""
    if hasattr(model, "num_params"):
        return model.num_params()
    return sum(p.numel() for p in model.parameters())


def build_model(cfg: ModelConfig) -> nn.Module:
    """Instantiate the model described by ``cfg``."""
    cls = MODEL_CLASSES.get(getattr(cfg, "family", ""))
    if cls is None:
        raise ConfigError(f"no model class for config type {type(cfg).__name__}.")
    return cls(cfg)
