"""The language-model presets: uniform, tapered (CascadeFormer), widening and ParaFormer-LM.

At each scale the four variants have exactly the same parameter count: the taper and
its widening mirror keep the uniform model's *mean* head count and FFN width
(``width_schedule``), and ParaFormer-LM arranges the same blocks as branches of depth 2.

The *cost-cutting* tapers (``cost_presets``) are narrower than the uniform model in every
layer after the first, so they have fewer FLOPs per token; each has its widening mirror
(the same widths in reverse order) and a uniform model narrowed to about the same FLOPs
(the control). docs/lm.md states every schedule.
"""

from __future__ import annotations

from paraformer.config import TAPER, WIDEN, LMConfig, ParaLMConfig, taper_schedule, width_schedule

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


# The cost-cutting tapers: linear from the uniform width at layer 1 to END x at the last.
FFN_END = 0.1  # FFN only: 22-26% fewer FLOPs per token
ATTN_FFN_END = 0.375  # head count and FFN together: 30-32% fewer
RESID_END = 0.625  # the residual width itself, in stages of 2 layers (heads and FFN follow it): 30-35%
NARROW_HEADS = 0.7  # the control: heads x 0.7 (at least 1) and the FFN width that matches attn_ffn's FLOPs
NARROW_FFN = {64: 224, 96: 264, 128: 336}  # found by search (tests/test_taper.py checks the match)
COST_SIZES = (64, 96, 128)


def cost_schedules(dim: int, depth: int = 8, head_dim: int = 32) -> dict[str, dict[str, tuple[int, ...]]]:
    """The per-layer widths of each cost-cutting variant of the uniform model at residual width ``dim``."""
    heads, mlp = dim // head_dim, 4 * dim
    flat_heads = (heads,) * depth
    dims = taper_schedule(dim, depth, RESID_END, multiple=8, stage=2, minimum=head_dim, what="residual width")
    tapers = {
        "ffn": dict(
            heads=flat_heads, mlp_dims=taper_schedule(mlp, depth, FFN_END, multiple=8, what="FFN width")
        ),
        "attn_ffn": dict(
            heads=taper_schedule(heads, depth, ATTN_FFN_END, what="head count"),
            mlp_dims=taper_schedule(mlp, depth, ATTN_FFN_END, multiple=8, what="FFN width"),
        ),
        "resid": dict(
            dims=dims, heads=tuple(max(1, d // head_dim) for d in dims), mlp_dims=tuple(4 * d for d in dims)
        ),
    }
    out = {f"taper_{k}": v for k, v in tapers.items()}
    out.update({f"widen_{k}": {f: w[::-1] for f, w in v.items()} for k, v in tapers.items()})
    narrow_heads = max(1, round(NARROW_HEADS * heads))
    out["lm_narrow"] = dict(heads=(narrow_heads,) * depth, mlp_dims=(NARROW_FFN[dim],) * depth)
    return out


WHAT = {
    "taper_ffn": f"FFN width tapers linearly 1x -> {FFN_END}x with depth",
    "taper_attn_ffn": f"head count and FFN width taper linearly 1x -> {ATTN_FFN_END}x with depth",
    "taper_resid": f"the residual width tapers 1x -> {RESID_END}x in stages of 2 layers (projected between)",
    "widen_ffn": f"FFN width widens {FFN_END}x -> 1x with depth (mirror of taper_ffn)",
    "widen_attn_ffn": f"heads and FFN widen {ATTN_FFN_END}x -> 1x with depth (mirror of taper_attn_ffn)",
    "widen_resid": f"the residual width widens {RESID_END}x -> 1x in stages (mirror of taper_resid)",
    "lm_narrow": "uniform, narrowed (fewer heads, narrower FFN) to taper_attn_ffn's FLOPs",
}


def cost_presets(dims: tuple[int, ...] = COST_SIZES, depth: int = 8, context: int = 128) -> Table:
    """The cost-cutting tapers, their widening mirrors and the FLOP-matched narrow uniform model,
    named ``<variant>_d<dim>``, plus ``lm_uniform_d<dim>`` for the sizes other presets lack."""
    table: Table = {}
    for dim in dims:
        shared = dict(vocab_size=256, context=context, dim=dim, head_dim=32, depth=depth)
        where = f"dim {dim}, {depth} layers, context {context}"
        if dim != 128:  # dim 128 is lm_uniform_small
            table[f"lm_uniform_d{dim}"] = (
                f"uniform causal LM: {where}, {dim // 32} heads and FFN {4 * dim} in every layer",
                LMConfig(**shared, heads=(dim // 32,) * depth, mlp_dims=(4 * dim,) * depth),
            )
        for name, widths in cost_schedules(dim, depth).items():
            table[f"{name}_d{dim}"] = (f"{WHAT[name]}: {where}", LMConfig(**shared, **widths))
    return table


def deep_presets(dim: int = 64, context: int = 64) -> tuple[Table, dict[str, tuple[str, ParaLMConfig]]]:
    """Deep, narrow models for pruning and gradient fan-in at depth (dim 64, 2 heads, FFN 256):
    ``lm_uniform_l16`` / ``_l24``, their parameter-shared halves ``lm_shared_l16`` / ``_l24``
    (8 or 12 blocks, the stack run twice: the same depth of computation with half the
    parameters) and ``paraformer_lm_l16`` (8 branches of depth 2: the blocks of ``lm_uniform_l16``)."""
    heads, mlp = dim // 32, 4 * dim
    shared = dict(vocab_size=256, context=context, dim=dim, head_dim=32)
    sequential: Table = {}
    for depth in (16, 24):
        where = f"dim {dim}, {heads} heads, FFN {mlp}, context {context}"
        sequential[f"lm_uniform_l{depth}"] = (
            f"uniform causal LM, {depth} layers: {where}",
            LMConfig(**shared, depth=depth, heads=(heads,) * depth, mlp_dims=(mlp,) * depth),
        )
        half = depth // 2
        sequential[f"lm_shared_l{depth}"] = (
            f"parameter-shared repetition: {half} blocks run twice ({depth} applications): {where}",
            LMConfig(**shared, depth=half, heads=(heads,) * half, mlp_dims=(mlp,) * half, repeat=2),
        )
    branched = {
        "paraformer_lm_l16": (
            f"ParaFormer-LM: 8 branches x depth 2, dim {dim}, {heads} heads, FFN {mlp}, context {context} "
            "(the blocks of lm_uniform_l16)",
            ParaLMConfig(**shared, heads=heads, mlp_dim=mlp, num_branches=8, branch_depth=2),
        )
    }
    return sequential, branched


_SMALL = scale_presets("small", dim=128, depth=8, heads=4, context=128)
_DEEP = deep_presets()
_BASE = scale_presets("base", dim=384, depth=8, heads=6, context=256, head_dim=64)
SEQUENTIAL_PRESETS: Table = {**_SMALL[0], **_BASE[0], **cost_presets(), **_DEEP[0]}
PARAFORMER_LM_PRESETS: dict[str, tuple[str, ParaLMConfig]] = {**_SMALL[1], **_BASE[1], **_DEEP[1]}
