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
validation split; test accuracy is measured once per model, after. Every seed's figures
(and each training run's budget) go to benchmarks/results/compression-<dataset>.json;
``python -m benchmarks.report`` renders them.

    python benchmarks/compression.py --data-dir ../shared/datasets --seeds 0 1 2
    python benchmarks/compression.py --data-dir ../shared/datasets --seeds 0 --epochs 1 \\
        --limit-train 500 --no-write                                      # smoke test
With --reuse, finished runs in --out are read back instead of trained again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch

from benchmarks.accuracy import PRESETS, base_config, run  # the same recipe
from benchmarks.protocol import load_results, record_results, write_record
from benchmarks.render.compression import render as render_section
from paraformer.checkpoint import checkpoint_folder, load_model
from paraformer.commands.compress import compress_run
from paraformer.models import count_params
from paraformer.surgery import compress, evaluate_selections, greedy_order
from paraformer.tasks import open_run
from paraformer.tasks.image import TrainConfig, reopen, run_transform

ROOT = Path(__file__).resolve().parents[1]


def config(dataset: str, family: str, depth: int, args: argparse.Namespace, seed: int) -> TrainConfig:
    """accuracy.py's recipe: the ParaFormer trained fused, or a ViT of the given depth."""
    if family == "paraformer":
        return base_config(dataset, "fused", args, seed)
    vit = base_config(dataset, "vit", args, seed)  # mode is unused by a ViT: "fused" names the recipe
    return vit.replace(mode="fused", model_overrides={**vit.model_overrides, "depth": depth})


def trained(cfg: TrainConfig, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train one run (or read it back / resume it with --reuse); its summary, history and budget."""
    return run(cfg, run_dir, args)


def run_seed(dataset: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every method's k-branch models for one seed: params and val/test accuracy per k."""
    n = args.branches
    run_dir = args.out / f"{dataset}-paraformer-seed{seed}"
    if args.model_runs is not None:  # the accuracy benchmark's fused run: the same recipe, trained once
        run_dir = args.model_runs / f"{dataset}-fused-seed{seed}"
    full = trained(config(dataset, "paraformer", 0, args, seed), run_dir, args)
    folder = checkpoint_folder(run_dir, "best")
    saved, model = open_run(folder), load_model(folder).eval()
    data = reopen(saved, args.data_dir, ("val", "test"))
    transform = run_transform(saved)
    val, test = (data["val"], transform), (data["test"], transform)
    out: dict[str, Any] = {"prefix": {}, "greedy": {}, "greedy-ft": {}, "vit": {}}
    out["budget"] = {"paraformer": full["budget"], "vit": {}}
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
        r = trained(
            config(dataset, "vit", depth, args, seed), args.out / f"{dataset}-vit{depth}-seed{seed}", args
        )
        s = r["summary"]
        out["vit"][k] = {"params": s["num_params"], "val_acc": s["val_acc"], "test_acc": s["test_acc"]}
        out["budget"]["vit"][k] = r["budget"]
    return out


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
    parser.add_argument(
        "--model-runs",
        type=Path,
        help="cut the fused runs of benchmarks/accuracy.py in this folder (same flags) instead of training",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="do not write benchmarks/results/ (a smoke run)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: print the section of the seeds in benchmarks/results/compression-<dataset>.json",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for dataset in args.datasets:
        name = f"compression-{dataset}"
        if args.report_only:  # nothing runs: show what the recorded file holds
            record = load_results(name)
            print(render_section(record).text if record else f"no benchmarks/results/{name}.json", flush=True)
            continue
        results: dict[int, dict[str, Any]] = {}
        for seed in args.seeds:  # saved after every seed: a stopped run keeps the seeds it finished
            results[seed] = run_seed(dataset, seed, args)
            record = record_results(name, {"results": results}, seeds=list(results), config=vars(args))
            if not args.no_write:
                write_record(record)
        print(render_section(record).text, flush=True)
        if not args.no_write:
            print(f"wrote benchmarks/results/{name}.json; render BENCHMARKS.md: python -m benchmarks.report")


if __name__ == "__main__":
    main()
