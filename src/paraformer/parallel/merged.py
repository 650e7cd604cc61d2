"""Merged inference: a ParaFormer (or ViT) rewritten as few, larger ops that compute the same logits.

At batch 1 these models run far below the GEMM peak and per-op dispatch costs as much as
arithmetic, so ``merge_for_inference`` rewrites a trained model once, at merge time, into a
plain module (``MergedClassifier``) with every weight folded and stacked. Each rewrite is
an identity of real arithmetic; in floating point only the order of additions changes
(fp32 outputs agree to about 1e-5). Folding is done in float64 and cast back.

What is merged, and why it is exact:

1. LayerNorm affine into the linear that reads it. ``Linear(LN0(x) * w + b)`` equals
   ``LN0(x) @ (W diag(w))^T + (W b + c)`` (``LN0``: LayerNorm without affine). Folded:
   every block's norm1 into its qkv, norm2 into fc1, the patch LayerNorm into the patch
   projection and the final norm into the classifier (mean pooling commutes with the affine).
2. The shared first block. Every branch's first block reads the same embedded tokens, so
   ``LN0`` runs once, the N branches' qkv projections are one ``(D, 3*N*H*Dh)`` matmul and
   their attention is one scaled-dot-product attention with N*H heads (heads never mix).
3. Batched branches. From there on inputs differ per branch: each op runs for all branches
   as one ``baddbmm`` on weights stacked ``(N, in, out)`` at merge time.
4. Compute only what is read. With ``pool="cls"`` the head reads the class token only, and
   everything after attention is per token: the last block needs keys and values of every
   token but queries, output projection, norm2 and MLP of the class token alone.
5. Gates. A gated branch outputs ``g * (r + m W2^T + c)`` (``r`` the last block's residual):
   ``g`` is folded into the last fc2's weight and bias, and the residual is added as
   ``addcmul(out, r, g)``, so a gate costs nothing over an ungated branch. (Summing the
   branches inside one GEMM of inner size N*mlp is exact too, but needs fc1's output in a
   (M, N*mlp) layout: computed transposed, that fc1 ran 10x slower at batch 1 here, and a copy
   costs the op it saves, so the last fc2 stays batched and the branches are summed after.)
6. The "normed" residual ``LN(x) + f(LN(x))`` keeps its affine LayerNorm output exactly:
   ``LN0(x) * w`` is added by ``addcmul`` and the bias ``b`` joins the next linear's bias.
7. The embedding: the position embedding of the patch tokens joins the last embedding
   LayerNorm's bias, the class token plus its position embedding is precomputed.

Large CPU batches run in chunks (``chunk_images``): stacked intermediates are N times a
ViT's, and above glibc's mmap threshold every call page-faults fresh memory in again.

``branches=k`` keeps the first k branches (a smaller module). The merged module also runs
any shorter prefix ``j <= k`` on views of the same stacked weights (``forward(x,
branches=j)``). A ViT is merged with the same code as one branch of depth L, so ParaFormer
and its twin get the same treatment. ``forward`` has no data-dependent Python: the module
exports to ONNX (``torch.onnx.export(..., dynamo=False, opset_version=17)``, batch dynamic).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paraformer.errors import ConfigError, ShapeError
from paraformer.layers import Block
from paraformer.models.branches import is_branched


def merge_for_inference(model: nn.Module, branches: int | None = None) -> nn.Module:
    """A merged, eval-only copy of an image ParaFormer or ViT: ``out(x) == model(x, branches=k)``.

    ``branches=k`` keeps the first k branches (all when None); the merged module also runs
    any shorter prefix. ``model`` is not modified.
    """
    blocks, gates, total = branch_blocks(model, branches)
    with torch.no_grad():
        return MergedClassifier(model, blocks, gates, total).eval()


def branch_blocks(
    model: nn.Module, branches: int | None
) -> tuple[list[list[Block]], list[float | None], int]:
    for name in ("embed", "head", "cfg"):
        if not hasattr(model, name):
            raise ConfigError(
                f"merging needs an image ParaFormer or ViT; {type(model).__name__} has no {name}."
            )
    if is_branched(model):
        n = model.num_branches
        if branches is None:
            branches = n
        if isinstance(branches, bool) or not isinstance(branches, int) or not 1 <= branches <= n:
            raise ConfigError(
                f"merging keeps a prefix of branches: branches must be None or 1..{n}, got {branches!r}; "
                "for another selection merge select_branches(model, indices)."
            )
        chosen = [model.branches[i] for i in range(branches)]
        blocks = [list(b) for b in chosen]
        gates = [None if b.gate is None else float(b.gate.detach()) for b in chosen]
    elif hasattr(model, "blocks"):
        if branches is not None:
            raise ConfigError("a ViT has no branches; merge it without branches=.")
        blocks, gates, n = [list(model.blocks)], [None], 0
    else:
        raise ConfigError(f"merging needs an image ParaFormer or ViT, got {type(model).__name__}.")
    for branch in blocks:
        if len(branch) != len(blocks[0]):
            raise ConfigError("merging needs branches of equal depth; merge each depth separately.")
        for block in branch:
            full = isinstance(block, Block) and block.attn is not None and block.mlp is not None
            if not full or block.attn.causal or not isinstance(block.mlp.net[1], nn.GELU):
                raise ConfigError(
                    "merging needs whole, non-causal layers.Block blocks (attention and GELU MLP); "
                    "run this model eagerly."
                )
    return blocks, gates, n


def _affine(norm: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """A LayerNorm's (weight, bias) in float64 (ones and zeros where it has none)."""
    d = norm.normalized_shape[-1]
    ref = next(iter(norm.parameters()), None)
    device = ref.device if ref is not None else None
    w = norm.weight.double() if norm.weight is not None else torch.ones(d, dtype=torch.float64, device=device)
    b = norm.bias.double() if norm.bias is not None else torch.zeros_like(w)
    return w, b


def _folded(norm: nn.LayerNorm, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear(norm(x))`` as ``LN0(x) @ W + c``: returns W ``(in, out)`` and c ``(out,)``, float64."""
    w, b = _affine(norm)
    weight = linear.weight.double()  # (out, in)
    bias = weight @ b
    if linear.bias is not None:
        bias = bias + linear.bias.double()
    return (weight * w).t(), bias


def _bias(linear: nn.Linear) -> torch.Tensor:
    if linear.bias is not None:
        return linear.bias.double()
    return torch.zeros(linear.out_features, dtype=torch.float64, device=linear.weight.device)


CHUNK_BYTES = 16 << 20


def chunk_images(body: MergedBody, tokens: int, dtype: torch.dtype, device: torch.device) -> int | None:
    """On CPU, how many images a chunk holds so that the largest intermediate stays under 16 MiB.

    Stacked intermediates are N times a ViT's. glibc serves allocations above its mmap threshold
    (adapting up to 32 MiB) with fresh pages, so every call page-faults them in again; chunks
    keep them reusable and in cache (measured ~10% at batch 64). GPUs want one large batch.
    """
    if device.type != "cpu":
        return None
    widest = max(body.mlp_dim, 3 * body.heads * body.head_dim)  # per branch and token
    per_image = tokens * body.n * widest * torch.finfo(dtype).bits // 8
    return max(1, CHUNK_BYTES // per_image)


def check_prefix(branches: Any, kept: int, total: int) -> int:
    """``branches`` (None or k) as the number of branches to run, of the ``kept`` a merged module holds."""
    if branches is None:
        return kept
    if isinstance(branches, bool) or not isinstance(branches, int):
        raise ConfigError(
            f"a merged model runs prefixes only (branches=k), got {branches!r}; "
            "merge select_branches(model, indices) for another selection."
        )
    if not 1 <= branches <= kept:
        raise ConfigError(
            f"this merged model kept the first {kept} of {total} branches, so branches={branches} "
            f"is out of reach; merge again with merge_for_inference(model, branches="
            f"{min(max(branches, 1), total)}) or a larger prefix."
        )
    return branches


class _Weights(nn.Module):
    """Named tensors held as (non-persistent) buffers, so ``.to(device)`` moves them."""

    def __init__(self, dtype: torch.dtype, **tensors: torch.Tensor) -> None:
        super().__init__()
        for name, value in tensors.items():
            self.register_buffer(name, value.to(dtype).contiguous(), persistent=False)


class MergedClassifier(nn.Module):
    """The merged model (built by ``merge_for_inference``): embedding, merged body, folded head."""

    def __init__(
        self, model: nn.Module, blocks: list[list[Block]], gates: list[float | None], total: int
    ) -> None:
        super().__init__()
        embed, head = model.embed, model.head
        dtype = embed.pos_embed.dtype
        self.branched = total > 0
        self.kept = len(blocks) if self.branched else 0  # branches kept (0 for a ViT)
        self.total_branches = total
        self.image_size, self.patch_size, self.in_channels = (
            embed.image_size,
            embed.patch_size,
            embed.in_channels,
        )
        self.mean_pool = head.pool != "cls"
        norm0, proj, norm1 = embed.proj
        self.embed_eps = (norm0.eps, norm1.eps)
        w_patch, b_patch = _folded(norm0, proj)
        w1, b1 = _affine(norm1)
        pos = embed.pos_embed.double()[0]  # (T, D)
        self.embed_weights = _Weights(
            dtype,
            patch_weight=w_patch,  # (p*p*C, D)
            patch_bias=b_patch,
            norm_weight=w1,
            norm_bias_pos=b1 + pos[1:],  # (P, D): the LayerNorm bias plus each patch's position
            cls_pos=embed.cls_token.double()[0] + pos[:1],  # (1, D)
        )
        self.head_eps = head.norm.eps
        w_fc, b_fc = _folded(head.norm, head.fc)
        self.head_weights = _Weights(dtype, weight=w_fc, bias=b_fc)
        self.body = MergedBody(blocks, gates, cls_only=not self.mean_pool, dtype=dtype)
        self.chunk = chunk_images(self.body, embed.pos_embed.shape[1], dtype, embed.pos_embed.device)

    def extra_repr(self) -> str:
        kept = f"{self.kept} of {self.total_branches} branches" if self.branched else "a ViT"
        return f"{kept}, depth {self.body.depth}, pool {'mean' if self.mean_pool else 'cls'}"

    def prefix(self, branches: Any) -> int:
        """The number of branches a call runs (``None``: all kept)."""
        if not self.branched:
            if branches is not None:
                raise ConfigError("a ViT has no branches; call it without branches=.")
            return 1
        return check_prefix(branches, self.kept, self.total_branches)

    def check_input(self, x: torch.Tensor) -> None:
        s, c = self.image_size, self.in_channels
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ShapeError(f"expected images of shape (B, {c}, {s}, {s}), got {tuple(x.shape)}.")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, T, D) tokens, as ``PatchEmbedding`` (eval) computes them."""
        if not torch.jit.is_tracing():
            self.check_input(x)
        w = self.embed_weights
        p, c, g = self.patch_size, self.in_channels, self.image_size // self.patch_size
        b = x.shape[0]
        patches = x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b * g * g, p * p * c)
        z = F.layer_norm(patches, (p * p * c,), eps=self.embed_eps[0])
        z = torch.addmm(w.patch_bias, z, w.patch_weight)  # (B*P, D)
        d = self.body.dim
        z = F.layer_norm(z.view(b, g * g, d), (d,), eps=self.embed_eps[1])
        z = torch.addcmul(w.norm_bias_pos, z, w.norm_weight)  # (B, P, D)
        return torch.cat([w.cls_pos.expand(b, 1, d), z], dim=1)  # (B, T, D)

    def head(self, summed: torch.Tensor, batch: int) -> torch.Tensor:
        """(B*Tq, D) summed branch outputs -> (B, classes) logits."""
        d = self.body.dim
        h = F.layer_norm(summed, (d,), eps=self.head_eps)
        if self.mean_pool:
            h = h.view(batch, -1, d)[:, 1:].mean(dim=1)  # (B, D)
        return torch.addmm(self.head_weights.bias, h, self.head_weights.weight)

    def forward(self, x: torch.Tensor, branches: int | None = None) -> torch.Tensor:
        """(B, C, H, W) images -> (B, classes) logits of the first ``branches`` branches."""
        k = self.prefix(branches)
        if self.chunk and x.shape[0] > self.chunk and not torch.jit.is_tracing():
            return torch.cat([self.logits(part, k) for part in x.split(self.chunk)])
        return self.logits(x, k)

    def logits(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """(B, C, H, W) -> (B, classes) for the first k branches, in one piece."""
        tokens = self.embed(x)  # (B, T, D)
        return self.head(self.body(tokens, k), x.shape[0])

    def flops(self, branches: int | None = None) -> int:
        """FLOPs per image that this module executes (attention by formula, as ``paraformer.flops``)."""
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(
            1, self.in_channels, self.image_size, self.image_size, device=self.head_weights.bias.device
        )
        k = self.prefix(branches)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            self(x, branches)
        total = int(counter.get_total_flops())
        if not any("attention" in str(op) for ops in counter.get_flop_counts().values() for op in ops):
            total += self.body.attention_flops(self.image_size // self.patch_size, k)
        return total


class MergedBody(nn.Module):
    """The branches of a model, merged: (B, T, D) shared tokens -> (B*Tq, D) sum of branch outputs.

    ``Tq`` is 1 with ``cls_only`` (only the class token is computed after the last attention).
    """

    def __init__(
        self, blocks: list[list[Block]], gates: list[float | None], *, cls_only: bool, dtype: torch.dtype
    ) -> None:
        super().__init__()
        first = blocks[0][0]
        self.n, self.depth, self.cls_only = len(blocks), len(blocks[0]), cls_only
        self.heads, self.head_dim = first.attn.heads, first.attn.head_dim
        self.dim = first.norm1.normalized_shape[-1]
        self.normed = first.normed_residual
        self.gelu = first.mlp.net[1].approximate
        self.mlp_dim = first.mlp.net[0].out_features
        self.eps = [(b.norm1.eps, b.norm2.eps) for b in blocks[0]]
        self.ungated = all(g is None for g in gates)
        self.layers = nn.ModuleList(self._layer(blocks, j, gates, dtype) for j in range(self.depth))

    def _layer(
        self, blocks: list[list[Block]], j: int, gates: list[float | None], dtype: torch.dtype
    ) -> _Weights:
        layer = [branch[j] for branch in blocks]
        inner = self.heads * self.head_dim
        last = j == self.depth - 1
        t: dict[str, torch.Tensor] = {}
        qkv = [_folded(b.norm1, b.attn.qkv) for b in layer]  # (D, 3*inner), (3*inner,)
        if j == 0:  # shared input: one wide matmul, columns ordered (q|k|v, branch, head, dim)
            w = torch.stack([w.view(-1, 3, inner) for w, _ in qkv], dim=2).flatten(1)  # (D, 3*N*inner)
            bias = torch.stack([b.view(3, inner) for _, b in qkv], dim=1).flatten()
            split = self.n * inner
        else:  # per branch: (N, D, 3*inner)
            w, bias = torch.stack([w for w, _ in qkv]), torch.stack([b for _, b in qkv]).unsqueeze(1)
            split = inner
        if last and self.cls_only:  # queries of the class token only: keep q and kv apart
            t["wq"], t["wkv"] = w[..., :split], w[..., split:]
            t["bq"], t["bkv"] = bias[..., :split], bias[..., split:]
        else:
            t["wqkv"], t["bqkv"] = w, bias
        norm1 = [_affine(b.norm1) for b in layer]
        norm2 = [_affine(b.norm2) for b in layer]
        t["wo"] = torch.stack([b.attn.out.weight.double().t() for b in layer])  # (N, inner, D)
        bo = torch.stack([_bias(b.attn.out) for b in layer])
        if self.normed:  # the residual LN(x) * w + b: its bias joins the projection's
            bo = bo + torch.stack([b for _, b in norm1])
            t["w_norm1"] = torch.stack([w for w, _ in norm1]).unsqueeze(1)  # (N, 1, D)
        t["bo"] = bo.unsqueeze(1)  # (N, 1, D)
        fc1 = [_folded(b.norm2, b.mlp.net[0]) for b in layer]  # (D, mlp), (mlp,)
        fc2_w = [b.mlp.net[3].weight.double().t() for b in layer]  # (mlp, D)
        fc2_b = [_bias(b.mlp.net[3]) for b in layer]
        if self.normed:
            fc2_b = [c + b for c, (_, b) in zip(fc2_b, norm2, strict=True)]
        if not last:
            t["w1"], t["b1"] = torch.stack([w for w, _ in fc1]), torch.stack([b for _, b in fc1]).unsqueeze(1)
            t["w2"], t["b2"] = torch.stack(fc2_w), torch.stack(fc2_b).unsqueeze(1)
            if self.normed:
                t["w_norm2"] = torch.stack([w for w, _ in norm2]).unsqueeze(1)
        else:  # the last block: gates folded into fc2, the residual and the bias
            g = [1.0 if x is None else x for x in gates]
            t["w1"], t["b1"] = torch.stack([w for w, _ in fc1]), torch.stack([b for _, b in fc1]).unsqueeze(1)
            t["w2"] = torch.stack([gi * w for gi, w in zip(g, fc2_w, strict=True)])
            t["b2"] = torch.stack([gi * b for gi, b in zip(g, fc2_b, strict=True)]).unsqueeze(1)
            if self.normed:
                t["w_norm2"] = torch.stack([gi * w for gi, (w, _) in zip(g, norm2, strict=True)]).unsqueeze(1)
            else:
                t["gates"] = torch.tensor(g, dtype=torch.float64, device=w.device).view(-1, 1, 1)
        return _Weights(dtype, **t)

    def attention_flops(self, grid: int, k: int) -> int:
        """Attention FLOPs (QK^T and AV) per image for the first k branches."""
        t = grid * grid + 1
        inner = self.heads * self.head_dim
        queries = [1 if self.cls_only and j == self.depth - 1 else t for j in range(self.depth)]
        return sum(4 * q * t * inner * k for q in queries)

    def forward(self, tokens: torch.Tensor, k: int) -> torch.Tensor:
        b, t, d = tokens.shape[0], tokens.shape[1], self.dim
        h, dh = self.heads, self.head_dim
        inner = h * dh
        # Block 0: every branch reads the same tokens.
        w = self.layers[0]
        cls = self.cls_only and self.depth == 1  # queries of the class token only
        tq = 1 if cls else t
        ln = F.layer_norm(tokens, (d,), eps=self.eps[0][0])  # (B, T, D)
        rows = ln.reshape(b * t, d)
        if not cls:
            q, key, v = (
                x.view(b, t, k * h, dh).transpose(1, 2) for x in self._shared(rows, w.wqkv, w.bqkv, 3, k)
            )
        else:
            (q,) = self._shared(ln[:, 0], w.wq, w.bq, 1, k)  # (B, k*inner)
            q = q.view(b, 1, k * h, dh).transpose(1, 2)
            key, v = (x.view(b, t, k * h, dh).transpose(1, 2) for x in self._shared(rows, w.wkv, w.bkv, 2, k))
        a = F.scaled_dot_product_attention(q, key, v)  # (B, k*H, Tq, Dh)
        a = a.view(b, k, h, tq, dh).permute(1, 0, 3, 2, 4).reshape(k, b * tq, inner)
        x = self._attn_out(w, a, tokens[:, :tq].reshape(1, b * tq, d), ln[:, :tq].reshape(1, b * tq, d), k)
        # Blocks 1..depth-1: each branch its own input, all branches in one batched op.
        for j in range(1, self.depth):
            x = self._mlp(w, x, k, self.eps[j - 1][1])  # (k, B*T, D)
            w = self.layers[j]
            cls = self.cls_only and j == self.depth - 1
            tq = 1 if cls else t
            x4 = x.view(k, b, t, d)
            ln = F.layer_norm(x4, (d,), eps=self.eps[j][0])  # (k, B, T, D)
            rows = ln.view(k, b * t, d)
            if not cls:
                qkv = torch.baddbmm(w.bqkv[:k], rows, w.wqkv[:k]).view(k * b, t, 3, h, dh)
                q, key, v = qkv.permute(2, 0, 3, 1, 4)  # each (k*B, H, T, Dh)
            else:
                q = torch.baddbmm(w.bq[:k], ln[:, :, 0], w.wq[:k]).view(k * b, 1, h, dh).transpose(1, 2)
                kv = torch.baddbmm(w.bkv[:k], rows, w.wkv[:k]).view(k * b, t, 2, h, dh)
                key, v = kv.permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, key, v)  # (k*B, H, Tq, Dh)
            a = a.transpose(1, 2).reshape(k, b * tq, inner)
            x = self._attn_out(
                w, a, x4[:, :, :tq].reshape(k, b * tq, d), ln[:, :, :tq].reshape(k, b * tq, d), k
            )
        return self._last_mlp(w, x, k, self.eps[-1][1])  # (B*Tq, D)

    def _shared(
        self, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, parts: int, k: int
    ) -> tuple[torch.Tensor, ...]:
        """(M, D) shared rows -> ``parts`` projections (M, k*inner) of the first k branches."""
        width = self.n * self.heads * self.head_dim
        if k == self.n:
            return torch.addmm(bias, rows, weight).view(-1, parts, width).unbind(1)
        kw = k * self.heads * self.head_dim  # a prefix: views of the same columns, one batched op
        w = weight.view(-1, parts, width).permute(1, 0, 2)[:, :, :kw]  # (parts, D, k*inner)
        return torch.baddbmm(bias.view(parts, 1, width)[:, :, :kw], rows.expand(parts, -1, -1), w).unbind(0)

    def _attn_out(
        self, w: _Weights, a: torch.Tensor, x: torch.Tensor, ln: torch.Tensor, k: int
    ) -> torch.Tensor:
        """Output projection plus residual: (k, M, inner) -> (k, M, D)."""
        out = torch.baddbmm(w.bo[:k], a, w.wo[:k])
        if self.normed:
            return torch.addcmul(out, ln, w.w_norm1[:k])  # + LN(x) * w (its bias is in bo)
        return out + x

    def _mlp(self, w: _Weights, x: torch.Tensor, k: int, eps: float) -> torch.Tensor:
        """norm2, MLP and residual of a block that is not the last: (k, M, D) -> (k, M, D)."""
        ln = F.layer_norm(x, (self.dim,), eps=eps)
        m = F.gelu(torch.baddbmm(w.b1[:k], ln, w.w1[:k]), approximate=self.gelu)  # (k, M, mlp)
        out = torch.baddbmm(w.b2[:k], m, w.w2[:k])
        if self.normed:
            return torch.addcmul(out, ln, w.w_norm2[:k])
        return out + x

    def _last_mlp(self, w: _Weights, x: torch.Tensor, k: int, eps: float) -> torch.Tensor:
        """norm2, MLP and residual of the last blocks, summed over branches: (k, M, D) -> (M, D)."""
        ln = F.layer_norm(x, (self.dim,), eps=eps)
        m = F.gelu(torch.baddbmm(w.b1[:k], ln, w.w1[:k]), approximate=self.gelu)  # (k, M, mlp)
        out = torch.baddbmm(w.b2[:k], m, w.w2[:k])  # gates folded in
        if self.normed:
            out = torch.addcmul(out, ln, w.w_norm2[:k])  # + g * LN(x) * w (the bias is in b2)
        elif self.ungated:
            out = out + x
        else:
            out = torch.addcmul(out, x, w.gates[:k])
        return out.sum(dim=0)
