"""ParaFormer training modes against their parameter-matched ViT twin, at fair budgets, over seeds.

For each dataset and seed, on the same data, batch, optimiser and schedule shape:

  equal epochs      vit, joint, fused, progressive: the same number of epochs each. The ViT,
                    joint and fused take one optimizer step per batch and cost the same per
                    epoch, so for them equal epochs is also equal steps and equal time.
  equal steps       progressive-steps: progressive for as many optimizer steps as the ViT
                    took (progressive takes N + 1 per batch)
  equal time        progressive-time: progressive for as many epochs as cost what the ViT's
                    epochs cost, by the per-epoch cost of each schedule measured side by side
                    (interleaved rounds, ``throughput.py``) just before; separate runs'
                    wall-clock seconds are not comparable on a shared machine
  (older files)     vit-steps, fused-steps, vit-time, fused-time: the ViT and fused given
                    progressive's steps or time instead; still runnable, five times dearer

Warmup and decay are fractions of each arm's own steps (``warmup_fraction``), so every arm
has the same schedule shape.

Every figure is the test accuracy of the epoch selected on the validation split (the
test split is read once per run, at the end). Every run's figures and budget (optimizer
steps, images seen, seconds; for equal-time arms the measured cost ratio and the load on
both sides) go to benchmarks/results/accuracy-<dataset>.json; ``python -m benchmarks.report``
renders them (paired by seed, 95% intervals: docs/protocol.md).

    python benchmarks/accuracy.py --data-dir ../shared/datasets                 # the recorded protocol
    python benchmarks/accuracy.py --datasets fashion-mnist --seeds 0 --epochs 1 --limit-train 500  # smoke
With --reuse, finished runs in --out are read back and interrupted ones resumed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch

from benchmarks.protocol import budget, load_now, record_results, write_json, write_record
from benchmarks.render.accuracy import images_seen
from benchmarks.render.accuracy import render as render_section
from paraformer.launch import resume, train
from paraformer.tasks.image import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ARMS = (
    "vit",
    "fused",
    "progressive",
    "progressive-steps",
    "progressive-time",
    "joint",
    "vit-steps",
    "fused-steps",
    "vit-time",
    "fused-time",
)
DEFAULT_ARMS = ARMS[:6]
PRESETS = {"fashion-mnist": "tiny_fmnist", "cifar10": "tiny_cifar"}


def base_config(dataset: str, arm: str, args: argparse.Namespace, seed: int) -> TrainConfig:
    family = "vit" if arm.startswith("vit") else "paraformer"
    shape = {"dim": args.dim, "heads": args.heads, "mlp_dim": 4 * args.dim}
    if family == "vit":
        overrides = {**shape, "depth": args.branches * args.branch_depth}
    else:
        overrides = {**shape, "num_branches": args.branches, "branch_depth": args.branch_depth}
    mode = arm.split("-")[0] if arm.split("-")[0] in ("joint", "fused", "progressive") else "fused"
    return TrainConfig(
        model=f"{family}_{PRESETS[dataset]}",
        model_overrides=overrides,
        dataset=dataset,
        data_dir=args.data_dir,
        mode="joint" if family == "vit" else mode,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        limit_train=args.limit_train,
        val_fraction=0.1,
        branch_exec="loop",  # the reference path for every arm: a measured choice could differ by load
    )


def run(
    cfg: TrainConfig | None, run_dir: Path, args: argparse.Namespace, budget_ratio: float | None = None
) -> dict[str, Any] | None:
    """Train (or read back, or resume) one run; its summary, per-epoch history and budget.

    With ``--report-only`` a finished run is read back whatever its config, and anything
    else is skipped (None): nothing trains. A run trained or resumed here records the load
    average before and after it (and an equal-time arm the cost ratio that sized it) in
    ``benchmark.json`` beside the run, so that a reused run keeps them.
    """
    if args.report_only:
        done = run_dir / "summary.json"
        if not (done.is_file() and json.loads(done.read_text()).get("complete")):
            return None
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return with_budget(
            {
                "summary": json.loads(done.read_text()),
                "history": [json.loads(line) for line in lines],
                "config": json.loads((run_dir / "config.json").read_text()).get("train"),
            },
            run_dir,
        )
    saved = run_dir / "config.json"
    # read back through TrainConfig, so that a field added since (with its default) still matches
    same = saved.is_file() and same_config(TrainConfig.from_dict(json.loads(saved.read_text())["train"]), cfg)
    log = lambda line: print("   ", line, flush=True)  # noqa: E731
    print(f"== {run_dir.name}", flush=True)
    load_before, trained_here = load_now(), True
    if args.reuse and same and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
        trained_here = not summary.get("complete")
        if trained_here:
            summary = resume(run_dir, progress=False, log=log)
    elif args.reuse and same and (run_dir / "train_state.pt").is_file():
        summary = resume(run_dir, progress=False, log=log)
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        summary = train(cfg, run_dir, progress=False, log=log)
    if trained_here:
        loads = [x[0] if x else None for x in (load_before, load_now())]
        write_json(run_dir / BENCH_META, {"load": loads, "budget_ratio": budget_ratio})
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return with_budget({"summary": summary, "history": history, "config": cfg.to_dict()}, run_dir)


def same_config(saved: TrainConfig, cfg: TrainConfig | None) -> bool:
    """Whether a saved run is the one ``cfg`` asks for (fields ``cfg`` leaves to the run are not compared)."""
    if cfg is None:
        return False
    unset = {f: None for f in ("epochs", "batch_size", "model") if getattr(cfg, f) is None}
    if (cfg.model or "").startswith("vit_"):
        unset["branch_exec"] = cfg.branch_exec  # a ViT has no branches: the path changes nothing
    return saved.replace(**unset) == cfg


BENCH_META = "benchmark.json"  # the benchmark's notes beside a run: load before/after, budget ratio


def with_budget(result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Add the run's budget: optimizer steps, images seen, seconds (+ budget ratio and load if noted)."""
    meta_path = run_dir / BENCH_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    s = result["summary"]
    result["budget"] = budget(
        optimizer_steps=s["steps"],
        seen=images_seen(result["history"]),
        train_seconds=s["train_seconds"],
        budget_ratio=meta.get("budget_ratio"),
        load={"arm": meta.get("load")},
    )
    return result


def run_seed(dataset: str, seed: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """All arms of one dataset and seed; the budget arms are sized from progressive's run."""
    return _run_seed(dataset, seed, args)


def _run_seed(dataset: str, seed: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    base_arms = ("vit", "fused", "progressive", "joint")
    needed = {a for a in args.arms if a in base_arms}
    needed |= {"vit"} if {"progressive-steps", "progressive-time"} & set(args.arms) else set()
    needed |= (
        {"progressive"} if {"vit-steps", "fused-steps", "vit-time", "fused-time"} & set(args.arms) else set()
    )
    out: dict[str, dict[str, Any]] = {}
    for arm in base_arms:
        if arm in needed:
            out[arm] = run(base_config(dataset, arm, args, seed), run_dir(args, dataset, arm, seed), args)
    costs: dict[str, float] = {}
    for arm in (
        "progressive-steps",
        "progressive-time",
        "vit-steps",
        "fused-steps",
        "vit-time",
        "fused-time",
    ):
        ref = out.get("vit" if arm.startswith("progressive") else "progressive")
        if arm not in args.arms or ref is None:
            continue
        cfg, folder, ratio = base_config(dataset, arm, args, seed), run_dir(args, dataset, arm, seed), None
        if args.report_only:
            cfg = None
        elif arm.endswith("steps"):
            cfg = cfg.replace(max_steps=ref["summary"]["steps"])
        else:
            ratio = recorded_ratio(folder, args)
            if ratio is None:
                costs = costs or epoch_costs(dataset, args)
                mine = "progressive" if arm.startswith("progressive") else arm.split("-")[0]
                ratio = (
                    costs[mine if arm.startswith("progressive") else "progressive"]
                    / costs["vit" if arm.startswith("progressive") else mine]
                )
            epochs = ref["summary"]["epochs_completed"]
            cfg = cfg.replace(
                epochs=max(1, round(epochs / ratio if arm.startswith("progressive") else epochs * ratio))
            )
        out[arm] = run(cfg, folder, args, budget_ratio=ratio)
        if out[arm] is not None and arm.endswith("time"):  # the load on both sides of the equal-time pair
            out[arm]["budget"]["load"]["reference"] = ref["budget"]["load"]["arm"]
    return {arm: r for arm, r in out.items() if arm in args.arms and r is not None}


def run_dir(args: argparse.Namespace, dataset: str, arm: str, seed: int) -> Path:
    return args.out / f"{dataset}-{arm}-seed{seed}"


def recorded_ratio(folder: Path, args: argparse.Namespace) -> float | None:
    """The cost ratio an equal-time run was sized with, so that --reuse finds the same run."""
    meta = folder / BENCH_META
    if args.reuse and meta.is_file():
        ratio = json.loads(meta.read_text()).get("budget_ratio")
        return float(ratio) if isinstance(ratio, (int, float)) else None
    return None


def epoch_costs(dataset: str, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per batch's share of an epoch for vit, fused and progressive, measured side by side."""
    from benchmarks.throughput import INPUTS, build, epoch_seconds_per_batch

    preset, channels, size = INPUTS[dataset]
    x = torch.randn(args.batch_size, channels, size, size)
    y = torch.randint(0, 10, (args.batch_size,))
    models = {mode: build(mode, preset, args) for mode in ("vit", "fused", "progressive")}
    times: dict[str, list[float]] = {mode: [] for mode in models}
    for round_ in range(4):
        for mode, model in models.items():
            seconds = epoch_seconds_per_batch(mode, model, x, y, 2, False)
            if round_:  # the first round warms up
                times[mode].append(seconds)
    costs = {mode: statistics.median(t) for mode, t in times.items()}
    print(f"    epoch cost per batch (side by side): {costs}", flush=True)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "cifar10"], choices=list(PRESETS))
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--limit-train",
        type=int,
        default=11112,
        help="images before the 10%% validation hold-out (10,000 train)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--branches", type=int, default=4)
    parser.add_argument("--branch-depth", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs in --out, resume others")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-accuracy")
    parser.add_argument(
        "--no-write", action="store_true", help="do not write benchmarks/results/ (a smoke run)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: tabulate the finished runs in --out"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    for dataset in args.datasets:
        results = {seed: run_seed(dataset, seed, args) for seed in args.seeds}
        record = record_results(
            f"accuracy-{dataset}", {"results": results}, seeds=args.seeds, config=vars(args)
        )
        print(render_section(record).text, flush=True)
        if not args.no_write:
            print(f"wrote {write_record(record)}; render BENCHMARKS.md with: python -m benchmarks.report")


if __name__ == "__main__":
    main()
