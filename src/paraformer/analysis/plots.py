"""Training curves: accuracy vs epoch and, for ParaFormer, accuracy vs branches used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from paraformer.atomic import atomic_write


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Write ``curves.png`` from the per-epoch metrics records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefixes = history[-1].get("test_acc_prefix") or []
    fig, axes = plt.subplots(1, 2 if prefixes else 1, figsize=(11 if prefixes else 5.5, 4), squeeze=False)
    ax = axes[0][0]
    epochs = [h["epoch"] for h in history]
    for key, label in (("train_acc", "train"), ("val_acc", "validation"), ("test_acc", "test")):
        values = [h.get(key) for h in history]
        if all(v is not None for v in values):
            ax.plot(epochs, [100 * v for v in values], marker="o", markersize=3, label=label)
    _finish_axes(ax, "epoch", "accuracy (%)", "accuracy vs epoch")
    if prefixes:
        ax = axes[0][1]
        ks = list(range(1, len(prefixes) + 1))
        shown = sorted({0, len(history) // 2, len(history) - 1})
        for i in shown:
            record = history[i]
            ax.plot(
                ks,
                [100 * a for a in record["test_acc_prefix"]],
                marker="o",
                alpha=0.4 + 0.6 * (i + 1) / len(history),
                label=f"epoch {record['epoch']}",
            )
        ax.set_xticks(ks)
        _finish_axes(ax, "branches used (prefix 1..k)", "test accuracy (%)", "accuracy vs number of branches")
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
    ax.legend()
