"""Decoder-only causal language models: per-layer widths (CascadeFormer) and ParaFormer-LM.

Both families share ``CausalLMBase``: token embedding plus learned absolute positions,
a body, a final LayerNorm and a head tied to the token embedding (the logits are
``LN(h) @ E^T``, so no weight is stored twice). Initialisation follows GPT-2: normal
std 0.02, residual output projections scaled by ``1/sqrt(2 * layers)``, which keeps the
residual stream's variance independent of depth.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from paraformer.config import LMBaseConfig, LMConfig, ParaLMConfig
from paraformer.errors import ConfigError, ShapeError
from paraformer.layers import Block
from paraformer.models.branches import Branch, BranchSelection, BranchStack
from paraformer.models.flops import count_flops
from paraformer.models.lm_presets import PARAFORMER_LM_PRESETS, SEQUENTIAL_PRESETS
from paraformer.models.registry import register_model


class CausalLMBase(nn.Module):
    """Embedding, a family-specific body, final norm and the tied head."""

    def __init__(self, cfg: LMBaseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_emb = nn.Parameter(torch.zeros(cfg.context, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.dim)

    def layers(self) -> list[nn.Module]:
        """The Transformer blocks, in the order layer scores and pruning number them."""
        raise NotImplementedError

    def body(self, h: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        raise NotImplementedError

    def _init_weights(self) -> None:
        residual_std = 0.02 / math.sqrt(2 * self.cfg.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                last = name.endswith("attn.out") or name.endswith("mlp.net.3")
                nn.init.normal_(module.weight, std=residual_std if last else 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, D) token plus position embeddings."""
        if idx.ndim != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ShapeError(
                f"expected token ids of shape (B, T) and an integer dtype, got {tuple(idx.shape)}."
            )
        t = idx.shape[1]
        if not 1 <= t <= self.cfg.context:
            raise ShapeError(
                f"sequence length {t} is beyond the model's context of {self.cfg.context} tokens; "
                "use a shorter --seq-len (or a model built with a larger context)."
            )
        return self.drop(self.tok_emb(idx) + self.pos_emb[:t])  # (B, T, D)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """(..., T, D) residual stream -> (..., T, V) logits through the tied head."""
        return F.linear(self.norm(h), self.tok_emb.weight)

    def forward_features(self, idx: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        """(B, T) -> (B, T, D): the normalised final hidden states."""
        return self.norm(self.body(self.embed(idx), branches))

    def forward(self, idx: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) next-token logits."""
        return self.readout(self.body(self.embed(idx), branches))

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, T) prompt -> (B, T + max_new_tokens): sampled continuations.

        Each step reads the last ``context`` tokens. ``temperature`` 0 picks the most
        likely token; ``top_k`` samples among the k most likely only.
        """
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise ConfigError(f"temperature must be a number >= 0, got {temperature!r}.")
        if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
            raise ConfigError(f"top_k must be an integer >= 1, got {top_k!r}.")
        if idx.ndim != 2 or idx.shape[1] < 1:
            raise ShapeError(f"the prompt must be (B, T) token ids with T >= 1, got {tuple(idx.shape)}.")
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                logits = self(idx[:, -self.cfg.context :])[:, -1, :].float()  # (B, V)
                if temperature == 0:
                    nxt = logits.argmax(-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None and top_k < logits.shape[-1]:
                        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    probs = torch.softmax(logits, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
                idx = torch.cat([idx, nxt.to(idx.dtype)], dim=1)
        finally:
            self.train(was_training)
        return idx

    def example_input(self, batch: int = 1, length: int | None = None) -> torch.Tensor:
        device = next(self.parameters()).device
        return torch.zeros(batch, length or self.cfg.context, dtype=torch.long, device=device)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def attention_width(self) -> int:
        """Sum over blocks with attention of ``heads * head_dim`` (for attention FLOPs)."""
        return sum(b.attn.heads * b.attn.head_dim for b in self.layers() if b.attn is not None)

    def flops(self) -> int:
        """Forward FLOPs for one sequence of ``context`` tokens (attention included)."""
        t = self.cfg.context
        return count_flops(self, self.example_input(1, t), tokens=t, dim=self.attention_width(), layers=1)

    def no_weight_decay(self) -> set[str]:
        """Parameter names not to weight-decay: embeddings, norms, biases and gates."""
        names = {"tok_emb.weight", "pos_emb"}
        names.update(name for name, p in self.named_parameters() if p.ndim <= 1)
        return names


@register_model("lm", config=LMConfig, modality="text", presets=SEQUENTIAL_PRESETS)
class CausalLM(CausalLMBase):
    """Uniform, tapered (CascadeFormer) or widening LM: ``depth`` blocks, each its own width."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__(cfg)
        no_attn, no_mlp = set(cfg.no_attn), set(cfg.no_mlp)
        self.blocks = nn.ModuleList(
            Block(
                cfg.dim,
                cfg.heads[i],
                cfg.mlp_dims[i],
                head_dim=cfg.head_dim,
                dropout=cfg.dropout,
                causal=True,
                attention=i not in no_attn,
                mlp=i not in no_mlp,
            )
            for i in range(cfg.depth)
        )
        self._init_weights()

    def layers(self) -> list[nn.Module]:
        return list(self.blocks)

    def body(self, h: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        if branches is not None:
            raise ConfigError("a sequential LM has no branches; call it without branches=.")
        for block in self.blocks:
            h = block(h)
        return h  # (B, T, D)

    def hidden_states(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream entering each block and leaving the last: depth + 1 of (B, T, D)."""
        states = [self.embed(idx)]
        for block in self.blocks:
            states.append(block(states[-1]))
        return states

    def layer_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (L, B, T, V): the head read after every block (deep supervision)."""
        return torch.stack([self.readout(h) for h in self.hidden_states(idx)[1:]])


@register_model("paraformer_lm", config=ParaLMConfig, modality="text", presets=PARAFORMER_LM_PRESETS)
class ParaFormerLM(CausalLMBase):
    """ParaFormer-LM: ``num_branches`` causal branches reading the same embeddings, summed."""

    def __init__(self, cfg: ParaLMConfig) -> None:
        super().__init__(cfg)
        gated = set(cfg.gated_branches)

        def block() -> Block:
            return Block(
                cfg.dim, cfg.heads, cfg.mlp_dim, head_dim=cfg.head_dim, dropout=cfg.dropout, causal=True
            )

        self.branches = BranchStack(
            Branch((block() for _ in range(cfg.branch_depth)), gated=i in gated)
            for i in range(cfg.num_branches)
        )
        self._init_weights()

    @property
    def num_branches(self) -> int:
        return self.branches.num_branches

    def layers(self) -> list[nn.Module]:
        return [block for branch in self.branches for block in branch]

    def body(self, h: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        return self.branches(h, branches)  # (B, T, D)

    # What parallel execution needs to split the model around its branches (see parallel/branch.py).
    def embed_input(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, D): what every branch reads."""
        return self.embed(idx)

    def head_input(self, out: torch.Tensor) -> torch.Tensor:
        """A branch output -> the part the head reads: every position of a language model."""
        return out

    def head_logits(self, summed: torch.Tensor) -> torch.Tensor:
        """A sum of branch outputs (any leading dims) -> next-token logits."""
        return self.readout(summed)

    def prefix_logits(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(B, T) -> (N - start, B, T, V): logits of prefixes start+1..N from one pass."""
        return self.readout(self.branches.prefix_sums(self.embed(idx), start=start))
