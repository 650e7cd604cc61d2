"""Training throughput of each ParaFormer mode and the ViT twin, measured side by side.

Every mode trains on the same random batch with a real AdamW step. The modes take
turns (round-robin, ``--rounds`` rounds of ``--batches`` batches each), so machine
noise hits them alike; the median round is reported. The cost of one *epoch* is
what matters for the modes: ``progressive`` makes N prefix steps per batch and then
a second full pass over the data, so its epoch costs (prefix pass + full pass).

    python benchmarks/throughput.py                      # dim 64, 8x2, 28x28 and 32x32 inputs
    python benchmarks/throughput.py --bf16 --batch-size 256   # each mode fp32 and bf16, side by side
    python benchmarks/throughput.py --compile            # each mode eager and torch.compile'd, side by side

Every round's time of every variant goes to benchmarks/results/throughput[-bf16|-compile].json;
``python -m benchmarks.report`` renders the medians and the ratios paired by round.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch
import torch.nn.functional as F

from benchmarks.protocol import record_results, write_record
from benchmarks.render.speed import render_throughput
from paraformer.models import ImageClassifier, create_model
from paraformer.train.devices import compile_model
from paraformer.train.objectives import make_objective as make_strategy

INPUTS = {
    "fashion-mnist": ("tiny_fmnist", 1, 28),
    "cifar10": ("tiny_cifar", 3, 32),
    "paper": ("paper", 3, 224),
}
MODES = ("vit", "joint", "fused", "progressive")


def build(mode: str, preset: str, args: argparse.Namespace) -> ImageClassifier:
    shape = {"dim": args.dim, "heads": args.heads, "mlp_dim": 4 * args.dim}
    torch.manual_seed(0)
    if mode == "vit":
        return create_model(f"vit_{preset}", **shape, depth=args.branches * args.branch_depth)
    return create_model(
        f"paraformer_{preset}", **shape, num_branches=args.branches, branch_depth=args.branch_depth
    )


def epoch_seconds_per_batch(mode: str, model: ImageClassifier, x, y, batches: int, bf16: bool) -> float:
    """Seconds that one batch's share of an epoch takes in ``mode`` (all passes included)."""
    strategy = make_strategy(model, "joint" if mode == "vit" else mode, "uniform", F.cross_entropy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    model.train()
    _sync(x.device)
    start = time.perf_counter()
    for _ in range(batches):
        for pass_name in strategy.passes:
            with autocast:
                strategy.train_batch(model, x, y, pass_name, step)
    _sync(x.device)
    return (time.perf_counter() - start) / batches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--branches", type=int, default=8)
    parser.add_argument("--branch-depth", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=3, help="batches per mode per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--bf16", action="store_true", help="also time each mode in bf16 autocast, side by side"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also time each mode torch.compile'd")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--name", help="results file name (default throughput[-bf16][-compile])")
    parser.add_argument(
        "--results-dir", type=Path, help="where to write the raw JSON (default benchmarks/results)"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="do not write benchmarks/results/ (a smoke run)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    inputs = {}
    for name in args.inputs:
        preset, channels, size = INPUTS[name]
        device = torch.device(args.device)
        x = torch.randn(args.batch_size, channels, size, size, device=device)
        y = torch.randint(0, 10, (args.batch_size,), device=device)
        variants = {(mode, "", False): build(mode, preset, args).to(device) for mode in MODES}
        if args.compile:
            for mode in MODES:
                variants[(mode, "+compiled", False)] = compiled = copy.deepcopy(variants[(mode, "", False)])
                compile_model(compiled)
        if args.bf16:  # a copy of each model in bf16 autocast, taking turns with fp32
            for mode in MODES:
                variants[(mode, "+bf16", True)] = copy.deepcopy(variants[(mode, "", False)])
        for (mode, _, bf16), model in variants.items():  # warm-up (and compilation)
            epoch_seconds_per_batch(mode, model, x, y, 2, bf16)
        times: dict[str, list[float]] = {mode + tag: [] for mode, tag, _ in variants}
        for r in range(args.rounds):
            for (mode, tag, bf16), model in variants.items():
                times[mode + tag].append(epoch_seconds_per_batch(mode, model, x, y, args.batches, bf16))
            print(f"{name} round {r + 1}/{args.rounds}", flush=True)
        inputs[name] = {"shape": [channels, size, size], "times": times}
    bench = args.name or "throughput" + ("-bf16" if args.bf16 else "") + ("-compile" if args.compile else "")
    record = record_results(bench, {"inputs": inputs}, seeds=[], config=vars(args))
    print(render_throughput(record).text, flush=True)
    if not args.no_write:
        path = write_record(record, *([args.results_dir] if args.results_dir else []))
        print(f"wrote {path}; render BENCHMARKS.md with: python -m benchmarks.report")


if __name__ == "__main__":
    main()
