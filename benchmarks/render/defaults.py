"""defaults.json (benchmarks/defaults.py): the budget rule of `train` against the former defaults."""

from __future__ import annotations

from typing import Any

from benchmarks.protocol import cell, paired
from benchmarks.render.common import Compared, Section, comparison_lines, provenance, table

LABELS = {
    "rule": "the rule (batch and epochs by the training set)",
    "former": "former defaults (batch 128, 10 epochs)",
    "former-time": "former batch 128, given the rule's wall-clock",
}
COMPARISONS = [("rule", "former", "as each is the default"), ("rule", "former-time", "at equal wall-clock")]


def _accuracy(runs: dict[str, dict[str, Any]], arm: str) -> dict[str, float]:
    return {seed: 100 * r[arm]["summary"]["test_acc"] for seed, r in runs.items() if r.get(arm)}


def render(record: dict[str, Any]) -> Section:
    results = record["payload"]["results"]
    rows, compared = [], []
    for setting, runs in results.items():
        for arm, label in LABELS.items():
            done = {s: r[arm] for s, r in runs.items() if r.get(arm)}
            if not done:
                continue
            cfgs, summaries = [r["config"] for r in done.values()], [r["summary"] for r in done.values()]
            rows.append(
                [
                    setting,
                    label,
                    len(done),
                    cell([c["batch_size"] for c in cfgs], 0, with_n=False),
                    cell([s["epochs_completed"] for s in summaries], 0, with_n=False),
                    cell([s["steps"] for s in summaries], 0, with_n=False),
                    cell([s["train_seconds"] for s in summaries], 0, with_n=False),
                    cell([s["test_acc"] for s in summaries], 2, 100),
                ]
            )
        for a, b, how in COMPARISONS:
            c = paired(_accuracy(runs, a), _accuracy(runs, b))
            if c.n:
                compared.append(Compared(f"{setting}, {how}: {LABELS[a]} vs {LABELS[b]}", c))
    header = [
        "training set",
        "arm",
        "seeds",
        "batch",
        "epochs",
        "optimizer steps",
        "training s",
        "test acc %",
    ]
    text = [
        "### Defaults that fit the data",
        "",
        *provenance(record),
        "",
        "Protocol: `paraformer train` with no --epochs, --max-steps or --batch-size, on the default model of "
        "each dataset (dim 96, 4 branches x depth 2, fused), against the former defaults (batch 128, 10 "
        "epochs, a warmup epoch) and against batch 128 given the same wall-clock (epochs sized from the two "
        "settings' epoch cost measured side by side). Class-balanced subsets, 10% held out for validation, "
        "full test sets; test accuracy of the best-validation epoch. On the full datasets the rule chooses "
        "batch 128 and 10 epochs: the former defaults exactly, so they are not run.",
        "",
        *table(header, rows),
        "",
        *comparison_lines(compared, "Comparisons, paired by seed (points):"),
    ]
    return Section(record["benchmark"], "\n".join(text), compared)
