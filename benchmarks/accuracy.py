"""ParaFormer training modes against their parameter-matched ViT twin, at fair budgets, over seeds.

For each dataset and seed, on the same data, batch, optimiser and schedule shape:

  equal epochs      vit, joint, fused, progressive: the same number of epochs each
  equal steps       vit-steps, fused-steps: as many optimizer steps as progressive took
                    (it takes N + 1 steps per batch), at the same batch size
  equal time        vit-time, fused-time: as many epochs as cost what progressive's epochs
                    cost, by the per-epoch cost of each schedule measured side by side
                    (interleaved rounds, ``throughput.py``) just before: separate runs'
                    wall-clock seconds are not comparable on a shared machine

Every figure is the test accuracy of the epoch selected on the validation split (the
test split is read once per run, at the end). Results are mean ± standard deviation
over the seeds, with a verdict per comparison: a difference counts as a win or a loss
when it exceeds twice its standard error, else it is a tie.

    python benchmarks/accuracy.py --data-dir ../shared/datasets                 # the recorded protocol
    python benchmarks/accuracy.py --datasets fashion-mnist --seeds 0 --epochs 1 --limit-train 500  # smoke
With --reuse, finished runs in --out are read back and interrupted ones resumed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from machine import describe  # benchmarks/machine.py, beside this script
from paraformer.train import TrainConfig, resume, train
from report import pm, update_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("vit", "joint", "fused", "progressive", "vit-steps", "fused-steps", "vit-time", "fused-time")
LABELS = {
    "vit": "ViT twin",
    "joint": "ParaFormer joint",
    "fused": "ParaFormer fused",
    "progressive": "ParaFormer progressive",
    "vit-steps": "ViT twin, progressive's steps",
    "fused-steps": "ParaFormer fused, progressive's steps",
    "vit-time": "ViT twin, progressive's time",
    "fused-time": "ParaFormer fused, progressive's time",
}
PRESETS = {"fashion-mnist": "tiny_fmnist", "cifar10": "tiny_cifar"}


def base_config(dataset: str, arm: str, args: argparse.Namespace, seed: int) -> TrainConfig:
    family = "vit" if arm.startswith("vit") else "paraformer"
    shape = {"dim": args.dim, "heads": args.heads, "mlp_dim": 4 * args.dim}
    if family == "vit":
        overrides = {**shape, "depth": args.branches * args.branch_depth}
    else:
        overrides = {**shape, "num_branches": args.branches, "branch_depth": args.branch_depth}
    mode = arm.split("-")[0] if arm in ("joint", "fused", "progressive") else "fused"
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
    )


def run(cfg: TrainConfig | None, run_dir: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """Train (or read back, or resume) one run; its summary and per-epoch history.

    With ``--report-only`` a finished run is read back whatever its config, and anything
    else is skipped (None): nothing trains.
    """
    if args.report_only:
        done = run_dir / "summary.json"
        if not (done.is_file() and json.loads(done.read_text()).get("complete")):
            return None
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return {
            "summary": json.loads(done.read_text()),
            "history": [json.loads(line) for line in lines],
            "config": json.loads((run_dir / "config.json").read_text()).get("train"),
        }
    saved = run_dir / "config.json"
    # read back through TrainConfig, so that a field added since (with its default) still matches
    same = saved.is_file() and TrainConfig.from_dict(json.loads(saved.read_text())["train"]) == cfg
    log = lambda line: print("   ", line, flush=True)  # noqa: E731
    print(f"== {run_dir.name}", flush=True)
    if args.reuse and same and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
        if not summary.get("complete"):
            summary = resume(run_dir, progress=False, log=log)
    elif args.reuse and same and (run_dir / "train_state.pt").is_file():
        summary = resume(run_dir, progress=False, log=log)
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        summary = train(cfg, run_dir, progress=False, log=log)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"summary": summary, "history": history, "config": cfg.to_dict()}


def run_seed(dataset: str, seed: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """All arms of one dataset and seed; the budget arms are sized from progressive's run."""
    budget = [a for a in args.arms if "-" in a]
    needed = set(args.arms) - set(budget) | ({"progressive"} if budget else set())
    needed |= {a.split("-")[0] for a in budget if a.endswith("time")}  # their seconds per epoch
    out: dict[str, dict[str, Any]] = {}
    for arm in ("vit", "joint", "fused", "progressive"):
        if arm in needed:
            out[arm] = run(
                base_config(dataset, arm, args, seed), args.out / f"{dataset}-{arm}-seed{seed}", args
            )
    prog = out.get("progressive")
    timed = any(a.endswith("time") for a in budget) and not args.report_only
    costs = epoch_costs(dataset, args) if timed else {}
    for arm in ("vit-steps", "fused-steps", "vit-time", "fused-time"):
        if arm not in args.arms or prog is None:
            continue
        cfg = base_config(dataset, arm, args, seed)
        if args.report_only:
            cfg = None
        elif arm.endswith("steps"):
            cfg = cfg.replace(max_steps=prog["summary"]["steps"])
        else:
            ratio = costs["progressive"] / costs[arm.split("-")[0]]
            cfg = cfg.replace(epochs=max(1, round(prog["summary"]["epochs_completed"] * ratio)))
        out[arm] = run(cfg, args.out / f"{dataset}-{arm}-seed{seed}", args)
        if costs and out[arm] is not None:
            out[arm]["epoch_cost_ratio"] = costs["progressive"] / costs[arm.split("-")[0]]
    return {arm: r for arm, r in out.items() if arm in args.arms and r is not None}


def epoch_costs(dataset: str, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per batch's share of an epoch for vit, fused and progressive, measured side by side."""
    from throughput import INPUTS, build, epoch_seconds_per_batch

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


def verdict(a: list[float], b: list[float]) -> str:
    """'win' / 'loss' when the mean difference a - b exceeds twice its standard error, else 'tie'."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return f"{100 * diff:+.2f} points (one seed: no verdict)"
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    word = "tie" if abs(diff) <= 2 * se else ("win" if diff > 0 else "loss")
    return f"{100 * diff:+.2f} ± {100 * se:.2f} points: **{word}**"


def table(dataset: str, results: dict[int, dict[str, dict[str, Any]]]) -> list[str]:
    seeds = sorted(results)
    lines = [
        f"**{dataset}** (mean ± std over the seeds each row names)",
        "",
        "| run | seeds | epochs | optimizer steps | training s | val acc % | test acc % "
        "| test acc with first k branches % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        ran = [s for s in seeds if arm in results[s]]
        runs = [results[s][arm] for s in ran]
        if not runs:
            continue
        summaries = [r["summary"] for r in runs]
        prefix = [s.get("test_acc_prefix") for s in summaries]
        curve = "n/a"
        if all(prefix):
            curve = " / ".join(
                f"{100 * statistics.fmean(p[k] for p in prefix):.1f}" for k in range(len(prefix[0]))
            )

        def col(key: str, scale: float = 1.0, digits: int = 0, summaries=summaries) -> str:
            return pm([scale * s[key] for s in summaries], digits, one="")

        lines.append(
            f"| {LABELS[arm]} | {', '.join(map(str, ran))} | {col('epochs_completed')} | {col('steps')} "
            f"| {col('train_seconds')} "
            f"| {col('val_acc', 100, 2)} | {col('test_acc', 100, 2)} | {curve} |"
        )
    return lines


def comparisons(dataset: str, results: dict[int, dict[str, dict[str, Any]]]) -> list[str]:
    def acc(arm: str) -> list[float]:
        return [results[s][arm]["summary"]["test_acc"] for s in sorted(results) if arm in results[s]]

    pairs = [
        ("equal epochs", "progressive", "vit"),
        ("equal epochs", "fused", "vit"),
        ("equal epochs", "joint", "vit"),
        ("equal steps", "progressive", "vit-steps"),
        ("equal steps", "fused-steps", "vit-steps"),
        ("equal time", "progressive", "vit-time"),
        ("equal time", "fused-time", "vit-time"),
        ("equal time", "fused-time", "progressive"),
    ]
    lines = [f"Comparisons on {dataset} (test accuracy, first minus second):", ""]
    for budget, a, b in pairs:
        if acc(a) and acc(b):
            lines.append(f"- {budget}: {LABELS[a]} vs {LABELS[b]}: {verdict(acc(a), acc(b))}")
    return lines


def plot(dataset: str, results: dict[int, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_k) = plt.subplots(1, 2, figsize=(12, 4.8))
    seed = min(results)
    for i, arm in enumerate(ARMS):
        r = results[seed].get(arm)
        if r is None:
            continue
        t, points = 0.0, []
        for h in r["history"]:
            t += h["train_seconds"]
            points.append((t, 100 * h["val_acc"]))
        style = "--" if arm.startswith("vit") else "-"
        ax_t.plot(
            *zip(*points, strict=True), style, marker="o", markersize=2, color=f"C{i}", label=LABELS[arm]
        )
        prefixes = [r[arm]["summary"].get("test_acc_prefix") for r in results.values() if arm in r]
        if all(prefixes):
            ks = range(1, len(prefixes[0]) + 1)
            means = [100 * statistics.fmean(p[k - 1] for p in prefixes) for k in ks]
            ax_k.plot(ks, means, marker="o", color=f"C{i}", label=LABELS[arm])
        elif arm == "vit":
            acc = statistics.fmean(
                results[s][arm]["summary"]["test_acc"] for s in results if arm in results[s]
            )
            ax_k.axhline(100 * acc, color=f"C{i}", linestyle="--", label=LABELS[arm])
    ax_t.set(xlabel="training seconds", ylabel="validation accuracy (%)", title=f"{dataset}: seed {seed}")
    ax_k.set(
        xlabel="branches used (first k)", ylabel="test accuracy (%)", title=f"{dataset}: mean over seeds"
    )
    for ax in (ax_t, ax_k):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "cifar10"], choices=list(PRESETS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--limit-train", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--branches", type=int, default=8)
    parser.add_argument("--branch-depth", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs in --out, resume others")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-accuracy")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: tabulate the finished runs in --out"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    command = " ".join(
        [
            f"python benchmarks/accuracy.py --datasets {' '.join(args.datasets)} --data-dir {args.data_dir}",
            f"--epochs {args.epochs} --limit-train {args.limit_train} --batch-size {args.batch_size}",
            f"--lr {args.lr:g} --dim {args.dim} --heads {args.heads} --branches {args.branches}",
            f"--branch-depth {args.branch_depth} --seeds {' '.join(map(str, args.seeds))}",
            f"--arms {' '.join(args.arms)}",
            f"--threads {args.threads}" if args.threads else "",
        ]
    ).strip()
    for dataset in args.datasets:
        results = {seed: run_seed(dataset, seed, args) for seed in args.seeds}
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"accuracy-{dataset}.json").write_text(
            json.dumps({"command": command, "results": results}, indent=1, default=str)
        )
        plot(dataset, results, RESULTS / f"accuracy-{dataset}.png")
        n = args.branches
        protocol = " ".join(
            [
                f"Protocol: {dataset}, the first {args.limit_train} training images (class-balanced;",
                "10% held out for validation), the full test set; patch 4 at native resolution;",
                f"dim {args.dim}, {args.heads} heads, MLP {4 * args.dim}, no dropout; ParaFormer {n}",
                f"branches x depth {args.branch_depth}, ViT twin depth {n * args.branch_depth} (same",
                f"parameters); batch {args.batch_size}, AdamW lr {args.lr:g}, 1 warmup epoch then cosine,",
                "weight decay 0.05, grad clip 1; random crops, flips on CIFAR-10 only; fp32. Equal epochs:",
                f"{args.epochs} each. Equal steps: the optimizer steps progressive took ({n + 1} per batch),",
                "same batch. Equal time: as many epochs as cost what progressive's epochs cost, from each",
                "schedule's cost per epoch measured side by side (interleaved) before the runs; the",
                "'training s' column is each run's own wall clock on a shared machine, not comparable",
                "across rows. Test accuracy is that of the epoch with the best validation accuracy,",
                "measured once at the end.",
            ]
        )
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        section = "\n".join(
            [
                f"### Accuracy at equal epochs, steps and time ({dataset})",
                "",
                f"Finished {stamp} on {describe()}.",
                "",
                f"`{command}`",
                "",
                protocol,
                "",
                *table(dataset, results),
                "",
                *comparisons(dataset, results),
                "",
                f"![curves](benchmarks/results/accuracy-{dataset}.png)",
                "",
            ]
        )
        print(section, flush=True)
        if not args.no_write:
            update_section(f"accuracy-{dataset}", section)


if __name__ == "__main__":
    main()
