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
    sub-layers of the listed layers. A layer left with neither sub-layer is removed."""
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
    )
    state = {}
    for key, value in model.state_dict().items():
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
    for i, block in enumerate(model.blocks):
        if i not in skip:
            h = block(h)
    return model.readout(h)
