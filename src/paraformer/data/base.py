"""In-memory image datasets: uint8 tensors decoded once, indexed per batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Log = Callable[[str], None]


def quiet(message: str) -> None:
    """The default log of library calls: print nothing."""


@dataclass
class ImageDataset:
    """Images as a uint8 tensor ``(N, C, H, W)`` with int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4, self.images.shape
        assert self.labels.dtype == torch.int64 and self.labels.shape == (self.images.shape[0],)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        return ImageDataset(self.images[indices], self.labels[indices], self.classes)


@dataclass
class DataSplits:
    """A named dataset's train and test splits, plus how to augment it."""

    name: str
    train: ImageDataset
    test: ImageDataset
    # Horizontal flips make sense for natural photos (CIFAR), not for every dataset.
    natural_images: bool
