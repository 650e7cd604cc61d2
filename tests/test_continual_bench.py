"""The continual-learning metrics behind benchmarks/continual.py, on known inputs."""

from __future__ import annotations

import math

import pytest
import torch

from paraformer.analysis.continual import (
    average_accuracy,
    average_forgetting,
    class_balanced_buffer,
    class_splits,
    distillation_loss,
    forgetting,
    masked_accuracy,
    masked_predictions,
    seen_classes,
)
from paraformer.errors import ConfigError

NAN = float("nan")


def test_class_splits_in_class_order():
    tasks = class_splits(10, 2)
    assert tasks == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert seen_classes(tasks, 0) == [0, 1]
    assert seen_classes(tasks, 2) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ConfigError):
        class_splits(10, 3)


def test_average_accuracy_and_forgetting_from_a_known_matrix():
    r = torch.tensor(
        [
            [0.9, NAN, NAN],
            [0.5, 0.8, NAN],
            [0.6, 0.4, 0.7],
        ]
    )
    assert average_accuracy(r) == pytest.approx((0.6 + 0.4 + 0.7) / 3)
    # task 0: best before the end 0.9, final 0.6 -> 0.3; task 1: 0.8 -> 0.4 -> 0.4
    assert forgetting(r).tolist() == pytest.approx([0.3, 0.4])
    assert average_forgetting(r) == pytest.approx(0.35)
    # the best is taken over earlier stages only, never the final row: no negative "forgetting" hidden
    r2 = torch.tensor([[0.5, NAN], [0.9, 0.8]])
    assert forgetting(r2).tolist() == pytest.approx([-0.4])
    assert average_forgetting(torch.tensor([[0.7]])) == 0.0


def test_class_il_masking_ignores_unseen_classes_and_task_il_restricts_to_the_task():
    # class 9 (unseen) has the largest logit; class 3 is the best seen one; within task (0, 1) it is 1
    logits = torch.tensor([[0.1, 0.5, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])
    assert masked_predictions(logits, range(10)).tolist() == [9]
    assert masked_predictions(logits, [0, 1, 2, 3]).tolist() == [3]
    assert masked_predictions(logits, (0, 1)).tolist() == [1]
    labels = torch.tensor([1, 3])
    two = torch.cat([logits, logits])
    assert masked_accuracy(two, labels, [0, 1, 2, 3]) == 0.5  # predicts 3 for both
    assert masked_accuracy(two, labels, (0, 1)) == 0.5  # predicts 1 for both
    assert math.isnan(masked_accuracy(two[:0], labels[:0], (0, 1)))


def test_class_balanced_buffer():
    labels = torch.tensor([0] * 50 + [1] * 50 + [2] * 3)
    gen = torch.Generator().manual_seed(0)
    idx = class_balanced_buffer(labels, 20, gen)
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts == [7, 7, 3]  # 20 // 3 = 6 each, one extra for class 0 and 1; class 2 has only 3
    assert len(set(idx.tolist())) == len(idx)
    assert len(class_balanced_buffer(labels, 0)) == 0


def test_distillation_loss_is_zero_for_equal_logits_and_positive_otherwise():
    a = torch.randn(4, 6)
    assert distillation_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(a, a + torch.randn(4, 6)).item() > 0


def _bench_module():
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))  # the script imports machine.py and report.py beside it
    try:
        spec = importlib.util.spec_from_file_location("continual_bench", bench / "continual.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module


def test_benchmark_evaluate_fills_class_il_and_task_il_rows():
    from paraformer.data import ImageDataset

    bench = _bench_module()

    class Fixed(torch.nn.Module):  # always says class 9 > 3 > 1 > 0 > the rest
        def forward(self, x):
            row = torch.tensor([0.1, 0.5, 0.0, 2.0, 0, 0, 0, 0, 0, 9.0])
            return row.expand(x.shape[0], 10)

    tasks = class_splits(10, 2)
    tests = [
        ImageDataset(
            torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([a, b]), [str(c) for c in range(10)]
        )
        for a, b in tasks
    ]
    identity = lambda images, train: images.float()  # noqa: E731
    cil, til = bench.evaluate(Fixed(), tests, tasks, 1, identity)
    assert cil == [0.0, 0.5]  # seen classes 0-3: predicts 3 everywhere
    assert til == [0.5, 0.5]  # task (0, 1): predicts 1; task (2, 3): predicts 3
    args = bench.parse_args(["--quick"])
    assert args.seeds == [0] and args.epochs == 1 and args.lr is not None
