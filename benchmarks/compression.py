"""Compression: accuracy against parameters of k-branch ParaFormers beside ViTs trained from scratch.

For each dataset and seed: train one ParaFormer (N branches x depth d, fused
progressive training), then for k = 1..N measure the k-branch model chosen three ways:

  prefix         branches 1..k, the paper's way (no data needed)
  greedy         the k branches greedy selection adds, judged by validation loss
  greedy + ft    greedy, then ``--finetune-epochs`` of training of the kept branches
                 (best validation epoch kept), for k in ``--finetune-ks``

and beside them ViTs of depth k*d trained from scratch with the same recipe (the same
parameter count as the k-branch model), for k in ``--vit-ks``. Every choice (greedy
order, fine-tuning epoch, ViT epoch, the k that stays within 2 points) is made on the
validation split; test accuracy is measured once per model, after. Results are mean ±
std over seeds; the section goes into BENCHMARKS.md between
``<!-- compression-<dataset>:begin/end -->``.

    python benchmarks/compression.py --data-dir ../shared/datasets --seeds 0 1 2
    python benchmarks/compression.py --data-dir ../shared/datasets --seeds 0 --epochs 1 \\
        --limit-train 500 --no-write                                      # smoke test
With --reuse, finished runs in --out are read back instead of trained again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from accuracy import PRESETS, base_config, run  # benchmarks/accuracy.py: the same recipe
from machine import describe  # benchmarks/machine.py, beside this script
from paraformer.checkpoint import load_model
from paraformer.models import count_params
from paraformer.runs import checkpoint_folder, run_datasets, run_transform
from paraformer.surgery import compress, evaluate_selections, greedy_order
from paraformer.surgery_runs import compress_run
from paraformer.train import TrainConfig
from paraformer.train.checkpointing import read_run
from report import pm, update_section  # benchmarks/report.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("prefix", "greedy", "greedy-ft", "vit")
LABELS = {
    "prefix": "ParaFormer, first k branches",
    "greedy": "ParaFormer, greedy k branches",
    "greedy-ft": "ParaFormer, greedy + fine-tune",
    "vit": "ViT from scratch, depth k*d",
}


def config(dataset: str, family: str, depth: int, args: argparse.Namespace, seed: int) -> TrainConfig:
    """accuracy.py's recipe: the ParaFormer trained fused, or a ViT of the given depth."""
    if family == "paraformer":
        return base_config(dataset, "fused", args, seed)
    vit = base_config(dataset, "vit", args, seed)  # mode is unused by a ViT: "fused" names the recipe
    return vit.replace(mode="fused", model_overrides={**vit.model_overrides, "depth": depth})


def trained(cfg: TrainConfig, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train one run (or read it back / resume it with --reuse); its summary."""
    return run(cfg, run_dir, args)["summary"]


def run_seed(dataset: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every method's k-branch models for one seed: params and val/test accuracy per k."""
    n = args.branches
    run_dir = args.out / f"{dataset}-paraformer-seed{seed}"
    trained(config(dataset, "paraformer", 0, args, seed), run_dir, args)
    folder = checkpoint_folder(run_dir, "best")
    saved, model = read_run(folder), load_model(folder).eval()
    data = run_datasets(saved, args.data_dir, ("val", "test"))
    transform = run_transform(saved)
    val, test = (data["val"], transform), (data["test"], transform)
    out: dict[str, Any] = {"prefix": {}, "greedy": {}, "greedy-ft": {}, "vit": {}}
    order = greedy_order(model, val)  # validation only
    out["greedy_order"] = order
    ks = range(1, n + 1)
    selections = [*ks, *(order[:k] for k in ks)]  # prefixes, then greedy's choices
    scores = {split: evaluate_selections(model, d, selections) for split, d in (("val", val), ("test", test))}
    for i, selection in enumerate(selections):
        method, k = ("prefix", i + 1) if i < n else ("greedy", i + 1 - n)
        out[method][k] = {
            "params": count_params(compress(model, selection)),
            "val_acc": scores["val"][i]["acc"],
            "test_acc": scores["test"][i]["acc"],
        }
    for k in args.finetune_ks:
        ft_dir = args.out / f"{dataset}-greedy{k}-ft-seed{seed}"
        summary = ft_dir / "summary.json"
        if args.reuse and summary.is_file() and "compression" in json.loads(summary.read_text()):
            r = json.loads(summary.read_text())["compression"]
            out["greedy-ft"][k] = {
                "params": r["num_params"],
                "val_acc": r["val_acc"],
                "test_acc": r["test_acc"],
            }
            continue
        if ft_dir.exists():
            shutil.rmtree(ft_dir)
        r = compress_run(
            run_dir,
            ft_dir,
            branches=k,
            select="greedy",
            finetune_epochs=args.finetune_epochs,
            compare_full=False,
            progress=False,
            log=lambda line: print("   ", line, flush=True),
        )
        out["greedy-ft"][k] = {"params": r["num_params"], "val_acc": r["val_acc"], "test_acc": r["test_acc"]}
    for k in args.vit_ks:
        depth = k * args.branch_depth
        s = trained(
            config(dataset, "vit", depth, args, seed), args.out / f"{dataset}-vit{depth}-seed{seed}", args
        )
        out["vit"][k] = {"params": s["num_params"], "val_acc": s["val_acc"], "test_acc": s["test_acc"]}
    return out


def cell(results: list[dict[str, Any]], method: str, k: int, key: str = "test_acc") -> str:
    values = [100 * r[method][k][key] for r in results if k in r[method]]
    return pm(values) if values else ""


def within_two_points(results: list[dict[str, Any]], method: str, n: int) -> tuple[list[int], list[float]]:
    """Per seed: the smallest k whose validation accuracy is within 2 points of the full model's."""
    ks, tests = [], []
    for r in results:
        full = r["prefix"][n]["val_acc"]
        fits = [k for k in sorted(r[method]) if r[method][k]["val_acc"] >= full - 0.02]
        if fits:
            ks.append(fits[0])
            tests.append(r[method][fits[0]]["test_acc"])
    return ks, tests


def protocol(dataset: str, args: argparse.Namespace) -> str:
    n, d = args.branches, args.branch_depth
    return " ".join(
        [
            f"Protocol: {dataset}, the first {args.limit_train} training images (class-balanced;",
            "10% held out for validation), the full test set; patch 4,",
            f"dim {args.dim}, {args.heads} heads, MLP {4 * args.dim}, no dropout; ParaFormer {n} branches",
            f"x depth {d} trained fused (all prefix losses) for {args.epochs} epochs, batch",
            f"{args.batch_size}, AdamW lr {args.lr:g} (1 warmup epoch, cosine); the best-validation",
            "epoch is compressed. Greedy adds the branch that most lowers validation loss.",
            f"Fine-tuning: greedy's branches trained for {args.finetune_epochs} epoch(s) at lr",
            f"{args.lr / 10:g} (fused), best validation epoch kept. ViTs: depth k x {d} (the",
            "k-branch model's parameter count), the same recipe from scratch. Test accuracy (%) of",
            "each model, mean ± std over seeds; ratio = full ParaFormer parameters / the model's",
            "(the full model's ViT twin has the same count).",
        ]
    )


def section(dataset: str, results: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    n = args.branches
    full_params = results[0]["prefix"][n]["params"]
    lines = [
        f"### Compression: k of {n} branches vs ViTs from scratch ({dataset})",
        "",
        f"Finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {describe()}; "
        f"seeds {', '.join(map(str, args.seeds))}.",
        "",
        f"`{command}`",
        "",
        protocol(dataset, args),
        "",
        "| k | params | ratio | " + " | ".join(LABELS[m] for m in METHODS) + " |",
        "|---|---|---|" + "---|" * len(METHODS),
    ]
    for k in range(1, n + 1):
        params = results[0]["prefix"][k]["params"]
        cells = [cell(results, m, k) for m in METHODS]
        lines.append(f"| {k} | {params:,} | {full_params / params:.2f}x | " + " | ".join(cells) + " |")
    lines += ["", "Greedy orders (validation): " + "; ".join(str(r["greedy_order"]) for r in results), ""]
    full_test = [r["prefix"][n]["test_acc"] for r in results]
    for m in ("prefix", "greedy", "greedy-ft"):
        ks, tests = within_two_points(results, m, n)
        if not ks:
            lines.append(f"- {LABELS[m]}: no measured k stays within 2 validation points of the full model.")
            continue
        ratios = [full_params / results[0]["prefix"][k]["params"] for k in ks]
        accs = pm([100 * t for t in tests])
        lines.append(
            f"- {LABELS[m]}: smallest measured k within 2 validation points of the full model: k = "
            f"{', '.join(map(str, ks))} ({len(ks)} of {len(results)} seeds), ratio {pm(ratios)}x, test "
            f"accuracy {accs}% (full model {pm([100 * t for t in full_test])}%)."
        )
    quarter = max(1, n // 4)
    for m in ("prefix", "greedy", "greedy-ft"):
        kept = [r[m][quarter]["test_acc"] / r["prefix"][n]["test_acc"] for r in results if quarter in r[m]]
        if kept:
            verdict = "met" if statistics.fmean(kept) >= 0.9 else "not met"
            lines.append(
                f"- k = N/4 = {quarter}, {LABELS[m]}: keeps {pm([100 * v for v in kept], 1)}% of the full "
                f"model's test accuracy (aim >= 90%: {verdict})."
            )
    lines += ["", f"![compression](benchmarks/results/compression-{dataset}.png)", ""]
    return "\n".join(lines)


def plot(dataset: str, results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for i, m in enumerate(METHODS):
        ks = sorted({k for r in results for k in r[m]})
        ks = [k for k in ks if all(k in r[m] for r in results)]
        if not ks:
            continue
        x = [results[0][m][k]["params"] / 1e6 for k in ks]
        accs = [[100 * r[m][k]["test_acc"] for r in results] for k in ks]
        mean = [statistics.fmean(a) for a in accs]
        err = [statistics.stdev(a) if len(a) > 1 else 0.0 for a in accs]
        ax.errorbar(
            x,
            mean,
            yerr=err,
            marker="o",
            capsize=3,
            color=f"C{i}",
            label=LABELS[m],
            linestyle="--" if m == "vit" else "-",
        )
    ax.set(
        xlabel="parameters (millions)", ylabel="test accuracy (%)", title=f"{dataset}: accuracy vs parameters"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def with_int_keys(result: dict[str, Any]) -> dict[str, Any]:
    """A seed's results read back from JSON, whose object keys (the k) became strings."""
    return {m: {int(k): v for k, v in r.items()} if m in METHODS else r for m, r in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist"], choices=list(PRESETS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--limit-train", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--branches", type=int, default=8)
    parser.add_argument("--branch-depth", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-ks", type=int, nargs="*", default=[2])
    parser.add_argument("--vit-ks", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reuse", action="store_true", help="read finished runs in --out back")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-compression")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the section from the seeds already in benchmarks/results/compression-<dataset>.json",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    command = " ".join(
        [
            f"python benchmarks/compression.py --datasets {' '.join(args.datasets)}",
            f"--data-dir {args.data_dir}",
            f"--epochs {args.epochs} --limit-train {args.limit_train} --batch-size {args.batch_size}",
            f"--lr {args.lr:g} --dim {args.dim} --heads {args.heads} --branches {args.branches}",
            f"--branch-depth {args.branch_depth} --finetune-epochs {args.finetune_epochs}",
            f"--finetune-ks {' '.join(map(str, args.finetune_ks))}",
            f"--vit-ks {' '.join(map(str, args.vit_ks))}",
            f"--seeds {' '.join(map(str, args.seeds))}",
            f"--threads {args.threads}" if args.threads else "",
        ]
    ).strip()
    for dataset in args.datasets:
        results = []
        if args.report_only:
            saved = json.loads((RESULTS / f"compression-{dataset}.json").read_text())
            command, results = saved["command"], [with_int_keys(r) for r in saved["results"]]
            args.seeds = args.seeds[: len(results)]
        for seed in args.seeds if not args.report_only else ():
            results.append(run_seed(dataset, seed, args))
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"compression-{dataset}.json").write_text(
                json.dumps({"command": command, "results": results}, indent=1)
            )
        plot(dataset, results, RESULTS / f"compression-{dataset}.png")
        text = section(dataset, results, args, command)
        print(text, flush=True)
        if not args.no_write:
            update_section(f"compression-{dataset}", text)


if __name__ == "__main__":
    main()
