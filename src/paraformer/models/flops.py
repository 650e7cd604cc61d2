"""FLOPs per image, from ``torch.utils.flop_counter`` plus attention by formula.

On CPU the flop counter does not see the fused scaled-dot-product attention kernel
(about 5% of a small ViT's FLOPs), so when no attention op was counted we add
``4 * T^2 * D`` per block (QK^T and AV, a multiply-add counted as 2 FLOPs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, example: torch.Tensor, tokens: int, dim: int, layers: int) -> int:
    """Forward FLOPs for ``example`` (batch of one), attention included exactly once."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(example)
    finally:
        model.train(was_training)
    total = int(counter.get_total_flops())
    counted_ops = {str(op) for ops in counter.get_flop_counts().values() for op in ops}
    if not any("attention" in op for op in counted_ops):
        total += layers * 4 * tokens * tokens * dim * example.shape[0]
    return total // example.shape[0]
