"""Gradient fan-in at depth (16 and 24 layers) and the paper's two interventions.

For each depth and seed, three runs on one text (same steps, batch, optimiser):

- ``uniform``: ``lm_uniform_l<D>`` (the runs of ``benchmarks/prune_depth.py`` on Tiny
  Shakespeare are reused when they exist: same settings);
- ``equalised``: the same model trained with ``equalize_grads`` (every layer's gradient
  rescaled to the mean per-layer norm before clipping; ``GradientEqualizer``);
- ``shared``: ``lm_shared_l<D>``, D/2 blocks run twice with shared parameters (the same
  depth of computation; late blocks get the downstream paths of the second pass).

For each run, ``paraformer lm gfa`` (``commands.lm.gfa_run``) sets the theoretical fan-in
beside the per-layer gradient norms accumulated during training (the natural gradients,
read before any equalisation) and the validation-loss increase when each block is skipped
(all its applications, for the shared model). *Late-layer importance* is the share of the
total (positive) skip importance carried by the last quarter of the blocks: 25% if every
block mattered alike. The paper: equalising gradients does not restore late layers;
shared repetition does. Results: ``benchmarks/results/gfa-depth.json``.

    python benchmarks/gfa_depth.py --depths 16 --seeds 0 1 2 3 4 --reuse
    python benchmarks/gfa_depth.py --depths 24 --seeds 0 1 2 --reuse
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch

from benchmarks.protocol import load_results, record_results, write_record
from benchmarks.render.gfa_depth import ARMS, late_share, render
from benchmarks.runs import finished, kept, log, run_budget, train_or_reuse
from paraformer.commands.lm import gfa_run
from paraformer.tasks.text import LMTrainConfig

ROOT = Path(__file__).resolve().parents[1]


def model_of(arm: str, depth: int) -> str:
    return f"lm_shared_l{depth}" if arm == "shared" else f"lm_uniform_l{depth}"


def run_dir(args: argparse.Namespace, arm: str, depth: int, seed: int) -> Path:
    suffix = "-eq" if arm == "equalised" else ""
    return Path(args.runs) / f"{Path(args.data).stem}-{model_of(arm, depth)}{suffix}-s{seed}"


def config(args: argparse.Namespace, arm: str, depth: int, seed: int) -> LMTrainConfig:
    return LMTrainConfig(
        data=args.data,
        model=model_of(arm, depth),
        seed=seed,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_fraction=0.1,
        eval_interval=args.eval_interval,
        equalize_grads=arm == "equalised",
        device="cpu",
    )


def one_run(args: argparse.Namespace, arm: str, depth: int, seed: int) -> dict[str, Any] | None:
    folder = run_dir(args, arm, depth, seed)
    if args.report_only:
        summary = finished(folder)
        if summary is None:
            return None
    else:
        summary = train_or_reuse(config(args, arm, depth, seed), folder, reuse=args.reuse)
    path = folder / "gfa.json"
    if args.reuse and path.is_file():
        gfa = json.loads(path.read_text())
    elif args.report_only:
        return None
    else:
        gfa = gfa_run(folder, tokens=args.gfa_tokens, device="cpu")
    keep = ("layers", "theory", "grad_norm", "grad_rms", "importance", "correlations", "steps")
    out = kept(summary) | {k: gfa.get(k) for k in keep}
    out["late_layer_importance"] = late_share(gfa["importance"])
    out["budget"] = run_budget(summary, args.batch_size * 64)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/text/tinyshakespeare.txt"))
    parser.add_argument("--depths", nargs="+", type=int, default=[16, 24], choices=[16, 24])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-interval", type=int, default=80)
    parser.add_argument("--gfa-tokens", type=int, default=16384, help="validation tokens for skip importance")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default=str(ROOT / "runs/bench-depth"))
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.reuse = args.reuse or args.report_only
    old = load_results("gfa-depth")
    depths: dict[str, Any] = dict(old["payload"]["depths"]) if old else {}
    for depth in args.depths:
        runs: dict[str, dict[str, Any]] = {}
        for seed in args.seeds:
            for arm in args.arms:
                r = one_run(args, arm, depth, seed)
                if r is not None:
                    runs.setdefault(arm, {})[str(seed)] = r
        depths[str(depth)] = {"runs": runs, "seeds": args.seeds}
    if args.no_report:
        return
    main_depth = "16" if "16" in depths else sorted(depths)[0]
    payload = {
        "main_depth": int(main_depth),
        "depths": depths,
        "per_seed": {
            "late_layer_importance": {
                arm: {s: r["late_layer_importance"] for s, r in by.items()}
                for arm, by in depths[main_depth]["runs"].items()
            }
        },
    }
    seeds = sorted({int(s) for by in depths[main_depth]["runs"].values() for s in by})
    record = record_results("gfa-depth", payload, seeds=seeds, config=vars(args))
    print(render(record).text, flush=True)
    log(f"wrote {write_record(record)}; render BENCHMARKS.md with: python -m benchmarks.report")


if __name__ == "__main__":
    main()
