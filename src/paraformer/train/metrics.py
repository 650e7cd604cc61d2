"""Per-epoch metrics records, the one-line epoch report, model selection and the summary.

Model selection never reads the test split: with a validation split the selected
epoch is the best by the task's validation metric (ties keep the earlier epoch);
without one it is the last epoch. Test figures in the summary are measured once, at
the end, on the selected weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EpochStats:
    """Running sums over an epoch's training batches."""

    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, count: int, metrics: dict[str, float], seconds: float) -> None:
        self.loss_sum += loss * count
        self.seen += count
        self.seconds += seconds
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self) -> dict[str, float]:
        n = max(self.seen, 1)
        return {"loss": self.loss_sum / n, **{k: v / n for k, v in self.sums.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss_sum": self.loss_sum,
            "seen": self.seen,
            "seconds": self.seconds,
            "sums": dict(self.sums),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochStats:
        return cls(float(state["loss_sum"]), int(state["seen"]), float(state["seconds"]), dict(state["sums"]))


def prefixed(split: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{split}_{k}": v for k, v in metrics.items()}


def select_epoch(history: list[dict[str, Any]], metric: str, higher_is_better: bool) -> dict[str, Any] | None:
    """The record selected by validation ``metric``; ``None`` without a validation split."""
    key = f"val_{metric}"
    scored = [h for h in history if isinstance(h.get(key), (int, float)) and math.isfinite(h[key])]
    if not scored:
        return None
    sign = 1.0 if higher_is_better else -1.0
    return max(scored, key=lambda h: (sign * h[key], -h["epoch"]))  # ties keep the earlier epoch


def non_finite(
    record: dict[str, Any], keys: tuple[str, ...] = ("val_loss", "test_loss", "train_loss")
) -> str | None:
    """The first of ``keys`` whose value is not a finite number, if any."""
    for key in keys:
        value = record.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            return key
    return None


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "n/a"


def epoch_line(r: dict[str, Any], epochs: int) -> str:
    """One line per epoch: training figures, validation (and test when measured), speed."""
    parts = [f"epoch {r['epoch']}/{epochs}", f"loss {r['train_loss']:.3f}"]
    if "train_acc" in r:
        parts.append(f"train {_pct(r['train_acc'])}")
    for split in ("val", "test"):
        if f"{split}_acc" in r:
            parts.append(f"{split} {_pct(r[f'{split}_acc'])}")
        elif f"{split}_loss" in r:
            ppl = f" (ppl {r[f'{split}_ppl']:.2f})" if isinstance(r.get(f"{split}_ppl"), float) else ""
            parts.append(f"{split} loss {r[f'{split}_loss']:.3f}{ppl}")
    if r.get("val_acc_prefix"):
        parts.append("val prefixes " + "/".join(f"{100 * a:.1f}" for a in r["val_acc_prefix"]))
    parts.append(f"{r['samples_per_s']:.0f}/s")
    parts.append(f"{r['train_seconds']:.1f}s")
    return "  ".join(parts)


def summarize(
    *,
    history: list[dict[str, Any]],
    selected: dict[str, Any],
    has_val: bool,
    metric: str,
    test: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The run's ``summary.json``: what was selected, how, and each figure's split."""
    last = history[-1]
    how = f"best validation {metric}" if has_val else "last epoch (no validation split)"
    summary = {
        **extra,
        "epochs_completed": last["epoch"],
        "steps": last["step"],
        "selection": how,
        "selected_epoch": selected["epoch"],
        **{k: v for k, v in selected.items() if k.startswith("val_")},
        **prefixed("test", test),
        "train_seconds": sum(h["train_seconds"] for h in history),
        "mean_samples_per_s": sum(h["samples_per_s"] for h in history) / len(history),
        "sources": {
            "val_*": "validation split (held out from the training images), at the selected epoch",
            "test_*": "test split, measured once after training on the selected epoch's weights",
            "selected_epoch": how + "; never chosen by test figures",
        },
    }
    return summary
