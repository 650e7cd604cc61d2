"""Building blocks shared by every model family: patch embedding, attention, MLP, block, head.

Layers take explicit sizes (not a config), so one model can use a different width per
layer. Linear and LayerNorm layers keep PyTorch's default initialisation, as in the
ParaFormer authors' code; it trained faster than the std-0.02 truncated normal of
large-data ViTs on the small CPU protocols here (measured).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from paraformer.errors import ConfigError, ShapeError

if TYPE_CHECKING:
    from paraformer.models.kv_cache import KVCache


class PatchEmbedding(nn.Module):
    """Split an image into patches and embed them: LN(patch) -> Linear -> LN.

    Adds a class token and learned position embeddings; returns ``(B, 1 + P, D)``.
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        patch_dim = in_channels * patch_size**2
        num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.dropout = nn.Dropout(dropout)
        # Unit scale, like the LayerNorm-ed patch tokens they are added to. The common
        # std-0.02 init leaves position information 50x weaker than content, and Adam
        # needs about 1,000 steps to grow it: on a 5,400-image Fashion-MNIST subset that
        # cost 10-20 points of test accuracy after 4 epochs (measured).
        nn.init.normal_(self.pos_embed, std=1.0)
        nn.init.normal_(self.cls_token, std=1.0)

    def check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape)
            if x.ndim == 4 and x.shape[1] != self.in_channels:
                hint = f"the model takes {self.in_channels}-channel images; use a preset built for this data"
            else:
                hint = "resize the images or build the model with a matching image_size"
            raise ShapeError(
                f"expected images of shape (B, {', '.join(map(str, expected))}), got {got}: {hint}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        b, c, _, _ = x.shape
        p = self.patch_size
        # (B, C, H, W) -> (B, P, p*p*C): patches in raster order, pixels then channels.
        x = x.unfold(2, p, p).unfold(3, p, p)  # (B, C, H/p, W/p, p, p)
        x = x.permute(0, 2, 3, 4, 5, 1).reshape(b, -1, p * p * c)
        x = self.proj(x)  # (B, P, D)
        cls = self.cls_token.expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1 + P, D)
        return self.dropout(x)


class Attention(nn.Module):
    """Multi-head self-attention, correct for any head count.

    ``head_dim`` defaults to ``dim // heads``; another value gives an attention width
    ``heads * head_dim`` that differs from the residual width (per-layer tapering).
    ``causal`` masks attention to earlier positions (language models).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        head_dim: int | None = None,
        dropout: float = 0.0,
        qkv_bias: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim or dim // heads
        inner = self.heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.out = nn.Linear(inner, dim)
        self.dropout = dropout
        self.causal = causal
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """(B, T, D) -> (B, T, D). With ``cache``, ``x`` holds the positions after the cached
        ones: their keys and values are stored as ``cache`` entry ``layer`` and attention
        reads every position so far (causal models only)."""
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        if cache is None:  # training and plain inference
            x = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
            )
        else:
            x = self.cached_attention(q, k, v, cache, layer)  # (B, H, T, Dh)
        x = x.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)  # (B, T, H*Dh)
        return self.out_dropout(self.out(x))

    def cached_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, layer: int
    ) -> torch.Tensor:
        """(B, H, T, Dh) new positions -> their attention over the cached positions and themselves.

        For decoding: no attention dropout.
        """
        if not self.causal:
            raise ConfigError(
                "a KV cache needs causal attention (a language model), not a bidirectional one."
            )
        past, t = cache.length, q.shape[2]
        k, v = cache.update(layer, k, v)  # (B, H, past + T, Dh)
        mask = None
        if past and t > 1:  # a chunk after cached positions: causal, shifted by `past`
            mask = torch.ones(t, past + t, dtype=torch.bool, device=q.device).tril(past)
        # Without past positions the chunk is plainly causal; one new token reads every cached one.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=past == 0 and t > 1)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """A pre-LayerNorm Transformer block (attention then MLP).

    ``residual="standard"``: ``x + f(LN(x))``. ``residual="normed"``: ``LN(x) + f(LN(x))``,
    the form in the ParaFormer authors' released code, kept for comparisons.
    ``attention=False`` or ``mlp=False`` leaves that sub-layer out (sub-layer pruning).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        *,
        head_dim: int | None = None,
        dropout: float = 0.0,
        qkv_bias: bool = False,
        residual: str = "standard",
        causal: bool = False,
        attention: bool = True,
        mlp: bool = True,
    ) -> None:
        super().__init__()
        self.normed_residual = residual == "normed"
        self.norm1 = self.attn = self.norm2 = self.mlp = None
        if attention:
            self.norm1 = nn.LayerNorm(dim)
            self.attn = Attention(
                dim, heads, head_dim=head_dim, dropout=dropout, qkv_bias=qkv_bias, causal=causal
            )
        if mlp:
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = MLP(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); ``cache`` and ``layer`` go to the attention (see ``Attention``)."""
        if self.attn is not None:
            h = self.norm1(x)
            x = (h if self.normed_residual else x) + self.attn(h, cache, layer)
        if self.mlp is not None:
            h = self.norm2(x)
            x = (h if self.normed_residual else x) + self.mlp(h)
        return x


class ClassifierHead(nn.Module):
    """Final LayerNorm, pooling (class token or mean) and a linear classifier."""

    def __init__(self, dim: int, num_classes: int, pool: str = "cls") -> None:
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def reads_class_token_only(self) -> bool:
        return self.pool == "cls"

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T, D) tokens -> (..., D) normalised pooled features."""
        if self.pool == "cls":
            return self.norm(x[..., 0, :])  # LayerNorm is per token: normalise only the one used
        return self.norm(x)[..., 1:, :].mean(dim=-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(x))
