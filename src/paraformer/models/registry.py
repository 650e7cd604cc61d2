"""The one model registry: every family registers itself once, with a decorator on its builder.

``@register_model(family, config=..., modality=..., presets=...)`` on a model class (or a
builder function) records everything the rest of the package asks about a family: its
config class, its modality ("image" or "text"), what input it takes (``input_spec``)
and its named presets. ``build_model``, ``create_model``, ``list_models``,
``config_from_dict``, ``default_model`` ("which preset for this data?") and
``check_input`` ("does this model fit this data?") all read this one table.

    @register_model("vit", config=ViTConfig, modality="image", presets=VIT_PRESETS)
    class ViT(ImageClassifier): ...

    create_model("paraformer_tiny_cifar", num_branches=8)
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from paraformer.config import ModelConfig
from paraformer.errors import ConfigError, ShapeError
from paraformer.fields import from_mapping

MODALITIES = ("image", "text")
Builder = Callable[[Any], nn.Module]


@dataclass(frozen=True)
class Preset:
    """A named, ready-to-build config of one family."""

    name: str
    family: str
    description: str
    config: ModelConfig


@dataclass(frozen=True)
class ModelSpec:
    """What the package knows about one model family."""

    family: str
    builder: Builder
    config_class: type[ModelConfig]
    modality: str
    presets: dict[str, Preset] = field(default_factory=dict)

    def input_spec(self, cfg: ModelConfig) -> dict[str, int]:
        """What the model takes: channels and image size, or vocabulary and context."""
        if self.modality == "image":
            return {"channels": cfg.in_channels, "image_size": cfg.image_size, "classes": cfg.num_classes}
        return {"vocab_size": cfg.vocab_size, "context": cfg.context}


_FAMILIES: dict[str, ModelSpec] = {}
_PRESETS: dict[str, Preset] = {}


def register_model(
    family: str,
    *,
    config: type[ModelConfig],
    modality: str,
    presets: Mapping[str, tuple[str, ModelConfig]] | None = None,
) -> Callable[[Builder], Builder]:
    """Register the decorated class or function as the builder of ``family`` (its only registration).

    ``presets`` maps preset names to ``(description, config)``; every config must be of
    ``config``'s class. Registering a family or a preset name twice is an error.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if config.family != family:
        raise ValueError(f"{config.__name__}.family is {config.family!r}, not {family!r}")

    def decorate(builder: Builder) -> Builder:
        if family in _FAMILIES:
            raise ValueError(f"model family {family!r} is registered twice")
        table = {}
        for name, (description, cfg) in (presets or {}).items():
            if type(cfg) is not config or name in _PRESETS:
                raise ValueError(f"preset {name!r}: a second registration or a config of another family")
            table[name] = _PRESETS[name] = Preset(name, family, description, cfg)
        _FAMILIES[family] = ModelSpec(family, builder, config, modality, table)
        return builder

    return decorate


# ------------------------------------------------------------------------------ families


def families() -> list[str]:
    return sorted(_FAMILIES)


def spec_of(cfg_or_family: ModelConfig | str) -> ModelSpec:
    """The registration of a family (given by name or by one of its configs)."""
    family = cfg_or_family if isinstance(cfg_or_family, str) else getattr(cfg_or_family, "family", "")
    if family not in _FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; known families: {', '.join(families())}.")
    return _FAMILIES[family]


def modality_of(cfg: ModelConfig) -> str:
    """``"image"`` or ``"text"``: what data the model of this config reads."""
    return spec_of(cfg).modality


def build_model(cfg: ModelConfig) -> nn.Module:
    """Instantiate the model described by ``cfg``."""
    return spec_of(cfg).builder(cfg)


def config_from_dict(data: Any) -> ModelConfig:
    """Rebuild a config from ``to_dict()`` output, with clear errors for bad input."""
    if not isinstance(data, dict):
        raise ConfigError(f"a model config must be a JSON object, got {type(data).__name__}.")
    data = dict(data)
    family = data.pop("family", None)
    if not isinstance(family, str) or family not in _FAMILIES:
        raise ConfigError(f"unknown model family {family!r} in config; expected one of {families()}.")
    return from_mapping(_FAMILIES[family].config_class, data, f"{family} config")


# ------------------------------------------------------------------------------ presets


def list_models(modality: str | None = None) -> list[str]:
    """Names of all presets (of one modality, if given), sorted."""
    return sorted(
        n for n, p in _PRESETS.items() if modality is None or spec_of(p.family).modality == modality
    )


def preset(name: str) -> Preset:
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, _PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}.{hint} Run `paraformer list-models` to see all presets.")
    return _PRESETS[name]


def describe_model(name: str) -> str:
    return preset(name).description


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A copy of the preset's config with ``overrides`` applied (validated)."""
    cfg = preset(name).config
    known = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown override(s) {unknown} for {name}; known fields: {sorted(known)}.")
    return dataclasses.replace(cfg, **overrides)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a preset model, e.g. ``create_model("paraformer_tiny_cifar", num_branches=8)``."""
    return build_model(get_config(name, **overrides))


def twin_of(name: str) -> str | None:
    """The ViT twin preset of a ParaFormer preset (or the reverse), if there is one."""
    preset(name)
    for a, b in (("paraformer_", "vit_"), ("vit_", "paraformer_")):
        other = name.replace(a, b, 1)
        if name.startswith(a) and other in _PRESETS:
            return other
    return None


# ------------------------------------------------------------------------------ data fit


def default_model(modality: str, family: str | None = None, **data: int) -> str:
    """The preset to use when none is named: the smallest of ``family`` that takes this data.

    Images: ``channels`` must match; among those, one whose ``image_size`` matches wins
    (else the images are resized to the preset's input). Text: ParaFormer's default
    language model, the CascadeFormer taper.
    """
    if modality == "text":
        return "cascadeformer_small"
    family = family or "paraformer"
    channels, size = data.get("channels"), data.get("image_size")
    fits = [
        (p.config.image_size != size, _size_rank(p.config), p.name)
        for p in _PRESETS.values()
        if p.family == family and p.config.in_channels == channels
    ]
    if not fits:
        raise ConfigError(
            f"no {family} preset takes {channels}-channel images; "
            f"pass --model and --set in_channels={channels}."
        )
    return min(fits)[2]


def _size_rank(cfg: ModelConfig) -> int:
    return cfg.num_layers * cfg.dim * cfg.mlp_dim  # ranks presets by size; exact counts need a build


def check_input(cfg: ModelConfig, name: str, **data: int) -> None:
    """Refuse, in one line, a model that cannot read this data (the checks of its modality).

    Images: ``channels`` must equal the model's; ``classes`` (the largest label + 1) must
    fit its head. Text: the tokenizer's ``vocab_size`` must equal the model's.
    """
    spec = spec_of(cfg).input_spec(cfg)
    if "channels" in data and spec.get("channels") != data["channels"]:
        raise ShapeError(
            f"model {name} takes {spec.get('channels')}-channel images but the data has {data['channels']}; "
            "pick a preset for this data (see `paraformer list-models`) or leave out --model."
        )
    if "classes" in data and spec.get("classes", 0) < data["classes"]:
        raise ShapeError(
            f"model {name} has {spec.get('classes')} classes but the data uses {data['classes']}."
        )
    if "vocab_size" in data and spec.get("vocab_size") != data["vocab_size"]:
        raise ShapeError(
            f"model {name} has a vocabulary of {spec.get('vocab_size')} tokens but the tokenizer has "
            f"{data['vocab_size']}."
        )


def require_modality(cfg: ModelConfig, modality: str, what: str) -> None:
    """A one-line error when ``cfg`` is not a model of ``modality`` (e.g. an LM given to image training)."""
    found = modality_of(cfg)
    if found != modality:
        hint = "use `paraformer lm ...` for language models" if found == "text" else "use `paraformer train`"
        raise ConfigError(f"{what} is {_KINDS[found]} ({cfg.family}), not {_KINDS[modality]}; {hint}.")


_KINDS = {"image": "an image classifier", "text": "a language model"}
