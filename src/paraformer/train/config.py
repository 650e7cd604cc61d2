"""The training loop's configuration: a frozen, validated, JSON-serialisable dataclass.

``LoopConfig`` holds what any training run needs (length, optimiser, precision,
device, checkpoints); each task's config adds its data settings
(``paraformer.tasks.image.TrainConfig``, ``paraformer.tasks.text.LMTrainConfig``). Each
field's ``help`` text is the one place it is documented: the CLI generates its flags
from these fields.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from paraformer.config import require
from paraformer.errors import ConfigError
from paraformer.fields import check_fields, from_mapping
from paraformer.train.devices import check_device_name

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
MODES = ("fused", "progressive", "joint")
PREFIX_WEIGHTS = ("uniform", "linear")
OPTIMIZERS = ("adamw", "adam")
BRANCH_EXEC = ("auto", "loop", "stacked")
MAX_BATCH = 1 << 20


def option(
    default: Any, help: str, *, cli: bool = True, choices: tuple[str, ...] = (), metavar: str = ""
) -> Any:
    """A config field with its help text; ``cli=False`` keeps it out of the generated flags."""
    meta = {"help": help, "cli": cli, "choices": choices, "metavar": metavar}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class LoopConfig:
    """Settings of the training loop itself, whatever the task."""

    model: str | None = option(None, "model preset (default: the preset that fits the data; see list-models)")
    model_overrides: dict[str, Any] = option(
        {}, "model config fields to change, e.g. {'num_branches': 8} (--set FIELD=VALUE)", cli=False
    )
    mode: str = option(
        "fused",
        "ParaFormer schedule: fused (all prefix losses, one backward), progressive (the authors' "
        "step per prefix, then a full pass) or joint (one loss on the sum); ViTs train normally",
        choices=MODES,
    )
    prefix_weights: str = option(
        "uniform", "weights of the prefix losses in fused mode", choices=PREFIX_WEIGHTS
    )
    epochs: int = option(10, "number of epochs (passes over the training split)")
    max_steps: int | None = option(
        None, "stop after this many optimizer steps instead (the schedule spans them)", metavar="N"
    )
    batch_size: int = option(128, "training batch size")
    optimizer: str = option("adamw", "optimizer", choices=OPTIMIZERS)
    lr: float = option(1e-3, "peak learning rate")
    weight_decay: float = option(0.05, "weight decay (not on norms, biases, embeddings)")
    warmup_fraction: float = option(
        0.1, "linear warmup over this fraction of all optimizer steps, then cosine decay", metavar="F"
    )
    warmup_epochs: float | None = option(
        None,
        "deprecated (use --warmup-fraction): warmup length in epochs; runs recorded with it keep it",
        metavar="E",
    )
    min_lr_ratio: float = option(0.01, "final learning rate as a fraction of the peak")
    grad_clip: float = option(1.0, "max gradient norm, 0 = off")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    bf16: bool = option(False, "bfloat16 autocast (CUDA, and CPUs with native bf16)")
    compile: bool = option(False, "torch.compile the model (slower start, faster steps where it helps)")
    seed: int = option(0, "random seed; runs are deterministic per seed")
    eval_every: int = option(
        0, "also evaluate on the test split every N epochs (default 0: only at the end)", metavar="N"
    )
    eval_batch_size: int = option(500, "batch size of evaluation")
    branch_exec: str = option(
        "auto",
        "how a model's branches run on a device: loop, stacked (one batched matmul per layer for all "
        "branches) or auto (both timed at the training batch; stacked only if faster)",
        choices=BRANCH_EXEC,
    )
    branch_parallel: int = option(
        1,
        "split the branches over P processes (launch with torchrun --nproc-per-node P ...); more "
        "processes than P add data parallelism",
        metavar="P",
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    save_every_minutes: float = option(5.0, "also checkpoint mid-epoch this often")
    deep_supervision: bool = option(
        False, "a loss after every layer (sequential models that read out per layer: language models)"
    )
    grad_stats: bool = option(False, "accumulate per-layer gradient norms (GFA, CascadeFlow pruning)")
    equalize_grads: bool = option(
        False,
        "rescale every layer's gradient to the mean per-layer norm before clipping (the GFA "
        "intervention; models that list their layers: language models)",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "model_overrides", MappingProxyType(dict(self.model_overrides)))
        require(self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}.")
        require(
            self.prefix_weights in PREFIX_WEIGHTS,
            f"prefix_weights must be one of {PREFIX_WEIGHTS}, got {self.prefix_weights!r}.",
        )
        require(
            self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}."
        )
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)  # None: chosen by the task from its data (image runs)
            require(
                value is None or 1 <= value <= MAX_BATCH,
                f"{name} must be an integer in 1..{MAX_BATCH}, got {value!r}.",
            )
        require(
            self.max_steps is None or self.max_steps >= 1,
            f"max_steps must be an integer >= 1, got {self.max_steps!r}.",
        )
        require(self.eval_every >= 0, f"eval_every must be an integer >= 0, got {self.eval_every!r}.")
        require(
            self.branch_exec in BRANCH_EXEC,
            f"branch_exec must be one of {BRANCH_EXEC}, got {self.branch_exec!r}.",
        )
        require(
            1 <= self.branch_parallel <= 4096,
            f"branch_parallel must be an integer >= 1, got {self.branch_parallel!r}.",
        )
        require(0 <= self.seed < 2**63, f"seed must be in 0..2**63-1, got {self.seed!r}.")
        require(self.lr > 0, f"lr must be a positive number, got {self.lr!r}.")
        for name in ("weight_decay", "grad_clip", "save_every_minutes"):
            value = getattr(self, name)
            require(value >= 0, f"{name} must be a number >= 0, got {value!r}.")
        require(
            0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}."
        )
        require(
            self.warmup_epochs is None or self.warmup_epochs >= 0,
            f"warmup_epochs must be a number >= 0, got {self.warmup_epochs!r}.",
        )
        require(
            0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}."
        )
        require(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}.")
        check_device_name(self.device)

    def warmup_steps(self, total_steps: int, steps_per_epoch: int) -> int:
        """Optimizer steps of linear warmup: a fraction of the run's steps (or legacy epochs)."""
        if self.warmup_epochs is not None:
            return round(self.warmup_epochs * steps_per_epoch)
        return round(self.warmup_fraction * total_steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v
            for f in dataclasses.fields(self)
        }

    def replace(self, **changes: Any) -> LoopConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Any, what: str = "training config") -> Any:
        return from_mapping(cls, data, what)


def list_recipes() -> list[str]:
    """Names of the training recipes shipped with the package (``recipes/*.json``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def load_recipe(name_or_path: str | Path, cls: type[LoopConfig]) -> dict[str, Any]:
    """Training settings from a JSON file or a shipped recipe name, as a dict of config fields.

    A run's ``config.json`` works too: its ``"train"`` section is used. Keys starting
    with ``_`` are comments and are dropped. The settings are validated here, so a bad
    field fails naming the file.
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
    try:
        cls.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return data
