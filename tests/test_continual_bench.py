"""The continual-learning metrics behind benchmarks/continual.py, on known inputs."""

from __future__ import annotations

import math

import pytest
import torch

from paraformer.analysis.continual import (
    average_accuracy,
    average_forgetting,
    backward_transfer,
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
    spec = importlib.util.spec_from_file_location("continual_bench", bench / "continual.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("continual_bench", module)
    spec.loader.exec_module(module)
    return module


def test_backward_transfer_from_a_known_matrix():
    r = torch.tensor([[0.9, NAN, NAN], [0.5, 0.8, NAN], [0.6, 0.4, 0.7]])
    assert backward_transfer(r) == pytest.approx(((0.6 - 0.9) + (0.4 - 0.8)) / 2)
    assert backward_transfer(torch.tensor([[0.7]])) == 0.0


def test_benchmark_arms_are_library_configs_and_er_eq_gets_expansions_bytes():
    bench = _bench_module()
    args = bench.parse_args(["--quick"])
    assert args.seeds == [0] and args.epochs == 1 and args.lr is not None
    args = bench.parse_args([])
    assert args.limit_train >= 11_000 and len(args.seeds) >= 5  # >= 10,000 training images, >= 5 seeds
    eq = bench.arm_config("er-eq", "fashion-mnist", args)
    added = bench.added_bytes("fashion-mnist", args, {})
    assert eq.method == "er" and eq.buffer == added // (28 * 28 + 8) and eq.buffer > 200
    assert bench.arm_config("er-eq", "cifar10", args).buffer == added // (3 * 32 * 32 + 8)
    # four added branches of depth 2 at dim 64 (one per new task)
    block = 2 * 64 + 3 * 64 * 64 + 64 * 64 + 64 + 2 * 64 + 64 * 256 + 256 + 256 * 64 + 64  # qkv: no bias
    assert added == 4 * 4 * (2 * block + 1)
    assert bench.arm_config("expand-200-no-aux", "cifar10", args).get("aux_weight") == 0.0


def _record(values):
    """A synthetic raw record: arm -> per-seed class-IL accuracy (forgetting 1 - accuracy)."""
    results = {}
    for arm, accs in values.items():
        for seed, acc in enumerate(accs):
            m = [[0.9, None], [0.9 - acc / 2, acc]]
            results.setdefault(str(seed), {})[arm] = {
                "class_il": m,
                "task_il": m,
                "avg_acc_class_il": acc,
                "avg_acc_task_il": acc,
                "forgetting_class_il": 1 - acc,
                "bwt_class_il": -acc,
                "memory": {"total_bytes": 10, "stored_samples": 0, "added_params": 2},
                "params": 100,
                "gates": [[], [0.5]],
                "train_seconds": 1.0,
            }
    config = dict(tasks=2, limit_train=100, limit_test=50, dim=8, heads=2, branches=2, branch_depth=1)
    config.update(lr=1e-3, batch_size=8, epochs=1)
    arms = {a: {"method": a, "options": {}} for a in values}
    return {
        "benchmark": "continual-fashion-mnist",
        "command": "x",
        "config": config,
        "seeds": list(range(len(next(iter(values.values()))))),
        "payload": {"arms": arms, "chosen_by": "test", "results": results},
    }


def test_render_states_each_aim_met_or_missed():
    from benchmarks.render.continual import aims, render

    good = _record(
        {
            "expand": [0.50, 0.52, 0.51, 0.53, 0.50],
            "lwf": [0.20, 0.21, 0.20, 0.19, 0.20],
            "expand-200": [0.70, 0.72, 0.71, 0.70, 0.73],
            "er": [0.60, 0.61, 0.60, 0.62, 0.61],
            "derpp": [0.70, 0.73, 0.70, 0.71, 0.72],
            "finetune": [0.2, 0.2, 0.21, 0.2, 0.2],
        }
    )
    verdicts = [met for _, met, _ in aims(good)]
    assert verdicts[:2] == ["met", "met"]
    assert (
        verdicts[2] == "missed"
    )  # expand forgets more than expand... than er / derpp (higher accuracy there)
    bad = _record({"expand": [0.2, 0.21, 0.2], "lwf": [0.3, 0.31, 0.3]})
    assert [met for _, met, _ in aims(bad)][:2] == ["missed", "not measured"]
    text = render(good).text
    assert "**met**" in text and "**missed**" in text and "expansion + 200 images" in text
