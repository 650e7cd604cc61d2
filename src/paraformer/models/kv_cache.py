"""The key/value cache of incremental decoding: what each attention layer has already seen.

A language model decodes one token at a time. Without a cache every new token runs the
whole context again; with it, each attention layer keeps the keys and values of the
earlier positions and the new token only computes its own. ``KVCache`` holds, for every
layer in ``model.layers()`` order (for ParaFormer-LM one entry per branch layer, branch
by branch), a key and a value buffer of shape ``(B, H, capacity, Dh)``; the first
``length`` positions are filled. Layers without attention (pruned) keep ``None``.

Buffers are allocated at the first write, with that layer's head count and the dtype
and device of its keys, and are reused after ``reset()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paraformer.errors import ShapeError


@dataclass
class KVCache:
    """Keys and values of ``length`` positions for each of ``num_layers`` layers, batch ``batch_size``."""

    batch_size: int
    capacity: int
    num_layers: int
    length: int = 0
    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = self.keys or [None] * self.num_layers
        self.values = self.values or [None] * self.num_layers

    def check(self, batch: int, tokens: int) -> None:
        """Refuse a call that does not fit: another batch size, or more positions than ``capacity``."""
        if batch != self.batch_size:
            raise ShapeError(
                f"this KV cache was made for batch size {self.batch_size}, got a batch of {batch}; "
                "make a new cache (model.new_cache(batch_size)) for another batch size."
            )
        if self.length + tokens > self.capacity:
            raise ShapeError(
                f"the KV cache holds {self.length} position(s) and {tokens} more would pass the model's "
                f"context of {self.capacity}; reset() the cache and prefill a shorter window."
            )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H, T, Dh) keys and values after the cached ones; return all (B, H, length + T, Dh)."""
        b, h, t, dh = k.shape
        if self.keys[layer] is None:
            self.keys[layer] = k.new_empty(b, h, self.capacity, dh)
            self.values[layer] = v.new_empty(b, h, self.capacity, dh)
        end = self.length + t
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, tokens: int) -> None:
        """Count ``tokens`` new positions as cached (the model calls this after all layers ran)."""
        self.length += tokens

    def reset(self) -> None:
        """Forget every position (the buffers stay allocated for the next prefill)."""
        self.length = 0
