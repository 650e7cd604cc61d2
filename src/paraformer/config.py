"""Validated, frozen, JSON-serialisable model configurations: one dataclass per family.

Every value is checked for its type and range at construction, so a bad config fails
here with a sentence instead of later with a shape error; configs are frozen, so a
preset cannot be changed behind your back (``cfg.replace(...)`` returns a new, validated
copy). Image families: ``ViTConfig``, ``ParaFormerConfig``. Language-model families:
``LMConfig`` (a width per layer: uniform, tapered, widening) and ``ParaLMConfig``
(ParaFormer-LM). Which family builds which model is the model registry's business
(``paraformer.models.registry``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from paraformer.errors import ConfigError
from paraformer.fields import check_fields

POOLS = ("cls", "mean")
RESIDUALS = ("standard", "normed")
# Configs describe models that must fit in memory; sizes beyond this are typos.
MAX_SIZE = 1 << 20


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def require_branch_layout(cfg: Any) -> None:
    """Checks shared by every branched config: branch counts and the gated-branch indices."""
    require_positive(cfg, "num_branches", "branch_depth", limit=4096)
    gated = cfg.gated_branches
    require(
        len(set(gated)) == len(gated) and all(0 <= i < cfg.num_branches for i in gated),
        f"gated_branches must be distinct indices in 0..{cfg.num_branches - 1}, got {list(gated)}.",
    )


def require_positive(cfg: Any, *names: str, limit: int = MAX_SIZE) -> None:
    for name in names:
        value = getattr(cfg, name)
        require(1 <= value <= limit, f"{name} must be an integer in 1..{limit}, got {value!r}.")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0] if n > 0 else []


@dataclass(frozen=True)
class ModelConfig:
    """What every model config shares: a family name, validation, dict round trip."""

    family: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def num_layers(self) -> int:
        """Total number of Transformer blocks in the model."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **dataclasses.asdict(self)}

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed (validated again); unknown names are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown {self.family} field(s) {unknown}; known fields: {sorted(known)}.")
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True)
class ImageModelConfig(ModelConfig):
    """Fields shared by every image classifier: embedding, blocks and head."""

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
        super().__post_init__()
        require_positive(self, "image_size", "patch_size", "num_classes", "dim", "heads", "mlp_dim")
        require_positive(self, "in_channels", limit=64)
        require(
            self.dim % self.heads == 0,
            f"dim ({self.dim}) must be divisible by heads ({self.heads}); "
            f"pick heads from {divisors(self.dim)}.",
        )
        require(
            self.image_size % self.patch_size == 0,
            f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size}); "
            f"pick patch_size from {divisors(self.image_size)}.",
        )
        for name in ("dropout", "emb_dropout"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value!r}.")
        require(self.pool in POOLS, f"pool must be one of {POOLS}, got {self.pool!r}.")
        require(self.residual in RESIDUALS, f"residual must be one of {RESIDUALS}, got {self.residual!r}.")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def block_sizes(self) -> dict[str, Any]:
        """Keyword arguments of ``layers.Block`` for this config's blocks."""
        return dict(
            dim=self.dim,
            heads=self.heads,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            qkv_bias=self.qkv_bias,
            residual=self.residual,
        )


@dataclass(frozen=True)
class ViTConfig(ImageModelConfig):
    """A standard ViT: ``depth`` pre-LN blocks applied one after another."""

    family: ClassVar[str] = "vit"

    depth: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "depth", limit=4096)

    @property
    def num_layers(self) -> int:
        return self.depth


@dataclass(frozen=True)
class ParaFormerConfig(ImageModelConfig):
    """A ParaFormer: ``num_branches`` parallel stacks of ``branch_depth`` blocks, summed.

    ``gated_branches`` lists the branches whose output is multiplied by a learned scalar
    (added by expansion, starting at 0 so that adding them leaves the output unchanged).
    """

    family: ClassVar[str] = "paraformer"

    num_branches: int = 8
    branch_depth: int = 2
    gated_branches: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        require_branch_layout(self)

    @property
    def num_layers(self) -> int:
        return self.num_branches * self.branch_depth

    def vit_twin(self) -> ViTConfig:
        """The sequential ViT with the same blocks (and so the same parameter count)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(ImageModelConfig)}
        return ViTConfig(**shared, depth=self.num_layers)


# The CascadeFormer taper of the presets: widths fall linearly from 1.5x to 0.5x the
# uniform width (3:1), first layer to last; the widening preset runs the other way.
TAPER = (1.5, 0.5)
WIDEN = (0.5, 1.5)


def width_schedule(mean: int, depth: int, start: float, end: float, what: str = "width") -> tuple[int, ...]:
    """``depth`` integer widths going linearly from ``start*mean`` to ``end*mean``.

    With ``start + end == 2`` the widths sum to exactly ``depth * mean`` (rounded by
    largest remainders), so a tapered model has the uniform model's parameter count.
    A schedule that reaches zero width at some layer is an error.
    """
    require(depth >= 1, f"depth must be >= 1, got {depth}.")
    fracs = [start + (end - start) * (i / (depth - 1) if depth > 1 else 0.0) for i in range(depth)]
    exact = [mean * f for f in fracs]
    widths = [int(w) for w in exact]
    target = round(sum(exact))
    order = sorted(range(depth), key=lambda i: exact[i] - widths[i], reverse=True)
    for i in order[: max(0, target - sum(widths))]:
        widths[i] += 1
    for layer, w in enumerate(widths):
        require(
            w >= 1,
            f"the {what} schedule {start:g}x -> {end:g}x of {mean} reaches zero {what} at layer {layer} "
            f"of {depth}; taper less steeply (keep both ends > 0).",
        )
    return tuple(widths)


def taper_schedule(
    full: int, depth: int, end: float, *, multiple: int = 1, stage: int = 1, minimum: int = 1, what: str
) -> tuple[int, ...]:
    """``depth`` widths falling linearly from ``full`` at the first layer to ``end * full`` at the last.

    Every width is at most ``full``, so the tapered model is cheaper than the uniform one.
    Each width is rounded to a multiple of ``multiple``; with ``stage`` > 1, each run of
    ``stage`` consecutive layers shares one width (the mean of its linear widths), so a
    residual-width taper changes width, and needs a projection, only between stages.
    ``end`` > 1 is refused (that is a widening, the reverse of a taper). A width below
    ``minimum`` (one head: 1 for a head count, ``head_dim`` for a residual width) is an error.
    """
    require(depth >= 1 and stage >= 1 and multiple >= 1, "depth, stage and multiple must be >= 1.")
    require(0 < end <= 1, f"a taper ends at a fraction in (0, 1] of the full {what}, got {end!r}.")
    linear = [full * (1 - (1 - end) * (i / (depth - 1) if depth > 1 else 0.0)) for i in range(depth)]
    widths = []
    for first in range(0, depth, stage):
        group = linear[first : first + stage]
        width = min(full, multiple * round(sum(group) / len(group) / multiple))
        widths += [width] * len(group)
    for layer, w in enumerate(widths):
        require(
            w >= minimum,
            f"the {what} taper 1x -> {end:g}x of {full} makes layer {layer} {w} wide, narrower than one "
            f"head ({minimum}); taper less steeply or use a smaller head.",
        )
    return tuple(widths)


@dataclass(frozen=True)
class LMBaseConfig(ModelConfig):
    """What every language model shares: vocabulary, context, residual width, head size."""

    vocab_size: int = 256
    context: int = 128
    dim: int = 128
    head_dim: int = 32
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "vocab_size", "dim", "head_dim")
        require_positive(self, "context", limit=1 << 16)
        require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}.")


@dataclass(frozen=True)
class LMConfig(LMBaseConfig):
    """A decoder-only, pre-LN causal LM with a width per layer.

    ``heads[l]`` and ``mlp_dims[l]`` are layer l's head count (each ``head_dim`` wide)
    and FFN width; both lists hold one value per layer. ``no_attn``/``no_mlp`` list the
    layers whose attention or FFN sub-layer was pruned away (FinerCut-style).

    ``dims`` (optional, one per layer) gives each layer its own residual width: a bias-free
    Linear maps the residual stream wherever consecutive widths differ, from the embedding
    width ``dim`` into the first layer and from the last layer back to ``dim`` for the
    final norm and the tied head. Empty: every layer is ``dim`` wide. ``repeat`` > 1 runs
    the whole stack that many times with the same parameters (parameter-shared repetition:
    blocks 1..L, then 1..L again).
    """

    family: ClassVar[str] = "lm"

    depth: int = 8
    heads: tuple[int, ...] = (4,) * 8
    mlp_dims: tuple[int, ...] = (512,) * 8
    no_attn: tuple[int, ...] = ()
    no_mlp: tuple[int, ...] = ()
    dims: tuple[int, ...] = ()
    repeat: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "depth", limit=4096)
        require_positive(self, "repeat", limit=64)
        if self.dims:
            require(
                len(self.dims) == self.depth,
                f"dims lists {len(self.dims)} residual width(s) but depth is {self.depth}; give one per "
                "layer (or none: every layer is dim wide).",
            )
            for layer, w in enumerate(self.dims):
                require(
                    self.head_dim <= w <= MAX_SIZE,
                    f"dims[{layer}] is {w}: layer {layer} would be narrower than one head (head_dim "
                    f"{self.head_dim}); taper the residual width less steeply.",
                )
            require(
                self.repeat == 1 or set(self.dims) == {self.dim},
                "parameter-shared repetition (repeat > 1) needs one residual width; drop dims or repeat.",
            )
        for name in ("heads", "mlp_dims"):
            values = getattr(self, name)
            require(
                len(values) == self.depth,
                f"{name} lists {len(values)} value(s) but depth is {self.depth}; give one per layer.",
            )
            for layer, v in enumerate(values):
                require(
                    v >= 1,
                    f"{name}[{layer}] is {v}: every layer needs a width >= 1 (a taper that reaches zero "
                    "width); taper less steeply or remove the layer instead.",
                )
        for name in ("no_attn", "no_mlp"):
            values = getattr(self, name)
            require(
                len(set(values)) == len(values) and all(0 <= i < self.depth for i in values),
                f"{name} must list distinct layer indices in 0..{self.depth - 1}, got {list(values)}.",
            )
        both = sorted(set(self.no_attn) & set(self.no_mlp))
        require(not both, f"layer(s) {both} have neither attention nor FFN; remove them from the depth.")

    @property
    def num_layers(self) -> int:
        return self.depth

    @property
    def widths(self) -> tuple[int, ...]:
        """The residual width of every layer (``dims``, or ``dim`` everywhere)."""
        return self.dims or (self.dim,) * self.depth


@dataclass(frozen=True)
class ParaLMConfig(LMBaseConfig):
    """ParaFormer-LM: ``num_branches`` parallel causal stacks of ``branch_depth`` blocks, summed."""

    family: ClassVar[str] = "paraformer_lm"

    heads: int = 4
    mlp_dim: int = 512
    num_branches: int = 4
    branch_depth: int = 2
    gated_branches: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "heads", "mlp_dim")
        require_branch_layout(self)

    @property
    def num_layers(self) -> int:
        return self.num_branches * self.branch_depth
