"""Everything built once before the first batch: device, data splits, task and model.

Cheap checks run first (model config, device, memory), then the data loads, then the
model is fitted to the data (channels, classes, input size).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from paraformer.config import ImageModelConfig, ModelConfig
from paraformer.data import (
    DataSplits,
    ImageDataset,
    limit_dataset,
    load_dataset,
    select_classes,
    train_val_split,
)
from paraformer.data.transforms import transform_for
from paraformer.errors import ConfigError, DataError, ShapeError
from paraformer.models import build_model
from paraformer.registry import get_config, preset_for_images
from paraformer.train.checkpointing import ImageDataInfo
from paraformer.train.config import LoopConfig, TrainConfig
from paraformer.train.devices import bf16_warning, resolve_device
from paraformer.train.tasks import ImageClassificationTask, Task

Log = Callable[[str], None]
BYTES_PER_PARAM_TRAINING = 16  # fp32 weights, gradients and two Adam moments
# The preset chosen for a named dataset when --model is not given (checked before loading).
PRESET_FOR_DATASET = {
    "embedded": "paraformer_tiny_fmnist",
    "fashion-mnist": "paraformer_tiny_fmnist",
    "cifar10": "paraformer_tiny_cifar",
    "cifar100": "paraformer_tiny_cifar",
}


@dataclass
class Setup:
    """A run ready to train: its (resolved) config, model, task and device."""

    cfg: LoopConfig
    model: nn.Module
    task: Task
    data_info: Any  # ImageDataInfo, LMDataInfo: the run's config.json "data" section
    device: torch.device


def training_splits(train_set: ImageDataset, cfg: TrainConfig) -> tuple[ImageDataset, ImageDataset]:
    """The run's training and validation images: ``--classes``, ``--limit-train``, then the seeded split."""
    if cfg.classes is not None:
        train_set = select_classes(train_set, cfg.classes)
    if cfg.limit_train is not None:
        train_set = limit_dataset(train_set, cfg.limit_train, seed=cfg.seed)
    return train_val_split(train_set, cfg.val_fraction, seed=cfg.seed)


def seen_test_set(test_set: ImageDataset, cfg: TrainConfig) -> ImageDataset:
    """The run's test images: those of the classes it has seen (all, unless it trained on ``--classes``)."""
    seen = cfg.seen_classes or cfg.classes
    return test_set if seen is None else select_classes(test_set, seen)


def check_fits_in_memory(cfg: ModelConfig, device: torch.device) -> None:
    """Refuse a model whose training state cannot fit in this machine's memory, before building it."""
    params = estimate_params(cfg)
    need = params * BYTES_PER_PARAM_TRAINING
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    if need > have:
        raise ConfigError(
            f"this model has about {params / 1e9:.2f}B parameters and needs about {need / 2**30:.0f} GiB "
            f"to train, more than the {have / 2**30:.0f} GiB of {device.type} memory here; make it smaller."
        )


def estimate_params(cfg: ModelConfig) -> int:
    """Parameters of the blocks (the bulk of any model here), without building it."""
    dim, mlp = getattr(cfg, "dim", 0), getattr(cfg, "mlp_dim", 0)
    return cfg.num_layers * (4 * dim * dim + 2 * dim * mlp)


def choose_model(cfg: TrainConfig, splits: DataSplits, log: Log) -> str:
    """The preset to train: the one asked for, or the one that fits the data."""
    if cfg.model is not None:
        return cfg.model
    name = preset_for_images(splits.train.channels, splits.train.image_size)
    log(
        f"model: {name} (fits {splits.train.channels}-channel {splits.train.image_size}px images; "
        "--model to change)"
    )
    return name


def fit_model_to_data(name: str, cfg: TrainConfig, splits: DataSplits, log: Log) -> ImageModelConfig:
    model_cfg = get_config(name, **cfg.model_overrides)
    if not isinstance(model_cfg, ImageModelConfig):
        raise ConfigError(f"model {name} is not an image model; `paraformer train` trains image classifiers.")
    if model_cfg.in_channels != splits.train.channels:
        raise ShapeError(
            f"model {name} takes {model_cfg.in_channels}-channel images but {cfg.dataset} has "
            f"{splits.train.channels}; pick a preset for this data (see `paraformer list-models`) "
            "or leave out --model."
        )
    # Trained on some classes only, the head has a row for each index up to the largest (it grows later).
    num_classes = splits.train.num_classes if cfg.classes is None else max(cfg.classes) + 1
    if "num_classes" not in cfg.model_overrides and model_cfg.num_classes != num_classes:
        model_cfg = model_cfg.replace(num_classes=num_classes)
    elif model_cfg.num_classes < splits.train.num_classes:
        raise ShapeError(
            f"num_classes={model_cfg.num_classes} but {cfg.dataset} has {splits.train.num_classes} classes."
        )
    if model_cfg.image_size != splits.train.image_size:
        log(
            f"note: resizing {splits.train.image_size}px images to the model's {model_cfg.image_size}px input"
        )
    return model_cfg


def check_model_fits_data(model_cfg: ModelConfig, splits: DataSplits, cfg: TrainConfig) -> None:
    """An existing model must take the data's channels and know every class label it will see."""
    channels = getattr(model_cfg, "in_channels", None)
    if channels != splits.train.channels:
        raise ShapeError(
            f"the model takes {channels}-channel images but {splits.name} has {splits.train.channels}."
        )
    seen = cfg.seen_classes or cfg.classes
    labels = int(splits.train.labels.max()) + 1 if seen is None else max(seen) + 1
    if getattr(model_cfg, "num_classes", 0) < labels:
        raise ShapeError(
            f"the model has {model_cfg.num_classes} classes but {splits.name} uses labels up to {labels - 1}."
        )


def prepare(cfg: TrainConfig, log: Log, progress: bool = True, model: nn.Module | None = None) -> Setup:
    """Load the data and build the model the run describes (checks they fit together).

    ``model`` trains an existing model (compressed, expanded...) instead of a fresh preset;
    it must take the data's channels and have a class for every label.
    """
    device = resolve_device(cfg.device)
    early = cfg.model or PRESET_FOR_DATASET.get(cfg.dataset)
    if early is not None and model is None:  # a bad model config or size fails before the data loads
        check_fits_in_memory(get_config(early, **cfg.model_overrides), device)
    splits = load_dataset(cfg.dataset, cfg.data_dir, progress=progress, log=log)
    if model is None:
        name = choose_model(cfg, splits, log)
        model_cfg = fit_model_to_data(name, cfg, splits, log)
        check_fits_in_memory(model_cfg, device)
    else:
        name, model_cfg = cfg.model or model.cfg.family, model.cfg
        check_model_fits_data(model_cfg, splits, cfg)
    cfg = cfg.replace(model=name)
    train, val = training_splits(splits.train, cfg)
    test = seen_test_set(splits.test, cfg)
    if cfg.val_fraction > 0 and len(val) == 0:
        raise DataError(
            f"{cfg.dataset}: {len(train)} training images are too few to hold out {cfg.val_fraction:.0%} "
            "for validation; use more images or --val-fraction 0."
        )
    transform = transform_for(
        splits,
        model_cfg.image_size,
        strong=cfg.strong_augment,
        strong_ops=cfg.strong_ops,
        strong_magnitude=cfg.strong_magnitude,
        crop_padding=cfg.crop_padding,
    )
    if (warning := bf16_warning(device, cfg.bf16)) is not None:
        log(warning)
    torch.manual_seed(cfg.seed)
    try:
        model = (build_model(model_cfg) if model is None else model).to(device)
    except (RuntimeError, torch.OutOfMemoryError) as err:
        raise ConfigError(f"cannot allocate model {name} on {device}: {str(err).splitlines()[0]}") from None
    info = ImageDataInfo(
        splits.name,
        tuple(splits.train.classes),
        len(train),
        len(val),
        len(test),
        transform.mean,
        transform.std,
    )
    task = ImageClassificationTask(
        {"train": train, "val": val, "test": test},
        transform,
        device,
        label_smoothing=cfg.label_smoothing,
        eval_batch_size=cfg.eval_batch_size,
        info=asdict(info),
        loss_classes=cfg.classes,
    )
    return Setup(cfg, model, task, info, device)
