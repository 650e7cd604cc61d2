"""Fused branch execution: the N branches run as batched matmuls, one per layer.

All branches of a stack have the same shapes, so block ``j`` of every branch can run as
one computation: ``(N, B*T, D) @ (N, D, 3D)`` instead of N small matmuls. The first
LayerNorm is even shared: every branch normalises the same tokens, so the
normalisation runs once and only the per-branch affine differs.

``FusedBranchStack`` keeps the branch modules exactly as ``BranchStack`` does (same
parameters, names, checkpoints, per-branch freezing) and only changes how ``run``
executes them: ``"loop"`` is the reference, one branch after another; ``"stacked"``
stacks the selected branches' weights (a copy per call while training, cached while
the weights do not change for inference) and runs them batched; ``"auto"`` times both
on the first call of each shape and keeps the faster (``calibration.py``). On a 2-core
CPU the stacked path lost 20-30% at batch 128 and won at batch 1, so no path is right
everywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paraformer.errors import ConfigError
from paraformer.layers import Block
from paraformer.models.branches import BranchStack, require_branched
from paraformer.parallel.calibration import choose_path

PATHS = ("loop", "stacked", "auto")

# Stacked weight name -> the parameter it stacks inside block j (as in ``layers.Block``).
PER_BRANCH_NAMES = {
    "norm1_weight": "norm1.weight",
    "norm1_bias": "norm1.bias",
    "qkv_weight": "attn.qkv.weight",
    "qkv_bias": "attn.qkv.bias",
    "out_weight": "attn.out.weight",
    "out_bias": "attn.out.bias",
    "norm2_weight": "norm2.weight",
    "norm2_bias": "norm2.bias",
    "fc1_weight": "mlp.net.0.weight",
    "fc1_bias": "mlp.net.0.bias",
    "fc2_weight": "mlp.net.3.weight",
    "fc2_bias": "mlp.net.3.bias",
}


class FusedBranchStack(BranchStack):
    """A branch stack that can run its branches stacked; ``path`` is loop, stacked or auto."""

    def __init__(self, branches: Sequence[nn.Module], path: str = "auto") -> None:
        super().__init__(branches)
        if path not in PATHS:
            raise ConfigError(f"branch execution must be one of {PATHS}, got {path!r}.")
        full = all(
            isinstance(b, Block) and b.attn is not None and b.mlp is not None for br in self for b in br
        )
        if not full:
            raise ConfigError("stacked execution needs branches of whole layers.Block; use the loop path.")
        self.path = path
        self.choices: dict[tuple[Any, ...], str] = {}  # auto: the path measured faster, per shape
        self._cache: dict[tuple[int, ...], tuple[tuple[int, ...], list[dict[str, torch.Tensor | None]]]] = {}

    def run(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor] | torch.Tensor:
        """(B, T, D) -> the outputs of the branches ``indices`` by the chosen path."""
        indices = list(indices)
        path = self.path
        if path == "auto":
            path = choose_path(self, x, len(indices))
        if path == "loop":
            return super().run(x, indices)
        return self.run_stacked(x, indices)

    def run_stacked(self, x: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """(B, T, D) -> (K, B, T, D): every selected branch at once, layer by layer."""
        weights = self.stacked_weights(indices)
        d = x.shape[-1]
        h = _block(weights[0], x, F.layer_norm(x, (d,), eps=self[0][0].norm1.eps), self[0][0])
        for j, w in enumerate(weights[1:], start=1):
            h = _block(w, h, None, self[0][j])
        gates = [self[i].gate for i in indices]
        if any(g is not None for g in gates):
            one = torch.ones((), dtype=h.dtype, device=h.device)
            scale = torch.stack([one if g is None else g.to(h.dtype) for g in gates])
            h = h * scale.view(-1, 1, 1, 1)
        return h

    def stacked_weights(self, indices: list[int]) -> list[dict[str, torch.Tensor | None]]:
        """Per block, each weight of the selected branches stacked along a new first dim.

        Stacking copies; without autograd (inference) the copy is kept until a weight changes.
        """
        caching = not torch.compiler.is_compiling()  # a compiled graph stacks for free
        key: tuple[int, ...] = tuple(indices)
        versions: tuple[int, ...] = ()
        if caching:
            params = [p for i in indices for p in self[i].parameters()]
            caching = not torch.is_grad_enabled() or not any(p.requires_grad for p in params)
            versions = tuple(p._version for p in params) + tuple(p.data_ptr() for p in params)
            if caching and key in self._cache and self._cache[key][0] == versions:
                return self._cache[key][1]
        depth = len(self[indices[0]])
        weights = []
        for j in range(depth):
            blocks = [self[i][j] for i in indices]
            weights.append(
                {name: _stack([_get(b, path) for b in blocks]) for name, path in PER_BRANCH_NAMES.items()}
            )
        if caching:
            self._cache = {key: (versions, weights)}  # one selection at a time: bounded memory
        return weights


def _stack(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.stack(tensors)


def _get(module: nn.Module, dotted: str) -> torch.Tensor | None:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module  # type: ignore[return-value]


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(K, M, in) @ (K, out, in)^T + (K, out) -> (K, M, out)."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _block(
    p: dict[str, torch.Tensor | None], x: torch.Tensor, normed: torch.Tensor | None, like: Block
) -> torch.Tensor:
    """``layers.Block`` for K branches at once: (K, B, T, D), or the shared (B, T, D) -> (K, B, T, D).

    ``normed`` is ``LN(x)`` without affine when the input is shared (computed once for all).
    """
    attn = like.attn
    k, d = p["qkv_weight"].shape[0], p["norm1_weight"].shape[-1]
    if normed is None:
        normed = F.layer_norm(x, (d,), eps=like.norm1.eps)
    h = normed * p["norm1_weight"].view(k, 1, 1, d) + p["norm1_bias"].view(k, 1, 1, d)  # (K, B, T, D)
    b, t = h.shape[1], h.shape[2]
    qkv = _linear(h.reshape(k, b * t, d), p["qkv_weight"], p["qkv_bias"])  # (K, B*T, 3*H*Dh)
    qkv = qkv.view(k * b, t, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (K*B, H, T, Dh)
    dropout = attn.dropout if like.training else 0.0
    a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=dropout, is_causal=attn.causal)
    a = a.transpose(1, 2).reshape(k, b * t, attn.heads * attn.head_dim)  # (K, B*T, H*Dh)
    a = F.dropout(_linear(a, p["out_weight"], p["out_bias"]), dropout, like.training)
    x = (h if like.normed_residual else x) + a.view(k, b, t, d)  # (K, B, T, D)
    h = F.layer_norm(x, (d,), eps=like.norm2.eps) * p["norm2_weight"].view(k, 1, 1, d)
    h = h + p["norm2_bias"].view(k, 1, 1, d)
    m = F.dropout(
        F.gelu(_linear(h.reshape(k, b * t, d), p["fc1_weight"], p["fc1_bias"])), dropout, like.training
    )
    m = F.dropout(_linear(m, p["fc2_weight"], p["fc2_bias"]), dropout, like.training)
    return (h if like.normed_residual else x) + m.view(k, b, t, d)


def fuse_branches(model: nn.Module, path: str = "auto") -> nn.Module:
    """A copy of a branched model whose branches run by ``path`` (loop, stacked or auto).

    The copy has the same parameters under the same names (checkpoints load either way)
    and computes what the model computes, to float tolerance on the stacked path.
    ``model`` is not modified.
    """
    model = require_branched(model, "fused branch execution")
    fused = copy.deepcopy(model)
    fused.branches = FusedBranchStack(list(fused.branches), path)
    return fused
