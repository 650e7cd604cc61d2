"""Deterministic, class-stratified subsets of an ``ImageDataset``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from paraformer.data.base import ImageDataset
from paraformer.errors import ConfigError


def _per_class_permutations(labels: torch.Tensor, num_classes: int, seed: int) -> list[torch.Tensor]:
    """For each class, the indices of its samples in a seeded random order."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        out.append(idx[torch.randperm(len(idx), generator=gen)])
    return out


def _empty_like(dataset: ImageDataset) -> ImageDataset:
    return ImageDataset(dataset.images[:0], dataset.labels[:0], dataset.classes)


def train_val_split(
    dataset: ImageDataset, val_fraction: float, seed: int
) -> tuple[ImageDataset, ImageDataset]:
    """Split off ``val_fraction`` of every class as a validation set (same seed, same split).

    Both parts keep the original order of their images. ``val_fraction=0`` returns the
    dataset itself and an empty validation set.
    """
    if not (isinstance(val_fraction, (int, float)) and math.isfinite(val_fraction) and 0 <= val_fraction < 1):
        raise ConfigError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}.")
    if val_fraction == 0 or len(dataset) == 0:
        return dataset, _empty_like(dataset)
    val_parts = []
    for perm in _per_class_permutations(dataset.labels, dataset.num_classes, seed):
        n_val = int(len(perm) * val_fraction + 0.5)
        val_parts.append(perm[:n_val])
    is_val = torch.zeros(len(dataset), dtype=torch.bool)
    is_val[torch.cat(val_parts)] = True
    train_idx = torch.nonzero(~is_val).flatten()
    val_idx = torch.nonzero(is_val).flatten()
    return dataset.subset(train_idx), dataset.subset(val_idx)


def limit_dataset(dataset: ImageDataset, n: int, seed: int) -> ImageDataset:
    """A seeded subset of ``n`` images, spread over the classes as evenly as their sizes allow.

    Classes take turns: every class gives one image before any gives a second, so the
    counts differ by at most one unless a class runs out. ``n >= len(dataset)`` returns
    the dataset unchanged.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of images to keep must be a positive integer, got {n!r}.")
    if n >= len(dataset):
        return dataset
    num_classes = max(dataset.num_classes, int(dataset.labels.max()) + 1)
    rank = torch.empty(len(dataset), dtype=torch.int64)
    for perm in _per_class_permutations(dataset.labels, num_classes, seed):
        rank[perm] = torch.arange(len(perm))
    order = torch.argsort(rank * num_classes + dataset.labels, stable=True)  # round-robin over classes
    keep, _ = torch.sort(order[:n])
    return dataset.subset(keep)


def select_classes(dataset: ImageDataset, classes: Sequence[int]) -> ImageDataset:
    """The images of ``dataset`` whose label is one of ``classes`` (their order kept; labels unchanged).

    Class-incremental learning trains on a few classes at a time: ``select_classes(train,
    [2, 3])`` is the second task of Split Fashion-MNIST. An empty list, repeated indices or
    a class the dataset lacks is a ``ConfigError``.
    """
    wanted = check_classes(classes, dataset.num_classes)
    keep = torch.isin(dataset.labels, torch.tensor(wanted, dtype=dataset.labels.dtype))
    return dataset.subset(torch.nonzero(keep).flatten())


def check_classes(classes: Sequence[int], num_classes: int | None = None) -> list[int]:
    """``classes`` as a list of distinct class indices in ``0..num_classes-1``, or a ``ConfigError``."""
    values = list(classes) if isinstance(classes, (list, tuple)) else None
    if not values:
        raise ConfigError(f"the list of classes must name at least one class index, got {classes!r}.")
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in values):
        raise ConfigError(f"class indices must be integers, got {values!r}.")
    if len(set(values)) != len(values):
        raise ConfigError(f"class indices must be distinct, got {values}.")
    bad = [c for c in values if c < 0 or (num_classes is not None and c >= num_classes)]
    if bad:
        have = f"0..{num_classes - 1}" if num_classes is not None else "indices >= 0"
        raise ConfigError(f"class(es) {bad} are not in the dataset, which has classes {have}.")
    return values
