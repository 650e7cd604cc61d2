"""taper.json (benchmarks/taper.py): tapers that cut cost against the uniform and the narrowed model."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.protocol import WIN, Comparison, by_round, cell, paired, paired_ratio
from benchmarks.render.common import Compared, Section, comparison_lines, provenance, table

FAMILIES = {
    "uniform": "uniform",
    "lm_narrow": "uniform, narrowed to the taper's FLOPs",
    "taper_ffn": "taper: FFN only",
    "taper_attn_ffn": "taper: heads and FFN",
    "taper_resid": "taper: residual width",
    "widen_ffn": "widening: FFN only",
    "widen_attn_ffn": "widening: heads and FFN",
    "widen_resid": "widening: residual width",
}
TAPERS = ("taper_ffn", "taper_attn_ffn", "taper_resid")
SPEEDS = {  # metric -> (label, better)
    "decode_ms_per_token": ("decode latency, batch 1", "lower"),
    "decode_tokens_per_s": ("decode throughput, batch 32", "higher"),
    "train_tokens_per_s": ("training throughput", "higher"),
    "prefill_ms": ("prefill latency", "lower"),
}
AIM_FLOPS, AIM_DECODE = 0.25, 1.10


def preset(variant: str, size: int) -> str:
    if variant == "uniform":
        return "lm_uniform_small" if size == 128 else f"lm_uniform_d{size}"
    return f"{variant}_d{size}"


def family_of(arm: str) -> str:
    name = arm.split("@")[0]
    if name.startswith("lm_uniform"):
        return "uniform"
    return name.rsplit("_d", 1)[0]


def main_size(record: dict[str, Any]) -> int:
    return int(record["payload"]["main_size"])


def runs(record: dict[str, Any], size: int | None = None) -> dict[str, dict[str, Any]]:
    size = main_size(record) if size is None else size
    return record["payload"]["sizes"].get(str(size), {}).get("runs", {})


def ppl(record: dict[str, Any], arm: str, size: int | None = None) -> dict[str, float]:
    return {s: r["test_ppl"] for s, r in runs(record, size).get(arm, {}).items()}


def rounds(record: dict[str, Any], metric: str, arm: str) -> list[float]:
    return record["payload"]["per_round"].get(metric, {}).get(arm, [])


def speed_ratio(record: dict[str, Any], metric: str, arm: str) -> Comparison | None:
    """arm / uniform of a speed figure, paired by round (every seed's rounds pooled)."""
    a, b = rounds(record, metric, arm), rounds(record, metric, preset("uniform", main_size(record)))
    if not a or not b:
        return None
    return paired_ratio(by_round(a), by_round(b), SPEEDS[metric][1])


def flops_cut(record: dict[str, Any], arm: str) -> float:
    flops = record["payload"]["flops_per_token"]
    size = int(arm.split("@")[0].rsplit("_d", 1)[1]) if "_d" in arm else 128
    return 1 - flops[arm.split("@")[0]] / flops[preset("uniform", size)]


def label(arm: str) -> str:
    budget = " (equal time)" if arm.endswith("@time") else ""
    return f"{arm.split('@')[0]}{budget}"


def comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    size = main_size(record)
    uniform, narrow = preset("uniform", size), preset("lm_narrow", size)
    out: dict[str, Compared] = {}
    for arm in runs(record):
        if arm == uniform:
            continue
        c = paired(ppl(record, arm), ppl(record, uniform), "lower")
        if c.n:
            out[f"ppl-{arm}"] = Compared(f"test perplexity: {label(arm)} - uniform", c, "", 3)
        base = arm.split("@")[0]
        if family_of(arm) in TAPERS:
            ref = narrow + ("@time" if arm.endswith("@time") else "")
            c = paired(ppl(record, arm), ppl(record, ref), "lower")
            if c.n:
                out[f"narrow-{arm}"] = Compared(f"test perplexity: {label(arm)} - {label(ref)}", c, "", 3)
        if arm.endswith("@time"):
            continue
        for metric, (name, better) in SPEEDS.items():
            r = speed_ratio(record, metric, base)
            if r is not None:
                out[f"{metric}-{arm}"] = Compared(
                    f"{name} ({better} is better): {base} / uniform", r, paired_by="rounds"
                )
    return out


def aims(record: dict[str, Any], compared: dict[str, Compared]) -> list[list[str]]:
    """Per taper (and budget): FLOPs cut, perplexity within reach of uniform, batch-1 decode, vs narrow."""
    rows = []
    size = main_size(record)
    for variant in TAPERS:
        for suffix in ("", "@time"):
            arm = preset(variant, size) + suffix
            if arm not in runs(record):
                continue
            cut = flops_cut(record, arm)
            reach = compared.get(f"ppl-{arm}")
            speed = compared.get(f"decode_ms_per_token-{preset(variant, size)}")
            beats = compared.get(f"narrow-{arm}")
            ok_reach = reach is not None and reach.result.n >= 2 and reach.result.low <= 0
            faster = 1 / math.exp(speed.result.mean) if speed else math.nan  # uniform / taper latency
            ok_speed = speed is not None and faster >= AIM_DECODE
            ok_beats = beats is not None and beats.result.verdict == WIN
            met = cut >= AIM_FLOPS and ok_reach and ok_speed and ok_beats
            rows.append(
                [
                    label(arm),
                    f"{cut:.1%} {'yes' if cut >= AIM_FLOPS else 'no'}",
                    (reach.figure() if reach else "n/a") + f" {'yes' if ok_reach else 'no'}",
                    (f"{faster:.3f}x" if speed else "n/a") + f" {'yes' if ok_speed else 'no'}",
                    (beats.figure() if beats else "n/a") + f" {'yes' if ok_beats else 'no'}",
                    "**met**" if met else "missed",
                ]
            )
    return rows


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _speed_cell(record: dict[str, Any], metric: str, arm: str) -> str:
    value = _median(rounds(record, metric, arm))
    if value is None:
        return "n/a"
    base = _median(rounds(record, metric, preset("uniform", main_size(record))))
    digits = 2 if value < 100 else 0
    return f"{value:,.{digits}f} ({value / base:.2f}x)" if base else f"{value:,.{digits}f}"


def _main_table(record: dict[str, Any]) -> list[str]:
    size = main_size(record)
    rows = []
    for variant, what in FAMILIES.items():
        arm = preset(variant, size)
        if arm not in runs(record):
            continue
        by = runs(record)[arm]
        timed = runs(record).get(arm + "@time", {})
        flops = record["payload"]["flops_per_token"][arm]
        steps = f"{next(iter(timed.values()))['budget']['optimizer_steps']}" if timed else "-"
        rows.append(
            [
                f"`{arm}` ({what})",
                f"{next(iter(by.values()))['num_params']:,}",
                f"{flops / 1e6:.2f} ({-flops_cut(record, arm):+.1%})",
                cell(r["test_ppl"] for r in by.values()),
                cell(r["test_ppl"] for r in timed.values()) if timed else "-",
                steps,
                *(_speed_cell(record, m, arm) for m in ("decode_ms_per_token", "decode_tokens_per_s")),
                *(_speed_cell(record, m, arm) for m in ("train_tokens_per_s", "prefill_ms")),
            ]
        )
    header = [
        "model",
        "params",
        "MFLOP/token (vs uniform)",
        "test ppl, equal tokens",
        "test ppl, equal time",
        "equal-time steps",
        "decode ms/token, batch 1 (median, vs uniform)",
        "decode tokens/s, batch 32",
        "train tokens/s",
        "prefill ms",
    ]
    return table(header, rows)


def _sizes_table(record: dict[str, Any]) -> tuple[list[str], dict[str, list[tuple[float, float, int]]]]:
    sizes = sorted(int(s) for s in record["payload"]["sizes"])
    curves: dict[str, list[tuple[float, float, int]]] = {}
    rows = []
    for variant in FAMILIES:
        cells = []
        for size in sizes:
            arm = preset(variant, size)
            values = list(ppl(record, arm, size).values())
            speed = record["payload"]["sizes"][str(size)].get("speed", {})
            lat = [x for s in speed.values() for x in s["models"].get(arm, {}).get("rounds", {}).get(
                "decode_ms_per_token", [])]  # fmt: skip
            if values and lat:
                curves.setdefault(variant, []).append(
                    (statistics.median(lat), statistics.fmean(values), size)
                )
            cells.append(f"{cell(values)}; {statistics.median(lat):.2f} ms" if values and lat else "-")
        rows.append([FAMILIES[variant], *cells])
    return table(["family", *(f"dim {s}: test ppl; decode ms/token" for s in sizes)], rows), curves


def _plot(curves: dict[str, list[tuple[float, float, int]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from paraformer.files import atomic_write

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for variant, points in curves.items():
        points = sorted(points)
        style = "--" if variant.startswith("widen") else "-"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=FAMILIES[variant])
        for x, y, size in points:
            ax.annotate(f"d{size}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="decode latency, batch 1 (ms/token, median)", ylabel="test perplexity (mean over seeds)")
    ax.set_title("Perplexity against decode latency, one curve per family across sizes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _protocol(record: dict[str, Any]) -> str:
    c = record["config"]
    size = main_size(record)
    tokens = c["steps"] * c["batch_size"] * c["seq_len"]
    thr = record["payload"]["sizes"][str(size)].get("throughput") or {}
    geo, fl = thr.get("geometric_mean_ratio") or {}, thr.get("flops_ratio") or {}
    ratios = ", ".join(
        f"{k} {v:.3f}"
        + (f" (geometric mean {geo[k]:.3f}; FLOP ratio {fl[k]:.3f})" if k in geo and k in fl else "")
        for k, v in (thr.get("ratio") or {}).items()
    )
    load = thr.get("load") or {}
    speed = next(iter(record["payload"]["sizes"][str(size)].get("speed", {}).values()), {})
    s = speed.get("settings", {})
    loads = [x["load_average"]["before"][0] for x in record["payload"]["sizes"][str(size)]["speed"].values()]
    return (
        f"Protocol: {Path(c['data']).name}, character tokens, first 90% train / 5% validation / 5% test. "
        f"Equal tokens: {c['steps']} steps of {c['batch_size']} x {c['seq_len']} tokens ({tokens / 1e6:.2f}M "
        f"tokens) for every model; AdamW lr {c['lr']:g}, warmup {c['warmup_fraction']:.0%} of each arm's own "
        f"steps then cosine to 1%, weight decay 0.1, grad clip 1, fp32, one thread; evaluation every "
        f"{c['eval_interval']} steps, the best validation checkpoint tested. Equal time: each cheaper arm "
        f"trains {c['steps']} x r steps, r = the median over rounds of its training tokens/s over uniform's "
        "in the same round, measured side by side "
        f"before training ({thr.get('rounds', '?')} rounds, models taking turns, batch {c['batch_size']}; "
        f"load {(load.get('before') or ['?'])[0]} -> {(load.get('after') or ['?'])[0]}): {ratios}. Speed: "
        f"each seed's trained equal-token models taking turns, {s.get('rounds', '?')} rounds per seed, "
        f"pooled over seeds; prompt {s.get('prompt_len', '?')} tokens, {s.get('new_tokens', '?')} new "
        f"tokens greedily with the KV cache at batch 1 and {s.get('decode_batch', '?')}; training = full "
        f"AdamW steps at {s.get('train_batch', '?')} x {s.get('seq_len', '?')}; "
        f"{s.get('threads', '?')} thread(s); load average at the start of the speed runs "
        f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f}."
    )


def render(record: dict[str, Any]) -> Section:
    compared = comparisons(record)
    sizes_lines, curves = _sizes_table(record)
    plot_name = "taper-curves.png"
    aim_rows = aims(record, compared)
    text = [
        "### Tapers that cut cost: perplexity and speed against uniform and a narrowed uniform model",
        "",
        *provenance(record),
        "",
        _protocol(record),
        "",
        *_main_table(record),
        "",
        f"**Aims** (main size, dim {main_size(record)}): a taper with >= {AIM_FLOPS:.0%} fewer FLOPs per "
        "token whose test perplexity reaches uniform's (the 95% interval of taper - uniform reaches 0 or "
        f"below), >= {AIM_DECODE - 1:.0%} faster batch-1 decoding (uniform / taper latency, geometric mean "
        "over rounds) and lower perplexity than the FLOP-matched narrow uniform model (a win, paired by "
        "seed).",
        "",
        *table(
            [
                "arm",
                "fewer FLOPs",
                "ppl - uniform [95%]",
                "batch-1 decode speed-up",
                "ppl - narrow [95%]",
                "aim",
            ],
            aim_rows,
        ),
        "",
        "**Across sizes** (mean test perplexity at equal tokens; median decode latency of the seeds' "
        "rounds):",
        "",
        *sizes_lines,
        "",
        f"![{plot_name}](benchmarks/results/{plot_name})",
        "",
        *comparison_lines(
            list(compared.values()), "Comparisons, paired by seed (perplexity) or round (speed):"
        ),
    ]
    plots = [(plot_name, lambda path, c=curves: _plot(c, path))] if curves else []
    return Section("taper", "\n".join(text), list(compared.values()), plots)
