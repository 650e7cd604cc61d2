"""lm.json (benchmarks/lm.py): uniform vs tapered vs widening vs ParaFormer-LM; gradient fan-in."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.protocol import Comparison, by_round, cell, one_sample, paired, paired_ratio
from benchmarks.render.common import Compared, Section, comparison_lines, provenance, table

BASE = "lm_uniform_small"
LABELS = {
    "lm_uniform_small": "uniform",
    "cascadeformer_small": "CascadeFormer (taper 1.5x -> 0.5x)",
    "lm_widening_small": "widening (0.5x -> 1.5x)",
    "paraformer_lm_small": "ParaFormer-LM (4 x 2, fused)",
    "lm_uniform_small+ds": "uniform, deep supervision",
}
SPEED = {
    "train": ("train tok/s", "higher"),
    "infer": ("inference tok/s", "higher"),
    "latency": ("generation ms/token", "lower"),
}


def label(arm: str) -> str:
    return LABELS.get(arm, arm)


def test_ppl(record: dict[str, Any], arm: str) -> dict[str, float]:
    return {s: r["test_ppl"] for s, r in record["payload"]["results"].get(arm, {}).items()}


def spearman(record: dict[str, Any], arm: str, key: str = "theory~grad") -> dict[str, float]:
    return {
        s: g["correlations"][key]["spearman"]
        for s, g in record["payload"]["gfa"].get(arm, {}).items()
        if key in g["correlations"]
    }


def speed_rounds(record: dict[str, Any], arm: str, what: str) -> list[float] | float | None:
    """Per-round speed figures (or, in files before the protocol, only their median)."""
    return (record["payload"].get("speed") or {}).get(arm, {}).get(what)


def speed_ratio(record: dict[str, Any], arm: str, what: str) -> Comparison | None:
    """arm / uniform, paired by round; None when only medians were recorded."""
    a, b = speed_rounds(record, arm, what), speed_rounds(record, BASE, what)
    if not isinstance(a, list) or not isinstance(b, list):
        return None
    return paired_ratio(by_round(a), by_round(b), SPEED[what][1])


def comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    out: dict[str, Compared] = {}
    for arm in record["payload"]["results"]:
        if arm == BASE:
            continue
        c = paired(test_ppl(record, arm), test_ppl(record, BASE), "lower")
        if c.n:
            out[f"ppl-{arm}"] = Compared(f"test perplexity (lower is better): {label(arm)} vs uniform", c, "")
        for what, (name, better) in SPEED.items():
            r = speed_ratio(record, arm, what)
            if r is not None:
                out[f"{what}-{arm}"] = Compared(
                    f"{name} ratio ({better} is better): {label(arm)} / uniform", r, paired_by="rounds"
                )
    return out


def gfa_comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    out = {}
    for arm in record["payload"]["gfa"]:
        c = one_sample(spearman(record, arm))
        if c.n:
            out[f"gfa-{arm}"] = Compared(f"Spearman(theory, gradient) of {label(arm)} vs 0", c, "", 2)
    return out


def _median(value: list[float] | float | None) -> float | None:
    return statistics.median(value) if isinstance(value, list) else value


def _protocol(record: dict[str, Any]) -> str:
    c = record["config"]
    params = next(iter(record["payload"]["results"][BASE].values()))["num_params"]
    tokens = c["steps"] * c["batch_size"] * c["seq_len"]
    return (
        f"Protocol: {Path(c['data']).name}, character tokens, first 90% train / 5% validation / 5% test; "
        f"every model {params:,} parameters, context {c['seq_len']}; {c['steps']} steps of {c['batch_size']} "
        f"x {c['seq_len']} tokens ({tokens / 1e6:.2f}M tokens), AdamW lr {c['lr']:g} ({c['warmup_steps']} "
        f"warmup steps, cosine to 1%), weight decay 0.1, grad clip 1, fp32; evaluation every "
        f"{c['eval_interval']} steps, best validation loss selected. Speed: {c['rounds']} interleaved rounds "
        f"in one process, median; training = a full AdamW step at batch {c['batch_size']} x {c['seq_len']} "
        "(ParaFormer-LM: its fused prefix objective); inference = forward at the same batch; generation = "
        f"batch 1, {c['seq_len'] // 2} new tokens after a {c['seq_len'] // 2}-token prompt, no KV cache."
    )


def render_compare(record: dict[str, Any]) -> Section:
    results = record["payload"]["results"]
    base = {w: _median(speed_rounds(record, BASE, w)) for w in SPEED}
    rows, medians_only = [], False
    for arm, runs in results.items():
        s = list(runs.values())
        speeds = []
        for what in SPEED:
            value = _median(speed_rounds(record, arm, what))
            if value is None or base[what] is None:
                speeds.append("n/a")
                continue
            medians_only |= not isinstance(speed_rounds(record, arm, what), list)
            digits = 2 if what == "latency" else 0
            speeds.append(f"{value:.{digits}f} ({value / base[what]:.3f}x)")
        rows.append(
            [
                label(arm),
                f"{s[0]['num_params']:,}",
                cell([r["val_ppl"] for r in s]),
                cell([r["test_ppl"] for r in s]),
                cell([r["test_bpc"] for r in s], 3),
                *speeds,
            ]
        )
    header = ["model", "params", "val perplexity", "test perplexity", "test bits/char"]
    header += [name + " (median, vs uniform)" for name, _ in SPEED.values()]
    note = (
        ["This file holds the median speed of the rounds only, so the speed ratios have no interval.", ""]
        if medians_only
        else []
    )
    compared = comparisons(record)
    text = [
        "### Language models: uniform vs tapered vs widening vs ParaFormer-LM",
        "",
        *provenance(record),
        "",
        _protocol(record),
        "",
        *table(header, rows),
        "",
        *note,
        *comparison_lines(
            list(compared.values()), "Comparisons, paired by seed (perplexity) or round (speed):"
        ),
    ]
    return Section("lm-compare", "\n".join(text), list(compared.values()))


def render_gfa(record: dict[str, Any]) -> Section:
    gfa = record["payload"]["gfa"]
    rows, plots = [], []
    for arm, runs in gfa.items():
        if not runs:
            continue
        ratio = [g["grad_norm"][0] / g["grad_norm"][-1] for g in runs.values()]
        rows.append(
            [
                label(arm),
                cell(spearman(record, arm).values()),
                cell(spearman(record, arm, "theory~importance").values()),
                cell(spearman(record, arm, "grad~importance").values()),
                cell(ratio),
            ]
        )
        first = runs[min(runs, key=int)]
        name = f"gfa-{arm.replace('+', '-')}.png"
        deep = arm.endswith("+ds")
        plots.append((name, lambda path, g=first, deep=deep: _plot(g, deep, path)))
    compared = gfa_comparisons(record)
    images = [f"![{name}](benchmarks/results/{name})" for name, _ in plots]
    text = [
        "### Gradient fan-in: theory vs measured vs skip importance",
        "",
        *provenance(record),
        "",
        "Theory: layer l of L has fan-in 1 + (L - l) (with deep supervision, quadratic); measured: the "
        "per-layer gradient norm accumulated over training; skip importance: the validation loss increase "
        "when one layer is skipped. Spearman correlations per seed.",
        "",
        *table(
            [
                "model",
                "Spearman(theory, gradient)",
                "Spearman(theory, skip importance)",
                "Spearman(gradient, skip importance)",
                "gradient norm, first / last layer",
            ],
            rows,
        ),
        "",
        *comparison_lines(list(compared.values()), "One-sample comparisons, over seeds:"),
        "",
        "Per-layer gradients of the first seed of each model:",
        "",
        *images,
    ]
    return Section("lm-gfa", "\n".join(text), list(compared.values()), plots)


def _plot(gfa: dict[str, Any], deep: bool, path: Path) -> None:
    from paraformer.analysis.gfa import plot_gfa

    sup = ", deep supervision" if deep else ""
    plot_gfa(gfa, path, title=f"{gfa['model']}{sup}: gradient fan-in")
