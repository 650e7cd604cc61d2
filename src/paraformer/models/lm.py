"""Decoder-only causal language models: per-layer widths (CascadeFormer) and ParaFormer-LM.

Both families share ``CausalLMBase``: token embedding plus learned absolute positions,
a body, a final LayerNorm and a head tied to the token embedding (the logits are
``LN(h) @ E^T``, so no weight is stored twice). Initialisation follows GPT-2: normal
std 0.02, residual output projections scaled by ``1/sqrt(2 * layers)``, which keeps the
residual stream's variance independent of depth.

``generate`` decodes with a key/value cache (``kv_cache.KVCache``): one prefill of the
prompt, then one position per new token. Positions are learned and absolute, so a
sequence cannot roll past ``context``; see ``generate`` for what happens there.
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
from paraformer.models.kv_cache import KVCache
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

    def body(
        self, h: torch.Tensor, branches: BranchSelection = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); with ``cache``, layer i of ``layers()`` uses cache entry i."""
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

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(B, T) token ids at positions ``start..start+T-1`` -> (B, T, D) token plus position embeddings."""
        if idx.ndim != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ShapeError(
                f"expected token ids of shape (B, T) and an integer dtype, got {tuple(idx.shape)}."
            )
        t = idx.shape[1]
        if not 1 <= t <= self.cfg.context - start:
            raise ShapeError(
                f"sequence length {t} is beyond the model's context of {self.cfg.context} tokens; "
                "use a shorter --seq-len (or a model built with a larger context)."
            )
        return self.drop(self.tok_emb(idx) + self.pos_emb[start : start + t])  # (B, T, D)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """(..., T, D) residual stream -> (..., T, V) logits through the tied head."""
        return F.linear(self.norm(h), self.tok_emb.weight)

    def forward_features(self, idx: torch.Tensor, branches: BranchSelection = None) -> torch.Tensor:
        """(B, T) -> (B, T, D): the normalised final hidden states."""
        return self.norm(self.body(self.embed(idx), branches))

    def forward(
        self, idx: torch.Tensor, branches: BranchSelection = None, *, cache: KVCache | None = None
    ) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) next-token logits.

        With ``cache`` (from ``new_cache``) the tokens continue the cached ones: they take
        positions ``cache.length ..``, attention also reads the cached keys and values,
        and the cache grows by T. Without it, this is the plain training forward.
        """
        if cache is None:
            return self.readout(self.body(self.embed(idx), branches))
        if idx.ndim == 2:
            cache.check(idx.shape[0], idx.shape[1])
        h = self.body(self.embed(idx, cache.length), branches, cache)  # (B, T, D)
        cache.advance(idx.shape[1])
        return self.readout(h)

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty key/value cache for decoding ``batch_size`` sequences (one entry per layer)."""
        return KVCache(batch_size, self.cfg.context, len(self.layers()))

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        return_logits: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, T) prompt -> (B, T + max_new_tokens): sampled continuations.

        ``temperature`` 0 picks the most likely token; ``top_k`` samples among the k most
        likely only. ``return_logits`` also returns the ``(B, max_new_tokens, V)`` logits
        each new token was drawn from (before temperature).

        With ``use_cache`` (default) the last ``context`` tokens of the prompt are
        prefilled once into a key/value cache, then each new token runs alone at the
        next position. Positions are learned up to ``context``, so when the next
        position would reach ``context`` the cache is emptied and the last
        ``max(1, context // 2)`` tokens are prefilled again at positions 0..; decoding
        then continues cheaply for another ``context // 2`` tokens. Within the context
        this gives the logits of ``use_cache=False``, which recomputes the last
        ``context`` tokens at every step; past it, a cached token reads a window of
        ``context // 2`` to ``context`` tokens where the recompute always reads exactly
        ``context`` (so the two may pick different tokens there).
        """
        check_sampling(temperature, top_k)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}.")
        if idx.ndim != 2 or idx.shape[1] < 1:
            raise ShapeError(f"the prompt must be (B, T) token ids with T >= 1, got {tuple(idx.shape)}.")
        was_training = self.training
        self.eval()
        cache = self.new_cache(idx.shape[0]) if use_cache else None
        steps = []
        try:
            for _ in range(max_new_tokens):
                logits = self.next_logits(idx, cache)  # (B, V)
                nxt = sample_next(logits, temperature, top_k, generator)  # (B, 1)
                idx = torch.cat([idx, nxt.to(idx.dtype)], dim=1)
                if return_logits:
                    steps.append(logits)
        finally:
            self.train(was_training)
        if not return_logits:
            return idx
        empty = idx.new_zeros(idx.shape[0], 0, self.cfg.vocab_size, dtype=torch.float)
        return idx, torch.stack(steps, dim=1) if steps else empty

    def next_logits(self, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """(B, T) tokens so far -> (B, V) float logits of the next one (one step of ``generate``).

        ``cache`` must hold the tokens before the last one of ``idx`` (or be empty): each
        call feeds it the new token, or prefills a window as ``generate`` describes.
        """
        context = self.cfg.context
        if cache is None:
            return self(idx[:, -context:])[:, -1].float()
        if cache.length == 0:
            window = idx[:, -context:]  # prefill: the prompt's last `context` tokens
        elif cache.length == context:
            cache.reset()  # the next position would be `context`: start again from half a context
            window = idx[:, -max(1, context // 2) :]
        else:
            window = idx[:, -1:]
        return self(window, cache=cache)[:, -1].float()

    def example_input(self, batch: int = 1, length: int | None = None) -> torch.Tensor:
        device = next(self.parameters()).device
        return torch.zeros(batch, length or self.cfg.context, dtype=torch.long, device=device)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def attention_width(self) -> int:
        """Sum over blocks with attention of ``heads * head_dim`` (for attention FLOPs)."""
        return sum(b.attn.heads * b.attn.head_dim for b in self.layers() if b.attn is not None)

    def flops(self) -> int:
        """Forward FLOPs for one sequence of ``context`` tokens (per sequence, attention included).

        Attention is counted over all ``context x context`` query-key pairs (4 T^2 per unit
        of attention width), as is usual, not only the causal half.
        """
        t = self.cfg.context
        width = self.attention_width() * getattr(self.cfg, "repeat", 1)  # every application attends
        return count_flops(self, self.example_input(1, t), tokens=t, dim=width, layers=1)

    def flops_per_token(self) -> int:
        """Forward FLOPs per token at the full context: ``flops() / context``.

        That is 2 FLOPs per weight of every matmul (the tied head included) plus attention
        over ``context`` keys: also the cost of one cached decoding step at a full cache.
        """
        return self.flops() // self.cfg.context

    def no_weight_decay(self) -> set[str]:
        """Parameter names not to weight-decay: embeddings, norms, biases and gates."""
        names = {"tok_emb.weight", "pos_emb"}
        names.update(name for name, p in self.named_parameters() if p.ndim <= 1)
        return names


@register_model("lm", config=LMConfig, modality="text", presets=SEQUENTIAL_PRESETS)
class CausalLM(CausalLMBase):
    """Uniform, tapered (CascadeFormer) or widening LM: ``depth`` blocks, each its own width.

    With per-layer residual widths (``cfg.dims``) a bias-free Linear in ``transitions``
    maps the stream where the width changes: key ``"i"`` before block i (``"0"``: from the
    embedding), ``"out"`` after the last block back to the embedding width, so the final
    norm and the tied head read ``dim`` as usual. Transitions sit on the identity path, so
    they are not part of any layer in ``layers()``. With ``cfg.repeat`` = R the blocks run
    R times in order with shared parameters; each run of a block is one *application*.
    """

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__(cfg)
        no_attn, no_mlp = set(cfg.no_attn), set(cfg.no_mlp)
        widths = cfg.widths
        self.blocks = nn.ModuleList(
            Block(
                widths[i],
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
        self.transitions = nn.ModuleDict()
        for key, (d_in, d_out) in transition_shapes(cfg).items():
            self.transitions[key] = nn.Linear(d_in, d_out, bias=False)
        self._init_weights()
        for t in self.transitions.values():
            # Orthogonal, so the stream keeps its per-coordinate scale across a change of width.
            nn.init.orthogonal_(t.weight, gain=math.sqrt(max(1.0, t.out_features / t.in_features)))

    def layers(self) -> list[nn.Module]:
        return list(self.blocks)

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty key/value cache: one entry per block application (``depth * repeat``)."""
        return KVCache(batch_size, self.cfg.context, self.cfg.depth * self.cfg.repeat)

    def applications(self) -> list[tuple[int, int]]:
        """``(cache entry, block index)`` of every block application, in order."""
        depth = self.cfg.depth
        return [(r * depth + i, i) for r in range(self.cfg.repeat) for i in range(depth)]

    def enter(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """The stream as block i reads it: through the transition before it, if any."""
        t = self.transitions[str(i)] if str(i) in self.transitions else None
        return h if t is None else t(h)

    def leave(self, h: torch.Tensor, after: int = -1) -> torch.Tensor:
        """(..., T, D_after) -> (..., T, dim): the stream after block ``after`` (default the last)
        carried to the head through every later transition (the later blocks skipped)."""
        after = after % self.cfg.depth
        for i in range(after + 1, self.cfg.depth):
            h = self.enter(h, i)
        return self.transitions["out"](h) if "out" in self.transitions else h

    def body(
        self, h: torch.Tensor, branches: BranchSelection = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        if branches is not None:
            raise ConfigError("a sequential LM has no branches; call it without branches=.")
        for entry, i in self.applications():
            h = self.blocks[i](self.enter(h, i), cache, entry)  # (B, T, D_i)
        return self.leave(h)  # (B, T, D)

    def block_io(self, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (input, output) residual streams of every block application, (B, T, D_i) each."""
        pairs = []
        h = self.embed(idx)
        for _, i in self.applications():
            h_in = self.enter(h, i)
            h = self.blocks[i](h_in)
            pairs.append((h_in, h))
        return pairs

    def hidden_states(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream entering each block and leaving the last: depth + 1 of (B, T, D).

        Only for a plain stack (one width, no repetition): otherwise use ``block_io``.
        """
        if self.transitions or self.cfg.repeat > 1:
            raise ConfigError(
                "hidden_states needs one residual width and no repetition; use block_io for this model."
            )
        pairs = self.block_io(idx)
        return [pairs[0][0], *(out for _, out in pairs)]

    def layer_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (L, B, T, V): the head read after every block (deep supervision).

        With a residual taper, the stream after block l reaches the head through the later
        transitions (what the model computes with the later blocks skipped).
        """
        if self.cfg.repeat > 1:
            raise ConfigError(
                "deep supervision reads the head after each layer; a parameter-shared repeated stack "
                "runs each layer several times: train it without --deep-supervision."
            )
        pairs = self.block_io(idx)
        return torch.stack([self.readout(self.leave(out, i)) for i, (_, out) in enumerate(pairs)])


def transition_shapes(cfg: LMConfig) -> dict[str, tuple[int, int]]:
    """Where a residual-width model needs a projection: ``{"i" | "out": (width in, width out)}``."""
    shapes, prev = {}, cfg.dim
    for i, w in enumerate(cfg.widths):
        if w != prev:
            shapes[str(i)] = (prev, w)
        prev = w
    if prev != cfg.dim:
        shapes["out"] = (prev, cfg.dim)
    return shapes


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

    def body(
        self, h: torch.Tensor, branches: BranchSelection = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        if cache is None:
            return self.branches(h, branches)  # (B, T, D)
        if branches is not None:
            raise ConfigError(
                "a KV cache decodes the whole model; for fewer branches decode select_branches(model, k)."
            )
        depth = self.cfg.branch_depth
        out = self.branches[0](h, cache, 0)
        for i in range(1, self.num_branches):  # summed in order, as BranchStack does
            out = out + self.branches[i](h, cache, i * depth)
        return out  # (B, T, D)

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


def check_sampling(temperature: float, top_k: int | None) -> None:
    """Refuse a temperature that is not a finite number >= 0, or a ``top_k`` below 1."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"temperature must be a number >= 0, got {temperature!r}.")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k must be an integer >= 1 (or None for all tokens), got {top_k!r}.")


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, V) logits -> (B, 1) the next token: argmax at temperature 0, else a top-k sample."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
