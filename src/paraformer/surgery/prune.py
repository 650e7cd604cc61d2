"""Layer and sub-layer removal from a sequential language model, as pure functions.

``prune_layers(model, layers=..., attn=..., mlp=...)`` returns a new model without the
given whole layers and without the attention or FFN sub-layers of the others; the
given model is untouched. The new model computes exactly what the old one computes
with those (sub-)layers skipped: pre-LN blocks add their output to the residual
stream, so skipping one is leaving its term out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from paraformer.config import LMConfig
from paraformer.errors import ConfigError
from paraformer.models import CausalLM, build_model, require_sequential_lm
from paraformer.models.lm import transition_shapes

BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
SUBLAYERS = {"attn": ("norm1.", "attn."), "mlp": ("norm2.", "mlp.")}


def check_removal(num_layers: int, k: int) -> None:
    """``k`` layers can be removed from ``num_layers`` only if at least one stays."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < num_layers:
        raise ConfigError(
            f"--remove {k}: the model has {num_layers} layers, so K must be in 1..{num_layers - 1} "
            "(at least one layer must stay)."
        )


def prune_layers(
    model: nn.Module, *, layers: Iterable[int] = (), attn: Iterable[int] = (), mlp: Iterable[int] = ()
) -> CausalLM:
    """A new model without ``layers``, and without the attention (``attn``) / FFN (``mlp``)
    sub-layers of the listed layers. A layer left with neither sub-layer is removed.

    With per-layer residual widths, the width-changing projections around a removed layer
    are multiplied into one (they are linear maps on the identity path, so the result is
    still exactly the model with that layer skipped). Removing layers so that two layers
    of one width would be joined through a change of width is refused. With repetition,
    a removed block leaves every one of its applications."""
    model = require_sequential_lm(model, "pruning")
    cfg: LMConfig = model.cfg
    drop, no_attn, no_mlp = set(layers), set(cfg.no_attn) | set(attn), set(cfg.no_mlp) | set(mlp)
    bad = sorted(i for i in drop | no_attn | no_mlp if not 0 <= i < cfg.depth)
    if bad:
        raise ConfigError(f"layer indices {bad} are out of range: the model has layers 0..{cfg.depth - 1}.")
    drop |= no_attn & no_mlp
    keep = [i for i in range(cfg.depth) if i not in drop]
    if not keep:
        raise ConfigError("pruning would remove every layer; keep at least one.")
    new_index = {old: new for new, old in enumerate(keep)}
    new_cfg = cfg.replace(
        depth=len(keep),
        heads=tuple(cfg.heads[i] for i in keep),
        mlp_dims=tuple(cfg.mlp_dims[i] for i in keep),
        no_attn=tuple(new_index[i] for i in keep if i in no_attn),
        no_mlp=tuple(new_index[i] for i in keep if i in no_mlp),
        dims=tuple(cfg.dims[i] for i in keep) if cfg.dims else (),
    )
    state = joined_transitions(model, keep, new_cfg)
    for key, value in model.state_dict().items():
        if key.startswith("transitions."):
            continue
        match = BLOCK_KEY.match(key)
        if match is None:
            state[key] = value.clone()
            continue
        old, rest = int(match.group(1)), match.group(2)
        if old in drop:
            continue
        if (old in no_attn and rest.startswith(SUBLAYERS["attn"])) or (
            old in no_mlp and rest.startswith(SUBLAYERS["mlp"])
        ):
            continue
        state[f"blocks.{new_index[old]}.{rest}"] = value.clone()
    new = build_model(new_cfg)
    new.load_state_dict(state)
    param = next(model.parameters())
    return new.to(param.device).train(model.training)


@torch.no_grad()
def joined_transitions(model: CausalLM, keep: list[int], new_cfg: LMConfig) -> dict[str, torch.Tensor]:
    """The pruned model's transition weights: the product of the old ones between kept layers."""
    old = {key: t.weight.detach() for key, t in model.transitions.items()}
    wanted = transition_shapes(new_cfg)
    state, pending, new = {}, None, 0
    for i in range(model.cfg.depth + 1):
        key = str(i) if i < model.cfg.depth else "out"
        if key in old:
            pending = old[key] if pending is None else old[key] @ pending
        if i < model.cfg.depth and i not in keep:
            continue
        new_key = str(new) if key != "out" else "out"
        if pending is not None and new_key not in wanted:
            raise ConfigError(
                f"removing these layers would join two layers of residual width {pending.shape[0]} through "
                "a change of width, which this config cannot hold; remove other layers (or sub-layers)."
            )
        if pending is not None:
            state[f"transitions.{new_key}.weight"] = pending.clone()
        pending, new = None, new + 1
    return state


def sublayer_names(model: nn.Module) -> list[tuple[int, str]]:
    """Every (layer, "attn"|"mlp") sub-layer the model still has, in order."""
    model = require_sequential_lm(model, "sub-layer pruning")
    return [
        (i, part)
        for i, block in enumerate(model.blocks)
        for part in ("attn", "mlp")
        if getattr(block, part) is not None
    ]


def removed_params(model: nn.Module, pruned: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in pruned.parameters())


@torch.no_grad()
def skip_forward(model: CausalLM, idx: torch.Tensor, skip: Iterable[int]) -> torch.Tensor:
    """Reference: the logits of ``model`` with the blocks in ``skip`` left out of the stack."""
    skip = set(skip)
    h = model.embed(idx)
    for _, i in model.applications():
        h = model.enter(h, i)
        if i not in skip:
            h = model.blocks[i](h)
    return model.readout(model.leave(h))
