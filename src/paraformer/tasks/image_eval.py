"""Accuracy and loss of an image model on a dataset, optionally for every branch prefix."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from paraformer.data import BatchTransform, ImageDataset
from paraformer.errors import DataError
from paraformer.models import is_branched
from paraformer.models.branches import BranchSelection
from paraformer.train.devices import autocast


@dataclass
class EvalResult:
    accuracy: float
    loss: float
    num_samples: int
    # For a branched model evaluated with prefixes=True: accuracy of branches 1..k, k = 1..N.
    prefix_accuracy: list[float] = field(default_factory=list)
    prefix_loss: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float | list[float]]:
        """Named figures for a metrics record (prefix lists only when computed)."""
        out: dict[str, float | list[float]] = {"acc": self.accuracy, "loss": self.loss}
        if self.prefix_accuracy:
            out["acc_prefix"] = self.prefix_accuracy
            out["loss_prefix"] = self.prefix_loss
        return out


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def dataset_batches(
    dataset: ImageDataset, transform: BatchTransform, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Model-ready ``(inputs, labels)`` batches of a uint8 dataset, in order, without augmentation."""
    for start in range(0, len(dataset), batch_size):
        images = dataset.images[start : start + batch_size].to(device, non_blocking=True)
        labels = dataset.labels[start : start + batch_size].to(device, non_blocking=True)
        yield transform(images, train=False), labels


def evaluate(
    model: nn.Module,
    dataset: ImageDataset,
    transform: BatchTransform,
    *,
    batch_size: int = 500,
    branches: BranchSelection = None,
    prefixes: bool = False,
    bf16: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> EvalResult:
    """Evaluate on ``dataset``; with ``prefixes`` also every prefix from the same pass."""
    if len(dataset) == 0:
        raise DataError(f"cannot evaluate on the {desc} split: it has no images.")
    device = next(model.parameters()).device
    bar = tqdm(total=len(dataset), desc=desc, unit="img", leave=False, file=sys.stderr, disable=not progress)
    with bar:
        batches = dataset_batches(dataset, transform, batch_size, device)
        return evaluate_batches(
            model, batches, branches=branches, prefixes=prefixes, bf16=bf16, on_batch=bar.update
        )


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Batches,
    *,
    branches: BranchSelection = None,
    prefixes: bool = False,
    bf16: bool = False,
    on_batch: Callable[[int], object] | None = None,
) -> EvalResult:
    """Accuracy and mean loss over model-ready ``(inputs, labels)`` batches (a list, a DataLoader...).

    With ``prefixes`` a branched model also reports every prefix 1..N from the same pass.
    """
    device = next(model.parameters()).device
    use_prefixes = prefixes and is_branched(model) and branches is None
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long)
    prefix_correct = prefix_loss = None
    loss_sum, n = 0.0, 0
    try:
        for x, labels in batches:
            x, labels = x.to(device), labels.to(device)
            with autocast(device, bf16):
                if use_prefixes:
                    all_logits = model.prefix_logits(x).float()  # (N, B, classes)
                    k, b, c = all_logits.shape
                    losses = (
                        F.cross_entropy(all_logits.reshape(k * b, c), labels.repeat(k), reduction="none")
                        .view(k, b)
                        .sum(dim=1)
                        .cpu()
                    )  # (N,)
                    hits = (all_logits.argmax(-1) == labels).sum(dim=1).cpu()  # (N,)
                    prefix_correct = hits if prefix_correct is None else prefix_correct + hits
                    prefix_loss = losses if prefix_loss is None else prefix_loss + losses
                    logits = all_logits[-1]
                else:
                    logits = model(x, branches=branches).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().cpu()
            n += len(labels)
            if on_batch is not None:
                on_batch(len(labels))
    finally:
        model.train(was_training)
    if n == 0:
        raise DataError("cannot evaluate on no images: the data is empty.")
    result = EvalResult(correct.item() / n, loss_sum / n, n)
    if prefix_correct is not None and prefix_loss is not None:
        result.prefix_accuracy = [c / n for c in prefix_correct.tolist()]
        result.prefix_loss = [v / n for v in prefix_loss.tolist()]
    return result
