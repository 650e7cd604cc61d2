"""The branch sweep: for k = 1..N, what the model of the first k branches costs and scores."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from paraformer.models import count_params
from paraformer.parallel.inference import command_paths, inference_latency
from paraformer.surgery.select import Data, compress, model_batches, require_image_paraformer
from paraformer.tasks.image_eval import evaluate_batches


def latency_ms(model: nn.Module, example: torch.Tensor, repeats: int = 20) -> float:
    """Milliseconds of one forward pass of ``example``: the fastest of ``repeats`` after two warm-ups.

    The fastest run is the one least disturbed by other processes on a shared machine.
    """
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for i in range(repeats + 2):
                start = time.perf_counter()
                model(example)
                if i >= 2:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000 * min(times)


def sweep(
    model: nn.Module,
    data: Mapping[str, Data] | Data,
    *,
    latency: bool = True,
    batch_size: int = 500,
    repeats: int = 20,
) -> list[dict[str, Any]]:
    """One row per k = 1..N for the model of the first k branches.

    Each row has ``branches``, ``params``, ``flops_per_image``, ``latency_ms`` (batch 1, the
    median of ``repeats`` calls of the path ``prepare_for_inference`` picks among eager, merged
    and threads, named in ``inference_path``; ``eager_latency_ms`` beside it; None with
    ``latency=False``) and ``<split>_acc`` / ``<split>_loss`` for each
    split of ``data`` (a mapping such as ``{"val": ..., "test": ...}``; plain data counts
    as ``"test"``). Accuracies come from one pass per split (all prefixes at once).
    """
    model = require_image_paraformer(model, "a branch sweep")
    splits = dict(data) if isinstance(data, Mapping) else {"test": data}
    device = next(model.parameters()).device
    results = {
        split: evaluate_batches(model, model_batches(d, batch_size, device), prefixes=True)
        for split, d in splits.items()
    }
    rows = []
    for k in range(1, model.num_branches + 1):
        small = compress(model, k).eval()
        row: dict[str, Any] = {
            "branches": k,
            "params": count_params(small),
            "flops_per_image": small.flops(),
            "latency_ms": None,
            "inference_path": None,
            "eager_latency_ms": None,
        }
        if latency:
            example = small.example_input(1).to(device)
            measured = inference_latency(small, example, paths=command_paths(device), rounds=repeats)
            row["latency_ms"] = measured["latency_ms"]
            row["inference_path"] = measured["inference_path"]
            row["eager_latency_ms"] = measured["timings_ms"].get("eager")
        for split, result in results.items():
            row[f"{split}_acc"] = result.prefix_accuracy[k - 1]
            row[f"{split}_loss"] = result.prefix_loss[k - 1]
        rows.append(row)
    return rows
