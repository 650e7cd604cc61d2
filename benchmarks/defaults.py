"""Defaults that fit the data: the budget rule of `paraformer train` against the former defaults.

When the user gives neither --epochs, --max-steps nor --batch-size, `train` sizes the run
by its training set (``paraformer.tasks.image.fit_budget``: batch 32 / 64 / 128 by size,
then enough epochs for at least 800 optimizer steps, 10 to 100). The former defaults were
batch 128 and 10 epochs whatever the data. For each training-set size, on the same data
and seeds, with the default model of the dataset:

  rule         what `paraformer train` now chooses
  former       batch 128, 10 epochs (1 warmup epoch: the former schedule)
  former-time  batch 128 given the rule's wall-clock: as many epochs as cost what the
               rule's run cost, by the two settings' epoch cost measured side by side

Sizes: 1,000 and 10,000 images of Fashion-MNIST and CIFAR-10 (class-balanced, 10% held out
for validation), and the embedded default. On the full datasets (54,000 and 45,000
training images) the rule chooses batch 128 and 10 epochs: exactly the former defaults,
so there is nothing to run. Test accuracy of the best-validation epoch, paired by seed.

    python benchmarks/defaults.py --data-dir ../shared/datasets --threads 1 --reuse
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch

from benchmarks.accuracy import run
from benchmarks.protocol import record_results, write_record
from benchmarks.render.defaults import render as render_section
from paraformer.tasks.image import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> (dataset, images before the validation hold-out)
    "fashion-mnist-1k": ("fashion-mnist", 1_000),
    "cifar10-1k": ("cifar10", 1_000),
    "embedded": ("embedded", None),
    "fashion-mnist-10k": ("fashion-mnist", 10_000),
    "cifar10-10k": ("cifar10", 10_000),
}
ARMS = ("rule", "former", "former-time")


def config(
    setting: str, arm: str, args: argparse.Namespace, seed: int, epochs: int | None = None
) -> TrainConfig:
    dataset, limit = SETTINGS[setting]
    cfg = TrainConfig(dataset=dataset, data_dir=args.data_dir, limit_train=limit, seed=seed)
    if arm == "rule":
        return cfg  # batch size and epochs chosen by the rule from the training set
    return cfg.replace(batch_size=128, epochs=epochs or 10, warmup_epochs=1.0)


def epoch_cost_ratio(setting: str, rule_batch: int, args: argparse.Namespace) -> float:
    """Seconds per epoch at batch 128 over seconds per epoch at the rule's batch, measured side by side."""
    from benchmarks.throughput import INPUTS, build, epoch_seconds_per_batch

    dataset = SETTINGS[setting][0]
    preset, channels, size = INPUTS["fashion-mnist" if dataset == "embedded" else dataset]
    shape = argparse.Namespace(dim=96, heads=3, branches=4, branch_depth=2)
    model = build("fused", preset, shape)
    times: dict[int, list[float]] = {rule_batch: [], 128: []}
    for round_ in range(4):
        for batch in times:
            x = torch.randn(batch, channels, size, size)
            y = torch.randint(0, 10, (batch,))
            seconds = epoch_seconds_per_batch("fused", model, x, y, 2, False) / batch  # per image
            if round_:
                times[batch].append(seconds)
    return statistics.median(times[128]) / statistics.median(times[rule_batch])


def run_setting(setting: str, seed: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    folder = args.out / f"{setting}-{{}}-seed{seed}"
    out["rule"] = run(config(setting, "rule", args, seed), Path(str(folder).format("rule")), args)
    out["former"] = run(config(setting, "former", args, seed), Path(str(folder).format("former")), args)
    rule = out["rule"]
    if rule is None or args.report_only:
        if not args.report_only:
            return out
        timed = run(None, Path(str(folder).format("former-time")), args)
        return {**out, **({"former-time": timed} if timed else {})}
    rule_cfg = rule["config"]
    ratio = epoch_cost_ratio(setting, rule_cfg["batch_size"], args)
    epochs = max(1, round(rule_cfg["epochs"] / ratio))
    cfg = config(setting, "former-time", args, seed, epochs)
    out["former-time"] = run(cfg, Path(str(folder).format("former-time")), args, budget_ratio=ratio)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs in --out, resume others")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-defaults")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    parser.add_argument("--report-only", action="store_true", help="train nothing: tabulate finished runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for setting in args.settings:
        results[setting] = {seed: run_setting(setting, seed, args) for seed in args.seeds}
    record = record_results("defaults", {"results": results}, seeds=args.seeds, config=vars(args))
    print(render_section(record).text, flush=True)
    if not args.no_write:
        print(f"wrote {write_record(record)}; render BENCHMARKS.md with: python -m benchmarks.report")


if __name__ == "__main__":
    main()
