"""Applying execution choices to a model from outside: fused branches, branch parallelism.

The model files stay single-device and readable (as torchtitan applies its
parallelisms); ``apply_execution`` wraps or converts a built model for the run at hand.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from paraformer.errors import ConfigError
from paraformer.models import is_branched
from paraformer.parallel.calibration import cache_file, choose_path
from paraformer.parallel.distributed import DistributedContext
from paraformer.parallel.fused import FusedBranchStack, fuse_branches

Log = Callable[[str], None]


def apply_execution(
    model: nn.Module,
    branch_exec: str,
    example: torch.Tensor,
    *,
    ctx: DistributedContext | None = None,
    training: bool = True,
    log: Log = print,
) -> nn.Module:
    """The model as this run executes it.

    With ``ctx``, this rank's share of a branch-parallel model (or the model itself when
    only data is parallel). ``branch_exec`` picks how a rank's branches run on its device:
    ``loop`` (reference), ``stacked`` (fused batched matmuls) or ``auto``: both are timed
    on the run's own batch (``example``; forward, and backward when training), the
    stacked path kept only if measurably faster, and the choice then fixed for the whole
    run (``branch_path`` reads it back, so a run folder can record it and a resume reuse
    it). The parameters are the same whatever the path, so checkpoints never depend on it.
    """
    if ctx is not None:
        model = ctx.wrap(model)
    target = getattr(model, "local", model)
    if branch_exec == "loop" or not is_branched(target):
        return model
    try:
        fused = fuse_branches(target, branch_exec)
    except ConfigError:
        if branch_exec == "stacked":
            raise
        return model  # blocks the stacked path does not know: the loop it is
    if branch_exec == "auto":  # measure now, at the run's batch, so the choice is known and logged
        fused.train(training)
        with torch.set_grad_enabled(training):
            tokens = fused.embed_input(example.to(next(fused.parameters()).device))
            stack: FusedBranchStack = fused.branches
            choice = choose_path(stack, tokens, stack.num_branches)
        stack.path = choice
        mode = "training" if training else "inference"
        where = cache_file()
        cached = f"; the measurement is cached in {where} (delete it to measure again)" if where else ""
        log(
            f"branches run {'stacked' if choice == 'stacked' else 'one after another'}: measured faster at "
            f"batch {example.shape[0]} ({mode}); --branch-exec loop|stacked to force one{cached}"
        )
    if target is model:
        return fused
    model.local = fused
    return model


def branch_path(model: nn.Module) -> str:
    """How the model's branches run: ``"stacked"`` or ``"loop"`` (also for models without branches)."""
    target = getattr(model, "local", model)
    return getattr(getattr(target, "branches", None), "path", "loop")
