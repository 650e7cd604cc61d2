"""The training loop: epochs of batches, each trained by the run's objective.

Everything else is in a piece of its own: the task gives batches, losses and
metrics (``task.py``: a protocol; images and text implement it in ``paraformer.tasks``),
the objective trains one batch (``objectives.py``), the stepper owns the optimizer step
(``optim.py``), hooks plug in around it (``hooks.py``), the run folder writes files in
a crash-safe order (``paraformer.checkpoint``), and ``metrics.py`` selects the epoch
and writes the summary. Nothing here knows about images or text. Training is deterministic for a seed: data
order and augmentation come from generators seeded by (seed, epoch, pass, batch), and
the global RNG is saved, so a resumed run ends with the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from paraformer.analysis.plots import plot_curves
from paraformer.checkpoint import BEST_DIR, RunFolder, load_model, run_header, weights_are_finite
from paraformer.models import count_params, is_branched
from paraformer.train.devices import autocast, compile_model
from paraformer.train.hooks import Hook, Hooks
from paraformer.train.metrics import EpochStats, epoch_line, non_finite, prefixed, select_epoch, summarize
from paraformer.train.objectives import Objective, make_objective
from paraformer.train.optim import Stepper, make_optimizer
from paraformer.train.state import Position, capture_state, graceful_interrupt, restore_state, seeded
from paraformer.train.task import Setup

Log = Callable[[str], None]


class Trainer:
    """Runs (or resumes) one training run in ``out_dir``."""

    def __init__(
        self,
        setup: Setup,
        out_dir: Path,
        *,
        log: Log = print,
        progress: bool = True,
        hooks: Sequence[Hook] = (),
        objective: Objective | None = None,
        command: str | None = "paraformer train",
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.model, self.task, self.device = setup.cfg, setup.model, setup.task, setup.device
        self.log, self.progress, self.hooks = log, progress, Hooks(hooks)
        self.command = command  # the command that resumes this run, for messages; None: not resumable
        cfg = self.cfg
        self.objective = objective or make_objective(self.model, cfg.mode, cfg.prefix_weights, self.task.loss)
        self.optimizer = make_optimizer(self.model, cfg, self.objective.param_groups(self.model))
        self.batches = math.ceil(self.task.num_samples("train") / cfg.batch_size)
        per_epoch = sum(self.batches * self.objective.steps_per_batch(p) for p in self.objective.passes)
        self.epochs = cfg.epochs if cfg.max_steps is None else math.ceil(cfg.max_steps / per_epoch)
        total = cfg.max_steps or per_epoch * self.epochs
        self.stepper = Stepper(
            self, self.model, self.optimizer, cfg, total, cfg.warmup_steps(total, per_epoch), self.hooks
        )
        self.pos, self.history, self.stats = Position(), [], EpochStats()
        config_json = {
            **run_header(self.task.name),
            "train": cfg.to_dict(),
            "data": self.task.info(),
            "mode": self.objective.name,
            "objective": self.objective.spec(),
            **(extra_config or {}),
        }
        self.folder = RunFolder(Path(out_dir), config_json)
        self.hooks.bind(self)
        if cfg.compile:
            compile_model(self.model)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return capture_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_state(self, state)

    @property
    def writes_files(self) -> bool:
        return self.hooks.writes_files(self)

    def selected(self) -> dict[str, Any] | None:
        return select_epoch(self.history, self.task.selection_metric, self.task.higher_is_better)

    # -- training ----------------------------------------------------------------------------
    def done(self) -> bool:
        steps = self.cfg.max_steps
        return self.pos.epoch >= self.epochs or (steps is not None and self.pos.step >= steps)

    def run(self, stop_after_epochs: int | None = None) -> dict[str, Any]:
        """Train to the configured length (or ``stop_after_epochs`` more epochs); return the summary."""
        if self.writes_files:  # first, so that a kill at any later moment leaves a folder --resume reads
            self.folder.write_config(self.model.cfg)
        self.hooks.on_start(self)
        self.model.train()
        epochs_run = 0
        with graceful_interrupt() as stop:
            while not self.done() and (stop_after_epochs is None or epochs_run < stop_after_epochs):
                if not self._train_epoch(stop):
                    return self._interrupted()
                self._end_epoch()
                epochs_run += 1
        return self.finish()

    def _train_epoch(self, stop: Any) -> bool:
        """Run the rest of the current epoch; False when interrupted (state saved)."""
        cfg, passes, last_save = self.cfg, self.objective.passes, time.monotonic()
        done = self.pos.pass_index * self.batches + self.pos.batch
        bar = tqdm(
            total=self.batches * len(passes),
            initial=done,
            desc=f"epoch {self.pos.epoch + 1}/{self.epochs}",
            disable=not self.progress,
            leave=False,
            unit="batch",
            dynamic_ncols=True,
        )
        with bar:
            while self.pos.pass_index < len(passes):
                order = torch.randperm(
                    self.task.num_samples("train"),
                    generator=seeded(cfg.seed, self.pos.epoch, self.pos.pass_index),
                )
                while self.pos.batch < self.batches:
                    due = time.monotonic() - last_save > cfg.save_every_minutes * 60
                    stop_now, save_now = self.hooks.agree(self, (stop.requested, due))
                    if stop_now:
                        self._save_mid_epoch()
                        return False
                    if save_now:
                        self._save_mid_epoch()
                        last_save = time.monotonic()
                    t0 = time.perf_counter()
                    idx = order[self.pos.batch * cfg.batch_size : (self.pos.batch + 1) * cfg.batch_size]
                    idx = self.hooks.select_batch(self, idx)
                    x, y = self.task.batch(
                        idx, seeded(cfg.seed, self.pos.epoch, self.pos.pass_index, self.pos.batch, 1)
                    )
                    gen = seeded(cfg.seed, self.pos.epoch, self.pos.pass_index, self.pos.batch, 2)
                    with autocast(self.device, cfg.bf16):
                        result = self.objective.train_batch(
                            self.model, x, y, passes[self.pos.pass_index], self.stepper, gen
                        )
                    self.pos.step = self.stepper.step
                    self.stats.add(
                        result.loss,
                        len(idx),
                        self.task.batch_metrics(result.logits, y),
                        time.perf_counter() - t0,
                    )
                    self.pos.batch += 1
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in self.stats.means().items()})
                    if self.cfg.max_steps is not None and self.pos.step >= self.cfg.max_steps:
                        return True  # the last (partial) epoch ends here
                self.pos.pass_index += 1
                self.pos.batch = 0
        return True

    def _evaluate(self, split: str) -> dict[str, Any]:
        result = self.task.evaluate(
            self.model, split, prefixes=is_branched(self.model), bf16=self.cfg.bf16, progress=self.progress
        )
        return prefixed(split, result.metrics())

    def _end_epoch(self) -> None:
        epoch = self.pos.epoch + 1
        record: dict[str, Any] = {"epoch": epoch, "step": self.pos.step}
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record.update(prefixed("train", self.stats.means()))
        record.update(
            train_seconds=self.stats.seconds, samples_per_s=self.stats.seen / max(self.stats.seconds, 1e-9)
        )
        if self.task.num_samples("val"):
            record.update(self._evaluate("val"))
        if self.cfg.eval_every and epoch % self.cfg.eval_every == 0 and self.task.num_samples("test"):
            record.update(self._evaluate("test"))
        self.hooks.on_epoch_end(self, record)
        bad = non_finite(record)
        if bad or not weights_are_finite(self.model):
            raise self.stepper.diverged(f"{bad or 'the weights'} became non-finite at epoch {epoch}")
        self.history.append(record)
        self.log(epoch_line(record, self.epochs))
        self.pos = Position(epoch, 0, 0, self.pos.step)
        self.stats = EpochStats()
        state = self.state_dict()  # on every process: a distributed model gathers its shards
        if self.writes_files:
            best = self.selected()
            self.folder.save_epoch(state, self.model.cfg, self.history, best["epoch"] if best else None)

    def _save_mid_epoch(self) -> None:
        if weights_are_finite(self.model):
            state = self.state_dict()  # on every process: a distributed model gathers its shards
            if self.writes_files:
                self.folder.save(state, self.model.cfg)

    def _interrupted(self) -> dict[str, Any]:
        where = f"interrupted at epoch {self.pos.epoch + 1}, batch {self.pos.batch}"
        if self.command is None:
            self.log(f"{where}; this command cannot resume: run it again with a new --out.")
        else:
            self.log(f"{where}; state saved. Resume with: {self.command} --resume --out {self.folder.path}")
        return {"interrupted": True, "position": self.pos.__dict__}

    def finish(self) -> dict[str, Any]:
        """Test the selected weights once and write ``summary.json`` and ``curves.png``."""
        if not self.history:
            return {"epochs_completed": 0}
        best = self.selected()
        selected = best or self.history[-1]
        model = self.model
        if selected is not self.history[-1]:
            model = load_model(self.folder.path / BEST_DIR, self.device)
        test = {}
        if self.task.num_samples("test"):
            test = self.task.evaluate(
                model, "test", prefixes=is_branched(model), bf16=self.cfg.bf16, progress=self.progress
            ).metrics()
        extra = {
            "model": self.cfg.model,
            "mode": self.objective.name,
            "dataset": self.task.info().get("dataset"),
            "num_params": count_params(self.model),
            "epochs": self.epochs,
            "max_steps": self.cfg.max_steps,
            "complete": self.done(),
        }
        summary = summarize(
            history=self.history,
            selected=selected,
            has_val=best is not None,
            metric=self.task.selection_metric,
            test=test,
            extra=extra,
        )
        if self.writes_files:
            self.folder.write_summary(summary)
            plot_curves(
                self.history,
                self.folder.path / "curves.png",
                title=f"{self.cfg.model} ({self.objective.name})",
                selected_epoch=selected["epoch"],
            )
        return summary
