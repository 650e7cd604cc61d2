"""continual-<dataset>.json (benchmarks/continual.py): Split datasets, expansion vs the baselines."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.protocol import cell, paired
from benchmarks.render.common import Compared, Section, comparison_lines, provenance, table

LABELS = {
    "expansion": "ParaFormer expansion",
    "expansion-open": "ParaFormer expansion, new gates set to 1 (ablation)",
    "finetune": "fine-tuning (lower bound)",
    "replay": "experience replay",
    "lwf": "Learning without Forgetting",
    "joint": "joint on all data so far (upper bound)",
}
KEYS = {
    "avg_acc_class_il": ("class-IL average accuracy", "higher"),
    "avg_acc_task_il": ("task-IL average accuracy", "higher"),
    "forgetting_class_il": ("class-IL forgetting", "lower"),
    "forgetting_task_il": ("task-IL forgetting", "lower"),
}
# (a, b, key): every comparison this benchmark makes, a minus b, paired by seed
COMPARISONS = [
    ("expansion", "finetune", "forgetting_class_il"),
    ("expansion", "finetune", "forgetting_task_il"),
    ("expansion", "finetune", "avg_acc_class_il"),
    ("expansion", "replay", "avg_acc_class_il"),
    ("expansion", "replay", "avg_acc_task_il"),
    ("expansion", "lwf", "avg_acc_class_il"),
    ("expansion-open", "expansion", "avg_acc_class_il"),
]


def per_seed(record: dict[str, Any], method: str, key: str) -> dict[str, float]:
    """Per seed: one figure of ``method`` in points (None where it did not run)."""
    out = {}
    for seed, methods in record["payload"]["results"].items():
        value = methods.get(method, {}).get(key)
        if value is not None:
            out[seed] = 100 * value
    return out


def comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    out = {}
    for a, b, key in COMPARISONS:
        name, better = KEYS[key]
        c = paired(per_seed(record, a, key), per_seed(record, b, key), better)
        if c.n:
            out[f"{a}-{b}-{key}"] = Compared(f"{name} ({better} is better): {LABELS[a]} vs {LABELS[b]}", c)
    return out


def methods_of(record: dict[str, Any]) -> list[str]:
    results = record["payload"]["results"]
    return [m for m in LABELS if all(m in r for r in results.values())]


def _matrix_mean(record: dict[str, Any], method: str, key: str) -> list[list[float]]:
    mats = [r[method][key] for r in record["payload"]["results"].values()]
    size = len(mats[0])
    out = []
    for i in range(size):
        row = []
        for j in range(size):
            values = [m[i][j] for m in mats if m[i][j] is not None]
            row.append(statistics.fmean(values) if values else math.nan)
        out.append(row)
    return out


def _protocol(record: dict[str, Any]) -> str:
    a = record["config"]
    chosen = record["payload"].get("chosen_by", "")
    first = next(iter(record["payload"]["results"].values()))
    tasks = len(next(iter(first.values()))["class_il"])
    warmup = (
        f"{a['warmup_epochs']:g} warmup epoch(s)"
        if a.get("warmup_epochs") is not None
        else f"warmup over {a.get('warmup_fraction', 0.1):.0%} of the steps"
    )
    return (
        f"Protocol: {tasks} tasks of {10 // tasks} classes in class order; per task the first "
        f"{a['limit_train']} training images (class-balanced, seeded; 10% held out for validation) and "
        f"{a['limit_test']} test images (the same for every seed). Backbone for every method: ParaFormer "
        f"dim {a['dim']}, {a['heads']} heads, MLP {4 * a['dim']}, {a['branches']} branches x depth "
        f"{a['branch_depth']}, trained with the fused progressive objective over the classes seen so far; "
        f"AdamW, weight decay 0.05, peak lr {a['lr']:g} with {warmup} then cosine within each task, batch "
        f"{a['batch_size']}, grad clip 1, {a['epochs']} epochs per task ({chosen}). Every method starts from "
        f"the same initial weights per seed. Expansion adds {a['add_branches']} zero-gated branch(es) per "
        "new task (embedding and old branches frozen; loss on the new task's logits, as `paraformer expand "
        "--classes` trains); the ablation sets the new gates to 1. Replay: class-balanced buffer of "
        f"{a['buffer']} images, {a['replay_batch']} appended to every batch. LwF: temperature "
        f"{a['lwf_temperature']:g}, weight {a['lwf_weight']:g}. Forgetting: mean over the first {tasks - 1} "
        "tasks of (best accuracy at an earlier stage - final accuracy). Training seconds are wall clock on a "
        "shared machine."
    )


def _gate_bound(record: dict[str, Any]) -> str:
    """How far a zero-initialised gate can move in one task: about lr per Adam step."""
    a = record["config"]
    steps = math.ceil(round(0.9 * a["limit_train"]) / a["batch_size"]) * a["epochs"]
    return (
        f"A zero-initialised gate moves by about lr per Adam step: in one task's {steps} steps at peak lr "
        f"{a['lr']:g} it can reach about {steps * a['lr']:.2f} at most (less under warmup and cosine)."
    )


def render(record: dict[str, Any]) -> Section:
    dataset = record["benchmark"].removeprefix("continual-")
    results = record["payload"]["results"]
    methods = methods_of(record)
    seeds = sorted(results, key=int)
    rows = []
    for m in methods:
        rs = [results[s][m] for s in seeds]
        rows.append(
            [
                LABELS[m],
                *(cell(per_seed(record, m, key).values(), 1) for key in KEYS),
                f"{rs[0]['params']:,}",
                rs[0]["branches"],
                rs[0]["stored_images"],
                cell([r["train_seconds"] for r in rs], 0, with_n=False),
            ]
        )
    header = ["method", *(f"{name} %" for name, _ in KEYS.values()), "parameters at end", "branches at end"]
    header += ["stored images", "training s"]
    finding_rows = []
    for m in methods:
        old_c = [100 * statistics.fmean(v for v in results[s][m]["class_il"][-1][:-1]) for s in seeds]
        old_t = [100 * statistics.fmean(v for v in results[s][m]["task_il"][-1][:-1]) for s in seeds]
        diag = [
            100 * statistics.fmean(row[i] for i, row in enumerate(results[s][m]["task_il"])) for s in seeds
        ]
        gates = results[seeds[0]][m].get("gates") or []
        shown = ", ".join(f"{g:.3f}" for g in gates) + f" (seed {seeds[0]})" if gates else "-"
        finding_rows.append([LABELS[m], cell(old_c, 1), cell(old_t, 1), cell(diag, 1), shown])
    compared = comparisons(record)
    text = [
        f"### Continual learning: Split {dataset}",
        "",
        *provenance(record),
        "",
        _protocol(record),
        "",
        *table(header, rows),
        "",
        *comparison_lines(
            list(compared.values()), f"Comparisons on Split {dataset}, paired by seed (points):"
        ),
        "",
        "Where the accuracy goes, and the gates of the added branches:",
        "",
        *table(
            [
                "method",
                "class-IL: old tasks after the last %",
                "task-IL: old tasks after the last %",
                "each task just after learning it (task-IL) %",
                "final gates of the added branches",
            ],
            finding_rows,
        ),
        "",
        _gate_bound(record),
        "",
        f"![accuracy matrices](benchmarks/results/continual-{dataset}.png)",
    ]
    return Section(
        record["benchmark"],
        "\n".join(text),
        list(compared.values()),
        [(f"continual-{dataset}.png", lambda path: plot(dataset, record, path))],
    )


def plot(dataset: str, record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = methods_of(record)
    fig, axes = plt.subplots(2, len(methods), figsize=(3.2 * len(methods), 6.4), squeeze=False)
    for col, m in enumerate(methods):
        for row, (key, name) in enumerate((("class_il", "class-IL"), ("task_il", "task-IL"))):
            ax = axes[row][col]
            mat = [[100 * v for v in r] for r in _matrix_mean(record, m, key)]
            ax.imshow(mat, vmin=0, vmax=100, cmap="viridis")
            for i in range(len(mat)):
                for j in range(i + 1):
                    v = mat[i][j]
                    color = "black" if v > 60 else "white"
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8, color=color)
            size = len(mat)
            ax.set_xticks(range(size), [f"T{j + 1}" for j in range(size)], fontsize=7)
            ax.set_yticks(range(size), [f"after T{i + 1}" for i in range(size)], fontsize=7)
            ax.set_title(f"{LABELS[m].split(' (')[0]}\n{name}", fontsize=8)
            if row == 1:
                ax.set_xlabel("tested on task", fontsize=7)
    seeds = ", ".join(sorted(record["payload"]["results"], key=int))
    fig.suptitle(f"Split {dataset}: test accuracy % (mean over seeds {seeds})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
