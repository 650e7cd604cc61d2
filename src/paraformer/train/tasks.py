"""Tasks: what the loop trains on. A task provides batches, the loss and the metrics.

The loop never looks inside a batch: it asks the task for ``(inputs, targets)`` of
the samples it picked, for the loss of some logits, and for an evaluation of a split.
``ImageClassificationTask`` is the image side; a language-model task plugs into the
same loop by providing the same few methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from paraformer.data import BatchTransform, ImageDataset
from paraformer.errors import DataError
from paraformer.train.evaluate import EvalResult, evaluate

Log = Callable[[str], None]
SPLITS = ("train", "val", "test")


class Task(Protocol):
    """The interface the training loop relies on."""

    # The validation metric that picks the best epoch, and whether higher is better.
    selection_metric: str
    higher_is_better: bool

    def num_samples(self, split: str) -> int: ...

    def batch(
        self, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def batch_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]: ...

    def evaluate(
        self, model: nn.Module, split: str, *, prefixes: bool, bf16: bool, progress: bool
    ) -> EvalResult: ...

    def info(self) -> dict[str, Any]: ...


class ImageClassificationTask:
    """Image classification on in-memory uint8 splits, with batch augmentation.

    ``loss_classes`` restricts the training loss to those classes' logits (the
    classes of the data, in class-incremental learning); evaluation uses all logits.

    Images stay on ``device`` once decoded when it is a GPU (augmentation runs on
    batches there); otherwise batches are gathered on the CPU and copied.
    """

    selection_metric = "acc"
    higher_is_better = True

    def __init__(
        self,
        splits: dict[str, ImageDataset],
        transform: BatchTransform,
        device: torch.device,
        *,
        label_smoothing: float = 0.0,
        eval_batch_size: int = 500,
        info: dict[str, Any] | None = None,
        loss_classes: Sequence[int] | None = None,
    ) -> None:
        for split in ("train", "test"):
            if len(splits.get(split, ())) == 0 and (split == "train" or split in splits):
                raise DataError(f"the {split} split has no images; a run needs training and test images.")
        self.splits = {name: _place(ds, device) for name, ds in splits.items()}
        self.transform = transform
        self.device = device
        self.label_smoothing = label_smoothing
        # Class-incremental training: the loss reads these classes' logits only, so learning
        # new classes does not push the logits of classes absent from the data down.
        self.loss_index: torch.Tensor | None = None
        self.target_index: torch.Tensor | None = None
        if loss_classes is not None:
            self.loss_index = torch.tensor(sorted(loss_classes), device=device)
            self.target_index = torch.full((max(loss_classes) + 1,), -1, dtype=torch.long, device=device)
            self.target_index[self.loss_index] = torch.arange(len(self.loss_index), device=device)
        self.eval_batch_size = eval_batch_size
        self._info = info or {}

    def num_samples(self, split: str) -> int:
        return len(self.splits[split]) if split in self.splits else 0

    def batch(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        train = self.splits["train"]
        idx = indices.to(train.images.device)
        images = train.images[idx].to(self.device, non_blocking=True)
        labels = train.labels[idx].to(self.device, non_blocking=True)
        return self.transform(images, train=True, generator=generator), labels

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss_index is not None and self.target_index is not None:
            logits, targets = logits[..., self.loss_index], self.target_index[targets]
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def batch_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"acc": float((logits.argmax(-1) == targets).sum().item())}  # summed; the loop divides

    def evaluate(
        self,
        model: nn.Module,
        split: str,
        *,
        prefixes: bool = False,
        bf16: bool = False,
        progress: bool = False,
    ) -> EvalResult:
        return evaluate(
            model,
            self.splits[split],
            self.transform,
            batch_size=self.eval_batch_size,
            prefixes=prefixes,
            bf16=bf16,
            progress=progress,
            desc="validation" if split == "val" else split,
        )

    def info(self) -> dict[str, Any]:
        return dict(self._info)


def _place(dataset: ImageDataset, device: torch.device) -> ImageDataset:
    """Keep a split on the GPU when it fits; else in pinned memory for asynchronous copies."""
    if device.type != "cuda" or len(dataset) == 0:
        return dataset
    try:
        return ImageDataset(dataset.images.to(device), dataset.labels.to(device), dataset.classes)
    except torch.OutOfMemoryError:
        return ImageDataset(dataset.images.pin_memory(), dataset.labels.pin_memory(), dataset.classes)
