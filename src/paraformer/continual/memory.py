"""Replay memory for continual learning: which samples to keep between tasks, and their bytes.

The memory is refilled after each task from what it held and the task's training images:
every class seen so far gets an equal share of the ``capacity`` (the remainder goes to the
earliest classes). Within a class, samples are ranked once, when their task ends, and a
shrinking share keeps the best-ranked ones:

- ``balanced``: a seeded random order (class-balanced random sampling);
- ``herding``: iCaRL's herding on the model's features: each next sample is the one that
  brings the mean of those chosen closest to the class mean.

With ``logits`` (DER++) the model's outputs for a sample are stored when it enters the
memory and never updated. ``nbytes`` counts images, labels and logits, so methods can be
compared at equal memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from paraformer.errors import ConfigError
from paraformer.train.objectives import ReplayBuffer

SELECTIONS = ("balanced", "herding")
Outputs = Callable[[torch.Tensor], torch.Tensor]  # uint8 images (N, C, H, W) -> (N, F) features or logits


def class_quota(classes: list[int], capacity: int) -> dict[int, int]:
    """Slots per class: ``capacity // len(classes)`` each, one more for the first ``remainder`` classes."""
    if not classes:
        return {}
    base, extra = divmod(capacity, len(classes))
    return {c: base + (1 if k < extra else 0) for k, c in enumerate(classes)}


def herding_order(features: torch.Tensor, count: int) -> torch.Tensor:
    """iCaRL herding: indices of ``count`` rows of ``features`` (N, F), chosen greedily so that the
    running mean of the chosen (L2-normalised) features stays closest to the class mean."""
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    mean = f.mean(dim=0)
    chosen: list[int] = []
    total = torch.zeros_like(mean)
    available = torch.ones(len(f), dtype=torch.bool)
    for k in range(1, min(count, len(f)) + 1):
        dist = ((mean - (total + f) / k) ** 2).sum(dim=-1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total = total + f[i]
    return torch.tensor(chosen, dtype=torch.long)


def update_memory(
    memory: ReplayBuffer | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    capacity: int,
    *,
    selection: str = "balanced",
    generator: torch.Generator | None = None,
    features: Outputs | None = None,
    logits: Outputs | None = None,
) -> ReplayBuffer:
    """The memory after a task: its old classes shrunk to their new share, the task's classes added.

    ``images``/``labels`` are the task's training images (uint8) and labels; ``features``
    (herding) and ``logits`` (DER++) compute what selection and storage need for a batch
    of them. Samples are kept grouped by class, best-ranked first.
    """
    if selection not in SELECTIONS:
        raise ConfigError(f"memory selection must be one of {SELECTIONS}, got {selection!r}.")
    if capacity < 1:
        raise ConfigError(f"the memory capacity must be >= 1 sample, got {capacity}.")
    if selection == "herding" and features is None:
        raise ConfigError("herding selection needs the model's features of the task's images.")
    old_classes = [] if memory is None else sorted(int(c) for c in memory.labels.unique())
    new_classes = sorted(int(c) for c in labels.unique() if int(c) not in old_classes)
    quota = class_quota(old_classes + new_classes, capacity)
    keep_images, keep_labels, keep_logits = [], [], []
    for c in old_classes:
        idx = torch.nonzero(memory.labels == c).flatten()[: quota[c]]  # best-ranked first
        keep_images.append(memory.inputs[idx])
        keep_labels.append(memory.labels[idx])
        if memory.logits is not None:
            keep_logits.append(memory.logits[idx])
    for c in new_classes:
        idx = torch.nonzero(labels == c).flatten()
        if selection == "herding":
            with torch.no_grad():
                order = herding_order(features(images[idx]), quota[c])
        else:
            order = torch.randperm(len(idx), generator=generator)[: quota[c]]
        idx = idx[order]
        keep_images.append(images[idx])
        keep_labels.append(labels[idx])
        if logits is not None:
            with torch.no_grad():
                keep_logits.append(logits(images[idx]).float().cpu())
    stored_logits = None
    if logits is not None or (memory is not None and memory.logits is not None):
        if len(keep_logits) != len(keep_labels):
            raise ConfigError("a memory with stored logits must store them for every class.")
        stored_logits = torch.cat(keep_logits)
    return ReplayBuffer(torch.cat(keep_images), torch.cat(keep_labels), stored_logits)


def sample_bytes(image_shape: tuple[int, ...], logits: int = 0) -> int:
    """Bytes one stored sample takes: its uint8 image, an int64 label and ``logits`` float32 outputs."""
    pixels = 1
    for d in image_shape:
        pixels *= int(d)
    return pixels + 8 + 4 * logits


def memory_record(buffer: ReplayBuffer | None, added_params: int, param_bytes: int = 4) -> dict[str, int]:
    """What a method keeps beyond the common backbone, in bytes: stored samples and added parameters."""
    stored = 0 if buffer is None else buffer.nbytes
    added = int(added_params) * param_bytes
    return {
        "stored_samples": 0 if buffer is None else len(buffer),
        "stored_bytes": int(stored),
        "added_params": int(added_params),
        "added_param_bytes": added,
        "total_bytes": int(stored) + added,
    }
