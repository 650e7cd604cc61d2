"""Configs of the language-model families: per-layer widths (CascadeFormer) and ParaFormer-LM.

``LMConfig`` is a decoder-only LM whose FFN width and head count are given per layer,
so one class describes a uniform model, a width that tapers with depth (CascadeFormer)
and one that widens with depth (OpenELM-style layer-wise scaling). ``ParaLMConfig`` is
ParaFormer-LM: N parallel causal branches of equal depth, summed.

The schedules the presets use (``width_schedule``) keep the *mean* width of the uniform
model, so every variant has exactly the same parameter count and FLOPs per token:
FFN and attention parameters are linear in the FFN width and in the head count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from paraformer.config import ModelConfig, register_config, require, require_branch_layout, require_positive

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
    """

    family: ClassVar[str] = "lm"

    depth: int = 8
    heads: tuple[int, ...] = (4,) * 8
    mlp_dims: tuple[int, ...] = (512,) * 8
    no_attn: tuple[int, ...] = ()
    no_mlp: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "depth", limit=4096)
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


register_config(LMConfig)
register_config(ParaLMConfig)
LM_FAMILIES = (LMConfig.family, ParaLMConfig.family)


def lm_presets(
    scale: str, *, dim: int, depth: int, heads: int, context: int, head_dim: int = 32
) -> dict[str, tuple[str, ModelConfig]]:
    """The four LM variants at one scale, all with the same parameter count."""
    mlp = 4 * dim
    shared = dict(vocab_size=256, context=context, dim=dim, head_dim=head_dim)
    where = f"dim {dim}, {depth} layers, context {context}"

    def schedule(ends: tuple[float, float]) -> dict[str, tuple[int, ...]]:
        return dict(
            heads=width_schedule(heads, depth, *ends, what="head count"),
            mlp_dims=width_schedule(mlp, depth, *ends, what="FFN width"),
        )

    flat = dict(heads=(heads,) * depth, mlp_dims=(mlp,) * depth)
    return {
        f"lm_uniform_{scale}": (
            f"uniform causal LM: {where}, {heads} heads and FFN {mlp} in every layer",
            LMConfig(**shared, depth=depth, **flat),
        ),
        f"cascadeformer_{scale}": (
            f"CascadeFormer: {where}; heads and FFN taper linearly 1.5x -> 0.5x with depth "
            "(same parameters as uniform)",
            LMConfig(**shared, depth=depth, **schedule(TAPER)),
        ),
        f"lm_widening_{scale}": (
            f"widening with depth (OpenELM-like): {where}; heads and FFN 0.5x -> 1.5x",
            LMConfig(**shared, depth=depth, **schedule(WIDEN)),
        ),
        f"paraformer_lm_{scale}": (
            f"ParaFormer-LM: {where.replace(f'{depth} layers', f'{depth // 2} branches x depth 2')}, "
            f"{heads} heads, FFN {mlp} (same parameters as uniform)",
            ParaLMConfig(**shared, heads=heads, mlp_dim=mlp, num_branches=depth // 2, branch_depth=2),
        ),
    }


LM_PRESETS: dict[str, tuple[str, ModelConfig]] = {
    **lm_presets("small", dim=128, depth=8, heads=4, context=128),
    **lm_presets("base", dim=384, depth=8, heads=6, context=256, head_dim=64),
}
