"""Speed files: throughput*.json (benchmarks/throughput.py) and parallel-*.json (benchmarks/parallel.py).

Variants took turns round by round, so speeds compare as ratios paired by round: the geometric
mean of the per-round ratios with its 95% interval (``protocol.paired_ratio``).
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.protocol import Comparison, by_round, paired_ratio
from benchmarks.render.common import Compared, Section, comparison_lines, provenance, table

MODES = {"vit": "ViT twin", "joint": "joint", "fused": "fused", "progressive": "progressive"}
DIST_LABELS = {
    "para-1": "ParaFormer, 1 process",
    "para-bp2": "ParaFormer, branch-parallel, 2 ranks",
    "para-threads2": "ParaFormer, 2 branch groups in 2 threads (authors' approach)",
    "vit-1": "ViT twin, 1 process",
    "vit-ddp2": "ViT twin, DDP, 2 ranks",
    "vit-gpipe2": "ViT twin, pipelining GPipe, 2 stages",
    "vit-1f1b2": "ViT twin, pipelining 1F1B, 2 stages",
    "vit-fairscale2": "ViT twin, FairScale Pipe, 2 partitions",
}


def speedup(slow: list[float], fast: list[float]) -> Comparison:
    """t_slow / t_fast paired by round: above 1 when ``fast`` is faster ("win")."""
    return paired_ratio(by_round(slow), by_round(fast), "higher")


def _ratio_cell(times: dict[str, list[float]], ref: str, variant: str) -> str:
    """The speed of ``variant`` relative to ``ref`` with its interval ('1' for ref itself)."""
    if variant == ref:
        return "1"
    return speedup(times[ref], times[variant]).ratio() if times.get(ref) and times.get(variant) else ""


def _cost(times: dict[str, list[float]], mode: str, ref: str) -> Comparison:
    """Epoch cost of ``mode`` relative to ``ref``, paired by round (lower is better)."""
    return paired_ratio(by_round(times[mode]), by_round(times[ref]), "lower")


def _ms(times: list[float]) -> str:
    return f"{1000 * statistics.median(times):.1f}"


# ---------------------------------------------------------------------------- throughput.py


def throughput_comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    cfg, out = record["config"], {}
    for name, entry in record["payload"]["inputs"].items():
        times = entry["times"]
        for mode in MODES:
            if cfg.get("bf16") and f"{mode}+bf16" in times:
                c = speedup(times[mode], times[f"{mode}+bf16"])
                out[f"{name}-{mode}-bf16"] = Compared(
                    f"{name}, {MODES[mode]}: bf16 speed / fp32 speed", c, paired_by="rounds"
                )
            if cfg.get("compile") and f"{mode}+compiled" in times:
                c = speedup(times[mode], times[f"{mode}+compiled"])
                out[f"{name}-{mode}-compiled"] = Compared(
                    f"{name}, {MODES[mode]}: compiled speed / eager", c, paired_by="rounds"
                )
            if not cfg.get("bf16") and not cfg.get("compile"):
                for ref in ("vit", "fused"):
                    if mode != ref and (mode, ref) != ("vit", "fused"):  # fused / vit is there already
                        c = _cost(times, mode, ref)
                        out[f"{name}-{mode}-{ref}"] = Compared(
                            f"{name}: epoch cost of {MODES[mode]} / {MODES[ref]} (lower is better)",
                            c,
                            paired_by="rounds",
                        )
    return out


def render_throughput(record: dict[str, Any]) -> Section:
    cfg = record["config"]
    compared = throughput_comparisons(record)
    rows = []
    for name, entry in record["payload"]["inputs"].items():
        times, shape = entry["times"], "x".join(map(str, entry["shape"]))
        for mode, label in MODES.items():
            base = [f"{name} {shape}", label, _ms(times[mode])]
            if cfg.get("bf16"):
                rows.append([*base, _ms(times[f"{mode}+bf16"]), compared[f"{name}-{mode}-bf16"].figure()])
            elif cfg.get("compile"):
                rows.append(
                    [*base, _ms(times[f"{mode}+compiled"]), compared[f"{name}-{mode}-compiled"].figure()]
                )
            else:
                ips = cfg["batch_size"] / statistics.median(times[mode])
                cost = [_cost(times, mode, ref).ratio() if mode != ref else "1" for ref in ("vit", "fused")]
                rows.append([*base, f"{ips:.0f}", *cost])
    header = ["input", "mode", "ms per batch-epoch (median)"]
    if cfg.get("bf16"):
        header += ["ms, bf16 autocast", "bf16 speed / fp32 [95% interval]"]
        title = "bf16 autocast against fp32, side by side"
    elif cfg.get("compile"):
        header += ["ms, torch.compile", "compiled speed-up [95% interval]"]
        title = "`torch.compile` against eager, side by side"
    else:
        header += [
            "images/s (epoch)",
            "epoch cost / ViT twin [95% interval]",
            "epoch cost / fused [95% interval]",
        ]
        title = "Training cost per epoch of each mode, side by side"
    protocol = (
        f"Each mode trains on the same random batch of {cfg['batch_size']} with a real AdamW step; "
        f"dim {cfg['dim']}, {cfg['heads']} heads, {cfg['branches']} branches x depth {cfg['branch_depth']} "
        f"against the ViT twin of depth {cfg['branches'] * cfg['branch_depth']}; an epoch's share per batch "
        "charges every pass its epoch makes (progressive: N prefix steps and a full pass); the variants take "
        f"turns, {cfg['rounds']} rounds of {cfg['batches']} batches, median; ratios are paired by round."
    )
    text = [f"### {title}", "", *provenance(record), "", protocol, "", *table(header, rows), ""]
    text += comparison_lines(list(compared.values()), "Comparisons, paired by round (ratios):")
    return Section(record["benchmark"], "\n".join(text), list(compared.values()))


# ---------------------------------------------------------------------------- parallel.py


def single_comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    out = {}
    for case in record["payload"]["cases"]:
        times = case["times"]
        for variant in times:
            refs = ("ViT twin", "branch loop")
            for ref in refs:
                inverse = variant in refs and refs.index(variant) < refs.index(ref)  # kept as ref / variant
                if variant != ref and ref in times and not inverse:
                    c = speedup(times[ref], times[variant])
                    out[f"{case['title']}-{variant}-{ref}"] = Compared(
                        f"{case['title']}: {variant} speed / {ref}", c, paired_by="rounds"
                    )
    return out


def render_single(record: dict[str, Any]) -> Section:
    cfg = record["config"]
    compared = single_comparisons(record)
    rows = []
    for case in record["payload"]["cases"]:
        for variant, times in case["times"].items():
            ratios = [_ratio_cell(case["times"], ref, variant) for ref in ("ViT twin", "branch loop")]
            rows.append([case["title"], variant, _ms(times), *ratios])
    protocol = (
        f"One process, {cfg['threads']} torch thread(s). Inference: the paper model (`paraformer_paper`, "
        "224 px) and its depth-16 ViT twin, `torch.no_grad`. Training: the CPU-scale model "
        f"(`paraformer_small_cifar`, 32 px), fused objective, AdamW, batch {cfg['train_batch']}. The "
        f"variants take turns, {cfg['rounds']} rounds, median; speed ratios paired by round."
    )
    header = ["measurement", "variant", "ms (median)", "speed / ViT twin [95% interval]"]
    header += ["speed / branch loop [95% interval]"]
    text = [
        "### Fused and parallel branches, one process",
        "",
        *provenance(record),
        "",
        protocol,
        "",
        *table(header, rows),
        "",
        *comparison_lines(list(compared.values()), "Comparisons, paired by round (speed ratios):"),
    ]
    return Section("parallel-single", "\n".join(text), list(compared.values()))


def distributed_comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    runs, out = record["payload"]["runs"], {}
    for config, times in runs.items():
        refs = ("para-1", "vit-gpipe2")
        for ref in refs:
            inverse = config in refs and refs.index(config) < refs.index(ref)  # kept as ref / config
            if config != ref and ref in runs and times and runs[ref] and not inverse:
                c = speedup(runs[ref], times)
                out[f"{config}-{ref}"] = Compared(
                    f"{DIST_LABELS[config]}: speed / {DIST_LABELS[ref]}", c, paired_by="rounds"
                )
    return out


def render_distributed(record: dict[str, Any]) -> Section:
    cfg, payload = record["config"], record["payload"]
    compared = distributed_comparisons(record)
    rows = []
    for config, label in DIST_LABELS.items():
        if config in payload.get("errors", {}):
            rows.append([label, f"did not run: {payload['errors'][config]}", "", ""])
            continue
        times = payload["runs"].get(config)
        if not times:
            continue
        ratios = [_ratio_cell(payload["runs"], ref, config) for ref in ("para-1", "vit-gpipe2")]
        rows.append([label, f"{cfg['dist_batch'] / statistics.median(times):.1f}", *ratios])
    protocol = (
        "Processes launched with `torch.distributed.run` on 127.0.0.1 (gloo), one torch thread per "
        "process; training steps (fused objective for ParaFormer, AdamW) of the CPU-scale model at global "
        f"batch {cfg['dist_batch']}; pipelines split the ViT twin into 2 stages with {cfg['microbatches']} "
        f"micro-batches; {cfg['dist_rounds']} rounds, each launching every configuration in turn for "
        f"{cfg['steps']} timed steps (after warm-up); median; speed ratios paired by round."
    )
    header = ["configuration", "images/s (median)", "speed / ParaFormer, 1 process [95% interval]"]
    header += ["speed / ViT twin GPipe [95% interval]"]
    text = [
        "### Fused and parallel branches, torchrun ranks",
        "",
        *provenance(record),
        "",
        protocol,
        "",
        *table(header, rows),
        "",
        *comparison_lines(list(compared.values()), "Comparisons, paired by round (speed ratios):"),
    ]
    return Section("parallel-distributed", "\n".join(text), list(compared.values()))
