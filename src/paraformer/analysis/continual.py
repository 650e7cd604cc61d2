"""Continual-learning metrics and helpers: class splits, masked predictions, the accuracy
matrix's summaries, a class-balanced replay buffer and the LwF distillation loss.

Conventions (as in Chaudhry et al. 2018, Lopez-Paz & Ranzato 2017): ``R[i, j]`` is the
accuracy on task ``j``'s test data after training on tasks ``0..i``; entries with
``j > i`` (tasks not yet seen) are NaN.

- class-incremental (class-IL): no task id at test time; the prediction is the argmax
  over every class seen so far (tasks ``0..i``).
- task-incremental (task-IL): the task id is given; the argmax is restricted to that
  task's classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from paraformer.errors import ConfigError


def class_splits(num_classes: int, classes_per_task: int) -> list[tuple[int, ...]]:
    """Tasks of consecutive classes in class order: ``(0, 1), (2, 3), ...`` for 2 per task."""
    if classes_per_task < 1 or num_classes % classes_per_task:
        raise ConfigError(f"{num_classes} classes do not split into tasks of {classes_per_task}.")
    return [tuple(range(s, s + classes_per_task)) for s in range(0, num_classes, classes_per_task)]


def seen_classes(tasks: Sequence[Sequence[int]], upto: int) -> list[int]:
    """The classes of tasks ``0..upto`` (inclusive), in order."""
    return [c for task in tasks[: upto + 1] for c in task]


def masked_predictions(logits: torch.Tensor, allowed: Sequence[int]) -> torch.Tensor:
    """(B, C) logits -> (B,) argmax over the ``allowed`` class indices only."""
    allowed_t = torch.as_tensor(list(allowed), dtype=torch.long, device=logits.device)
    return allowed_t[logits.index_select(-1, allowed_t).argmax(dim=-1)]


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor, allowed: Sequence[int]) -> float:
    """Accuracy (0-1) of the argmax restricted to ``allowed`` classes."""
    if len(labels) == 0:
        return math.nan
    return float((masked_predictions(logits, allowed) == labels).float().mean())


def average_accuracy(matrix: torch.Tensor) -> float:
    """Mean accuracy over all tasks after the last one: the mean of the last row."""
    return float(matrix[-1].mean())


def forgetting(matrix: torch.Tensor) -> torch.Tensor:
    """Per task ``j < T-1``: its best accuracy after any earlier stage, minus its final one."""
    t = matrix.shape[0]
    if t < 2:
        return torch.zeros(0, dtype=matrix.dtype)
    best = torch.stack([matrix[j : t - 1, j].max() for j in range(t - 1)])
    return best - matrix[-1, : t - 1]


def average_forgetting(matrix: torch.Tensor) -> float:
    """Mean drop from each task's best accuracy to its final one (the last task excluded)."""
    f = forgetting(matrix)
    return float(f.mean()) if len(f) else 0.0


def backward_transfer(matrix: torch.Tensor) -> float:
    """Mean of ``R[T-1, j] - R[j, j]`` over the tasks before the last (Lopez-Paz & Ranzato 2017).

    Negative when learning later tasks hurt earlier ones; 0 with a single task.
    """
    t = matrix.shape[0]
    if t < 2:
        return 0.0
    return float(torch.stack([matrix[-1, j] - matrix[j, j] for j in range(t - 1)]).mean())


def plot_accuracy_matrices(
    panels: dict[str, list[list[float | None]]], path: Path, title: str = "", names: Sequence[str] = ()
) -> None:
    """Heatmaps of accuracy matrices (0-1, None above the diagonal), one panel per entry, to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (label, rows) in zip(axes[0], panels.items(), strict=True):
        size = len(rows)
        grid = [[math.nan if v is None else 100 * v for v in row] for row in rows]
        ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
        for i in range(size):
            for j in range(i + 1):
                v = grid[i][j]
                if v == v:
                    ax.text(
                        j,
                        i,
                        f"{v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="black" if v > 60 else "white",
                    )
        ticks = [names[j] if j < len(names) else f"T{j + 1}" for j in range(size)]
        ax.set_xticks(range(size), ticks, fontsize=7, rotation=30)
        ax.set_yticks(range(size), [f"after T{i + 1}" for i in range(size)], fontsize=7)
        ax.set_xlabel("tested on task", fontsize=7)
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def class_balanced_buffer(
    labels: torch.Tensor, capacity: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices of a random class-balanced sample of at most ``capacity`` items.

    Every class present gets ``capacity // classes`` slots (the remainder goes to the
    lowest class ids), filled by a random sample of its items without replacement.
    """
    classes = sorted(int(c) for c in labels.unique())
    if not classes or capacity < 1:
        return torch.zeros(0, dtype=torch.long)
    base, extra = divmod(capacity, len(classes))
    picked = []
    for k, c in enumerate(classes):
        idx = torch.nonzero(labels == c).flatten()
        n = min(len(idx), base + (1 if k < extra else 0))
        picked.append(idx[torch.randperm(len(idx), generator=generator)[:n]])
    return torch.sort(torch.cat(picked)).values


def distillation_loss(
    logits: torch.Tensor, old_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """Learning without Forgetting: KL from the old model's softened outputs, scaled by T^2."""
    t = temperature
    return F.kl_div(
        F.log_softmax(logits / t, dim=-1),
        F.log_softmax(old_logits / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)
