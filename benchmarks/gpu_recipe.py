"""The paper's recipe on CIFAR-10 at equal wall-clock, for the ViT twin, fused and progressive (a GPU row).

Each schedule's cost per training batch is measured side by side first (the paper model,
batch 500, bf16, the modes taking turns); each arm then gets as many optimizer steps as
fit in ``--seconds`` by that cost, with the recipe's settings otherwise (224 px, patch
16, dim 192, 8 branches x depth 2 or the depth-16 ViT twin, Adam lr 1e-4, RandAugment).
Warmup and decay are fractions of each arm's steps. Test accuracy of the selected epoch.

    python benchmarks/gpu_recipe.py --device cuda --seconds 120 --data-dir DATA
    python benchmarks/gpu_recipe.py --dry-run          # the same steps on a CPU, tiny and quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch

from benchmarks.protocol import budget, load_now, record_results, write_record
from benchmarks.throughput import epoch_seconds_per_batch
from paraformer.launch import train
from paraformer.models import create_model
from paraformer.tasks.image import TrainConfig
from paraformer.train.config import load_recipe

ARMS = {
    "vit": ("vit_paper", "fused"),
    "fused": ("paraformer_paper", "fused"),
    "progressive": ("paraformer_paper", "progressive"),
}


def arm_config(arm: str, args: argparse.Namespace, max_steps: int) -> TrainConfig:
    model, mode = ARMS[arm]
    if args.dry_run:  # tiny and on the CPU: the embedded data, a small model, a few steps
        tiny = {
            "dim": 16,
            "heads": 2,
            "mlp_dim": 32,
            **({"depth": 4} if arm == "vit" else {"num_branches": 2}),
        }
        return TrainConfig(
            model=model.replace("paper", "tiny_fmnist"),
            model_overrides=tiny,
            dataset="embedded",
            mode=mode,
            batch_size=16,
            max_steps=max_steps,
            limit_train=200,
            device="cpu",
            seed=args.seed,
        )
    recipe = load_recipe("paper_cifar10", TrainConfig)
    return TrainConfig.from_dict(
        {
            **recipe,
            "model": model,
            "mode": mode,
            "max_steps": max_steps,
            "data_dir": args.data_dir,
            "device": args.device,
            "seed": args.seed,
            "epochs": None,
        }
    )


def batch_seconds(args: argparse.Namespace) -> dict[str, float]:
    """Seconds per training batch of each arm (all its passes), measured side by side."""
    device = torch.device(args.device)
    batch, size, channels = (16, 28, 1) if args.dry_run else (500, 224, 3)
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    models = {}
    for arm in ARMS:
        cfg = arm_config(arm, args, 1)
        models[arm] = create_model(cfg.model, **cfg.model_overrides).to(device)
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for round_ in range(args.rounds + 1):
        for arm, model in models.items():
            seconds = epoch_seconds_per_batch(
                ARMS[arm][1] if arm != "vit" else "vit", model, x, y, 1, not args.dry_run
            )
            if round_:
                times[arm].append(seconds)
    return {arm: statistics.median(t) for arm, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=120.0, help="wall-clock budget of every arm")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="tiny, on the CPU, into a temporary folder")
    args = parser.parse_args()
    if args.dry_run:
        args.device, args.seconds, args.rounds = "cpu", 2.0, 1
        args.results_dir = args.results_dir or Path(tempfile.mkdtemp(prefix="gpu-dry-run-"))
    costs = batch_seconds(args)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-recipe-") as tmp:
        for arm in ARMS:
            passes = 2 if arm == "progressive" else 1
            batches = max(1, int(args.seconds / costs[arm]))
            per_batch = (8 if not args.dry_run else 2) + 1 if arm == "progressive" else 1
            steps = max(passes, batches * per_batch)
            load_before = load_now()
            summary = train(
                arm_config(arm, args, steps), Path(tmp) / arm, log=lambda _m: None, progress=False
            )
            results[arm] = {
                "summary": summary,
                "budget": budget(
                    optimizer_steps=summary["steps"],
                    seen=batches * (16 if args.dry_run else 500),
                    train_seconds=summary["train_seconds"],
                    budget_ratio=costs[arm] / costs["vit"],
                    load={"arm": [load_before, load_now()]},
                ),
            }
            print(
                f"{arm}: {summary['steps']} steps, test accuracy {summary.get('test_acc', float('nan')):.2%}"
            )
    record = record_results(
        "gpu-recipe",
        {"batch_seconds": costs, "results": {str(args.seed): results}},
        seeds=[args.seed],
        config=vars(args),
    )
    path = write_record(record, *([args.results_dir] if args.results_dir else []))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
