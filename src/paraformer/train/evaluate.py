"""Accuracy and loss of a model on a dataset, optionally for every branch prefix."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from paraformer.data import BatchTransform, ImageDataset
from paraformer.models import ImageClassifier, ParaFormer
from paraformer.models.base import BranchSelection


@dataclass
class EvalResult:
    accuracy: float
    loss: float
    num_samples: int
    # For a ParaFormer evaluated with prefixes=True: accuracy of branches 1..k, k = 1..N.
    prefix_accuracy: list[float] = field(default_factory=list)


@torch.no_grad()
def evaluate(
    model: ImageClassifier,
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
        return EvalResult(float("nan"), float("nan"), 0)
    device = next(model.parameters()).device
    use_prefixes = prefixes and isinstance(model, ParaFormer) and branches is None
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    correct = torch.zeros((), dtype=torch.long)
    prefix_correct: torch.Tensor | None = None
    loss_sum = 0.0
    bar = tqdm(total=len(dataset), desc=desc, unit="img", leave=False, file=sys.stderr, disable=not progress)
    try:
        for start in range(0, len(dataset), batch_size):
            images = dataset.images[start : start + batch_size].to(device)
            labels = dataset.labels[start : start + batch_size].to(device)
            x = transform(images, train=False)
            with autocast:
                if use_prefixes:
                    all_logits = model.prefix_logits(x).float()  # (N, B, classes)
                    hits = (all_logits.argmax(-1) == labels).sum(dim=1).cpu()  # (N,)
                    prefix_correct = hits if prefix_correct is None else prefix_correct + hits
                    logits = all_logits[-1]
                else:
                    logits = model(x, branches=branches).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().cpu()
            bar.update(len(labels))
    finally:
        bar.close()
        model.train(was_training)
    n = len(dataset)
    prefix_acc = [] if prefix_correct is None else [c / n for c in prefix_correct.tolist()]
    return EvalResult(correct.item() / n, loss_sum / n, n, prefix_acc)
