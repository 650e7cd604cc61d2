"""Shrink and grow trained ParaFormers: compression, expansion, branch sweeps and ONNX export.

Every function here is pure: it returns a new model (or figures) and leaves the given
model exactly as it was (weights, training flag, device).

- ``compress(model, branches)``: keep the first K branches (``branches=K``) or the
  listed ones in the listed order; embedding and head are kept. Its logits equal
  ``model(x, branches=branches)``.
- ``evaluate_selections(model, data, selections)``: accuracy and loss of many branch
  selections from one pass over ``data`` (each branch runs once).
- ``greedy_order(model, data)``: the order in which greedy selection adds branches:
  starting from none, each time the branch whose addition gives the lowest loss on
  ``data``. Pass validation data, never test data; ``compress(model, order[:K])`` is
  then the greedy K-branch model.
- ``expand(model, add_branches, num_classes=None, seed=None)``: append gated,
  zero-gated branches (output unchanged until they train) and, with ``num_classes``,
  grow the head by new class rows (the old classes' logits are unchanged).
- ``sweep(model, {"val": data, "test": data})``: per k = 1..N, accuracy and loss of
  the first k branches on each split, parameters, FLOPs per image and batch-1 latency.
- ``export_onnx(model, path, example)``: ONNX file, checked against PyTorch under
  onnxruntime (max abs difference) with both batch-1 latencies.

Training an expanded model with its old branches frozen is
``paraformer.train.expansion.train_expansion`` (also exported as
``paraformer.train_expansion``): on in-memory ``ImageDataset`` splits, for example
``select_classes(train, [2, 3])`` for the second task of a class-incremental sequence.

``data`` is any of: a pair of tensors ``(inputs, labels)`` of model-ready images
(normalised, at the model's input size), a pair ``(ImageDataset, BatchTransform)`` of
uint8 images and their evaluation transform, or an iterable of ``(inputs, labels)``
batches (a list, a DataLoader).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paraformer.data import BatchTransform, ImageDataset
from paraformer.errors import ConfigError
from paraformer.models import append_branches, build_model, count_params, require_branched, select_branches
from paraformer.models.branches import BranchSelection, rebuilt_like
from paraformer.train.evaluate import dataset_batches, evaluate_batches

Batch = tuple[torch.Tensor, torch.Tensor]
Data = Batch | tuple[ImageDataset, BatchTransform] | Iterable[Batch]
EXPORT_FORMATS = ("onnx",)


# ---------------------------------------------------------------------------- data


def model_batches(data: Data, batch_size: int = 500, device: torch.device | None = None) -> Iterator[Batch]:
    """``(inputs, labels)`` batches from any of the ``data`` forms this module takes."""
    device = device or torch.device("cpu")
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], ImageDataset):
        yield from dataset_batches(data[0], data[1], batch_size, device)
    elif isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise ConfigError(
                f"data must be images (B, C, H, W) and labels (B,), got {x.shape} and {y.shape}."
            )
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
    else:
        for x, y in data:  # type: ignore[misc]
            yield x.to(device), y.to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def require_image_paraformer(model: nn.Module, what: str) -> nn.Module:
    """A branched image classifier (a ParaFormer), or a one-line ``ConfigError`` naming ``what``."""
    model = require_branched(model, what)
    if not hasattr(model, "head_input") or not hasattr(getattr(model, "head", None), "fc"):
        raise ConfigError(f"{what} works on image ParaFormers; got a {model.cfg.family}.")
    return model


# ---------------------------------------------------------------------------- compression


def compress(model: nn.Module, branches: BranchSelection) -> nn.Module:
    """A new model with only the chosen branches: ``K`` (the first K) or a list of indices.

    Embedding and head are kept, so the logits equal ``model(x, branches=branches)``.
    """
    require_image_paraformer(model, "compression")
    if branches is None:
        raise ConfigError("compression needs the branches to keep: a count K or a list of indices.")
    return select_branches(model, branches)


@torch.no_grad()
def branch_readouts(model: nn.Module, data: Data, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Every branch's read-out output over ``data`` from one pass, and the labels.

    Returns ``(N, V, T', D)`` (T' = 1 for a class-token head) and ``(V,)``: the head of
    the sum of any selection of them is that selection's logits.
    """
    model = require_image_paraformer(model, "reading branch outputs")
    was_training = model.training
    model.eval()
    parts, labels = [], []
    try:
        for x, y in model_batches(data, batch_size, _device(model)):
            tokens = model.embed_input(x)  # (B, T, D)
            outs = model.branches.run(tokens, range(model.num_branches))  # N x (B, T, D)
            parts.append(torch.stack([model.head_input(o) for o in outs]))  # (N, B, T', D)
            labels.append(y)
    finally:
        model.train(was_training)
    if not parts:
        raise ConfigError("judging branches needs data; the data is empty.")
    return torch.cat(parts, dim=1), torch.cat(labels)


@torch.no_grad()
def evaluate_selections(
    model: nn.Module, data: Data, selections: Sequence[BranchSelection], *, batch_size: int = 500
) -> list[dict[str, float]]:
    """``{"acc", "loss"}`` of the model restricted to each selection, from one pass over ``data``.

    ``evaluate_selections(model, test, [order[:k] for k in range(1, n + 1)])`` measures
    every greedy k-branch model at the cost of one forward pass of the full model.
    """
    outputs, targets = branch_readouts(model, data, batch_size)
    results = []
    for selection in selections:
        logits = model.head_logits(outputs[model.branches.resolve(selection)].sum(dim=0)).float()
        results.append(
            {
                "acc": (logits.argmax(-1) == targets).float().mean().item(),
                "loss": F.cross_entropy(logits, targets).item(),
            }
        )
    return results


@torch.no_grad()
def greedy_order(
    model: nn.Module, data: Data, *, branches: int | None = None, batch_size: int = 500
) -> list[int]:
    """Branch indices in the order greedy selection adds them, judged by the loss on ``data``.

    Starting from no branch, each step adds the branch that gives the lowest mean
    cross-entropy together with those already chosen (ties: the lower index). Each
    branch runs once over ``data``; the steps reuse its (read-out) outputs. ``branches``
    stops after that many. Give it validation data: selecting on test data would make
    the test figures of the result meaningless.
    """
    model = require_image_paraformer(model, "greedy branch selection")
    n = model.num_branches
    steps = n if branches is None else len(model.branches.resolve(branches))
    outputs, targets = branch_readouts(model, data, batch_size)  # (N, V, T', D), (V,)
    chosen: list[int] = []
    total = torch.zeros_like(outputs[0])
    for _ in range(steps):
        losses = {
            i: F.cross_entropy(model.head_logits(total + outputs[i]).float(), targets).item()
            for i in range(n)
            if i not in chosen
        }
        best = min(losses, key=lambda i: (losses[i], i))
        chosen.append(best)
        total = total + outputs[best]
    return chosen


# ---------------------------------------------------------------------------- expansion


def expand(
    model: nn.Module, add_branches: int, num_classes: int | None = None, *, seed: int | None = None
) -> nn.Module:
    """A new model with ``add_branches`` more branches and, optionally, ``num_classes`` classes.

    The new branches are gated with gates at 0 and the new head rows only add logits,
    so before training the new model's logits for the old classes equal the old
    model's. ``seed`` fixes the new weights (without touching the global RNG).
    """
    model = require_image_paraformer(model, "expansion")
    old_classes = model.cfg.num_classes
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < old_classes
    ):
        raise ConfigError(
            f"num_classes must be an integer >= the model's {old_classes} classes, got {num_classes!r}."
        )
    if add_branches == 0 and num_classes not in (None, old_classes):
        grown = select_branches(model, None)  # a copy
    else:
        grown = append_branches(model, add_branches, seed=seed)
    if num_classes is None or num_classes == old_classes:
        return grown
    return _grow_head(grown, num_classes, seed)


def _grow_head(model: nn.Module, num_classes: int, seed: int | None) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed + 1)
        new = build_model(model.cfg.replace(num_classes=num_classes))
    state = new.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("head.fc."):
            state[key][: value.shape[0]] = value  # old class rows first, new rows freshly initialised
        else:
            state[key] = value.clone()
    return rebuilt_like(new, state, model)


# ---------------------------------------------------------------------------- sweep


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

    Each row has ``branches``, ``params``, ``flops_per_image``, ``latency_ms`` (batch 1,
    fastest of ``repeats``; None with ``latency=False``) and ``<split>_acc`` / ``<split>_loss`` for each
    split of ``data`` (a mapping such as ``{"val": ..., "test": ...}``; plain data counts
    as ``"test"``). Accuracies come from one pass per split (all prefixes at once).
    """
    model = require_image_paraformer(model, "a branch sweep")
    splits = dict(data) if isinstance(data, Mapping) else {"test": data}
    device = _device(model)
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
            "latency_ms": latency_ms(small, small.example_input(1), repeats) if latency else None,
        }
        for split, result in results.items():
            row[f"{split}_acc"] = result.prefix_accuracy[k - 1]
            row[f"{split}_loss"] = result.prefix_loss[k - 1]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- export


def export_onnx(
    model: nn.Module, path: str | Path, example: torch.Tensor, *, opset: int = 17, repeats: int = 20
) -> dict[str, Any]:
    """Write ``model`` as ONNX to ``path`` (batch size dynamic) and check it under onnxruntime.

    ``example`` is a batch of real, model-ready images. The report holds the file, the
    largest absolute difference between onnxruntime's and PyTorch's logits on
    ``example``, and batch-1 latencies (ms, fastest of ``repeats``) of both; the check fields are None
    when onnxruntime is not installed.
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise ConfigError(
            "ONNX export needs the onnx package: pip install 'paraformer[export]' (onnx, onnxruntime)."
        ) from None
    path = Path(path)
    net = copy.deepcopy(model).cpu().eval()  # the given model keeps its device and mode
    example = example.detach().cpu().float()
    torch_ms = latency_ms(net, example[:1], repeats)  # before export: tracing leaves the module slower
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: fine
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is the legacy exporter, on purpose
        torch.onnx.export(
            net,
            (example[:1],),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
        expected = net(example)
    report: dict[str, Any] = {
        "path": str(path),
        "format": "onnx",
        "opset": opset,
        "bytes": path.stat().st_size,
        "num_params": count_params(net),
        "checked_images": len(example),
        "max_abs_diff": None,
        "onnxruntime_latency_ms": None,
        "torch_latency_ms": torch_ms,
    }
    try:
        import onnxruntime as ort
    except ImportError:
        return report
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": example.numpy()})[0])
    report["max_abs_diff"] = float((got - expected).abs().max())
    one = {"images": example[:1].numpy()}
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        session.run(None, one)
        if i >= 2:
            times.append(time.perf_counter() - start)
    report["onnxruntime_latency_ms"] = 1000 * min(times)
    return report


def check_export_format(fmt: str) -> str:
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; supported: {', '.join(EXPORT_FORMATS)}.")
    return fmt


def selection_label(order: Sequence[int]) -> str:
    """``[3, 0, 5]`` -> ``"3,0,5"`` for messages and JSON."""
    return ",".join(str(i) for i in order)
