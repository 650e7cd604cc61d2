"""prune-l16-<text>.json (benchmarks/prune_depth.py): pruning 16-layer models, sub-layer CascadeFlow."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

from benchmarks.protocol import LOSS, cell, paired
from benchmarks.render.common import Compared, Section, comparison_lines, provenance, table

METHODS = (
    "cascadeflow",
    "cascadeflow-taylor",
    "cascadeflow-sub",
    "cascadeflow-sub-taylor",
    "finercut",
    "block-influence",
    "angular",
    "magnitude",
    "random",
    "last",
)
LAYER_METHODS = ("cascadeflow-taylor", "block-influence", "angular", "magnitude", "random", "last")
RANKED = tuple(m for m in METHODS if m not in ("random", "last"))


def results(record: dict[str, Any]) -> dict[str, Any]:
    return record["payload"]["results"]


def ks_of(record: dict[str, Any]) -> list[int]:
    return sorted(int(k) for k in record["config"]["ks"])


def depth(record: dict[str, Any]) -> int:
    return len(next(iter(results(record).values()))["rankings"]["final"]["cascadeflow"])


def ppl(record: dict[str, Any], method: str, k: int, healed: bool) -> dict[str, float]:
    """Per training seed: test perplexity after removing K layers' worth (random: mean of its removals)."""
    key = "healed_test_ppl" if healed else "test_ppl"
    out = {}
    for seed, r in results(record).items():
        values = [row[key] for n, row in r["rows"].items() if n.startswith(f"{method}|{k}|") and row.get(key)]
        if values:
            out[seed] = statistics.fmean(values)
    return out


def paraformer_ppl(record: dict[str, Any], k: int, healed: bool) -> dict[str, float]:
    key = "healed_test_ppl" if healed else "test_ppl"
    return {
        s: r["paraformer"][str(k)][key]
        for s, r in results(record).items()
        if str(k) in r.get("paraformer", {}) and key in r["paraformer"][str(k)]
    }


def params(record: dict[str, Any], method: str, k: int) -> list[float]:
    return [
        row["params"]
        for r in results(record).values()
        for n, row in r["rows"].items()
        if n.startswith(f"{method}|{k}|")
    ]


def stability(record: dict[str, Any], method: str) -> dict[str, float]:
    """Per seed: Spearman of the method's ranking at the half-way and the final checkpoint."""
    from paraformer.analysis.stats import spearman

    return {
        s: spearman(r["rankings"]["mid"][method], r["rankings"]["final"][method])
        for s, r in results(record).items()
    }


def across_seeds(record: dict[str, Any], method: str) -> list[float]:
    from paraformer.analysis.stats import spearman

    res = results(record)
    return [
        spearman(res[a]["rankings"]["final"][method], res[b]["rankings"]["final"][method])
        for a, b in itertools.combinations(sorted(res, key=int), 2)
    ]


def comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    out: dict[str, Compared] = {}

    def add(key: str, text: str, a: dict, b: dict, unit: str = "", better: str = "lower") -> None:
        c = paired(a, b, better)
        if c.n:
            out[key] = Compared(text, c, unit)

    for k in ks_of(record):
        for m in METHODS:
            if m != "cascadeflow-sub":
                add(
                    f"sub-{m}-k{k}",
                    f"test ppl, K={k} unhealed: cascadeflow-sub - {m}",
                    ppl(record, "cascadeflow-sub", k, False),
                    ppl(record, m, k, False),
                )
        for m in LAYER_METHODS:
            add(
                f"flow-{m}-k{k}",
                f"test ppl, K={k} unhealed: cascadeflow - {m}",
                ppl(record, "cascadeflow", k, False),
                ppl(record, m, k, False),
            )
        for ref in ("cascadeflow", "cascadeflow-sub"):
            add(
                f"healed-{ref}-finercut-k{k}",
                f"test ppl, K={k} healed: {ref} - finercut",
                ppl(record, ref, k, True),
                ppl(record, "finercut", k, True),
            )
        for healed in (False, True):
            when = "healed" if healed else "unhealed"
            for ref in ("cascadeflow", "finercut"):
                add(
                    f"para-{ref}-k{k}-{when}",
                    f"test ppl, {k} layers' parameters removed, {when}: ParaFormer-LM first branches - {ref}",
                    paraformer_ppl(record, k, healed),
                    ppl(record, ref, k, healed),
                )
    for m in RANKED[1:]:
        add(
            f"stability-{m}",
            f"Spearman mid vs final checkpoint: cascadeflow - {m}",
            stability(record, "cascadeflow"),
            stability(record, m),
            better="higher",
        )
    return out


def _ppl_table(record: dict[str, Any]) -> list[str]:
    ks = ks_of(record)
    full = [r["full"]["test_ppl"] for r in results(record).values()]
    layers = depth(record)
    header = ["method"]
    for k in ks:
        header += [f"K={k} ({k / layers:.0%}) unhealed", f"K={k} healed", f"K={k} params left"]
    rows = [["none (full model)", *([cell(full), cell(full), f"{_mean_params(record):,.0f}"] * len(ks))]]
    for m in METHODS:
        name = f"{m} (removals x seeds pooled)" if m == "random" else m
        row = [name]
        for k in ks:
            row += [
                cell(ppl(record, m, k, False).values()),
                cell(ppl(record, m, k, True).values()),
                f"{statistics.fmean(params(record, m, k)):,.0f}" if params(record, m, k) else "n/a",
            ]
        rows.append(row)
    para_full = [r["paraformer"]["full"]["test_ppl"] for r in results(record).values() if "paraformer" in r]
    if para_full:
        row = ["ParaFormer-LM (8 x 2), full / first branches"]
        for k in ks:
            rows_k = [
                r["paraformer"][str(k)] for r in results(record).values() if str(k) in r.get("paraformer", {})
            ]
            row += [
                f"{cell(para_full)} / {cell(paraformer_ppl(record, k, False).values())}",
                cell(paraformer_ppl(record, k, True).values()),
                f"{statistics.fmean(x['params'] for x in rows_k):,.0f} ({rows_k[0]['branches']} branches)"
                if rows_k
                else "n/a",
            ]
        rows.append(row)
    return table(header, rows)


def _mean_params(record: dict[str, Any]) -> float:
    return statistics.fmean(r["full"]["params"] for r in results(record).values())


def _stability_table(record: dict[str, Any]) -> list[str]:
    rows = []
    for m in RANKED:
        across = across_seeds(record, m)
        unit = "sub-layers" if m.startswith("cascadeflow-sub") or m == "finercut" else "layers"
        rows.append(
            [
                m,
                unit,
                cell(across).replace(f"(n={len(across)})", f"({len(across)} pairs)"),
                cell(stability(record, m).values()),
            ]
        )
    return table(
        ["method", "ranks", "Spearman across training seeds", "Spearman mid vs final checkpoint"], rows
    )


def _removed_table(record: dict[str, Any], k: int) -> list[str]:
    res = results(record)
    seeds = sorted(res, key=int)
    rows = []
    for m in METHODS:
        cells = []
        for s in seeds:
            row = res[s]["rows"].get(f"{m}|{k}|0", {})
            whole = ",".join(str(i + 1) for i in row.get("layers", []))
            subs = [f"A{i + 1}" for i in row.get("attn", [])] + [f"F{i + 1}" for i in row.get("mlp", [])]
            cells.append(" ".join(filter(None, [whole and f"L{whole}", " ".join(subs)])) or "-")
        rows.append([m, *cells])
    return table(["method", *(f"seed {s}" for s in seeds)], rows)


def _flattening(record: dict[str, Any]) -> str:
    """How much the validation loss still fell over the last quarter of the evaluations."""
    drops = []
    for r in results(record).values():
        curve = [v for _, v in r["base"]["val_curve"]]
        start = curve[max(0, len(curve) - 1 - max(1, len(curve) // 4))]
        drops.append(100 * (start - curve[-1]) / start)
    return cell(drops)


def render(record: dict[str, Any]) -> Section:
    c = record["config"]
    text_name = c["text"]
    ks = ks_of(record)
    first = next(iter(results(record).values()))
    tokens = first["base"]["budget"]["tokens_seen"]
    compared = comparisons(record)
    aim = compared.get(f"sub-finercut-k{ks[0]}")
    aim_text = "not measured"
    if aim is not None:
        met = aim.result.n >= 2 and aim.result.verdict != LOSS
        aim_text = (
            f"cascadeflow-sub - finercut at K={ks[0]} unhealed: {aim.figure()}, **{aim.result.verdict}** "
            f"-> aim {'**met**' if met else '**missed**'} (met = not significantly worse, paired by seed, "
            "with no calibration pass)"
        )
    protocol = (
        f"Protocol: `{Path(c['data']).name}`, character tokens, first 90% train / 5% validation / 5% "
        f"test. Base models: `lm_uniform_l16` ({depth(record)} layers, dim 64, 2 heads, FFN 256, context "
        f"64, {_mean_params(record):,.0f} parameters) and `paraformer_lm_l16` (the same blocks as 8 "
        f"branches of depth 2, fused prefix objective), {c['steps']} steps of {c['batch_size']} windows "
        f"({tokens / 1e6:.2f}M tokens), AdamW lr {c['lr']:g}, warmup 10% then cosine to 1%; the validation "
        f"loss fell by {_flattening(record)} % over the last quarter of the evaluations (flattening). "
        "Pruning acts on the final weights; test perplexity per training seed (random: "
        f"{c['random_seeds']} removals per seed, the first one healed); calibration for block-influence, "
        f"angular and finercut: the first {c['calib_windows']} validation windows; healing: "
        f"{c['heal_steps']} steps of the run's own batches at a constant lr {c['heal_lr']:g}. Sub-layer "
        "methods (finercut, cascadeflow-sub*) remove 2K sub-layers (attention or FFN), so they remove "
        "fewer parameters than K whole layers when they take attention sub-layers (see 'params left'). "
        "ParaFormer-LM keeps its first 8 - K/2 branches: exactly the parameters of the uniform model "
        "without K layers."
    )
    text = [
        f"### Pruning 16 layers ({text_name}): CascadeFlow, sub-layer CascadeFlow and the heuristics",
        "",
        *provenance(record),
        "",
        protocol,
        "",
        *_ppl_table(record),
        "",
        f"**Aim**: {aim_text}.",
        "",
        "**Rank stability** (each method's own ranking: layers, or sub-layers for the sub-layer methods)",
        "",
        *_stability_table(record),
        "",
        f"**What each method removed at K={ks[0]}** (L = whole layer, A = attention, F = FFN; 1-based)",
        "",
        *_removed_table(record, ks[0]),
        "",
        *comparison_lines(list(compared.values()), "Comparisons, paired by training seed:"),
    ]
    return Section(f"prune-l16-{text_name}", "\n".join(text), list(compared.values()))
