"""gfa-depth.json (benchmarks/gfa_depth.py): gradient fan-in at 16 and 24 layers, and the interventions."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.protocol import WIN, cell, one_sample, paired
from benchmarks.render.common import Compared, Section, comparison_lines, provenance, table

ARMS = ("uniform", "equalised", "shared")
LABELS = {
    "uniform": "uniform",
    "equalised": "uniform, gradients equalised per layer",
    "shared": "shared repetition (half the blocks, run twice)",
}


def late_share(importance: list[float], fraction: float = 0.25) -> float:
    """The share of the total positive skip importance carried by the last ``fraction`` of the blocks."""
    positive = [max(0.0, v) for v in importance]
    late = positive[len(positive) - max(1, round(fraction * len(positive))) :]
    total = sum(positive)
    return sum(late) / total if total > 0 else float("nan")


def runs(record: dict[str, Any], depth: int) -> dict[str, dict[str, Any]]:
    return record["payload"]["depths"].get(str(depth), {}).get("runs", {})


def depths(record: dict[str, Any]) -> list[int]:
    return sorted(int(d) for d in record["payload"]["depths"])


def per_seed(
    record: dict[str, Any], depth: int, arm: str, key: str, corr: str | None = None
) -> dict[str, float]:
    out = {}
    for s, r in runs(record, depth).get(arm, {}).items():
        out[s] = r["correlations"][corr]["spearman"] if corr else r[key]
    return {s: v for s, v in out.items() if v is not None}


def comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    out: dict[str, Compared] = {}
    for depth in depths(record):
        base = per_seed(record, depth, "uniform", "late_layer_importance")
        for arm in ("equalised", "shared"):
            c = paired(per_seed(record, depth, arm, "late_layer_importance"), base)
            if c.n:
                out[f"late-{arm}-{depth}"] = Compared(
                    f"{depth} layers: late-layer importance share, {arm} - uniform", c, "", 3
                )
            c = paired(
                per_seed(record, depth, arm, "test_ppl"),
                per_seed(record, depth, "uniform", "test_ppl"),
                "lower",
            )
            if c.n:
                out[f"ppl-{arm}-{depth}"] = Compared(
                    f"{depth} layers: test perplexity, {arm} - uniform", c, "", 3
                )
        for arm in ARMS:
            c = one_sample(per_seed(record, depth, arm, "", "theory~grad"))
            if c.n:
                out[f"gfa-{arm}-{depth}"] = Compared(
                    f"{depth} layers, {arm}: Spearman(fan-in, gradient) vs 0", c, ""
                )
    return out


def _ratio(r: dict[str, Any]) -> float:
    return r["grad_norm"][0] / r["grad_norm"][-1]


def _table(record: dict[str, Any], depth: int) -> list[str]:
    rows = []
    for arm in ARMS:
        by = runs(record, depth).get(arm)
        if not by:
            continue
        rows.append(
            [
                LABELS[arm],
                cell(r["test_ppl"] for r in by.values()),
                cell(per_seed(record, depth, arm, "", "theory~grad").values()),
                cell(per_seed(record, depth, arm, "", "theory~importance").values()),
                cell(per_seed(record, depth, arm, "", "grad~importance").values()),
                cell((_ratio(r) for r in by.values()), 2),
                cell((r["late_layer_importance"] for r in by.values()), 3),
            ]
        )
    header = [
        "model",
        "test ppl",
        "Spearman(fan-in, gradient)",
        "Spearman(fan-in, skip importance)",
        "Spearman(gradient, skip importance)",
        "gradient norm, first / last block",
        "late-layer importance share (last 25% of blocks)",
    ]
    return table(header, rows)


def _verdict(compared: dict[str, Compared], depth: int) -> str:
    eq, sh = compared.get(f"late-equalised-{depth}"), compared.get(f"late-shared-{depth}")
    if eq is None or sh is None:
        return f"{depth} layers: not all arms measured."
    eq_word = "restores" if eq.result.verdict == WIN else "does not restore"
    sh_word = "restores" if sh.result.verdict == WIN else "does not restore"
    return (
        f"{depth} layers: equalising gradients {eq_word} late layers ({eq.figure()}, {eq.result.verdict}; "
        f"the paper: it does not); shared repetition {sh_word} them ({sh.figure()}, {sh.result.verdict}; "
        "the paper: it does)."
    )


def _mean_curve(values: list[list[float]]) -> list[float]:
    return [statistics.fmean(col) for col in zip(*values, strict=True)]


def _plot(record: dict[str, Any], depth: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from paraformer.files import atomic_write

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for arm in ARMS:
        by = list(runs(record, depth).get(arm, {}).values())
        if not by:
            continue
        grad = _mean_curve([[g / r["grad_norm"][0] for g in r["grad_norm"]] for r in by])
        imp = _mean_curve([r["importance"] for r in by])
        x = [(i + 0.5) / len(grad) for i in range(len(grad))]
        axes[0].plot(x, grad, "o-", ms=3, label=LABELS[arm])
        axes[1].plot(x, imp, "o-", ms=3, label=LABELS[arm])
        if arm == "uniform":
            theory = by[0]["theory"]
            axes[0].plot(x, [t / theory[0] for t in theory], "k--", lw=1, label="fan-in theory (uniform)")
    axes[0].set(
        xlabel="block position (fraction of depth)", ylabel="gradient norm / first block's", yscale="log"
    )
    axes[0].set_title("accumulated gradient norm per block (natural gradients)")
    axes[1].set(xlabel="block position (fraction of depth)", ylabel="validation loss increase (nats)")
    axes[1].set_title("skip importance per block (all its applications)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Gradient fan-in at {depth} layers (means over seeds)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def render(record: dict[str, Any]) -> Section:
    c = record["config"]
    compared = comparisons(record)
    text = [
        "### Gradient fan-in at depth, and the two interventions",
        "",
        *provenance(record),
        "",
        f"Protocol: `{Path(c['data']).name}`, character tokens; `lm_uniform_l<D>` (dim 64, 2 heads, FFN "
        "256, context 64), the same model trained with `equalize_grads` (each block's gradient rescaled to "
        "the mean per-block norm before clipping), and `lm_shared_l<D>` (D/2 blocks run twice, shared "
        f"parameters: the same depth of computation); {c['steps']} steps of {c['batch_size']} windows, "
        f"AdamW lr {c['lr']:g}, warmup 10% then cosine to 1%. Fan-in theory: 1 + (L - l) paths per "
        "application, summed over a shared block's applications. Gradient norms: the natural gradients "
        "accumulated over training (before equalisation). Skip importance: validation loss increase when a "
        f"block (every application of it) is skipped, on {c['gfa_tokens']:,} validation tokens. Late-layer "
        "importance share: the share of the positive skip importance in the last 25% of the blocks (25% if "
        "all mattered alike).",
        "",
    ]
    plots = []
    for depth in depths(record):
        name = f"gfa-depth-l{depth}.png"
        text += [f"**{depth} layers**", "", *_table(record, depth), "", _verdict(compared, depth), ""]
        text += [f"![{name}](benchmarks/results/{name})", ""]
        plots.append((name, lambda path, d=depth: _plot(record, d, path)))
    text += comparison_lines(list(compared.values()), "Comparisons, paired by seed:")
    return Section("gfa-depth", "\n".join(text), list(compared.values()), plots)
