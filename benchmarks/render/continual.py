"""continual-<dataset>.json (benchmarks/continual.py): Split datasets, expansion vs the baselines."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.protocol import LOSS, TIE, WIN, cell, paired
from benchmarks.render.common import Compared, Section, comparison_lines, provenance, table

LABELS = {
    "finetune": "fine-tuning (lower bound)",
    "joint": "joint on all data so far (upper bound)",
    "lwf": "LwF",
    "er": "ER, 200 images",
    "derpp": "DER++, 200 images",
    "er-eq": "ER, expansion's bytes",
    "expand": "expansion, exemplar-free",
    "expand-200": "expansion + 200 images",
    "expand-200-no-aux": "expansion + 200, no aux head",
    "expand-200-no-distill": "expansion + 200, no distillation",
    "expand-200-no-align": "expansion + 200, no weight aligning",
    "expand-200-no-gate-lr": "expansion + 200, no gate lr",
    "expand-plain": "expansion as before (no aux, distill, align, gate lr)",
}
KEYS = {
    "avg_acc_class_il": ("class-IL average accuracy", "higher"),
    "avg_acc_task_il": ("task-IL average accuracy", "higher"),
    "forgetting_class_il": ("class-IL forgetting", "lower"),
    "bwt_class_il": ("class-IL backward transfer", "higher"),
}
ACC, FORGET = "avg_acc_class_il", "forgetting_class_il"
ABLATION = ["expand-200-no-aux", "expand-200-no-distill", "expand-200-no-align", "expand-200-no-gate-lr"]
OTHERS = ["finetune", "lwf", "er", "derpp", "er-eq", "joint"]
# (a, b, key): every comparison this benchmark makes, a minus b, paired by seed
COMPARISONS = [
    ("expand", "lwf", ACC),
    ("expand-200", "er", ACC),
    ("expand-200", "derpp", ACC),
    *(("expand", b, FORGET) for b in OTHERS),
    *(("expand-200", b, FORGET) for b in ("er", "derpp", "er-eq")),
    ("expand", "finetune", ACC),
    ("expand", "er-eq", ACC),
    ("expand-200", "er-eq", ACC),
    ("expand", "expand-plain", ACC),
    *(("expand-200", b, ACC) for b in ABLATION),
    ("expand-200", "expand", ACC),
]


def per_seed(record: dict[str, Any], arm: str, key: str) -> dict[str, float]:
    """Per seed: one figure of ``arm`` in points (absent where the arm did not run)."""
    out = {}
    for seed, arms in record["payload"]["results"].items():
        value = arms.get(arm, {}).get(key)
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


def arms_of(record: dict[str, Any]) -> list[str]:
    results = record["payload"]["results"].values()
    return [a for a in LABELS if any(a in r for r in results)]


def _matrix_mean(record: dict[str, Any], arm: str, key: str) -> list[list[float]]:
    mats = [r[arm][key] for r in record["payload"]["results"].values() if arm in r]
    size = len(mats[0])
    return [
        [statistics.fmean([m[i][j] for m in mats if m[i][j] is not None] or [math.nan]) for j in range(size)]
        for i in range(size)
    ]


def _protocol(record: dict[str, Any]) -> str:
    a, p = record["config"], record["payload"]
    return (
        f"Protocol: {a['tasks']} tasks of {10 // a['tasks']} classes in class order; {a['limit_train']:,} "
        "training images in all (class-balanced, seeded per seed; 10% of them held out for validation), "
        f"{a['limit_test']:,} test images (the same for every seed). Backbone: ParaFormer dim {a['dim']}, "
        f"{a['heads']} heads, MLP {4 * a['dim']}, {a['branches']} branches x depth {a['branch_depth']}, "
        f"fused "
        f"prefix objective; AdamW, weight decay 0.05, peak lr {a['lr']:g}, warmup over 10% of each task's "
        f"steps then cosine, batch {a['batch_size']}, grad clip 1, {a['epochs']} epochs per task "
        f"({p['chosen_by']}). Every arm starts from the same weights per seed and trains task 1 identically "
        "(one model, reused). The loss reads the classes seen so far (the new task's only for exemplar-free "
        "expansion). Replay adds 32 stored images to every batch of 64; DER++ alpha 0.1, beta 0.5; LwF and "
        "expansion distil at temperature 2. Forgetting: mean over the first tasks of (best earlier "
        "accuracy - "
        "final accuracy); backward transfer: mean of (final - just learned). Memory: bytes kept beyond the "
        "common backbone (stored images and labels, stored logits, added parameters at 4 bytes). Training "
        "seconds are wall clock on a shared machine."
    )


def _options(record: dict[str, Any], arm: str) -> str:
    spec = record["payload"]["arms"].get(arm, {})
    opts = spec.get("options", {})
    return ", ".join(f"{k.replace('_', '-')} {v}" for k, v in opts.items()) or "-"


def _verdict(c: Compared | None) -> str:
    return "not measured" if c is None else c.result.verdict


def aims(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(aim, met / missed / not measured, the figures) for the issue's aims on this dataset."""
    c = comparisons(record)
    out = []

    def fig(key: str) -> str:
        return "n/a" if key not in c else f"{c[key].figure()} ({c[key].result.verdict}, n={c[key].result.n})"

    a1 = c.get(f"expand-lwf-{ACC}")
    out.append(
        (
            "exemplar-free expansion beats LwF on class-IL accuracy",
            "not measured" if a1 is None else ("met" if a1.result.verdict == WIN else "missed"),
            fig(f"expand-lwf-{ACC}"),
        )
    )
    er, der = c.get(f"expand-200-er-{ACC}"), c.get(f"expand-200-derpp-{ACC}")
    if er is None or der is None:
        met = "not measured"
    else:
        met = (
            "met"
            if er.result.verdict == WIN and er.result.mean >= 3 and der.result.verdict in (WIN, TIE)
            else "missed"
        )
    out.append(
        (
            "expansion + 200 images beats ER-200 by >= 3 points (a win, mean >= 3), ties or beats DER++-200",
            met,
            f"vs ER {fig(f'expand-200-er-{ACC}')}; vs DER++ {fig(f'expand-200-derpp-{ACC}')}",
        )
    )
    keys = [f"expand-{b}-{FORGET}" for b in OTHERS if f"expand-{b}-{FORGET}" in c]
    if not keys:
        met = "not measured"
    else:
        met = "met" if all(c[k].result.verdict == WIN for k in keys) else "missed"
    losses = [k.split("-")[1] for k in keys if c[k].result.verdict == LOSS]
    out.append(
        (
            "expansion forgets less than every other method at equal memory (class-IL forgetting; ER given "
            "expansion's bytes is the equal-memory arm, the others keep less)",
            met,
            "; ".join(f"vs {k.removeprefix('expand-').removesuffix('-' + FORGET)} {fig(k)}" for k in keys)
            + (f" — more forgetting than {', '.join(losses)}" if losses else ""),
        )
    )
    return out


def _gates(record: dict[str, Any], arm: str) -> str:
    """The added branches' gates after the last task: mean ± sd over branches and seeds."""
    gates = [
        g for r in record["payload"]["results"].values() if arm in r for g in (r[arm]["gates"] or [[]])[-1]
    ]
    return cell(gates, 2, with_n=False) if gates else "-"


def render(record: dict[str, Any]) -> Section:
    dataset = record["benchmark"].removeprefix("continual-")
    if "arms" not in record["payload"]:
        return Section(
            record["benchmark"],
            f"### Continual learning: Split {dataset}\n\nThe recorded raw file predates the library's "
            f"continual methods (issue 23); rerun `python benchmarks/continual.py --datasets {dataset} "
            "--data-dir "
            "../shared/datasets --reuse`.",
        )
    results = record["payload"]["results"]
    arms = arms_of(record)
    seeds = sorted(results, key=int)
    rows = []
    for arm in arms:
        rs = [results[s][arm] for s in seeds if arm in results[s]]
        mem = rs[0]["memory"]
        rows.append(
            [
                LABELS[arm],
                *(cell(per_seed(record, arm, key).values(), 1) for key in KEYS),
                f"{mem['total_bytes']:,} ({mem['stored_samples']} img, {mem['added_params']:,} params)",
                f"{rs[0]['params']:,}",
                cell([r["train_seconds"] for r in rs], 0, with_n=False),
            ]
        )
    header = ["arm", *(f"{name} %" for name, _ in KEYS.values()), "memory, bytes", "parameters at end"]
    header += ["training s"]
    compared = comparisons(record)
    aim_rows = [[aim, f"**{met}**", figures] for aim, met, figures in aims(record)]
    where = []
    for arm in arms:
        old = [
            100 * statistics.fmean(results[s][arm]["class_il"][-1][:-1]) for s in seeds if arm in results[s]
        ]
        last = [100 * results[s][arm]["class_il"][-1][-1] for s in seeds if arm in results[s]]
        diag = [
            100 * statistics.fmean(row[i] for i, row in enumerate(results[s][arm]["task_il"]))
            for s in seeds
            if arm in results[s]
        ]
        where.append([LABELS[arm], cell(old, 1), cell(last, 1), cell(diag, 1), _gates(record, arm)])
    text = [
        f"### Continual learning: Split {dataset}",
        "",
        *provenance(record),
        "",
        _protocol(record),
        "",
        *table(header, rows),
        "",
        "The issue's aims on this dataset (met / missed, paired by seed, points):",
        "",
        *table(["aim", "verdict", "figures [95% interval]"], aim_rows),
        "",
        *comparison_lines(
            list(compared.values()), f"Comparisons on Split {dataset}, paired by seed (points):"
        ),
        "",
        "Where the accuracy goes, and the gates of the added branches (after the last task; "
        "zero-initialised; "
        "`expand-plain` and `no gate lr` train them at the run's lr, the others at 20x):",
        "",
        *table(
            [
                "arm",
                "class-IL: old tasks after the last %",
                "class-IL: the last task %",
                "each task just after learning it (task-IL) %",
                "gates of the added branches",
            ],
            where,
        ),
        "",
        "Options of each arm: " + "; ".join(f"`{a}`: {_options(record, a)}" for a in arms) + ".",
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

    arms = arms_of(record)
    cols = min(len(arms), 7)
    rows = -(-len(arms) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.7 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(arms):
            ax.axis("off")
            continue
        arm = arms[k]
        mat = [[100 * v for v in r] for r in _matrix_mean(record, arm, "class_il")]
        ax.imshow(mat, vmin=0, vmax=100, cmap="viridis")
        for i in range(len(mat)):
            for j in range(i + 1):
                v = mat[i][j]
                ax.text(
                    j,
                    i,
                    f"{v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if v > 60 else "white",
                )
        size = len(mat)
        ax.set_xticks(range(size), [f"T{j + 1}" for j in range(size)], fontsize=6)
        ax.set_yticks(range(size), [f"after T{i + 1}" for i in range(size)], fontsize=6)
        ax.set_title(LABELS[arm], fontsize=7)
    seeds = ", ".join(sorted(record["payload"]["results"], key=int))
    fig.suptitle(f"Split {dataset}: class-IL test accuracy % (mean over seeds {seeds})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
