"""Model families. Each registers itself once (``registry.register_model``); importing this
package registers them all, so ``create_model``, ``list_models`` and ``build_model`` see every one.
"""

from __future__ import annotations

from torch import nn

from paraformer.errors import ConfigError
from paraformer.models.base import ImageClassifier
from paraformer.models.branches import (
    Branched,
    BranchStack,
    append_branches,
    freeze_base,
    is_branched,
    require_branched,
    select_branches,
)
from paraformer.models.lm import CausalLM, CausalLMBase, ParaFormerLM
from paraformer.models.paraformer import ParaFormer
from paraformer.models.registry import (
    build_model,
    check_input,
    config_from_dict,
    create_model,
    default_model,
    describe_model,
    get_config,
    list_models,
    modality_of,
    register_model,
    require_modality,
    spec_of,
    twin_of,
)
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
    "check_input",
    "config_from_dict",
    "count_params",
    "create_model",
    "default_model",
    "describe_model",
    "freeze_base",
    "get_config",
    "is_branched",
    "is_sequential_lm",
    "list_models",
    "modality_of",
    "register_model",
    "require_branched",
    "require_modality",
    "require_sequential_lm",
    "select_branches",
    "spec_of",
    "twin_of",
]


def count_params(model: nn.Module) -> int:
    """All parameters of a model, including those a distributed wrapper holds on other ranks."""
    if hasattr(model, "num_params"):
        return model.num_params()
    return sum(p.numel() for p in model.parameters())


def is_sequential_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a sequential language model (layers that pruning can remove)."""
    return isinstance(model, CausalLM)


def require_sequential_lm(model: nn.Module, what: str) -> CausalLM:
    if not isinstance(model, CausalLM):
        family = getattr(getattr(model, "cfg", None), "family", type(model).__name__)
        raise ConfigError(
            f"{what} removes layers of a sequential language model; got a {family} (a ParaFormer-LM "
            "is compressed by keeping its first branches instead)."
        )
    return model
