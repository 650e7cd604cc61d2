"""Compression and branch selection: keep some branches of a trained ParaFormer.

- ``compress(model, branches)``: keep the first K branches (``branches=K``) or the
  listed ones in the listed order; embedding and head are kept. Its logits equal
  ``model(x, branches=branches)``. Works for any branched model (ParaFormer-LM too).
- ``evaluate_selections(model, data, selections)``: accuracy and loss of many branch
  selections from one pass over ``data`` (each branch runs once).
- ``greedy_order(model, data)``: the order in which greedy selection adds branches:
  starting from none, each time the branch whose addition gives the lowest loss on
  ``data``. Pass validation data, never test data; ``compress(model, order[:K])`` is
  then the greedy K-branch model.

``data`` is any of: a pair of tensors ``(inputs, labels)`` of model-ready images
(normalised, at the model's input size), a pair ``(ImageDataset, BatchTransform)`` of
uint8 images and their evaluation transform, or an iterable of ``(inputs, labels)``
batches (a list, a DataLoader). Every function is pure: the given model is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from paraformer.data import BatchTransform, ImageDataset
from paraformer.errors import ConfigError
from paraformer.models import modality_of, require_branched, select_branches
from paraformer.models.branches import BranchSelection
from paraformer.tasks.image_eval import dataset_batches

Batch = tuple[torch.Tensor, torch.Tensor]
Data = Batch | tuple[ImageDataset, BatchTransform] | Iterable[Batch]


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
    if modality_of(model.cfg) != "image":
        raise ConfigError(f"{what} works on image ParaFormers; got a {model.cfg.family}.")
    return model


def compress(model: nn.Module, branches: BranchSelection) -> nn.Module:
    """A new model with only the chosen branches: ``K`` (the first K) or a list of indices.

    Embedding and head are kept, so the logits equal ``model(x, branches=branches)``.
    """
    require_branched(model, "compression")
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
