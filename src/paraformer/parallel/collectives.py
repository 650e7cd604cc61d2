"""Differentiable collectives for branch parallelism (Megatron's f and g, plus a gather).

Every rank of a branch group computes the same loss from the same full sum, so the
upstream gradient is already identical on every rank. The backward passes below are
chosen for that: the sum of the branch groups passes its gradient through unchanged,
the gather hands each rank the gradient of its own slice, and the shared input (the
embedded tokens) sums the partial gradients that flow back from each rank's branches.
With these, branch gradients are exact on their owner and replicated parameters get
bit-identical gradients on every rank, without any gradient all-reduce.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class CopyToGroup(torch.autograd.Function):
    """Forward: identity. Backward: all-reduce (sum) of the gradient over the group."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class ReduceFromGroup(torch.autograd.Function):
    """Forward: all-reduce (sum) over the group. Backward: identity."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class GatherFromGroup(torch.autograd.Function):
    """Forward: concatenate every rank's ``(n_r, ...)`` along dim 0. Backward: own slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.rank, ctx.sizes = rank, sizes
        width = max(sizes)
        padded = x.new_zeros((width, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)  # equal shapes: pad uneven groups
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None, None


def copy_to_group(x: torch.Tensor, group: Any) -> torch.Tensor:
    return CopyToGroup.apply(x, group)


def reduce_from_group(x: torch.Tensor, group: Any) -> torch.Tensor:
    return ReduceFromGroup.apply(x, group)


def gather_from_group(x: torch.Tensor, group: Any, sizes: list[int], rank: int) -> torch.Tensor:
    return GatherFromGroup.apply(x, group, sizes, rank)
