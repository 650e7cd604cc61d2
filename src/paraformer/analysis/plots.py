"""Training curves: accuracy (or loss) vs epoch and, for branched models, accuracy vs branches used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from paraformer.files import atomic_write


def plot_curves(
    history: list[dict[str, Any]], path: Path, title: str = "", selected_epoch: int | None = None
) -> None:
    """Write ``curves.png`` from the per-epoch metrics records.

    The left panel shows the training, validation (and, where measured, test) accuracy
    per epoch, or the losses for tasks without an accuracy; the selected epoch is
    marked. The right panel, for branched models, shows validation accuracy against
    the number of branches used. Legends sit below the axes so they never hide points.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "acc" if any("train_acc" in h for h in history) else "loss"
    prefixes = [h for h in history if h.get(f"val_{metric}_prefix")]
    fig, axes = plt.subplots(1, 2 if prefixes else 1, figsize=(11 if prefixes else 5.5, 4.6), squeeze=False)
    ax = axes[0][0]
    scale = 100 if metric == "acc" else 1
    for split, label in (("train", "train"), ("val", "validation"), ("test", "test")):
        points = [
            (h["epoch"], scale * h[f"{split}_{metric}"])
            for h in history
            if h.get(f"{split}_{metric}") is not None
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
    if selected_epoch is not None:
        ax.axvline(selected_epoch, color="grey", linestyle=":", label=f"selected epoch {selected_epoch}")
    ylabel = "accuracy (%)" if metric == "acc" else "loss"
    _finish_axes(ax, "epoch", ylabel, f"{ylabel.split(' ')[0]} vs epoch")
    if prefixes:
        ax = axes[0][1]
        shown = sorted({0, len(prefixes) // 2, len(prefixes) - 1})
        for i in shown:
            record = prefixes[i]
            values = record[f"val_{metric}_prefix"]
            ks = list(range(1, len(values) + 1))
            ax.plot(
                ks,
                [scale * a for a in values],
                marker="o",
                alpha=0.4 + 0.6 * (i + 1) / len(prefixes),
                label=f"epoch {record['epoch']}",
            )
            ax.set_xticks(ks)
        _finish_axes(
            ax, "branches used (prefix 1..k)", f"validation {ylabel}", f"{ylabel.split(' ')[0]} vs branches"
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _finish_axes(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=min(4, max(1, len(handles))),
        fontsize=8,
        frameon=False,
    )


def plot_branches(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Write ``branches.png``: accuracy against parameters of the first-k-branch models.

    One point per k (labelled ``k=...``), a line per split (validation, test).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    params = [r["params"] / 1e6 for r in rows]
    for split, label in (("val", "validation"), ("test", "test")):
        if f"{split}_acc" not in rows[0]:
            continue
        acc = [100 * r[f"{split}_acc"] for r in rows]
        ax.plot(params, acc, marker="o", label=label)
        if split == "test" or "test_acc" not in rows[0]:
            for r, x, y in zip(rows, params, acc, strict=True):
                ax.annotate(
                    f"k={r['branches']}", (x, y), textcoords="offset points", xytext=(4, -12), fontsize=8
                )
    _finish_axes(ax, "parameters (millions)", "accuracy (%)", title or "accuracy with the first k branches")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
