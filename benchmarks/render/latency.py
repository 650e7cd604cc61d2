"""Render ``latency.json``: batch-1/8/64 inference of each preset against its ViT twin, every path."""

from __future__ import annotations

from typing import Any

from benchmarks.render.common import Compared, Section, comparison_lines, provenance, table
from benchmarks.render.speed import speedup

AIM_BATCH1 = 1.37  # the best published CPU anchor: a 37% gain from merging branches
AIM_MODELS = ("paraformer_small_fmnist", "paraformer_small_cifar", "paraformer_paper")


def _best(result: dict[str, Any], family: str) -> dict[str, Any]:
    return result["paths"][family][result["best"][family]]


def comparisons(record: dict[str, Any]) -> dict[str, Compared]:
    """Speed of each model's best path over its twin's best path, paired by round (above 1: faster)."""
    out = {}
    for r in record["payload"]["results"]:
        p, v = _best(r, "paraformer"), _best(r, "vit")
        out[f"{r['model']}-b{r['batch']}"] = Compared(
            f"{r['model']} ({r['best']['paraformer']}) vs {r['twin']} ({r['best']['vit']}), "
            f"batch {r['batch']}: speed",
            speedup(v["rounds_ms"], p["rounds_ms"]),
            paired_by="rounds",
        )
    return out


def render(record: dict[str, Any]) -> Section:
    cfg, payload = record["config"], record["payload"]
    compared = comparisons(record)
    peak = payload["gemm_peak_before"]["gflops"]
    rows = []
    for r in payload["results"]:
        p, v = _best(r, "paraformer"), _best(r, "vit")
        aim = ""
        if r["model"] in AIM_MODELS:
            aim = "aim >= 1.37x" if r["batch"] == 1 else ("aim >= 1x" if r["batch"] == 64 else "")
        rows.append(
            [
                r["model"],
                r["batch"],
                f"{r['best']['paraformer']}: {p['median_ms']:.2f}",
                f"{r['best']['vit']}: {v['median_ms']:.2f}",
                compared[f"{r['model']}-b{r['batch']}"].result.ratio(),
                aim,
                f"{100 * p['fraction_of_peak']:.0f}% / {100 * v['fraction_of_peak']:.0f}%",
                f"{r['flops_per_image']['paraformer'] / 1e6:.1f} / {r['flops_per_image']['vit'] / 1e6:.1f}",
            ]
        )
    paths = []
    for r in payload["results"]:
        for family in ("paraformer", "vit"):
            cells = [f"{name} {entry['median_ms']:.2f}" for name, entry in r["paths"][family].items()]
            paths.append([r["model"] if family == "paraformer" else r["twin"], r["batch"], "; ".join(cells)])
    skipped = "; ".join(payload.get("paths_skipped") or []) or "none"
    protocol = (
        f"One process, {cfg['threads']} torch thread(s). For each model and batch, every inference path of "
        "`prepare_for_inference` (eager, merged, merged+compile, threads, CUDA graph: those that run "
        "here) is built for the ParaFormer and for its ViT twin, checked against the model's outputs, "
        "then all arms "
        f"take turns round by round ({cfg['rounds']} timed rounds after {cfg['warmup']} untimed; median). "
        '"Best" is each model\'s fastest path, the one `prepare_for_inference` returns. Speed = ViT ms / '
        "ParaFormer ms, paired by round. % of peak: FLOPs per image x batch / time, over this CPU's fp32 "
        f"GEMM peak measured in the same process ({peak:.0f} GFLOP/s before, "
        f"{payload['gemm_peak_after']['gflops']:.0f} after). Paths skipped: {skipped}."
    )
    header = ["model", "batch", "ParaFormer best, ms", "ViT twin best, ms", "speed [95% interval]", "aim"]
    header += ["% of GEMM peak (P / V)", "MFLOPs/image (P / V)"]
    text = [
        "### Inference latency against the ViT twin",
        "",
        *provenance(record),
        "",
        protocol,
        "",
        *table(header, rows),
        "",
        "Every path (median ms):",
        "",
        *table(["model", "batch", "path: median ms"], paths),
        "",
        *comparison_lines(list(compared.values()), "Comparisons, paired by round (speed ratios):"),
    ]
    return Section("latency", "\n".join(text), list(compared.values()))
