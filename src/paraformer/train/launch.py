"""Starting and resuming runs: ``train(cfg, out_dir)`` and ``resume(out_dir)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from paraformer.checkpoint import load_train_state
from paraformer.data.base import quiet
from paraformer.errors import ConfigError
from paraformer.models import count_params
from paraformer.train.checkpointing import prepare_out_dir, read_run
from paraformer.train.config import LoopConfig, TrainConfig
from paraformer.train.hooks import Hook
from paraformer.train.loop import Trainer
from paraformer.train.setup import Setup, prepare

Log = Callable[[str], None]


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    log: Log = print,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train a model and write a run folder; return the run's summary.

    The folder holds config.json, model.safetensors (latest weights), best/ (the
    best-validation checkpoint), train_state.pt, metrics.jsonl, curves.png and
    summary.json. A ParaFormer trains with the chosen mode (fused, progressive or
    joint); a ViT trains normally. The epoch with the best validation accuracy is
    selected (the last one with --val-fraction 0) and tested once at the end.
    Ctrl-C saves the state and stops; --resume continues exactly.
    """
    out_dir = Path(out_dir)
    ctx, log, progress = start_processes(cfg, log, progress)
    if ctx is None or ctx.is_main:
        prepare_out_dir(out_dir)
    setup, hooks = place_model(prepare(cfg, log, progress), ctx, hooks, log)
    trainer = Trainer(setup, out_dir, log=log, progress=progress, hooks=hooks)
    info, length = setup.data_info, f"{trainer.epochs} epoch{'s' if trainer.epochs != 1 else ''}"
    if setup.cfg.max_steps:
        length = f"{setup.cfg.max_steps} steps ({length})"
    log(
        f"training {setup.cfg.model} ({count_params(setup.model):,} params, "
        f"{trainer.strategy.name}) on {info.dataset}: {info.num_train:,} train / {info.num_val:,} val / "
        f"{info.num_test:,} test images, {length}; run folder {out_dir}"
    )
    return trainer.run(stop_after_epochs)


def resume(
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    log: Log = print,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Continue the run saved in ``out_dir`` where it stopped (optionally for longer)."""
    out_dir = Path(out_dir)
    saved = read_run(out_dir)
    state = load_train_state(out_dir)
    cfg = resumed_config(out_dir, saved.train_cfg, state, epochs, max_steps)
    ctx, log, progress = start_processes(cfg, log, progress)
    setup, hooks = place_model(prepare(cfg, log, progress), ctx, hooks, log)
    trainer = Trainer(setup, out_dir, log=log, progress=progress, hooks=hooks)
    return continue_run(trainer, state, log, stop_after_epochs)


def resumed_config(
    out_dir: Path, saved: Any, state: dict[str, Any], epochs: int | None, max_steps: int | None
) -> Any:
    """The saved training config, lengthened to ``epochs`` / ``max_steps`` where given (any task)."""
    done = int(state["position"][0]) if isinstance(state.get("position"), list) and state["position"] else 0
    if epochs is not None and epochs < done:
        raise ConfigError(
            f"{out_dir} has already trained {done} epochs; --epochs must be at least {done} to continue it."
        )
    changes = {k: v for k, v in (("epochs", epochs), ("max_steps", max_steps)) if v is not None}
    return saved.replace(**changes) if changes else saved


def continue_run(
    trainer: Trainer, state: dict[str, Any], log: Log, stop_after_epochs: int | None = None
) -> dict[str, Any]:
    """Load the saved state, repair the run folder from it, and train on (image and LM runs)."""
    out_dir, cfg = trainer.folder.path, trainer.cfg
    trainer.load_state_dict(state)
    if cfg.max_steps is not None and trainer.pos.step > cfg.max_steps:
        raise ConfigError(
            f"{out_dir} has already taken {trainer.pos.step} steps; --max-steps must be at least that."
        )
    state = trainer.state_dict()  # on every process
    if trainer.writes_files:
        best = trainer.selected()
        at_end = trainer.pos.batch == 0 and trainer.pos.pass_index == 0
        for fixed in trainer.folder.repair(state, trainer.model.cfg, best["epoch"] if best else None, at_end):
            log(f"note: repaired the run folder from its training state: {fixed}")
    if trainer.done():
        log(
            f"{out_dir} already finished ({trainer.epochs} epochs, {trainer.pos.step} steps); "
            "pass --epochs N or --max-steps N to train longer."
        )
    return trainer.run(stop_after_epochs)


def start_processes(cfg: LoopConfig, log: Log, progress: bool) -> tuple[Any, Log, bool]:
    """Join a torchrun launch if this is one: (its context or None, and this process's log/progress).

    Other ranks print nothing: one log and one progress bar per run.
    """
    from paraformer.parallel.distributed import init_from_env  # parallel/ builds on train/: import late

    ctx = init_from_env(cfg.branch_parallel, cfg.device)
    if ctx is None or ctx.is_main:
        return ctx, log, progress
    return ctx, quiet, False


def place_model(setup: Setup, ctx: Any, hooks: Sequence[Hook], log: Log) -> tuple[Setup, list[Hook]]:
    """The model as this process runs it (fused branches, its branch group) and the hooks it needs."""
    from paraformer.parallel.apply import apply_execution

    example, _ = setup.task.batch(
        torch.arange(min(setup.cfg.batch_size, setup.task.num_samples("train"))),
        torch.Generator().manual_seed(0),
    )
    setup.model = apply_execution(setup.model, setup.cfg.branch_exec, example, ctx=ctx, log=log)
    return setup, ([ctx.hook()] if ctx is not None else []) + list(hooks)
