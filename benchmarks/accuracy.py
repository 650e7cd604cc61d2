"""ParaFormer training modes against their parameter-matched ViT twin.

For each dataset, trains (same data, seed, epochs, batch and optimiser):
  vit          the sequential ViT twin (depth = branches x branch_depth)
  joint        ParaFormer, one loss on the sum of all branches
  fused        ParaFormer, all prefix losses in one backward pass
  progressive  ParaFormer, the authors' schedule (a step per prefix, then a full pass)
  fused-long   fused again with --long-factor times the epochs (its own cosine schedule),
               to see whether fused reaches progressive's accuracy in less wall-clock time
  fused-small-batch  fused with batch --small-batch: progressive takes N+1 optimizer steps
               per batch, fused one; a smaller batch gives fused more steps per epoch
  fused-long-small-batch  both: batch --small-batch and --long-factor times the epochs
With --reuse, finished runs in --out are read back instead of trained again and
interrupted ones are resumed, so a long benchmark can be stopped and continued.
and reports test accuracy, seconds per epoch, images/s, the accuracy of every
branch prefix, and how much wall-clock time fused needs to reach progressive's
final accuracy. Results go to benchmarks/results/ and into BENCHMARKS.md.

    python benchmarks/accuracy.py --data-dir ../shared/datasets            # the recorded protocol
    python benchmarks/accuracy.py --datasets fashion-mnist --epochs 1 --limit-train 500   # smoke run
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from machine import describe  # benchmarks/machine.py, beside this script
from paraformer.train import TrainConfig, resume, train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODES = ("vit", "joint", "fused", "progressive", "fused-long", "fused-small-batch", "fused-long-small-batch")
FUSED_VARIANTS = ("fused", "fused-long", "fused-small-batch", "fused-long-small-batch")
PRESETS = {"fashion-mnist": "tiny_fmnist", "cifar10": "tiny_cifar"}


def run_one(dataset: str, mode: str, args: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    family = "vit" if mode == "vit" else "paraformer"
    epochs = args.epochs * args.long_factor if "long" in mode else args.epochs
    shape = {"dim": args.dim, "heads": args.heads, "mlp_dim": 4 * args.dim}
    if family == "vit":
        overrides = {**shape, "depth": args.branches * args.branch_depth}
    else:
        overrides = {**shape, "num_branches": args.branches, "branch_depth": args.branch_depth}
    cfg = TrainConfig(
        model=f"{family}_{PRESETS[dataset]}",
        model_overrides=overrides,
        dataset=dataset,
        data_dir=args.data_dir,
        mode="joint" if mode == "vit" else "fused" if mode in FUSED_VARIANTS else mode,
        epochs=epochs,
        batch_size=args.small_batch if "small-batch" in mode else args.batch_size,
        lr=args.lr,
        seed=seed,
        limit_train=args.limit_train,
        val_fraction=0.1,
        bf16=args.bf16,
    )
    run_dir = out / f"{dataset}-{mode}-seed{seed}"
    log = lambda line: print("   ", line, flush=True)  # noqa: E731
    saved = run_dir / "config.json"
    same = saved.is_file() and json.loads(saved.read_text()).get("train") == cfg.to_dict()
    print(f"== {dataset} {mode} seed {seed}", flush=True)
    if args.reuse and same and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
    else:
        summary = None
    if summary is not None and summary.get("complete"):
        print("    (finished run reused)", flush=True)
    elif args.reuse and same:
        summary = resume(run_dir, progress=args.progress, log=log)
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        summary = train(cfg, run_dir, progress=args.progress, log=log)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    finished = time.gmtime((run_dir / "summary.json").stat().st_mtime)
    return {
        "dataset": dataset,
        "mode": mode,
        "seed": seed,
        "summary": summary,
        "history": history,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", finished),
    }


def time_to_reach(history: list[dict[str, Any]], target: float) -> float | None:
    """Cumulative training seconds until test accuracy first reaches ``target``."""
    elapsed = 0.0
    for record in history:
        elapsed += record["train_seconds"]
        if record["test_acc"] >= target - 1e-9:
            return elapsed
    return None


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == dataset]
        lines += [
            f"**{dataset}**",
            "",
            "| model | params | final test acc | best-val test acc | s/epoch | images/s "
            "| test acc with first k branches |",
            "|---|---|---|---|---|---|---|",
        ]
        for mode in MODES:
            runs = [r for r in rows if r["mode"] == mode]
            if not runs:
                continue
            final = [r["summary"]["final_test_acc"] for r in runs]
            best = [r["summary"]["best_test_acc"] for r in runs]
            sec = [r["summary"]["train_seconds"] / r["summary"]["epochs_completed"] for r in runs]
            ips = [r["summary"]["mean_images_per_s"] for r in runs]
            prefix = runs[0]["summary"].get("final_test_acc_prefix")
            curve = " / ".join(f"{100 * a:.1f}" for a in prefix) if prefix else "n/a"
            label = {
                "vit": "ViT twin",
                "fused-long": f"ParaFormer fused, {args.long_factor}x epochs",
                "fused-small-batch": f"ParaFormer fused, batch {args.small_batch}",
                "fused-long-small-batch": f"ParaFormer fused, batch {args.small_batch}, "
                f"{args.long_factor}x epochs",
            }.get(mode, f"ParaFormer {mode}")
            lines.append(
                f"| {label} | {runs[0]['summary']['num_params']:,} | {_mean_pm(final)} | {_mean_pm(best)} "
                f"| {sum(sec) / len(sec):.1f} | {sum(ips) / len(ips):.0f} | {curve} |"
            )
        for p in (r for r in rows if r["mode"] == "progressive"):
            target = p["summary"]["final_test_acc"]
            t_prog = p["summary"]["train_seconds"]
            verdicts = []
            for f in (r for r in rows if r["mode"] in FUSED_VARIANTS and r["seed"] == p["seed"]):
                epochs = f["summary"]["epochs"]
                t_fused = time_to_reach(f["history"], target)
                verdicts.append(
                    f"{f['mode']} ({epochs} epochs) reached it after {t_fused:.0f} s, "
                    f"**{t_prog / t_fused:.1f}x less time**"
                    if t_fused
                    else f"{f['mode']} ({epochs} epochs) did not reach it ("
                    f"{100 * f['summary']['final_test_acc']:.2f}% after "
                    f"{f['summary']['train_seconds']:.0f} s)"
                )
            lines.append("")
            lines.append(
                f"Time to accuracy (seed {p['seed']}): progressive ended at {100 * target:.2f}% after "
                f"{t_prog:.0f} s of training; " + "; ".join(verdicts) + "."
            )
        lines.append("")
    return "\n".join(lines)


def _mean_pm(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}%"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{100 * mean:.2f} ± {100 * std:.2f}%"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        ax_t, ax_k = axes[row]
        for r in (r for r in results if r["dataset"] == dataset and r["seed"] == results[0]["seed"]):
            t, acc = 0.0, []
            for h in r["history"]:
                t += h["train_seconds"]
                acc.append((t, 100 * h["test_acc"]))
            color = f"C{MODES.index(r['mode'])}"  # one colour per mode in both panels
            ax_t.plot(*zip(*acc, strict=True), marker="o", markersize=3, color=color, label=r["mode"])
            prefix = r["summary"].get("final_test_acc_prefix")
            if prefix:
                ax_k.plot(
                    range(1, len(prefix) + 1),
                    [100 * a for a in prefix],
                    marker="o",
                    color=color,
                    label=r["mode"],
                )
            elif r["mode"] == "vit":
                ax_k.axhline(
                    100 * r["summary"]["final_test_acc"], color=color, linestyle="--", label="ViT twin"
                )
        ax_t.set(
            xlabel="training seconds", ylabel="test accuracy (%)", title=f"{dataset}: accuracy vs wall-clock"
        )
        ax_k.set(
            xlabel="branches used (first k)",
            ylabel="test accuracy (%)",
            title=f"{dataset}: accuracy vs branches",
        )
        for ax in (ax_t, ax_k):
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def update_benchmarks_md(section: str, tag: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- accuracy-{tag}:begin -->", f"<!-- accuracy-{tag}:end -->"
    block = f"{begin}\n{section}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "cifar10"], choices=list(PRESETS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--limit-train", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--branches", type=int, default=8)
    parser.add_argument("--branch-depth", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--long-factor", type=int, default=2, help="epochs multiplier of fused-long")
    parser.add_argument("--small-batch", type=int, default=32, help="batch size of fused-small-batch")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs in --out, resume others")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice, one per core)"
    )
    parser.add_argument("--progress", action="store_true", help="show per-batch progress bars")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-accuracy")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    results = [
        run_one(dataset, mode, args, seed, args.out)
        for dataset in args.datasets
        for seed in args.seeds
        for mode in args.modes
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "-".join(args.datasets)
    (RESULTS / f"accuracy-{tag}.json").write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results}, indent=1, default=str)
    )
    plot(results, RESULTS / f"accuracy-{tag}.png")
    protocol = (
        f"Protocol: {', '.join(args.datasets)}; first {args.limit_train} training images (class-balanced; "
        f"10% of them held out for validation), full test set; patch 4 at native resolution; "
        f"dim {args.dim}, {args.heads} heads, MLP {4 * args.dim}; "
        f"ParaFormer {args.branches} branches x depth {args.branch_depth}, "
        f"ViT twin depth {args.branches * args.branch_depth}; {args.epochs} epochs, "
        f"batch {args.batch_size}, AdamW lr {args.lr:g} (1 warmup epoch, cosine), weight decay 0.05, "
        f"grad clip 1.0, no dropout; random crops (padding 4 px on CIFAR-10, 1 px on Fashion-MNIST), "
        f"horizontal flips on CIFAR-10 only; {'bf16' if args.bf16 else 'fp32'}; seeds {args.seeds}; "
        f"fused-long = fused with {args.long_factor}x the epochs; fused-small-batch = fused at batch "
        f"{args.small_batch}; fused-long-small-batch = both."
    )
    machine = describe()
    finished = [r["finished"] for r in results]
    command = (
        "python benchmarks/accuracy.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k not in ("out", "no_write", "progress", "bf16", "reuse") and v is not None
        )
        + (" --bf16" if args.bf16 else "")
    )
    section = (
        f"### Accuracy: ParaFormer modes vs ViT twin ({tag})\n\n"
        f"Runs finished {min(finished)} to {max(finished)}; written on {machine}.\n\n"
        f"`{command}`\n\n{protocol}\n\n{table(results, args)}\n"
        f"![curves](benchmarks/results/accuracy-{tag}.png)\n"
    )
    print(section)
    if not args.no_write:
        update_benchmarks_md(section, tag)


if __name__ == "__main__":
    main()
