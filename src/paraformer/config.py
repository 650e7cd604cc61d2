"""Validated, JSON-serialisable model configurations.

One dataclass per model family. Every value is checked at construction, so a bad
config fails here with a sentence instead of later with a shape error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from paraformer.errors import ConfigError

_POOLS = ("cls", "mean")
_RESIDUALS = ("standard", "normed")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class ImageModelConfig:
    """Fields shared by every image classifier: embedding, blocks and head."""

    family: ClassVar[str] = ""

    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    num_classes: int = 10
    dim: int = 192
    heads: int = 3
    mlp_dim: int = 768
    dropout: float = 0.1
    emb_dropout: float = 0.1
    qkv_bias: bool = False
    pool: str = "cls"
    # "standard" is pre-LN x + f(LN(x)); "normed" reproduces the ParaFormer
    # authors' f(LN(x)) + LN(x) for side-by-side comparisons.
    residual: str = "standard"

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "in_channels", "num_classes", "dim", "heads", "mlp_dim"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be a positive integer, got {value!r}.",
            )
        _require(
            self.dim % self.heads == 0,
            f"dim ({self.dim}) must be divisible by heads ({self.heads}); "
            f"pick heads from {_divisors(self.dim)}.",
        )
        _require(
            self.image_size % self.patch_size == 0,
            f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size}); "
            f"pick patch_size from {_divisors(self.image_size)}.",
        )
        for name in ("dropout", "emb_dropout"):
            value = getattr(self, name)
            _require(
                isinstance(value, (int, float)) and 0.0 <= value < 1.0,
                f"{name} must be in [0, 1), got {value!r}.",
            )
        _require(self.pool in _POOLS, f"pool must be one of {_POOLS}, got {self.pool!r}.")
        _require(
            self.residual in _RESIDUALS,
            f"residual must be one of {_RESIDUALS}, got {self.residual!r}.",
        )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_layers(self) -> int:
        """Total number of Transformer blocks in the model."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **dataclasses.asdict(self)}

    def replace(self, **overrides: Any) -> ImageModelConfig:
        """Return a copy with some fields changed (validated again)."""
        return type(self)(**{**dataclasses.asdict(self), **overrides})


@dataclass
class ViTConfig(ImageModelConfig):
    """A standard ViT: ``depth`` pre-LN blocks applied one after another."""

    family: ClassVar[str] = "vit"

    depth: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            isinstance(self.depth, int) and self.depth >= 1,
            f"depth must be a positive integer, got {self.depth!r}.",
        )

    @property
    def num_layers(self) -> int:
        return self.depth


@dataclass
class ParaFormerConfig(ImageModelConfig):
    """A ParaFormer: ``num_branches`` parallel stacks of ``branch_depth`` blocks, summed."""

    family: ClassVar[str] = "paraformer"

    num_branches: int = 8
    branch_depth: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            isinstance(self.num_branches, int) and self.num_branches >= 1,
            f"num_branches must be an integer >= 1, got {self.num_branches!r}.",
        )
        _require(
            isinstance(self.branch_depth, int) and self.branch_depth >= 1,
            f"branch_depth must be an integer >= 1, got {self.branch_depth!r}.",
        )

    @property
    def num_layers(self) -> int:
        return self.num_branches * self.branch_depth

    def vit_twin(self) -> ViTConfig:
        """The sequential ViT with the same blocks (and so the same parameter count)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(ImageModelConfig)}
        return ViTConfig(**shared, depth=self.num_layers)


CONFIG_CLASSES: dict[str, type[ImageModelConfig]] = {
    ViTConfig.family: ViTConfig,
    ParaFormerConfig.family: ParaFormerConfig,
}


def config_from_dict(data: dict[str, Any]) -> ImageModelConfig:
    """Rebuild a config from ``to_dict()`` output, with clear errors for bad input."""
    if not isinstance(data, dict):
        raise ConfigError(f"a model config must be a JSON object, got {type(data).__name__}.")
    data = dict(data)
    family = data.pop("family", None)
    if family not in CONFIG_CLASSES:
        raise ConfigError(
            f"unknown model family {family!r} in config; expected one of {sorted(CONFIG_CLASSES)}."
        )
    cls = CONFIG_CLASSES[family]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {family} config field(s) {unknown}; known fields: {sorted(known)}.")
    return cls(**data)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0] if isinstance(n, int) and n > 0 else []
