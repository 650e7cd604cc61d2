"""prune-<model>.json (benchmarks/prune.py): CascadeFlow vs pruning heuristics, and rank stability."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

from benchmarks.protocol import cell, paired
from benchmarks.render.common import Compared, Section, comparison_lines, provenance, table

SCORERS = (
    "cascadeflow",
    "cascadeflow-taylor",
    "magnitude",
    "block-influence",
    "angular",
    "finercut",
    "random",
)
REFERENCE = "cascadeflow"


def ks_of(record: dict[str, Any]) -> list[int]:
    rows = next(iter(record["payload"]["results"].values()))["rows"]
    return sorted({int(key.split("|")[1]) for key in rows})


def depth(record: dict[str, Any]) -> int:
    return len(next(iter(record["payload"]["results"].values()))["rankings"]["final"][REFERENCE])


def ppl(record: dict[str, Any], method: str, k: int, healed: bool) -> dict[str, float]:
    """Per training seed: test perplexity after removing K layers (random: mean over its removal seeds)."""
    key = "healed_test_ppl" if healed else "test_ppl"
    out = {}
    for seed, r in record["payload"]["results"].items():
        values = [
            row[key] for name, row in r["rows"].items() if name.startswith(f"{method}|{k}|") and row.get(key)
        ]
        if values:
            out[seed] = statistics.fmean(values)
    return out


def pooled(record: dict[str, Any], method: str, k: int, healed: bool) -> list[float]:
    """Every removal's perplexity (random: its removal seeds x training seeds pooled)."""
    key = "healed_test_ppl" if healed else "test_ppl"
    return [
        row[key]
        for r in record["payload"]["results"].values()
        for name, row in r["rows"].items()
        if name.startswith(f"{method}|{k}|") and row.get(key)
    ]


def checkpoint_stability(record: dict[str, Any], method: str) -> dict[str, float]:
    """Per training seed: Spearman of the layer ranking between the half-way and the final checkpoint."""
    from paraformer.analysis.stats import spearman

    return {
        seed: spearman(r["rankings"]["mid"][method], r["rankings"]["final"][method])
        for seed, r in record["payload"]["results"].items()
    }


def comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    """CascadeFlow against every other scorer: perplexity at each K (healed or not), stability."""
    out = {}
    for healed in (False, True):
        for k in ks_of(record):
            for m in SCORERS[1:]:
                c = paired(ppl(record, REFERENCE, k, healed), ppl(record, m, k, healed), "lower")
                if c.n:
                    when = "healed" if healed else "unhealed"
                    out[f"ppl-{when}-k{k}-{m}"] = Compared(
                        f"test perplexity, K={k}, {when} (lower is better): {REFERENCE} vs {m}", c, ""
                    )
    for m in SCORERS[1:]:
        c = paired(checkpoint_stability(record, REFERENCE), checkpoint_stability(record, m))
        out[f"stability-{m}"] = Compared(f"Spearman mid vs final checkpoint: {REFERENCE} vs {m}", c, "")
    return out


def _ppl_table(record: dict[str, Any], healed: bool) -> list[str]:
    ks, layers = ks_of(record), depth(record)
    full = [r["full"]["test_ppl"] for r in record["payload"]["results"].values()]
    rows = [["none (full model)", *(cell(full) for _ in ks)]]
    for m in SCORERS:
        label = f"{m} (removal seeds x training seeds pooled)" if m == "random" else m
        rows.append([label, *(cell(pooled(record, m, k, healed)) for k in ks)])
    return table(["method", *(f"K={k} ({k / layers:.1%})" for k in ks)], rows)


def _stability_table(record: dict[str, Any]) -> list[str]:
    from paraformer.analysis.stats import spearman

    results = record["payload"]["results"]
    rows = []
    for m in SCORERS:
        across = [
            spearman(results[a]["rankings"]["final"][m], results[b]["rankings"]["final"][m])
            for a, b in itertools.combinations(sorted(results, key=int), 2)
        ]
        pairs = len(across)
        rows.append(
            [
                m,
                cell(across).replace(f"(n={pairs})", f"({pairs} pair(s) of seeds)"),
                cell(checkpoint_stability(record, m).values()),
            ]
        )
    return table(["scorer", "Spearman across training seeds", "Spearman mid vs final checkpoint"], rows)


def _removed_table(record: dict[str, Any], k: int) -> list[str]:
    results = record["payload"]["results"]
    seeds = sorted(results, key=int)
    rows = []
    for m in SCORERS[:-1]:
        cells = []
        for s in seeds:
            row = results[s]["rows"].get(f"{m}|{k}|0", {})
            whole = ",".join(str(i + 1) for i in row.get("layers", []))
            subs = [f"A{i + 1}" for i in row.get("attn", [])] + [f"F{i + 1}" for i in row.get("mlp", [])]
            cells.append(" ".join(filter(None, [whole and f"L{whole}", " ".join(subs)])) or "-")
        rows.append([m, *cells])
    return table(["method", *(f"seed {s}" for s in seeds)], rows)


def render(record: dict[str, Any]) -> Section:
    c = record["config"]
    ks = ks_of(record)
    k_main = 2 if 2 in ks else ks[0]
    protocol = (
        f"Protocol: the `{c['model']}` runs of benchmarks/lm.py ({depth(record)} layers), final weights; "
        f"test perplexity per training seed (random: {c['random_seeds']} removal seeds per training seed, "
        f"healed: {c['heal_random_seeds']} of them); calibration for block-influence, angular and "
        f"finercut: the first {c['calib_windows']} validation windows; healing: {c['heal_steps']} steps of "
        f"the run's own batches at a constant lr {c['heal_lr']:g}; FinerCut removes 2K sub-layers. Rank "
        "stability: Spearman correlation of each scorer's layer ranking."
    )
    compared = comparisons(record)
    text = [
        "### Pruning: CascadeFlow vs heuristics "
        f"(test perplexity after removing K of {depth(record)} layers)",
        "",
        *provenance(record),
        "",
        protocol,
        "",
        "**Without healing**",
        "",
        *_ppl_table(record, healed=False),
        "",
        f"**After {c['heal_steps']} healing steps**",
        "",
        *_ppl_table(record, healed=True),
        "",
        "**Rank stability**",
        "",
        *_stability_table(record),
        "",
        f"**What each method removed at K={k_main}** (L = whole layer, A = attention, F = FFN; 1-based)",
        "",
        *_removed_table(record, k_main),
        "",
        *comparison_lines(list(compared.values()), "Comparisons, paired by training seed:"),
    ]
    return Section("lm-prune", "\n".join(text), list(compared.values()))
