"""Which layers to remove: CascadeFlow and the heuristics it is compared with.

Every scorer gives one score per layer, *lower = less important = removed first*:

- ``cascadeflow``: the layer's gradient norm accumulated over training (``||g_l||``
  summed over every optimizer step, recorded by ``GradientStats``); no data pass.
- ``cascadeflow-taylor``: the same, with ``|<g_l, w_l>|`` (first-order loss change).
- ``random``: a seeded random order.
- ``magnitude``: mean absolute weight of the layer's weight matrices.
- ``block-influence`` (ShortGPT): ``1 - mean cos(h_in, h_out)`` over calibration tokens.
- ``angular`` (Gromov et al.): the angular distance ``arccos(cos)/pi`` between the
  residual stream before layer l and after layer l + n - 1, averaged over tokens; the
  n = K consecutive layers with the smallest distance are removed together.
- ``finercut``: greedy removal of attention or FFN sub-layers, each time the one whose
  removal changes the output distribution least (Jensen-Shannon divergence from the
  full model's next-token distribution on calibration tokens).
- ``cascadeflow-sub``: sub-layer CascadeFlow. The same accumulated training gradients,
  per attention and per FFN sub-layer (``GradientStats`` records both), divided by the
  square root of the sub-layer's parameter count (so a sub-layer with twice the
  parameters is not kept for that alone); the 2K lowest sub-layers go, no data pass.
- ``cascadeflow-sub-taylor``: the same with ``|<g, w>|`` per sub-layer (a loss change,
  comparable across sub-layers as it is).
- ``last``: the last K layers (the simplest cut).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from paraformer.errors import ConfigError
from paraformer.models import require_sequential_lm
from paraformer.surgery.prune import check_removal, prune_layers, sublayer_names

METHODS = (
    "cascadeflow",
    "cascadeflow-taylor",
    "random",
    "magnitude",
    "block-influence",
    "angular",
    "finercut",
    "cascadeflow-sub",
    "cascadeflow-sub-taylor",
    "last",
)
NEEDS_DATA = ("block-influence", "angular", "finercut")
SUBLAYER_METHODS = ("finercut", "cascadeflow-sub", "cascadeflow-sub-taylor")


@dataclass
class Removal:
    """What a method removes: whole layers, or (FinerCut) sub-layers; and its layer scores."""

    method: str
    layers: list[int] = field(default_factory=list)
    attn: list[int] = field(default_factory=list)
    mlp: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # per layer, lower = removed first
    sub_scores: list[float] = field(default_factory=list)  # sub-layer methods: per (layer, attn|mlp)

    def apply(self, model: nn.Module) -> nn.Module:
        return prune_layers(model, layers=self.layers, attn=self.attn, mlp=self.mlp)


def lowest(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` lowest scores (ties: the later layer first)."""
    return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], -i))[:k])


# ---------------------------------------------------------------------------- scorers


def random_scores(num_layers: int, seed: int) -> list[float]:
    perm = torch.randperm(num_layers, generator=torch.Generator().manual_seed(seed))
    return [float(v) for v in perm]


def magnitude_scores(model: nn.Module) -> list[float]:
    """Mean |w| over each layer's weight matrices (width-independent)."""
    out = []
    for layer in model.layers():
        mats = [p.detach().abs() for n, p in layer.named_parameters() if p.ndim == 2]
        out.append(float(sum(m.sum() for m in mats) / sum(m.numel() for m in mats)))
    return out


@torch.no_grad()
def block_io(model: nn.Module, batches: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) residual streams of every block application on calibration windows ``(B, T)``."""
    model = require_sequential_lm(model, "this scorer")
    was = model.training
    model.eval()
    try:
        return model.block_io(batches)
    finally:
        model.train(was)


def block_influence(model: nn.Module, batches: torch.Tensor) -> list[float]:
    """1 - mean cos(input, output) of each block (over its applications, with repetition)."""
    pairs = block_io(model, batches)
    depth = model.cfg.depth
    per = [float(1 - F.cosine_similarity(a, b, dim=-1).mean()) for a, b in pairs]
    return [sum(per[i::depth]) / len(per[i::depth]) for i in range(depth)]


def angular_distances(model: nn.Module, batches: torch.Tensor, n: int) -> list[float]:
    """Distance between the stream before layer l and after layer l+n-1, for every start l.

    Only spans of one residual width have a distance (a change of width between them maps
    the stream to another basis); the others get infinity, so they are never chosen.
    """
    if model.cfg.repeat > 1:
        raise ConfigError("angular distance needs each layer applied once; this model repeats its stack.")
    pairs = block_io(model, batches)
    widths, out = model.cfg.widths, []
    for start in range(len(pairs) - n + 1):
        if len(set(widths[start : start + n])) > 1:
            out.append(math.inf)
            continue
        cos = F.cosine_similarity(pairs[start][0], pairs[start + n - 1][1], dim=-1).clamp(-1, 1)
        out.append(float(torch.arccos(cos).mean() / math.pi))
    return out


@torch.no_grad()
def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Mean Jensen-Shannon divergence (nats) between two next-token distributions."""
    p, q = F.log_softmax(p_logits.float(), -1), F.log_softmax(q_logits.float(), -1)
    m = torch.logsumexp(torch.stack([p, q]), dim=0) - math.log(2)
    kl_pm = (p.exp() * (p - m)).sum(-1)
    kl_qm = (q.exp() * (q - m)).sum(-1)
    return float((0.5 * (kl_pm + kl_qm)).mean())


@torch.no_grad()
def finercut_order(
    model: nn.Module, batches: torch.Tensor, steps: int | None = None
) -> list[tuple[int, str]]:
    """Sub-layers in FinerCut's greedy removal order (the first ``steps``, default all but one)."""
    model = require_sequential_lm(model, "finercut")
    was = model.training
    model.eval()
    try:
        reference = model(batches)
        remaining = sublayer_names(model)
        removed: list[tuple[int, str]] = []
        steps = len(remaining) - 1 if steps is None else min(steps, len(remaining) - 1)
        for _ in range(steps):
            best, best_js = None, float("inf")
            for cand in remaining:
                trial = removed + [cand]
                pruned = prune_layers(
                    model,
                    attn=[i for i, p in trial if p == "attn"],
                    mlp=[i for i, p in trial if p == "mlp"],
                ).eval()
                js = js_divergence(reference, pruned(batches))
                if js < best_js:
                    best, best_js = cand, js
            removed.append(best)
            remaining.remove(best)
        return removed
    finally:
        model.train(was)


def finercut_layer_scores(order: list[tuple[int, str]], num_layers: int) -> list[float]:
    """A per-layer ranking from the greedy order: the mean removal step of a layer's sub-layers."""
    total = 2 * num_layers
    steps = {sub: t for t, sub in enumerate(order)}
    return [
        sum(steps.get((layer, part), total) for part in ("attn", "mlp")) / 2 for layer in range(num_layers)
    ]


def sublayer_cascadeflow_scores(grad_record: dict, kind: str = "norm") -> list[list[float | None]]:
    """Per layer ``[attention, FFN]`` scores from the accumulated gradients (None: no such sub-layer).

    ``norm``: accumulated ||g|| / sqrt(parameters); ``taylor``: accumulated |<g, w>|.
    """
    key = "grad_norm_sum_sub" if kind == "norm" else "grad_taylor_sum_sub"
    values, sizes = grad_record.get(key), grad_record.get("sub_params")
    if not values or not sizes:
        raise ConfigError(
            "this run has no per-sub-layer gradient sums (trained with --no-grad-stats, or by an older "
            "version); sub-layer CascadeFlow needs them: retrain, or pick another --method."
        )
    out = []
    for layer_values, layer_sizes in zip(values, sizes, strict=True):
        row = []
        for v, n in zip(layer_values, layer_sizes, strict=True):
            row.append(None if not n else float(v) / (math.sqrt(n) if kind == "norm" else 1.0))
        out.append(row)
    return out


def flat_sub_scores(per_layer: list[list[float | None]]) -> list[float]:
    """``[a1, f1, a2, f2, ...]``: a flat list of sub-layer scores (an absent sub-layer: +inf)."""
    return [math.inf if v is None else v for row in per_layer for v in row]


def finercut_sub_scores(order: list[tuple[int, str]], num_layers: int) -> list[float]:
    """Per (layer, attn|mlp): the greedy step at which FinerCut removes it (never: 2L)."""
    steps = {sub: t for t, sub in enumerate(order)}
    return [float(steps.get((i, p), 2 * num_layers)) for i in range(num_layers) for p in ("attn", "mlp")]


def cascadeflow_scores(grad_record: dict, kind: str = "norm") -> list[float]:
    key = "grad_norm_sum" if kind == "norm" else "grad_taylor_sum"
    values = grad_record.get(key)
    if not values:
        raise ConfigError(
            "this run has no accumulated gradients (trained with --no-grad-stats?); CascadeFlow needs "
            "them: retrain with gradient statistics on, or pick another --method."
        )
    return [float(v) for v in values]


def choose_removal(
    method: str,
    model: nn.Module,
    k: int,
    *,
    grad_record: dict | None = None,
    batches: torch.Tensor | None = None,
    seed: int = 0,
    finercut: list[tuple[int, str]] | None = None,
) -> Removal:
    """The (sub-)layers ``method`` removes to take ``k`` layers' worth out of ``model``."""
    if method not in METHODS:
        raise ConfigError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}.")
    model = require_sequential_lm(model, "lm prune")
    num_layers = model.cfg.depth
    check_removal(num_layers, k)
    if method in NEEDS_DATA and batches is None:
        raise ConfigError(f"{method} needs calibration tokens.")
    if method in ("cascadeflow", "cascadeflow-taylor"):
        scores = cascadeflow_scores(grad_record or {}, "taylor" if method.endswith("taylor") else "norm")
        if len(scores) != num_layers:
            raise ConfigError(
                f"the run recorded gradients for {len(scores)} layers but the model has {num_layers}; "
                "CascadeFlow prunes a model as trained (prune an unpruned run)."
            )
    elif method.startswith("cascadeflow-sub"):
        kind = "taylor" if method.endswith("taylor") else "norm"
        per = sublayer_cascadeflow_scores(grad_record or {}, kind)
        if len(per) != num_layers:
            raise ConfigError(
                f"the run recorded gradients for {len(per)} layers but the model has {num_layers}; "
                "CascadeFlow prunes a model as trained (prune an unpruned run)."
            )
        flat = flat_sub_scores(per)
        chosen = [divmod(j, 2) for j in lowest(flat, 2 * k)]
        return Removal(
            method,
            attn=sorted(i for i, p in chosen if p == 0),
            mlp=sorted(i for i, p in chosen if p == 1),
            scores=[min(a if a is not None else math.inf, f if f is not None else math.inf) for a, f in per],
            sub_scores=flat,
        )
    elif method == "last":
        scores = [float(num_layers - 1 - i) for i in range(num_layers)]
    elif method == "random":
        scores = random_scores(num_layers, seed)
    elif method == "magnitude":
        scores = magnitude_scores(model)
    elif method == "block-influence":
        scores = block_influence(model, batches)
    elif method == "angular":
        per_layer = angular_distances(model, batches, 1)
        starts = angular_distances(model, batches, k)
        if not any(math.isfinite(d) for d in starts):
            raise ConfigError(
                f"angular distance removes {k} consecutive layers of one residual width, and this model "
                "has no such run of layers; remove fewer layers or pick another --method."
            )
        first = min(range(len(starts)), key=lambda s: starts[s])
        return Removal(method, layers=list(range(first, first + k)), scores=per_layer)
    else:
        order = finercut if finercut is not None else finercut_order(model, batches, 2 * k)
        chosen = order[: 2 * k]
        return Removal(
            method,
            attn=sorted(i for i, p in chosen if p == "attn"),
            mlp=sorted(i for i, p in chosen if p == "mlp"),
            scores=finercut_layer_scores(order, num_layers),
            sub_scores=finercut_sub_scores(order, num_layers),
        )
    return Removal(method, layers=lowest(scores, k), scores=scores)
