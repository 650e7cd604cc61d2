"""Gradient Fan-in Asymmetry: theory vs the gradients measured during training.

In a pre-LN residual stack of L layers, the gradient reaching layer l (1-based) comes
through the identity path plus one path through every later layer: fan-in
``1 + (L - l)``. With a loss after every layer (deep supervision) the loss at layer k
adds ``1 + (k - l)`` paths for each k >= l, so fan-in is ``m (m + 1) / 2`` with
``m = L - l + 1``: quadratic in the distance from the top. In ParaFormer-LM every
branch has the same depth d, so within a branch layer j has ``1 + (d - j)`` paths, and
under prefix training (fused or progressive) branch i (0-based) of N is in ``N - i`` of
the losses, which multiplies its layers' fan-in. With parameter-shared repetition (the
stack run R times) a block's parameters sit at R positions of the R x L applications, and
their fan-in is the sum over those positions: late blocks gain the most.

``analyse`` sets the theory beside the per-layer gradient norms accumulated during
training and beside post-hoc importance (the validation loss increase when a layer is
skipped), with Spearman and Pearson correlations; ``plot_gfa`` draws ``gfa.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paraformer.analysis.stats import pearson, spearman
from paraformer.config import ModelConfig
from paraformer.errors import CheckpointError
from paraformer.files import atomic_write


def theoretical_fan_in(
    cfg: ModelConfig, *, deep_supervision: bool = False, mode: str = "fused"
) -> list[float]:
    """Paths from each layer to the loss(es), in ``model.layers()`` order."""
    if cfg.family == "lm":
        depth, total = cfg.depth, cfg.depth * cfg.repeat
        # A shared block's parameters collect the paths of each of its applications.
        out = []
        for i in range(depth):
            m = [total - (r * depth + i) for r in range(cfg.repeat)]  # applications from there to the top
            out.append(float(sum(k * (k + 1) / 2 if deep_supervision else k for k in m)))
        return out
    n, d = cfg.num_branches, cfg.branch_depth
    losses = [n - i if mode in ("fused", "progressive") else 1 for i in range(n)]
    return [float(losses[i] * (d - j)) for i in range(n) for j in range(d)]


def layer_names(cfg: ModelConfig) -> list[str]:
    if cfg.family == "lm":
        return [f"L{i + 1}" for i in range(cfg.depth)]
    return [f"b{i + 1}.{j + 1}" for i in range(cfg.num_branches) for j in range(cfg.branch_depth)]


@torch.no_grad()
def skip_importance(model: nn.Module, evaluate: Any) -> tuple[float, list[float]]:
    """The base loss, and the loss increase when each layer is skipped (its output := its input).

    ``evaluate(model) -> loss`` scores the model on held-out tokens.
    """
    base = evaluate(model)
    increases = []
    for layer in model.layers():
        handle = layer.register_forward_hook(lambda module, args, out: args[0])
        try:
            increases.append(evaluate(model) - base)
        finally:
            handle.remove()
    return base, increases


def analyse(
    cfg: ModelConfig,
    history: list[dict[str, Any]],
    importance: list[float] | None,
    *,
    deep_supervision: bool = False,
    mode: str = "fused",
    layer_sizes: list[int] | None = None,
) -> dict[str, Any]:
    """Theory, measured gradient norms and importance per layer, and their correlations."""
    records = [h for h in history if h.get("grad_norm_sum")]
    if not records:
        raise CheckpointError(
            "this run recorded no per-layer gradients (trained with --no-grad-stats, or before an "
            "epoch ended); GFA needs a run trained with gradient statistics."
        )
    last = records[-1]
    steps = max(int(last["grad_steps"]), 1)
    measured = [v / steps for v in last["grad_norm_sum"]]
    theory = theoretical_fan_in(cfg, deep_supervision=deep_supervision, mode=mode)
    if len(theory) != len(measured):
        raise CheckpointError(
            f"the run recorded {len(measured)} layers but its model has {len(theory)}; is it a pruned model?"
        )
    result: dict[str, Any] = {
        "layers": layer_names(cfg),
        "theory": theory,
        "grad_norm": measured,
        "steps": steps,
        "trace_steps": [h["step"] for h in records],
        "trace": [h["grad_norm"] for h in records],
        "correlations": {"theory~grad": _corr(theory, measured)},
    }
    if layer_sizes:
        result["grad_rms"] = [g / math.sqrt(n) for g, n in zip(measured, layer_sizes, strict=True)]
        result["correlations"]["theory~grad_rms"] = _corr(theory, result["grad_rms"])
    if importance is not None:
        result["importance"] = importance
        result["correlations"]["theory~importance"] = _corr(theory, importance)
        result["correlations"]["grad~importance"] = _corr(measured, importance)
    return result


def _corr(a: list[float], b: list[float]) -> dict[str, Any]:
    """Rank and linear correlation; ``None`` with the reason where one is undefined."""
    out: dict[str, Any] = {"spearman": spearman(a, b), "pearson": pearson(a, b)}
    if any(not math.isfinite(v) for v in out.values()):
        out = {k: (v if math.isfinite(v) else None) for k, v in out.items()}
        out["undefined"] = "a correlation needs two or more layers whose values differ"
    return out


def plot_gfa(result: dict[str, Any], path: Path, title: str = "") -> None:
    """Three panels: gradient norm per layer over training; theory vs measured; skip importance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["layers"]
    x = list(range(len(names)))
    panels = 3 if "importance" in result else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.4))
    ax = axes[0]
    trace = list(zip(*result["trace"], strict=True))  # per layer: norms over the trace
    cmap = plt.get_cmap("viridis")
    for i, series in enumerate(trace):
        ax.plot(result["trace_steps"], series, color=cmap(i / max(len(trace) - 1, 1)), label=names[i])
    ax.set(xlabel="optimizer step", ylabel="mean gradient norm", title="per-layer gradient norm")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    theory, measured = result["theory"], result["grad_norm"]
    ax.plot(x, [t / theory[0] for t in theory], "o-", label="theory: fan-in")
    ax.plot(x, [m / measured[0] for m in measured], "s-", label="measured: gradient norm")
    if "grad_rms" in result:
        rms = result["grad_rms"]
        ax.plot(x, [r / rms[0] for r in rms], "^--", label="measured: per-parameter RMS")
    c = result["correlations"]["theory~grad"]
    ax.set(
        xlabel="layer",
        ylabel="relative to the first layer",
        title=f"theory vs measured (Spearman {_fmt(c['spearman'])})",
    )
    ax.set_xticks(x, names, rotation=45 if len(names) > 10 else 0, fontsize=7)
    ax.legend(fontsize=8)
    if panels == 3:
        ax = axes[2]
        ax.bar(x, result["importance"], color="C2")
        c = result["correlations"]["grad~importance"]
        ax.set(
            xlabel="layer",
            ylabel="validation loss increase (nats)",
            title=f"skip one layer (Spearman with gradient {_fmt(c['spearman'])})",
        )
        ax.set_xticks(x, names, rotation=45 if len(names) > 10 else 0, fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
