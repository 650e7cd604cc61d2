"""The training configuration: one validated, JSON-serialisable dataclass."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paraformer.data.augment import MAX_MAGNITUDE
from paraformer.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
MODES = ("fused", "progressive", "joint")
PREFIX_WEIGHTS = ("uniform", "linear")
OPTIMIZERS = ("adamw", "adam")


@dataclass
class TrainConfig:
    """Everything a run needs besides the data files; saved as ``config.json["train"]``."""

    model: str = "paraformer_tiny_fmnist"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    dataset: str = "embedded"
    data_dir: str | None = None
    # ParaFormer schedule: "progressive" (the authors' loop), "fused" (all prefix losses
    # in one backward) or "joint" (one loss on the sum). ViTs always train normally.
    mode: str = "fused"
    prefix_weights: str = "uniform"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    bf16: bool = False
    strong_augment: bool = False
    strong_ops: int = 2  # RandAugment N: operations per image
    strong_magnitude: int = 9  # RandAugment M, 0-30 (the ParaFormer authors use 14)
    crop_padding: int | None = None  # None: an eighth of the input for natural images, else a 16th
    seed: int = 0
    val_fraction: float = 0.1
    limit_train: int | None = None
    eval_batch_size: int = 500
    device: str = "auto"
    save_every_minutes: float = 5.0

    def __post_init__(self) -> None:
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        require(self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}.")
        require(
            self.prefix_weights in PREFIX_WEIGHTS,
            f"prefix_weights must be one of {PREFIX_WEIGHTS}, got {self.prefix_weights!r}.",
        )
        require(
            self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}."
        )
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"{name} must be an integer >= 1, got {value!r}.")
        require(_finite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}.")
        for name in ("weight_decay", "warmup_epochs", "grad_clip", "save_every_minutes"):
            value = getattr(self, name)
            require(_finite(value) and value >= 0, f"{name} must be a number >= 0, got {value!r}.")
        require(
            _finite(self.label_smoothing) and 0 <= self.label_smoothing < 1,
            f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}.",
        )
        require(
            _finite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
            f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}.",
        )
        require(
            _finite(self.val_fraction) and 0 <= self.val_fraction < 1,
            f"val_fraction must be in [0, 1), got {self.val_fraction!r}.",
        )
        require(
            self.limit_train is None or (isinstance(self.limit_train, int) and self.limit_train >= 1),
            f"limit_train must be a positive integer, got {self.limit_train!r}.",
        )
        require(
            isinstance(self.strong_ops, int) and self.strong_ops >= 0,
            f"strong_ops must be an integer >= 0, got {self.strong_ops!r}.",
        )
        require(
            isinstance(self.strong_magnitude, int) and 0 <= self.strong_magnitude <= MAX_MAGNITUDE,
            f"strong_magnitude must be an integer in 0..{MAX_MAGNITUDE}, got {self.strong_magnitude!r}.",
        )
        require(
            self.crop_padding is None or (isinstance(self.crop_padding, int) and self.crop_padding >= 0),
            f"crop_padding must be an integer >= 0 (0 turns random crops off), got {self.crop_padding!r}.",
        )
        require(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            f"device must be auto, cpu, cuda[:N] or mps, got {self.device!r}.",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**data)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def list_recipes() -> list[str]:
    """Names of the training recipes shipped with the package (``recipes/*.json``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """Training settings from a JSON file or a shipped recipe name, as a dict of TrainConfig fields.

    A run's ``config.json`` works too: its ``"train"`` section is used. Keys starting
    with ``_`` are comments and are dropped.
    """
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        shipped = RECIPES_DIR / f"{name_or_path}.json"
        if not shipped.is_file():
            raise ConfigError(
                f"--config {name_or_path}: no such file, and not a shipped recipe "
                f"(recipes: {', '.join(list_recipes())})."
            )
        path = shipped
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the training config {path}: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("train"), dict):
        data = data["train"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object of training settings.")
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    TrainConfig.from_dict(data)  # fails here, naming the file's bad field
    return data
