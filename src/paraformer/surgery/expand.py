"""Expansion: grow a trained ParaFormer by new branches (and new classes) without changing it.

``expand(model, add_branches, num_classes=None, seed=None)`` appends gated, zero-gated
branches (the output is unchanged until they train) and, with ``num_classes``, grows
the head by new class rows (the old classes' logits are unchanged). Training the new
branches on top of the frozen old ones is ``paraformer.train_expansion`` (in memory) or
``paraformer expand`` (a run folder). The given model is never changed.
"""

from __future__ import annotations

import torch
from torch import nn

from paraformer.errors import ConfigError
from paraformer.models import append_branches, build_model, select_branches
from paraformer.models.branches import rebuilt_like
from paraformer.surgery.select import require_image_paraformer


def expand(
    model: nn.Module, add_branches: int, num_classes: int | None = None, *, seed: int | None = None
) -> nn.Module:
    """A new model with ``add_branches`` more branches and, optionally, ``num_classes`` classes.

    The new branches are gated with gates at 0 and the new head rows only add logits,
    so before training the new model's logits for the old classes equal the old
    model's. ``seed`` fixes the new weights (without touching the global RNG).
    """
    model = require_image_paraformer(model, "expansion")
    old_classes = model.cfg.num_classes
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < old_classes
    ):
        raise ConfigError(
            f"num_classes must be an integer >= the model's {old_classes} classes, got {num_classes!r}."
        )
    if add_branches == 0 and num_classes not in (None, old_classes):
        grown = select_branches(model, None)  # a copy
    else:
        grown = append_branches(model, add_branches, seed=seed)
    if num_classes is None or num_classes == old_classes:
        return grown
    return _grow_head(grown, num_classes, seed)


def _grow_head(model: nn.Module, num_classes: int, seed: int | None) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed + 1)
        new = build_model(model.cfg.replace(num_classes=num_classes))
    state = new.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("head.fc."):
            state[key][: value.shape[0]] = value  # old class rows first, new rows freshly initialised
        else:
            state[key] = value.clone()
    return rebuilt_like(new, state, model)
