"""Image classification as a task: its run settings, data, batches, loss, metrics and evaluation.

- ``TrainConfig``: everything an image run needs besides the data files (the loop's
  settings plus the data's); ``config.json["train"]``.
- ``ImageDataInfo``: what the run recorded about its data (``config.json["data"]``):
  enough to evaluate it again, including a content hash of the dataset.
- ``ImageClassificationTask``: the trainer's ``Task`` on in-memory uint8 splits.
- ``prepare(cfg)``: loads the data, picks or checks the model (through the model
  registry) and returns a ``Setup`` ready to train; ``reopen(saved)`` gives a finished
  run's own validation and test splits back.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paraformer.config import MAX_SIZE, ImageModelConfig, ModelConfig, require
from paraformer.data import (
    BatchTransform,
    DataSplits,
    ImageDataset,
    limit_dataset,
    load_dataset,
    select_classes,
    train_val_split,
    transform_for,
)
from paraformer.data.augment import MAX_MAGNITUDE, MAX_STRONG_OPS
from paraformer.errors import ConfigError, DataError
from paraformer.fields import check_fields
from paraformer.models import build_model, check_input, default_model, get_config, require_modality
from paraformer.tasks.image_eval import EvalResult, evaluate
from paraformer.train.config import LoopConfig, option
from paraformer.train.devices import bf16_warning, check_fits_in_memory, resolve_device
from paraformer.train.task import Setup

Log = Callable[[str], None]
NAME = "image"
# The input each named dataset has, so that a model can be checked before the data loads.
KNOWN_INPUTS = {
    "embedded": (1, 28),
    "fashion-mnist": (1, 28),
    "cifar10": (3, 32),
    "cifar100": (3, 32),
}


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """Everything an image-classification run needs besides the data files; ``config.json["train"]``.

    ``epochs`` and ``batch_size`` left unset are sized by the training set (``fit_budget``).
    """

    epochs: int | None = option(
        None, "number of epochs (default: sized by the training set, at least 10; see README)"
    )
    batch_size: int | None = option(None, "training batch size (default: 32, 64 or 128 by the training set)")

    dataset: str = option(
        "embedded",
        "embedded (default, no files needed), fashion-mnist, cifar10, cifar100 or imagefolder:PATH",
    )
    data_dir: str | None = option(None, "folder holding the dataset files (default $PARAFORMER_DATA_DIR)")
    val_fraction: float = option(0.1, "fraction of the training images held out for validation (0: none)")
    limit_train: int | None = option(None, "use only N training images (class-balanced)", metavar="N")
    classes: tuple[int, ...] | None = option(
        None,
        "train and validate on these class indices only, e.g. 0,1 (class-incremental learning); the "
        "loss reads their logits only, and the test split keeps every class the run has seen",
        metavar="I,J,...",
    )
    seen_classes: tuple[int, ...] | None = option(
        None, "classes whose test images evaluate the run (default: classes)", cli=False
    )
    strong_augment: bool = option(False, "add a RandAugment-style policy")
    strong_ops: int = option(2, f"RandAugment N, operations per image (0-{MAX_STRONG_OPS})")
    strong_magnitude: int = option(9, f"RandAugment M, 0-{MAX_MAGNITUDE} (the ParaFormer authors use 14)")
    crop_padding: int | None = option(
        None, "random-crop padding in pixels, 0 = off (default: input/8 for natural images, else input/16)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction!r}.")
        require(
            self.limit_train is None or self.limit_train >= 1,
            f"limit_train must be a positive integer, got {self.limit_train!r}.",
        )
        for name in ("classes", "seen_classes"):
            value = getattr(self, name)
            require(
                value is None or (len(value) > 0 and len(set(value)) == len(value) and min(value) >= 0),
                f"{name} must be a non-empty list of distinct class indices >= 0, got {value!r}.",
            )
        require(
            0 <= self.strong_ops <= MAX_STRONG_OPS,
            f"strong_ops must be an integer in 0..{MAX_STRONG_OPS}, got {self.strong_ops!r}.",
        )
        require(
            0 <= self.strong_magnitude <= MAX_MAGNITUDE,
            f"strong_magnitude must be an integer in 0..{MAX_MAGNITUDE}, got {self.strong_magnitude!r}.",
        )
        require(
            self.crop_padding is None or 0 <= self.crop_padding <= MAX_SIZE,
            f"crop_padding must be an integer >= 0 (0 turns random crops off), got {self.crop_padding!r}.",
        )
        require(
            self.seen_classes is None or set(self.classes or ()) <= set(self.seen_classes),
            f"seen_classes {self.seen_classes} must include classes {self.classes}.",
        )
        require(bool(self.dataset.strip()), "dataset must not be empty; see `paraformer train --help`.")


@dataclass(frozen=True)
class ImageDataInfo:
    """The ``data`` section of an image run's ``config.json``: enough to evaluate it again."""

    dataset: str
    classes: tuple[str, ...]
    num_train: int
    num_val: int
    num_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sha256: str | None = None  # of the whole dataset as loaded (train and test images and labels)

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.mean or len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ConfigError(
                f"mean and std need one value per channel, std > 0; got {self.mean}, {self.std}."
            )


class ImageClassificationTask:
    """Image classification on in-memory uint8 splits, with batch augmentation.

    ``loss_classes`` restricts the training loss to those classes' logits (the
    classes of the data, in class-incremental learning); evaluation uses all logits.

    Images stay on ``device`` once decoded when it is a GPU (augmentation runs on
    batches there); otherwise batches are gathered on the CPU and copied.
    """

    name = NAME
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

    def inputs(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Stored uint8 images -> augmented model inputs, as training batches get them (replay)."""
        return self.transform(images.to(self.device), train=True, generator=generator)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss_index is not None and self.target_index is not None:
            logits, targets = logits[..., self.loss_index], self.target_index[targets]
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def batch_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"acc": float((logits.argmax(-1) == targets).sum().item())}  # summed; the loop divides

    def evaluate(self, model: nn.Module, split: str, **options: bool) -> EvalResult:
        """Accuracy and loss on a split; ``options``: ``prefixes``, ``bf16``, ``progress``."""
        desc = "validation" if split == "val" else split
        return evaluate(
            model, self.splits[split], self.transform, batch_size=self.eval_batch_size, desc=desc, **options
        )

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def describe(self) -> str:
        """The data in one phrase, for the line printed when a run starts."""
        i = self._info
        counts = " / ".join(
            f"{self.num_samples(s):,} {n}" for s, n in (("train", "train"), ("val", "val"), ("test", "test"))
        )
        return f"{i.get('dataset', 'in-memory data')}: {counts} images"

    def artifacts(self) -> dict[str, str]:
        return {}


def _place(dataset: ImageDataset, device: torch.device) -> ImageDataset:
    """Keep a split on the GPU when it fits; else in pinned memory for asynchronous copies."""
    if device.type != "cuda" or len(dataset) == 0:
        return dataset
    try:
        return ImageDataset(dataset.images.to(device), dataset.labels.to(device), dataset.classes)
    except torch.OutOfMemoryError:
        return ImageDataset(dataset.images.pin_memory(), dataset.labels.pin_memory(), dataset.classes)


# ---------------------------------------------------------------------------- preparing a run

BUDGET_STEPS = 800  # optimizer steps a run gets at least, when the user does not size it
BUDGET_EPOCHS = (10, 100)


def fit_budget(cfg: TrainConfig, num_train: int) -> tuple[TrainConfig, str | None]:
    """``cfg`` with an unset batch size and epochs chosen for ``num_train`` images, and why.

    Small data gets a small batch and more epochs, so that it still takes enough optimizer
    steps: batch 32 below 2,500 images, 64 below 20,000, else 128; then as many epochs as
    give at least ``BUDGET_STEPS`` steps, between 10 and 100. Large data gets exactly the
    former defaults (batch 128, 10 epochs). Values the user set are kept.
    """
    chosen = {}
    if cfg.batch_size is None:
        chosen["batch_size"] = 32 if num_train < 2_500 else 64 if num_train < 20_000 else 128
    if cfg.epochs is None:
        if cfg.max_steps is not None:
            chosen["epochs"] = 1  # --max-steps sets the length
        else:
            per_epoch = math.ceil(num_train / (cfg.batch_size or chosen["batch_size"]))
            lo, hi = BUDGET_EPOCHS
            chosen["epochs"] = min(hi, max(lo, math.ceil(BUDGET_STEPS / per_epoch)))
    if not chosen:
        return cfg, None
    what = " and ".join(
        f"{k.replace('_', ' ')} {v}" for k, v in chosen.items() if k != "epochs" or not cfg.max_steps
    )
    why = (
        f"budget: {what} for {num_train:,} training images (at least {BUDGET_STEPS} optimizer steps; "
        "--batch-size / --epochs / --max-steps to set them)"
    )
    return cfg.replace(**chosen), why


def dataset_sha256(splits: DataSplits) -> str:
    """A content hash of a loaded dataset: both splits' images and labels."""
    digest = hashlib.sha256()
    for ds in (splits.train, splits.test):
        for t in (ds.images, ds.labels):
            digest.update(t.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def training_splits(train_set: ImageDataset, cfg: TrainConfig) -> tuple[ImageDataset, ImageDataset]:
    """The run's training and validation images: ``--classes``, ``--limit-train``, then the seeded split."""
    if cfg.classes is not None:
        train_set = select_classes(train_set, cfg.classes)
        present = int(train_set.labels.unique().numel())
        if present < 2 and cfg.seen_classes is None:
            raise DataError(
                f"--classes {','.join(map(str, cfg.classes))} leaves images of {present} class; a classifier "
                "needs at least 2 (expanding a trained run with one new class is `paraformer expand`)."
            )
    if cfg.limit_train is not None:
        train_set = limit_dataset(train_set, cfg.limit_train, seed=cfg.seed)
    return train_val_split(train_set, cfg.val_fraction, seed=cfg.seed)


def seen_test_set(test_set: ImageDataset, cfg: TrainConfig) -> ImageDataset:
    """The run's test images: those of the classes it has seen (all, unless it trained on ``--classes``)."""
    seen = cfg.seen_classes or cfg.classes
    return test_set if seen is None else select_classes(test_set, seen)


def choose_model(cfg: TrainConfig, splits: DataSplits, log: Log) -> str:
    """The preset to train: the one asked for, or the one the registry picks for the data."""
    if cfg.model is not None:
        return cfg.model
    name = default_model(NAME, channels=splits.train.channels, image_size=splits.train.image_size)
    log(
        f"model: {name} (fits {splits.train.channels}-channel {splits.train.image_size}px images; "
        "--model to change)"
    )
    return name


def fit_model_to_data(name: str, cfg: TrainConfig, splits: DataSplits, log: Log) -> ImageModelConfig:
    """The preset's config, its head sized for the data's classes; a model that cannot read it is refused."""
    model_cfg = get_config(name, **cfg.model_overrides)
    require_modality(model_cfg, NAME, f"model {name}")
    check_input(model_cfg, name, channels=splits.train.channels)
    # Trained on some classes only, the head has a row for each index up to the largest (it grows later).
    num_classes = splits.train.num_classes if cfg.classes is None else max(cfg.classes) + 1
    if "num_classes" not in cfg.model_overrides and model_cfg.num_classes != num_classes:
        model_cfg = model_cfg.replace(num_classes=num_classes)
    check_input(model_cfg, name, classes=splits.train.num_classes if cfg.classes is None else num_classes)
    if model_cfg.image_size != splits.train.image_size:
        log(
            f"note: resizing {splits.train.image_size}px images to the model's {model_cfg.image_size}px input"
        )
    return model_cfg


def early_model_config(cfg: TrainConfig) -> ModelConfig | None:
    """The model config a named dataset will get, so that a bad one fails before the data loads."""
    name = cfg.model
    if name is None and cfg.dataset in KNOWN_INPUTS:
        channels, size = KNOWN_INPUTS[cfg.dataset]
        name = default_model(NAME, channels=channels, image_size=size)
    return None if name is None else get_config(name, **cfg.model_overrides)


def prepare(
    cfg: TrainConfig,
    log: Log,
    progress: bool = True,
    model: nn.Module | None = None,
    sha256: str | None = None,
) -> Setup:
    """Load the data and build the model the run describes (checks they fit together).

    ``model`` trains an existing model (compressed, expanded...) instead of a fresh preset;
    it must take the data's channels and have a class for every label. ``sha256``
    (resuming) requires the data to be what the run trained on.
    """
    device = resolve_device(cfg.device)
    early = early_model_config(cfg) if model is None else None
    if early is not None:  # a bad model config or size fails before the data loads
        require_modality(early, NAME, f"model {cfg.model}")
        check_fits_in_memory(early, device)
    splits = load_dataset(cfg.dataset, cfg.data_dir, progress=progress, log=log)
    digest = dataset_sha256(splits)
    if sha256 is not None and digest != sha256:
        raise DataError(
            f"the {cfg.dataset} data in {cfg.data_dir or 'the default data folder'} is not the data this run "
            "trained on (its content hash differs); point --data-dir to that data or start a new run."
        )
    if model is None:
        name = choose_model(cfg, splits, log)
        model_cfg = fit_model_to_data(name, cfg, splits, log)
        check_fits_in_memory(model_cfg, device)
    else:
        name, model_cfg = cfg.model or model.cfg.family, model.cfg
        require_modality(model_cfg, NAME, f"model {name}")
        seen = cfg.seen_classes or cfg.classes
        labels = int(splits.train.labels.max()) + 1 if seen is None else max(seen) + 1
        check_input(model_cfg, name, channels=splits.train.channels, classes=labels)
    cfg = cfg.replace(model=name)
    train, val = training_splits(splits.train, cfg)
    cfg, why = fit_budget(cfg, len(train))
    if why is not None:
        log(why)
    test = seen_test_set(splits.test, cfg)
    if cfg.val_fraction > 0 and len(val) == 0:
        raise DataError(
            f"{cfg.dataset}: {len(train)} training images are too few to hold out {cfg.val_fraction:.0%} "
            "for validation; use more images or --val-fraction 0."
        )
    transform = training_transform(cfg, splits, model_cfg.image_size)
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
        digest,
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


def in_memory_setup(
    model: nn.Module,
    cfg: LoopConfig,
    train: ImageDataset,
    val: ImageDataset | None,
    test: ImageDataset | None,
    transform: BatchTransform,
    loss_classes: Sequence[int] | None = None,
) -> Setup:
    """A run on images held in memory (a task of a continual-learning sequence)."""
    device = resolve_device(cfg.device)
    if isinstance(cfg, TrainConfig):
        cfg = fit_budget(cfg, len(train))[0]
    val = val if val is not None else ImageDataset(train.images[:0], train.labels[:0], train.classes)
    splits = {"train": train, "val": val} | ({"test": test} if test is not None else {})
    info = ImageDataInfo(
        "in-memory",
        tuple(train.classes),
        len(train),
        len(val),
        len(test) if test is not None else 0,
        transform.mean,
        transform.std,
    )
    task = ImageClassificationTask(
        splits,
        transform,
        device,
        label_smoothing=cfg.label_smoothing,
        eval_batch_size=cfg.eval_batch_size,
        info=asdict(info),
        loss_classes=loss_classes,
    )
    return Setup(cfg, model.to(device), task, info, device)


# ---------------------------------------------------------------------------- finished runs


def reopen(
    saved: Any,
    data_dir: str | None = None,
    splits: tuple[str, ...] = ("test", "val"),
    *,
    progress: bool = False,
) -> dict[str, ImageDataset]:
    """A finished run's own validation and test images (the same seeded split and classes as in training).

    ``data_dir`` points to the dataset's files where they are now; the data must be what
    the run trained on (its content hash, when recorded, must match).
    """
    cfg = saved.train_cfg
    loaded = load_dataset(cfg.dataset, data_dir or cfg.data_dir, progress=progress)
    recorded = saved.data.sha256
    if recorded is not None and dataset_sha256(loaded) != recorded:
        raise DataError(
            f"the {cfg.dataset} data found in {data_dir or cfg.data_dir or 'the default data folder'} is not "
            f"the data {saved.folder} trained on (its content hash differs); point --data-dir to that data."
        )
    out = {}
    if "val" in splits:
        out["val"] = training_splits(loaded.train, cfg)[1]
        if len(out["val"]) == 0:
            raise ConfigError(
                f"{saved.folder} was trained without a validation split (val_fraction=0); use the test split."
            )
    if "test" in splits:
        out["test"] = seen_test_set(loaded.test, cfg)
    return out


def training_transform(cfg: TrainConfig, splits: DataSplits, image_size: int) -> BatchTransform:
    """The batch transform a run of ``cfg`` trains with: normalisation from ``splits``, its augmentation."""
    return transform_for(
        splits,
        image_size,
        strong=cfg.strong_augment,
        strong_ops=cfg.strong_ops,
        strong_magnitude=cfg.strong_magnitude,
        crop_padding=cfg.crop_padding,
    )


def run_transform(saved: Any) -> BatchTransform:
    """The evaluation transform of a run: its normalisation, at its model's input size."""
    return BatchTransform(saved.data.mean, saved.data.std, out_size=saved.model_cfg.image_size)
