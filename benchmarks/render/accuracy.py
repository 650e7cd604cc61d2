"""accuracy-<dataset>.json (benchmarks/accuracy.py): ParaFormer modes vs the ViT twin at equal budgets."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.protocol import cell, paired
from benchmarks.render.common import Compared, Section, comparison_lines, provenance, table

LABELS = {
    "vit": "ViT twin",
    "joint": "ParaFormer joint",
    "fused": "ParaFormer fused",
    "progressive": "ParaFormer progressive",
    "progressive-steps": "ParaFormer progressive, the ViT's steps",
    "progressive-time": "ParaFormer progressive, the ViT's time",
    "vit-steps": "ViT twin, progressive's steps",
    "fused-steps": "ParaFormer fused, progressive's steps",
    "vit-time": "ViT twin, progressive's time",
    "fused-time": "ParaFormer fused, progressive's time",
}
# (key, budget, a, b, metric): every comparison this benchmark makes, a minus b, paired by seed
COMPARISONS = [
    ("progressive-vit", "equal epochs", "progressive", "vit", "test"),
    ("fused-vit", "equal epochs", "fused", "vit", "test"),
    ("joint-vit", "equal epochs", "joint", "vit", "test"),
    ("progressive-vit-epoch1", "after one epoch", "progressive", "vit", "val1"),
    ("progressive-steps-vit", "equal steps", "progressive-steps", "vit", "test"),
    ("progressive-time-vit", "equal time", "progressive-time", "vit", "test"),
    ("fused-progressive-time", "equal time", "fused", "progressive-time", "test"),
    ("progressive-vit-steps", "equal steps", "progressive", "vit-steps", "test"),
    ("fused-steps-vit-steps", "equal steps", "fused-steps", "vit-steps", "test"),
    ("progressive-vit-time", "equal time", "progressive", "vit-time", "test"),
    ("fused-time-vit-time", "equal time", "fused-time", "vit-time", "test"),
    ("fused-time-progressive", "equal time", "fused-time", "progressive", "test"),
]
METRICS = {"test": "test accuracy", "val1": "validation accuracy after epoch 1"}


def images_seen(history: list[dict[str, Any]]) -> int:
    """Training images drawn over a run (a batch reused by several optimizer steps counts once per pass)."""
    return round(sum(e["samples_per_s"] * e["train_seconds"] for e in history))


def run_budget(run: dict[str, Any]) -> dict[str, Any]:
    """The budget a run recorded, or the one its summary and history imply (files before the protocol)."""
    if "budget" in run:
        return run["budget"]
    s = run["summary"]
    return {
        "optimizer_steps": s["steps"],
        "images_seen": images_seen(run["history"]),
        "train_seconds": s["train_seconds"],
    }


def metric(results: dict[str, dict[str, Any]], arm: str, which: str) -> dict[str, float]:
    """Per seed: test accuracy (points), or validation accuracy after the first epoch."""
    out = {}
    for seed, arms in results.items():
        run = arms.get(arm)
        if run is None:
            continue
        out[seed] = 100 * (run["summary"]["test_acc"] if which == "test" else run["history"][0]["val_acc"])
    return out


def comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    results = record["payload"]["results"]
    out = {}
    for key, budget, a, b, which in COMPARISONS:
        c = paired(metric(results, a, which), metric(results, b, which))
        if c.n:
            out[key] = Compared(f"{budget}, {METRICS[which]}: {LABELS[a]} vs {LABELS[b]}", c)
    return out


def _protocol(dataset: str, results: dict[str, dict[str, Any]]) -> str:
    first = results[min(results, key=int)]
    para = next(r["config"] for a, r in first.items() if not a.startswith("vit"))
    vit = next((r["config"] for a, r in first.items() if a.startswith("vit")), None)
    shape = para["model_overrides"]
    n, d = shape["num_branches"], shape["branch_depth"]
    warmup = (
        f"{para['warmup_epochs']:g} warmup epoch(s)"
        if para.get("warmup_epochs") is not None
        else f"warmup over {para.get('warmup_fraction', 0.1):.0%} of the optimizer steps"
    )
    twin = f", ViT twin `{vit['model']}` depth {vit['model_overrides']['depth']}" if vit else ""
    return (
        f"Protocol: {dataset}, the first {para['limit_train']} training images (class-balanced; "
        f"{para['val_fraction']:.0%} held out for validation), the full test set; `{para['model']}` "
        f"dim {shape['dim']}, {shape['heads']} heads, MLP {shape['mlp_dim']}, {n} branches x depth {d}{twin} "
        f"(the same parameter count); batch {para['batch_size']}, {para['optimizer']} lr {para['lr']:g}, "
        f"{warmup} then cosine, weight decay {para['weight_decay']:g}, grad clip {para['grad_clip']:g}; "
        f"{'bf16' if para.get('bf16') else 'fp32'}. Equal epochs: {para['epochs']} each (the ViT, joint and "
        "fused take one step per batch and cost the same per epoch: for them equal epochs is equal steps "
        f"and equal time). {_budget_text(first, n)} Budgets are measured side by side (interleaved) "
        "before the runs; 'training s' is each run's own wall clock on a shared machine. "
        "Test accuracy is that of the epoch with the best validation accuracy, measured once at the end; "
        "'images seen' counts each pass over a batch once (progressive's prefix steps share one pass)."
    )


def _budget_text(first: dict[str, Any], n: int) -> str:
    if "progressive-steps" in first or "progressive-time" in first:
        return (
            f"Equal steps: progressive given the optimizer steps the ViT took (it takes {n + 1} per batch). "
            "Equal time: progressive given as many epochs as cost what the ViT's epochs cost."
        )
    return (
        f"Equal steps: the ViT/fused given the optimizer steps progressive took ({n + 1} per batch). "
        "Equal time: the ViT/fused given as many epochs as cost what progressive's epochs cost."
    )


def convergence(results: dict[str, dict[str, Any]]) -> list[str]:
    """Did the ViT twin converge? Its mean validation accuracy over the last fifth of training."""
    curves = [arms["vit"]["history"] for arms in results.values() if "vit" in arms]
    if not curves or any(len(c) != len(curves[0]) for c in curves) or len(curves[0]) < 5:
        return []
    epochs = len(curves[0])
    start = epochs - epochs // 5  # the epoch at which the last fifth begins
    mean = [statistics.fmean(100 * c[e]["val_acc"] for c in curves) for e in range(epochs)]
    change = mean[-1] - mean[start - 1]
    verdict = "converged (under 0.3 points)" if abs(change) < 0.3 else "NOT converged by the 0.3-point rule"
    shown = " ".join(f"{v:.1f}" for v in mean)
    return [
        f"Convergence of the ViT twin (mean validation accuracy over {len(curves)} seeds, epoch by epoch): "
        f"{shown}. Over the last fifth (epochs {start}-{epochs}) it changed by {change:+.2f} points: "
        f"{verdict}."
    ]


def _arm_table(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for arm, label in LABELS.items():
        runs = {s: arms[arm] for s, arms in results.items() if arm in arms}
        if not runs:
            continue
        budgets = [run_budget(r) for r in runs.values()]
        summaries = [r["summary"] for r in runs.values()]
        prefixes = [s.get("test_acc_prefix") for s in summaries]
        curve = "n/a"
        if all(prefixes):
            means = [statistics.fmean(p[k] for p in prefixes) for k in range(len(prefixes[0]))]
            curve = " / ".join(f"{100 * m:.1f}" for m in means)
        rows.append(
            [
                label,
                ", ".join(sorted(runs, key=int)),
                cell([s["epochs_completed"] for s in summaries], 0, with_n=False),
                cell([b["optimizer_steps"] for b in budgets], 0, with_n=False),
                cell([b["images_seen"] for b in budgets], 0, with_n=False),
                cell([b["train_seconds"] for b in budgets], 0, with_n=False),
                cell([s["val_acc"] for s in summaries], 2, 100),
                cell([s["test_acc"] for s in summaries], 2, 100),
                curve,
            ]
        )
    header = [
        "run",
        "seeds",
        "epochs",
        "optimizer steps",
        "images seen",
        "training s",
        "val acc %",
        "test acc %",
        "test acc, first k branches % (mean)",
    ]
    return table(header, rows)


def _time_arms(results: dict[str, dict[str, Any]]) -> list[str]:
    """Equal-time arms: the measured budget ratio that sized them and the load on both sides."""
    rows, missing = [], False
    for arm in ("progressive-time", "vit-time", "fused-time"):
        for seed in sorted(results, key=int):
            run = results[seed].get(arm)
            if run is None:
                continue
            b = run_budget(run)
            ratio = b.get("budget_ratio", run.get("epoch_cost_ratio"))
            load = b.get("load")
            if ratio is None or load is None:
                missing = True
                continue
            rows.append(
                [
                    LABELS[arm],
                    seed,
                    f"{ratio:.2f}",
                    _load_text(load.get("arm")),
                    _load_text(load.get("reference")),
                ]
            )
    if missing and not rows:
        return [
            "The equal-time runs of this file did not record their measured budget ratio or the load on "
            "both sides (recorded since the protocol; rerun to record them)."
        ]
    header = [
        "arm",
        "seed",
        "epoch cost ratio (progressive / other, measured)",
        "load, this run",
        "load, the run it matches",
    ]
    return table(header, rows) if rows else []


def _load_text(load: Any) -> str:
    if not load:
        return "not recorded"
    return " -> ".join(f"{x:.1f}" for x in load)


def render(record: dict[str, Any]) -> Section:
    dataset = record["benchmark"].removeprefix("accuracy-")
    results = record["payload"]["results"]
    compared = comparisons(record)
    time_lines = _time_arms(results)
    text = [
        f"### Accuracy at equal epochs, steps and time ({dataset})",
        "",
        *provenance(record),
        "",
        _protocol(dataset, results),
        "",
        *_arm_table(results),
        "",
        *(time_lines + [""] if time_lines else []),
        *(conv + [""] if (conv := convergence(results)) else []),
        *comparison_lines(list(compared.values()), f"Comparisons on {dataset}, paired by seed (points):"),
        "",
        f"![curves](benchmarks/results/accuracy-{dataset}.png)",
    ]
    return Section(
        record["benchmark"],
        "\n".join(text),
        list(compared.values()),
        [(f"accuracy-{dataset}.png", lambda path: plot(dataset, results, path))],
    )


def plot(dataset: str, results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_k) = plt.subplots(1, 2, figsize=(12, 4.8))
    seed = min(results, key=int)
    for i, (arm, label) in enumerate(LABELS.items()):
        r = results[seed].get(arm)
        if r is None:
            continue
        t, points = 0.0, []
        for h in r["history"]:
            t += h["train_seconds"]
            points.append((t, 100 * h["val_acc"]))
        style = "--" if arm.startswith("vit") else "-"
        ax_t.plot(*zip(*points, strict=True), style, marker="o", markersize=2, color=f"C{i}", label=label)
        prefixes = [arms[arm]["summary"].get("test_acc_prefix") for arms in results.values() if arm in arms]
        if all(prefixes):
            ks = range(1, len(prefixes[0]) + 1)
            means = [100 * statistics.fmean(p[k - 1] for p in prefixes) for k in ks]
            ax_k.plot(ks, means, marker="o", color=f"C{i}", label=label)
        elif arm == "vit":
            acc = statistics.fmean(metric(results, arm, "test").values())
            ax_k.axhline(acc, color=f"C{i}", linestyle="--", label=label)
    ax_t.set(xlabel="training seconds", ylabel="validation accuracy (%)", title=f"{dataset}: seed {seed}")
    ax_k.set(
        xlabel="branches used (first k)", ylabel="test accuracy (%)", title=f"{dataset}: mean over seeds"
    )
    for ax in (ax_t, ax_k):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
