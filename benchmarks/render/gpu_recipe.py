"""Render ``gpu-recipe.json``: the paper recipe on CIFAR-10 at equal wall-clock (ViT, fused, progressive)."""

from __future__ import annotations

from typing import Any

from benchmarks.render.common import Section, provenance, table


def render(record: dict[str, Any]) -> Section:
    cfg, payload = record["config"], record["payload"]
    rows = []
    for seed, arms in sorted(payload["results"].items()):
        for arm, r in arms.items():
            s, b = r["summary"], r["budget"]
            rows.append(
                [
                    seed,
                    arm,
                    f"{1000 * payload['batch_seconds'][arm]:.1f}",
                    b["optimizer_steps"],
                    f"{b['train_seconds']:.0f}",
                    s.get("selected_epoch"),
                    f"{100 * s['test_acc']:.2f}",
                ]
            )
    protocol = (
        f"Device {cfg['device']}, {cfg['seconds']:g} s of training per arm. Each schedule's cost per batch "
        "was measured side by side first; each arm then gets the optimizer steps that fit in the budget at "
        "that cost, with warmup and decay as fractions of its own steps. Test accuracy of the "
        "best-validation epoch. One seed per run of the script: a GPU row, not a paired verdict."
    )
    header = ["seed", "arm", "ms per batch", "optimizer steps", "train s", "selected epoch", "test acc %"]
    text = [
        "### The paper recipe at equal wall-clock (GPU)",
        "",
        *provenance(record),
        "",
        protocol,
        "",
        *table(header, rows),
    ]
    return Section("gpu-recipe", "\n".join(text))
