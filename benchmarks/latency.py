"""Inference latency of each ParaFormer preset against its ViT twin, every execution path, side by side.

For every model pair and batch size, each path of ``paraformer.parallel.inference``
(eager, merged, merged+compile, threads, cuda-graph: those that run here) is built for
both models and checked against the model's outputs; then all arms take turns round by
round in this one process (ParaFormer path, ViT path, next path, ...), and the median of
``--rounds`` rounds is reported, with every per-round time in the JSON. "Best" is each
model's fastest path, which is what ``prepare_for_inference`` would return (same rule).

FLOPs per image are ``model.flops()`` (what the model computes); the fraction of peak
divides that work rate by this CPU's fp32 GEMM peak, measured in this process with the
same thread count (a large square matmul, before and after). The merged paths execute
fewer FLOPs than that (class-token pooling skips work nobody reads): ``executed_flops``
and ``executed_fraction_of_peak`` in the JSON say how many.

    python benchmarks/latency.py --threads 2                     # all presets, batch 1, 8, 64
    python benchmarks/latency.py --models paraformer_tiny_fmnist --batches 1 --rounds 5 --paths eager merged
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: the `benchmarks` package

from benchmarks.machine import describe  # noqa: E402
from benchmarks.protocol import RESULTS, record_results, write_record  # noqa: E402
from paraformer.models import create_model, twin_of  # noqa: E402
from paraformer.parallel import merge_for_inference  # noqa: E402
from paraformer.parallel.inference import PATHS, build_paths, measure, synced_call  # noqa: E402

MODELS = (
    "paraformer_tiny_fmnist",
    "paraformer_tiny_cifar",
    "paraformer_small_fmnist",
    "paraformer_small_cifar",
    "paraformer_paper",
)
FAMILIES = ("paraformer", "vit")


def gemm_peak(threads: int, device: torch.device, size: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """fp32 GFLOP/s of a large square matmul: the fastest of ``repeats`` (the peak) and all of them."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(2):
            a @ b
        sync()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            sync()
            seconds.append(time.perf_counter() - start)
    rates = [2 * size**3 / s / 1e9 for s in seconds]
    return {
        "size": size,
        "threads": threads,
        "gflops": max(rates),
        "gflops_median": statistics.median(rates),
        "all": rates,
    }


def run_pair(name: str, batch: int, args: argparse.Namespace, peak: float, log) -> dict[str, Any]:
    torch.manual_seed(0)
    device = torch.device(args.device)
    models = {
        "paraformer": create_model(name).eval().to(device),
        "vit": create_model(twin_of(name)).eval().to(device),
    }
    flops = {family: m.flops() for family, m in models.items()}
    # Every path but eager runs the merged computation (threads: in two groups, the same ops).
    merged_flops = {family: merge_for_inference(m).flops() for family, m in models.items()}
    x = torch.randn_like(models["paraformer"].example_input(batch)).to(device)
    built = {family: build_paths(m, x, args.paths, log=log) for family, m in models.items()}
    arms = {}
    for path in PATHS:  # ParaFormer path, ViT path, next path: neighbours see the same machine
        for family in FAMILIES:
            if path in built[family]:
                module = built[family][path]
                arms[f"{family}:{path}"] = synced_call(module, x)
    rounds = args.rounds_large if batch >= 32 and args.rounds_large else args.rounds
    times = measure(arms, rounds, warmup=args.warmup)
    result: dict[str, Any] = {
        "model": name,
        "twin": twin_of(name),
        "batch": batch,
        "rounds": rounds,
        "flops_per_image": flops,
    }
    paths: dict[str, dict[str, Any]] = {family: {} for family in FAMILIES}
    for arm, seconds in times.items():
        family, path = arm.split(":")
        median = statistics.median(seconds)
        executed = flops[family] if path == "eager" else merged_flops[family]
        paths[family][path] = {
            "median_ms": 1000 * median,
            "rounds_ms": [1000 * s for s in seconds],
            "flops_per_image": flops[family],
            "executed_flops_per_image": executed,
            "fraction_of_peak": flops[family] * batch / median / (peak * 1e9),
            "executed_fraction_of_peak": executed * batch / median / (peak * 1e9),
        }
    result["paths"] = paths
    best = {family: min(paths[family], key=lambda p: paths[family][p]["median_ms"]) for family in FAMILIES}
    result["best"] = best
    result["speedup_best"] = (
        paths["vit"][best["vit"]]["median_ms"] / paths["paraformer"][best["paraformer"]]["median_ms"]
    )
    result["speedup_same_path"] = {
        p: paths["vit"][p]["median_ms"] / paths["paraformer"][p]["median_ms"]
        for p in paths["vit"]
        if p in paths["paraformer"]
    }
    del built, arms, models
    gc.collect()
    return result


def _ms(entry: dict[str, Any] | None) -> str:
    return f"{entry['median_ms']:.2f}" if entry else "-"


def _pct(entry: dict[str, Any] | None) -> str:
    return f"{100 * entry['fraction_of_peak']:.0f}%" if entry else "-"


def print_pair(r: dict[str, Any]) -> None:
    paths = r["paths"]
    print(f"\n{r['model']} vs {r['twin']}, batch {r['batch']} (median ms; speed-up = ViT ms / ParaFormer ms)")
    print("| path | ParaFormer ms | ViT ms | speed-up | ParaFormer % peak | ViT % peak |")
    print("|---|---|---|---|---|---|")
    for path in PATHS:
        p, v = paths["paraformer"].get(path), paths["vit"].get(path)
        if p is None and v is None:
            continue
        ratio = f"{v['median_ms'] / p['median_ms']:.2f}x" if p and v else "-"
        print(f"| {path} | {_ms(p)} | {_ms(v)} | {ratio} | {_pct(p)} | {_pct(v)} |")
    bp, bv = r["best"]["paraformer"], r["best"]["vit"]
    p, v = paths["paraformer"][bp], paths["vit"][bv]
    print(f"| best: {bp} / {bv} | {_ms(p)} | {_ms(v)} | {r['speedup_best']:.2f}x | {_pct(p)} | {_pct(v)} |")


def summary(results: list[dict[str, Any]]) -> None:
    print(
        "\nSummary: each model's best path against its twin's best path (speed-up = ViT ms / ParaFormer ms)"
    )
    print("| model | batch | ParaFormer best | ms | % peak | ViT best | ms | % peak | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        bp, bv = r["best"]["paraformer"], r["best"]["vit"]
        p, v = r["paths"]["paraformer"][bp], r["paths"]["vit"][bv]
        print(
            f"| {r['model']} | {r['batch']} | {bp} | {_ms(p)} | {_pct(p)} "
            f"| {bv} | {_ms(v)} | {_pct(v)} | {r['speedup_best']:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--rounds", type=int, default=25, help="timed rounds per arm (median reported)")
    parser.add_argument(
        "--rounds-large",
        type=int,
        help="timed rounds at batch >= 32 (default: --rounds); large batches are slow",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--name", default="latency", help="results file name (default latency)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)"
    )
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where latency.json is written")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    peak_before = gemm_peak(args.threads, torch.device(args.device))
    print(f"{started}, {describe()}, fp32 GEMM peak {peak_before['gflops']:.0f} GFLOP/s, load {load_before}")
    skipped: list[str] = []
    results = []
    for name in args.models:
        for batch in args.batches:
            t0 = time.perf_counter()
            r = run_pair(name, batch, args, peak_before["gflops"], skipped.append)
            r["wall_s"] = time.perf_counter() - t0
            r["load_after"] = os.getloadavg()
            results.append(r)
            print_pair(r)
            print(f"({r['wall_s']:.0f} s, load {r['load_after'][0]:.2f})", flush=True)
    peak_after = gemm_peak(args.threads, torch.device(args.device))
    summary(results)
    payload = {
        "gemm_peak_before": peak_before,
        "gemm_peak_after": peak_after,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "paths_skipped": sorted(set(skipped)),
        "results": results,
    }
    config = {
        "models": args.models,
        "batches": args.batches,
        "rounds": args.rounds,
        "rounds_large": args.rounds_large,
        "warmup": args.warmup,
        "device": args.device,
        "threads": args.threads,
        "paths": args.paths,
    }
    record = record_results(args.name, payload, seeds=[], config=config)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = write_record(record, args.results_dir)
    print(
        f"\nGEMM peak {peak_before['gflops']:.0f} GFLOP/s before, {peak_after['gflops']:.0f} after; "
        f"load {load_before} before, {payload['load_after']} after; wrote {out}"
    )


if __name__ == "__main__":
    main()
