"""compression-<dataset>.json (benchmarks/compression.py): k of N branches vs ViTs from scratch."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.protocol import cell, paired
from benchmarks.render.common import Compared, Section, comparison_lines, provenance, table

METHODS = ("prefix", "greedy", "greedy-ft", "vit")
LABELS = {
    "prefix": "ParaFormer, first k branches",
    "greedy": "ParaFormer, greedy k branches",
    "greedy-ft": "ParaFormer, greedy + fine-tune",
    "vit": "ViT from scratch, depth k*d",
}


def branches(record: dict[str, Any]) -> int:
    first = next(iter(record["payload"]["results"].values()))
    return max(int(k) for k in first["prefix"])


def accuracy(record: dict[str, Any], method: str, k: int, key: str = "test_acc") -> dict[str, float]:
    """Per seed: the accuracy (points) of ``method``'s k-branch model (or depth-k*d ViT)."""
    out = {}
    for seed, r in record["payload"]["results"].items():
        entry = r.get(method, {}).get(str(k))
        if entry is not None:
            out[seed] = 100 * entry[key]
    return out


def params(record: dict[str, Any], k: int) -> int:
    return next(iter(record["payload"]["results"].values()))["prefix"][str(k)]["params"]


def comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    """Each k-branch model against the ViT of its size, and at k = N/4: greedy vs prefix, each vs full."""
    n = branches(record)
    quarter = max(1, n // 4)
    full = accuracy(record, "prefix", n)
    out: dict[str, Compared] = {}
    vit_ks = sorted({int(k) for r in record["payload"]["results"].values() for k in r.get("vit", {})})
    for k in vit_ks:
        for m in ("prefix", "greedy", "greedy-ft"):
            c = paired(accuracy(record, m, k), accuracy(record, "vit", k))
            if c.n:
                out[f"{m}-vit-k{k}"] = Compared(f"k = {k}: {LABELS[m]} vs {LABELS['vit']}", c)
    c = paired(accuracy(record, "greedy", quarter), accuracy(record, "prefix", quarter))
    out[f"greedy-prefix-k{quarter}"] = Compared(
        f"k = N/4 = {quarter}: {LABELS['greedy']} vs {LABELS['prefix']}", c
    )
    for m in ("prefix", "greedy", "greedy-ft"):
        c = paired(accuracy(record, m, quarter), full)
        if c.n:
            out[f"{m}-full-k{quarter}"] = Compared(f"k = N/4 = {quarter}: {LABELS[m]} vs the full model", c)
    c = paired(accuracy(record, "prefix", 1), full)
    out["prefix-full-k1"] = Compared(f"k = 1: {LABELS['prefix']} vs the full model", c)
    return out


def _protocol(record: dict[str, Any]) -> str:
    cfg = record["config"] or {}
    n, d = cfg.get("branches"), cfg.get("branch_depth")
    lr = cfg.get("lr")
    return (
        f"Protocol: {cfg.get('datasets', ['?'])[0]}, the first {cfg.get('limit_train')} training images "
        "(class-balanced; 10% held out for validation), the full test set; "
        f"dim {cfg.get('dim')}, {cfg.get('heads')} heads, MLP {4 * cfg.get('dim', 0)}; ParaFormer {n} "
        f"branches x depth {d} trained fused (all prefix losses) for {cfg.get('epochs')} epochs, batch "
        f"{cfg.get('batch_size')}, AdamW lr {lr:g}, accuracy.py's recipe; the best-validation epoch is "
        "compressed. Greedy adds the branch that most lowers validation loss. Fine-tuning: greedy's "
        f"branches trained for {cfg.get('finetune_epochs')} epoch(s) at lr {lr / 10:g} (fused), best "
        f"validation epoch kept. ViTs: depth k x {d} (the k-branch model's parameter count), the same "
        "recipe from scratch. Test accuracy (%) of each model; ratio = full ParaFormer parameters / the "
        "model's."
    )


def _smallest_within(record: dict[str, Any], method: str, n: int) -> list[str]:
    """Per seed: the smallest k whose validation accuracy is within 2 points of the full model's."""
    out = []
    for seed, r in sorted(record["payload"]["results"].items(), key=lambda kv: int(kv[0])):
        full = r["prefix"][str(n)]["val_acc"]
        fits = sorted(int(k) for k, v in r.get(method, {}).items() if v["val_acc"] >= full - 0.02)
        out.append(f"seed {seed}: {f'k = {fits[0]}' if fits else 'none'}")
    return out


def render(record: dict[str, Any]) -> Section:
    dataset = record["benchmark"].removeprefix("compression-")
    results = record["payload"]["results"]
    n = branches(record)
    full_params = params(record, n)
    rows = []
    for k in range(1, n + 1):
        cells = [cell(accuracy(record, m, k).values()) if accuracy(record, m, k) else "" for m in METHODS]
        rows.append([k, f"{params(record, k):,}", f"{full_params / params(record, k):.2f}x", *cells])
    requested = [str(s) for s in (record["config"] or {}).get("seeds", [])]
    missing = [s for s in requested if s not in results]
    compared = comparisons(record)
    smallest = [
        f"- {LABELS[m]}: " + "; ".join(_smallest_within(record, m, n))
        for m in ("prefix", "greedy", "greedy-ft")
    ]
    text = [
        f"### Compression: k of {n} branches vs ViTs from scratch ({dataset})",
        "",
        *provenance(record),
        "",
        *(
            [
                f"Only seed(s) {', '.join(sorted(results, key=int))} of the {len(requested)} requested "
                "finished.",
                "",
            ]
            if missing
            else []
        ),  # fmt: skip
        _protocol(record),
        "",
        *table(["k", "params", "ratio", *(LABELS[m] for m in METHODS)], rows),
        "",
        "Greedy orders (validation): "
        + "; ".join(
            f"seed {s}: {r['greedy_order']}" for s, r in sorted(results.items(), key=lambda kv: int(kv[0]))
        ),
        "",
        "Smallest measured k whose validation accuracy is within 2 points of the full model's:",
        "",
        *smallest,
        "",
        *comparison_lines(
            list(compared.values()), f"Comparisons on {dataset}, paired by seed (test accuracy, points):"
        ),
        "",
        f"![compression](benchmarks/results/compression-{dataset}.png)",
    ]
    return Section(
        record["benchmark"],
        "\n".join(text),
        list(compared.values()),
        [(f"compression-{dataset}.png", lambda path: plot(dataset, record, path))],
    )


def plot(dataset: str, record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    seeds = record["payload"]["results"]
    n = branches(record)
    for i, m in enumerate(METHODS):
        ks = [k for k in range(1, n + 1) if all(str(k) in r.get(m, {}) for r in seeds.values())]
        if not ks:
            continue
        accs = [list(accuracy(record, m, k).values()) for k in ks]
        mean = [statistics.fmean(a) for a in accs]
        err = [statistics.stdev(a) if len(a) > 1 else 0.0 for a in accs]
        first = next(iter(seeds.values()))[m]
        x = [first[str(k)]["params"] / 1e6 for k in ks]
        style = "--" if m == "vit" else "-"
        ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, color=f"C{i}", label=LABELS[m], linestyle=style)
    ax.set(
        xlabel="parameters (millions)", ylabel="test accuracy (%)", title=f"{dataset}: accuracy vs parameters"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
