"""The training loop: data, model, optimizer, strategy, checkpoints and metrics.

The loop is deliberately small; what differs between modes lives in the strategy
objects (``strategies.py``). Training is deterministic for a given seed: the data
order and the augmentation of every batch come from generators seeded by
(seed, epoch, pass, batch), and the global RNG (dropout) is saved with the rest of
the state, so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from paraformer.analysis.plots import plot_curves
from paraformer.atomic import atomic_write
from paraformer.checkpoint import (
    CONFIG_FILE,
    TRAIN_STATE_FILE,
    load_config,
    load_train_state,
    save_model,
    save_train_state,
    write_json,
)
from paraformer.data import BatchTransform, ImageDataset, limit_dataset, load_dataset, train_val_split
from paraformer.data.transforms import transform_for
from paraformer.errors import CheckpointError, ConfigError, ShapeError, TrainingError
from paraformer.models import ImageClassifier, ParaFormer, build_model
from paraformer.registry import get_config
from paraformer.train.config import TrainConfig
from paraformer.train.evaluate import evaluate
from paraformer.train.schedule import warmup_cosine
from paraformer.train.strategies import StandardStrategy, make_strategy

Log = Callable[[str], None]


@dataclass
class Position:
    """Where training stands: the next batch to run and the optimizer steps taken."""

    epoch: int = 0
    pass_index: int = 0
    batch: int = 0
    step: int = 0


@dataclass
class Setup:
    """Everything built once before the first batch."""

    cfg: TrainConfig
    model: ImageClassifier
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    transform: BatchTransform
    data_info: dict[str, Any]
    device: torch.device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA GPU is available; use --device cpu.")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX).

    Without it, bf16 matmuls are emulated and run tens of times slower than fp32.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except RuntimeError:  # private torch API: assume native if it cannot tell
        return True


def training_splits(train_set: ImageDataset, cfg: TrainConfig) -> tuple[ImageDataset, ImageDataset]:
    """The run's training and validation images: ``--limit-train``, then the seeded split."""
    if cfg.limit_train is not None:
        train_set = limit_dataset(train_set, cfg.limit_train, seed=cfg.seed)
    return train_val_split(train_set, cfg.val_fraction, seed=cfg.seed)


def prepare(cfg: TrainConfig, log: Log, progress: bool = True) -> Setup:
    """Load the data and build the model the run describes (checks they fit together)."""
    model_cfg = get_config(cfg.model, **cfg.model_overrides)  # a bad model fails before data loads
    splits = load_dataset(cfg.dataset, cfg.data_dir, progress=progress)
    if model_cfg.in_channels != splits.train.channels:
        raise ShapeError(
            f"model {cfg.model} takes {model_cfg.in_channels}-channel images but {cfg.dataset} has "
            f"{splits.train.channels}; pick a preset for this data (see `paraformer list-models`)."
        )
    if "num_classes" not in cfg.model_overrides and model_cfg.num_classes != splits.train.num_classes:
        model_cfg = model_cfg.replace(num_classes=splits.train.num_classes)
    elif model_cfg.num_classes < splits.train.num_classes:
        raise ShapeError(
            f"num_classes={model_cfg.num_classes} but {cfg.dataset} has {splits.train.num_classes} classes."
        )
    if model_cfg.image_size != splits.train.image_size:
        log(
            f"note: resizing {splits.train.image_size}px images to the model's {model_cfg.image_size}px input"
        )
    train, val = training_splits(splits.train, cfg)
    transform = transform_for(
        splits,
        model_cfg.image_size,
        strong=cfg.strong_augment,
        strong_ops=cfg.strong_ops,
        strong_magnitude=cfg.strong_magnitude,
        crop_padding=cfg.crop_padding,
    )
    device = resolve_device(cfg.device)
    if cfg.bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        log(
            "warning: this CPU has no native bf16 (no AVX-512 BF16 or AMX), so --bf16 emulates it "
            "and trains many times slower than fp32; drop --bf16 here."
        )
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg).to(device)
    data_info = {
        "dataset": splits.name,
        "classes": splits.train.classes,
        "num_train": len(train),
        "num_val": len(val),
        "num_test": len(splits.test),
        "mean": list(transform.mean),
        "std": list(transform.std),
    }
    return Setup(cfg, model, train, val, splits.test, transform, data_info, device)


def make_optimizer(model: ImageClassifier, cfg: TrainConfig) -> torch.optim.Optimizer:
    skip = model.no_weight_decay()
    decay = [p for n, p in model.named_parameters() if n not in skip]
    no_decay = [p for n, p in model.named_parameters() if n in skip]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient; keep the authors' plain Adam when asked.
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _seeded(*parts: int) -> torch.Generator:
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + part) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


class _StopFlag:
    """First Ctrl-C asks the loop to save and stop at the next batch boundary."""

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def _graceful_interrupt() -> Iterator[_StopFlag]:
    flag = _StopFlag()
    try:
        previous = signal.signal(signal.SIGINT, flag.handle)
    except ValueError:  # not the main thread: no handler, plain KeyboardInterrupt
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class Trainer:
    """Runs (or resumes) one training run in ``out_dir``."""

    def __init__(self, setup: Setup, out_dir: Path, log: Log = print, progress: bool = True) -> None:
        self.s = setup
        self.cfg = setup.cfg
        self.out_dir = Path(out_dir)
        self.log = log
        self.progress = progress
        self.model = setup.model
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.strategy: StandardStrategy = make_strategy(
            self.model, self.cfg.mode, self.cfg.prefix_weights, self.cfg.label_smoothing
        )
        self.batches = math.ceil(len(setup.train) / self.cfg.batch_size)
        self.steps_per_epoch = sum(
            self.batches * self.strategy.steps_per_batch(p) for p in self.strategy.passes
        )
        self.total_steps = self.steps_per_epoch * self.cfg.epochs
        self.warmup_steps = round(self.cfg.warmup_epochs * self.steps_per_epoch)
        self.pos = Position()
        self.history: list[dict[str, Any]] = []
        self.epoch_stats = self._empty_stats()
        self.config_json = {
            "train": self.cfg.to_dict(),
            "data": setup.data_info,
            "mode": self.mode_name,
        }

    @property
    def mode_name(self) -> str:
        return self.cfg.mode if isinstance(self.model, ParaFormer) else "standard"

    @staticmethod
    def _empty_stats() -> dict[str, float]:
        return {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "position": [self.pos.epoch, self.pos.pass_index, self.pos.batch, self.pos.step],
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch_stats": dict(self.epoch_stats),
            "history_json": [_json_line(h) for h in self.history],
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.pos = Position(*[int(v) for v in state["position"]])
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            if "cuda_rng" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self.epoch_stats = {k: float(v) for k, v in state["epoch_stats"].items()}
            self.history = [json.loads(line) for line in state["history_json"]]
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise CheckpointError(
                f"{self.out_dir / TRAIN_STATE_FILE} does not match this run's config ({err})."
            ) from None

    def save(self) -> None:
        save_train_state(self.out_dir, self.state_dict())
        save_model(self.out_dir, self.model, self.config_json)

    # -- training ----------------------------------------------------------------------------
    def _step_fn(self, clip: float) -> Callable[[torch.Tensor], None]:
        def step(loss: torch.Tensor) -> None:
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {self.pos.epoch + 1}, step {self.pos.step}; "
                    f"lower the learning rate (now {self.cfg.lr:g}) or keep --grad-clip on."
                )
            lr = warmup_cosine(
                self.pos.step, self.total_steps, self.warmup_steps, self.cfg.lr, self.cfg.min_lr_ratio
            )
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
            self.pos.step += 1

        return step

    def run(self, stop_after_epochs: int | None = None) -> dict[str, Any]:
        """Train until ``cfg.epochs`` (or ``stop_after_epochs`` more epochs); return the summary."""
        cfg, s = self.cfg, self.s
        self.out_dir.mkdir(parents=True, exist_ok=True)
        step = self._step_fn(cfg.grad_clip)
        autocast = torch.autocast(s.device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
        last_save = time.monotonic()
        epochs_run = 0
        self.model.train()
        with _graceful_interrupt() as stop:
            while self.pos.epoch < cfg.epochs:
                if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
                    break
                total = self.batches * len(self.strategy.passes)
                done = self.pos.pass_index * self.batches + self.pos.batch
                bar = tqdm(
                    total=total,
                    initial=done,
                    desc=f"epoch {self.pos.epoch + 1}/{cfg.epochs}",
                    disable=not self.progress,
                    leave=False,
                    unit="batch",
                    file=sys.stderr,
                )
                while self.pos.pass_index < len(self.strategy.passes):
                    pass_name = self.strategy.passes[self.pos.pass_index]
                    order = torch.randperm(
                        len(s.train), generator=_seeded(cfg.seed, self.pos.epoch, self.pos.pass_index)
                    )
                    while self.pos.batch < self.batches:
                        if stop.requested:
                            bar.close()
                            self.save()
                            return self._interrupted()
                        t0 = time.perf_counter()
                        idx = order[self.pos.batch * cfg.batch_size : (self.pos.batch + 1) * cfg.batch_size]
                        gen = _seeded(cfg.seed, self.pos.epoch, self.pos.pass_index, self.pos.batch, 1)
                        x = s.transform(s.train.images[idx].to(s.device), train=True, generator=gen)
                        y = s.train.labels[idx].to(s.device)
                        with autocast:
                            result = self.strategy.train_batch(self.model, x, y, pass_name, step)
                        st = self.epoch_stats
                        st["loss_sum"] += result.loss * len(idx)
                        st["correct"] += (result.logits.argmax(-1) == y).sum().item()
                        st["seen"] += len(idx)
                        st["seconds"] += time.perf_counter() - t0
                        self.pos.batch += 1
                        bar.update(1)
                        bar.set_postfix(
                            loss=f"{st['loss_sum'] / st['seen']:.3f}",
                            acc=f"{st['correct'] / st['seen']:.1%}",
                            img_s=f"{st['seen'] / max(st['seconds'], 1e-9):.0f}",
                        )
                        if time.monotonic() - last_save > cfg.save_every_minutes * 60:
                            self.save()
                            last_save = time.monotonic()
                    self.pos.pass_index += 1
                    self.pos.batch = 0
                bar.close()
                self._end_epoch()
                last_save = time.monotonic()
                epochs_run += 1
        return self.finish()

    def _end_epoch(self) -> None:
        cfg, s, st = self.cfg, self.s, self.epoch_stats
        is_para = isinstance(self.model, ParaFormer)
        kw = {"batch_size": cfg.eval_batch_size, "bf16": cfg.bf16, "progress": self.progress}
        val = evaluate(self.model, s.val, s.transform, desc="validation", **kw)
        test = evaluate(self.model, s.test, s.transform, prefixes=is_para, desc="test", **kw)
        images = len(s.train)  # dataset images per epoch, whatever the number of passes
        record = {
            "epoch": self.pos.epoch + 1,
            "step": self.pos.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": st["loss_sum"] / max(st["seen"], 1),
            "train_acc": st["correct"] / max(st["seen"], 1),
            "val_acc": val.accuracy if val.num_samples else None,
            "val_loss": val.loss if val.num_samples else None,
            "test_acc": test.accuracy,
            "test_loss": test.loss,
            "train_seconds": st["seconds"],
            "images_per_s": images / max(st["seconds"], 1e-9),
        }
        if is_para:
            record["test_acc_prefix"] = test.prefix_accuracy
        self.history.append(record)
        self.log(_epoch_line(record, cfg.epochs))
        self.pos = Position(self.pos.epoch + 1, 0, 0, self.pos.step)
        self.epoch_stats = self._empty_stats()
        is_best = max(self.history, key=_selection_score) is record  # ties keep the earlier epoch
        self.save()
        if is_best:
            save_model(self.out_dir / "best", self.model, {**self.config_json, "epoch": record["epoch"]})
        _write_metrics(self.out_dir, self.history)

    def _interrupted(self) -> dict[str, Any]:
        self.log(
            f"interrupted at epoch {self.pos.epoch + 1}, batch {self.pos.batch}; state saved. "
            f"Resume with: paraformer train --resume --out {self.out_dir}"
        )
        return {"interrupted": True, "position": self.pos.__dict__}

    def finish(self) -> dict[str, Any]:
        if not self.history:
            return {"epochs_completed": 0}
        last = self.history[-1]
        best_epoch = max(self.history, key=_selection_score)
        summary = {
            "model": self.cfg.model,
            "mode": self.mode_name,
            "dataset": self.s.data_info["dataset"],
            "num_params": self.model.num_params(),
            "epochs_completed": last["epoch"],
            "epochs": self.cfg.epochs,
            "final_test_acc": last["test_acc"],
            "final_test_acc_prefix": last.get("test_acc_prefix"),
            "best_epoch": best_epoch["epoch"],
            "best_val_acc": best_epoch["val_acc"],
            "best_test_acc": best_epoch["test_acc"],
            "train_seconds": sum(h["train_seconds"] for h in self.history),
            "mean_images_per_s": sum(h["images_per_s"] for h in self.history) / len(self.history),
            "complete": last["epoch"] >= self.cfg.epochs,
        }
        write_json(self.out_dir / "summary.json", summary)
        plot_curves(self.history, self.out_dir / "curves.png", title=f"{self.cfg.model} ({self.mode_name})")
        return summary


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    log: Log = print,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train a model and write a run folder; return the run's summary.

    The folder holds config.json, model.safetensors, best/ (best validation
    checkpoint), train_state.pt, metrics.jsonl, curves.png and summary.json. A
    ParaFormer trains with the chosen mode (fused, progressive or joint); a ViT
    trains normally. Ctrl-C saves the state and stops; resuming continues exactly.
    """
    out_dir = Path(out_dir)
    if (out_dir / TRAIN_STATE_FILE).exists() or (out_dir / CONFIG_FILE).exists():
        raise ConfigError(
            f"{out_dir} already holds a run; continue it with --resume or choose another --out."
        )
    setup = prepare(cfg, log, progress)
    trainer = Trainer(setup, out_dir, log, progress)
    info = setup.data_info
    log(
        f"training {cfg.model} ({setup.model.num_params():,} params, {trainer.mode_name}) on "
        f"{info['dataset']}: {info['num_train']:,} train / {info['num_val']:,} val / "
        f"{info['num_test']:,} test images, {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}; "
        f"run folder {out_dir}"
    )
    return trainer.run(stop_after_epochs)


def resume(
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    log: Log = print,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Continue the run saved in ``out_dir`` where it stopped (optionally to more ``epochs``)."""
    out_dir = Path(out_dir)
    _, saved = load_config(out_dir)
    try:
        cfg = TrainConfig.from_dict(saved["train"])
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"{out_dir / CONFIG_FILE} has no valid 'train' section ({err}).") from None
    if epochs is not None:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "epochs": epochs})
    state = load_train_state(out_dir)
    trainer = Trainer(prepare(cfg, log, progress), out_dir, log, progress)
    trainer.load_state_dict(state)
    if trainer.pos.epoch >= cfg.epochs:
        log(f"{out_dir} already finished {cfg.epochs} epochs; pass --epochs N to train longer.")
    return trainer.run(stop_after_epochs)


def _selection_score(record: dict[str, Any]) -> float:
    """What picks the best epoch: validation accuracy, or test accuracy without a validation split."""
    return record["val_acc"] if record["val_acc"] is not None else record["test_acc"]


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record)


def _write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    text = "".join(_json_line(h) + "\n" for h in history)
    atomic_write(out_dir / "metrics.jsonl", lambda tmp: tmp.write_text(text))


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    val = f"  val {r['val_acc']:.1%}" if r["val_acc"] is not None else ""
    prefixes = ""
    if r.get("test_acc_prefix"):
        prefixes = "  prefixes " + "/".join(f"{100 * a:.1f}" for a in r["test_acc_prefix"])
    return (
        f"epoch {r['epoch']}/{epochs}  loss {r['train_loss']:.3f}  train {r['train_acc']:.1%}{val}"
        f"  test {r['test_acc']:.1%}{prefixes}  {r['images_per_s']:.0f} img/s  {r['train_seconds']:.1f}s"
    )
