"""Named presets: ``create_model(name, **overrides)`` and ``list_models()``.

Each ParaFormer preset has a ViT twin with the same blocks stacked sequentially
(depth = num_branches * branch_depth), hence exactly the same parameter count.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from torch import nn

from paraformer.config import ModelConfig, ParaFormerConfig
from paraformer.config_lm import LM_PRESETS
from paraformer.errors import ConfigError
from paraformer.models import build_model

# CPU-scale presets train for a few epochs, where dropout only slows convergence; on
# CPU it also costs about half of the step time (random masks are slow to draw there).
_NO_DROPOUT = dict(dropout=0.0, emb_dropout=0.0)
_FMNIST = dict(image_size=28, patch_size=4, in_channels=1, num_classes=10, **_NO_DROPOUT)
_CIFAR = dict(image_size=32, patch_size=4, in_channels=3, num_classes=10, **_NO_DROPOUT)
_PAPER = dict(image_size=224, patch_size=16, in_channels=3, num_classes=10)
_TINY = dict(dim=96, heads=3, mlp_dim=384)
_SMALL = dict(dim=192, heads=3, mlp_dim=768)

_PARAFORMERS: dict[str, tuple[str, ParaFormerConfig]] = {
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


def _twin_name(name: str) -> str:
    return name.replace("paraformer_", "vit_", 1)


PRESETS: dict[str, tuple[str, ModelConfig]] = {}
for _name, (_description, _cfg) in _PARAFORMERS.items():
    PRESETS[_name] = (_description, _cfg)
    PRESETS[_twin_name(_name)] = (
        f"ViT twin of {_name}: the same {_cfg.num_layers} blocks stacked sequentially",
        _cfg.vit_twin(),
    )
PRESETS.update(LM_PRESETS)  # uniform, CascadeFormer, widening and ParaFormer-LM at each scale


def list_models() -> list[str]:
    """Names of all presets, sorted."""
    return sorted(PRESETS)


def describe_model(name: str) -> str:
    return PRESETS[_check_name(name)][0]


def twin_of(name: str) -> str | None:
    """The ViT twin preset of a ParaFormer preset (or the reverse)."""
    name = _check_name(name)
    if name.startswith("paraformer_"):
        return _twin_name(name)
    other = name.replace("vit_", "paraformer_", 1)
    return other if other in PRESETS else None


def register_preset(name: str, description: str, cfg: ModelConfig) -> None:
    """Add a named preset (model families outside this file register theirs here)."""
    PRESETS[name] = (description, cfg)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A copy of the preset's config with ``overrides`` applied (validated)."""
    cfg = PRESETS[_check_name(name)][1]
    known = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown override(s) {unknown} for {name}; known fields: {sorted(known)}.")
    return dataclasses.replace(cfg, **overrides)


def preset_for_images(channels: int, image_size: int, family: str = "paraformer") -> str:
    """The smallest preset of ``family`` built for images with this many channels.

    Among those, one whose input size equals ``image_size`` wins; otherwise the images
    will be resized to the preset's input.
    """
    fits = [
        (getattr(cfg, "image_size", 0) != image_size, _params_estimate(cfg), name)
        for name, (_, cfg) in PRESETS.items()
        if cfg.family == family and getattr(cfg, "in_channels", None) == channels
    ]
    if not fits:
        raise ConfigError(
            f"no {family} preset takes {channels}-channel images; "
            f"pass --model and --set in_channels={channels}."
        )
    return min(fits)[2]


def _params_estimate(cfg: ModelConfig) -> int:
    return cfg.num_layers * cfg.dim * cfg.mlp_dim  # ranks presets by size; exact counts need a build


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a preset model, e.g. ``create_model("paraformer_tiny_cifar", num_branches=8)``."""
    return build_model(get_config(name, **overrides))


def _check_name(name: str) -> str:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}.{hint} Run `paraformer list-models` to see all presets.")
    return name
