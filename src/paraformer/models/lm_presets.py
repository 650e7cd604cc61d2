"""The language-model presets: uniform, tapered (CascadeFormer), widening and ParaFormer-LM.

At each scale the four variants have exactly the same parameter count: the taper and
its widening mirror keep the uniform model's *mean* head count and FFN width
(``width_schedule``), and ParaFormer-LM arranges the same blocks as branches of depth 2.
"""

from __future__ import annotations

from paraformer.config import TAPER, WIDEN, LMConfig, ParaLMConfig, width_schedule

Table = dict[str, tuple[str, LMConfig]]


def scale_presets(
    scale: str, *, dim: int, depth: int, heads: int, context: int, head_dim: int = 32
) -> tuple[Table, dict[str, tuple[str, ParaLMConfig]]]:
    """The sequential variants (family ``lm``) and ParaFormer-LM at one scale."""
    mlp = 4 * dim
    shared = dict(vocab_size=256, context=context, dim=dim, head_dim=head_dim)
    where = f"dim {dim}, {depth} layers, context {context}"

    def schedule(ends: tuple[float, float]) -> dict[str, tuple[int, ...]]:
        return dict(
            heads=width_schedule(heads, depth, *ends, what="head count"),
            mlp_dims=width_schedule(mlp, depth, *ends, what="FFN width"),
        )

    flat = dict(heads=(heads,) * depth, mlp_dims=(mlp,) * depth)
    sequential = {
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
    }
    branched = {
        f"paraformer_lm_{scale}": (
            f"ParaFormer-LM: {where.replace(f'{depth} layers', f'{depth // 2} branches x depth 2')}, "
            f"{heads} heads, FFN {mlp} (same parameters as uniform)",
            ParaLMConfig(**shared, heads=heads, mlp_dim=mlp, num_branches=depth // 2, branch_depth=2),
        ),
    }
    return sequential, branched


_SMALL = scale_presets("small", dim=128, depth=8, heads=4, context=128)
_BASE = scale_presets("base", dim=384, depth=8, heads=6, context=256, head_dim=64)
SEQUENTIAL_PRESETS: Table = {**_SMALL[0], **_BASE[0]}
PARAFORMER_LM_PRESETS: dict[str, tuple[str, ParaLMConfig]] = {**_SMALL[1], **_BASE[1]}
