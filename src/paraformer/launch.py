"""Starting and resuming any run: ``train(cfg, out_dir)`` and ``resume(out_dir)``.

This is the one launcher, for every task (images, text) and every way of running: a
single process, or a ``torchrun`` launch with branch parallelism and data parallelism.
It sits above ``paraformer.train`` (the modality-blind loop) and ``paraformer.parallel``
(execution applied to a model from outside), which do not import each other: here the
task prepares data and model, the execution path and the process layout are applied,
the objective is built from its record, and the loop runs in a locked run folder.

A run folder records everything ``resume`` needs: the task, the model's own config
(not a preset name, so compressed and expanded models resume too), the training
settings (also kept in the resume state, so a hand-edited ``config.json`` is refused),
the objective (schedule, frozen base, distillation teacher) and the branch execution
path that was measured.
"""

from __future__ import annotations

import dataclasses
import json
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paraformer.checkpoint import TRAIN_STATE_FILE, load_model, load_train_state, lock, prepare_out_dir
from paraformer.data.base import quiet
from paraformer.errors import ConfigError, ParaformerError, TrainingError
from paraformer.models import build_model, count_params
from paraformer.parallel.apply import apply_execution, branch_path
from paraformer.parallel.distributed import DistributedContext, init_from_env
from paraformer.tasks import TaskDef, open_run, task_for_config
from paraformer.train.grad_stats import GradientEqualizer, GradientStats
from paraformer.train.hooks import Hook
from paraformer.train.loop import Trainer
from paraformer.train.objectives import Distillation, Objective, ObjectivePart, make_objective
from paraformer.train.task import Setup

Log = Callable[[str], None]
RESUMABLE_FIELDS = ("epochs", "max_steps")  # what --resume may change
RELOCATION_FIELDS = ("data_dir", "data")  # where the data is now (its content hash is checked)


# ------------------------------------------------------------------------------ processes


def start_processes(cfg: Any, log: Log, progress: bool) -> tuple[DistributedContext | None, Log, bool]:
    """Join a torchrun launch if this is one: (its context or None, and this process's log/progress).

    Other ranks print nothing: one log and one progress bar per run.
    """
    ctx = init_from_env(cfg.branch_parallel, cfg.device)
    if ctx is None or ctx.is_main:
        return ctx, log, progress
    return ctx, quiet, False


class DistributedHook(Hook):
    """Data sharding, gradient averaging, agreed decisions and rank-0 writes for one process.

    Every rank's optimizer state is kept in the one ``train_state.pt``, so a resumed run
    continues exactly (with the same process layout).
    """

    def __init__(self, ctx: DistributedContext) -> None:
        self.ctx = ctx

    def bind(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def writes_files(self, trainer: Trainer) -> bool:
        return self.ctx.is_main

    def select_batch(self, trainer: Trainer, indices: torch.Tensor) -> torch.Tensor:
        return self.ctx.shard(indices)

    def after_backward(self, trainer: Trainer) -> None:
        self.ctx.average_gradients(list(trainer.model.parameters()))

    def agree(self, trainer: Trainer, flags: tuple[bool, ...]) -> tuple[bool, ...]:
        return self.ctx.agree(flags)

    def owns_optimizer_state(self) -> bool:
        return True

    def state_dict(self) -> dict[str, Any]:
        """Every rank's optimizer state, gathered (collective) so rank 0 can save them all."""
        return {
            "world": self.ctx.layout,
            "optimizers": self.ctx.gather_objects(self.trainer.optimizer.state_dict()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved, now = state.get("world"), self.ctx.layout
        if saved != now:
            raise ConfigError(
                f"this run was saved with (data x branch) = {saved} processes; resume it with the same "
                f"layout (now {now}): torchrun --nproc-per-node {saved[0] * saved[1] if saved else '?'} ..."
            )
        self.trainer.optimizer.load_state_dict(state["optimizers"][self.ctx.rank])


def lost_peer_error(ctx: DistributedContext, err: Exception, out_dir: Path, command: str) -> ParaformerError:
    """One line for a surviving rank whose collective failed because another process died."""
    lost = ctx.lost_ranks()
    who = f"rank {', '.join(map(str, lost))}" if lost else "another process of this launch"
    return TrainingError(
        f"{who} stopped, so this launch cannot go on; the last checkpoint is kept: resume with "
        f"`torchrun --nproc-per-node {ctx.world} -m paraformer {command.removeprefix('paraformer ')} "
        f"--resume --out {out_dir}`."
    )


# ------------------------------------------------------------------------------ objective


def build_objective(
    setup: Setup, spec: dict[str, Any] | None, parts: Sequence[ObjectivePart] = ()
) -> Objective:
    """The run's objective from its record: schedule, frozen base and parts (a distillation teacher).

    ``spec`` is what ``Objective.spec()`` wrote (``first_branch``, ``frozen_base``,
    ``parts``); None is the configured mode on the whole model. ``parts`` adds live
    parts (a replay buffer, a teacher in memory) to those the record names.
    """
    spec = spec or {}
    cfg, model = setup.cfg, setup.model
    first = int(spec.get("first_branch", 0))
    parts = list(parts)
    for part in spec.get("parts", []):
        if part.get("name") == "distillation":
            teacher = load_model(Path(part["teacher"]), setup.device)
            parts.append(
                Distillation(
                    teacher,
                    weight=part["weight"],
                    temperature=part["temperature"],
                    classes=part.get("classes"),
                    source=part["teacher"],
                    all_rows=bool(part.get("all_rows", False)),
                )
            )
        else:
            raise ConfigError(
                f"this run's objective uses {part.get('name')!r}, which only `paraformer continual` can "
                "continue; rerun that command with --resume."
            )
    return make_objective(
        model,
        cfg.mode,
        cfg.prefix_weights,
        setup.task.loss,
        first_branch=first,
        frozen_base=bool(spec.get("frozen_base")),
        deep_supervision=cfg.deep_supervision,
        parts=parts,
    )


# ------------------------------------------------------------------------------ runs


def place_model(setup: Setup, ctx: DistributedContext | None, branch_exec: str, log: Log) -> Setup:
    """The model as this process runs it (fused branches, its branch group)."""
    example, _ = setup.task.batch(
        torch.arange(min(setup.cfg.batch_size, setup.task.num_samples("train"))),
        torch.Generator().manual_seed(0),
    )
    setup.model = apply_execution(setup.model, branch_exec, example, ctx=ctx, log=log)
    return setup


def run_hooks(setup: Setup, ctx: DistributedContext | None, hooks: Sequence[Hook]) -> list[Hook]:
    """The distributed hook first, the caller's next, per-layer statistics (and the gradient
    equaliser) last, after any reduction."""
    reduce = ctx.sum_over_branches if ctx else None
    stats = [GradientStats(reduce=reduce)] if setup.cfg.grad_stats else []
    # After the statistics: they record the natural gradients, the equaliser then rescales them.
    stats += [GradientEqualizer(reduce=reduce)] if getattr(setup.cfg, "equalize_grads", False) else []
    return ([DistributedHook(ctx)] if ctx is not None else []) + list(hooks) + stats


def run_line(setup: Setup, trainer: Trainer, out_dir: Path) -> str:
    """What the run is, printed once before the first batch."""
    epochs = f"{trainer.epochs} epoch{'s' if trainer.epochs != 1 else ''}"
    length = f"{setup.cfg.max_steps} steps ({epochs})" if setup.cfg.max_steps else epochs
    return (
        f"training {setup.cfg.model} ({count_params(setup.model):,} params, {trainer.objective.name}) on "
        f"{setup.task.describe()}, {length}; run folder {out_dir}"
    )


def train(
    cfg: Any,
    out_dir: str | Path,
    *,
    model: nn.Module | None = None,
    objective: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
    task_options: dict[str, Any] | None = None,
    log: Log = print,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train a model on the task ``cfg`` belongs to and write a run folder; return its summary.

    ``cfg`` is a task's training config (``paraformer.TrainConfig`` for images,
    ``paraformer.LMTrainConfig`` for text). ``model`` trains an existing model (a
    compressed or expanded one) instead of the preset; ``objective`` records a frozen
    base, a first trained branch and parts such as distillation (see ``build_objective``);
    ``task_options`` go to the task's ``prepare`` (a text run's existing tokenizer).
    The folder holds config.json, model.safetensors (latest weights), best/ (the
    best-validation checkpoint), train_state.pt, metrics.jsonl, curves.png and
    summary.json (and tokenizer.json for text). Ctrl-C saves the state and stops;
    ``resume`` continues exactly.
    """
    task = task_for_config(cfg)
    out_dir = Path(out_dir)
    ctx, log, progress = start_processes(cfg, log, progress)
    with _owner(out_dir, ctx):
        if ctx is None or ctx.is_main:
            prepare_out_dir(out_dir)
        setup = task.prepare(cfg, log, progress, model=model, **(task_options or {}))
        return _run(
            task,
            setup,
            out_dir,
            ctx,
            cfg.branch_exec,
            objective,
            extra_config,
            log,
            progress,
            hooks,
            None,
            stop_after_epochs,
        )


def resume(
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    data_dir: str | None = None,
    log: Log = print,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Continue the run in ``out_dir`` where it stopped (optionally for longer), bit-identically.

    Any run resumes this way: image or text, trained, fine-tuned after compression or
    expanded. ``data_dir`` points to the data where it is now (its content hash must
    match what the run trained on). Settings other than ``epochs``/``max_steps`` come
    from the run folder; a hand-edited ``config.json`` that differs from the resume
    state is refused.
    """
    out_dir = Path(out_dir)
    saved = open_run(out_dir, kind="run", command="--resume")
    task = TaskDef.of(saved.task)
    state = load_train_state(out_dir)
    cfg = resumed_config(saved, state, epochs, max_steps, data_dir)
    ctx, log, progress = start_processes(cfg, log, progress)
    with _owner(out_dir, ctx):
        model = build_model(saved.model_cfg)
        setup = task.reprepare(saved, cfg, log, progress, model)
        recorded = saved.config_json.get("execution", {}).get("branch_exec")
        branch_exec = (
            recorded if cfg.branch_exec == "auto" and recorded in ("loop", "stacked") else cfg.branch_exec
        )
        extra = {k: v for k, v in saved.config_json.items() if k in ("compressed_from", "expanded_from")}
        return _run(
            task,
            setup,
            out_dir,
            ctx,
            branch_exec,
            saved.objective,
            extra,
            log,
            progress,
            hooks,
            state,
            stop_after_epochs,
        )


def _run(
    task: TaskDef,
    setup: Setup,
    out_dir: Path,
    ctx: DistributedContext | None,
    branch_exec: str,
    objective: dict[str, Any] | None,
    extra_config: dict[str, Any] | None,
    log: Log,
    progress: bool,
    hooks: Sequence[Hook],
    state: dict[str, Any] | None,
    stop_after_epochs: int | None,
    parts: Sequence[ObjectivePart] = (),
    command: str | None = "",
) -> dict[str, Any]:
    obj = build_objective(setup, objective, parts)  # freezes the base before the optimizer is built
    setup = place_model(setup, ctx, branch_exec, log)
    extra = {**(extra_config or {}), "execution": {"branch_exec": branch_path(setup.model)}}
    trainer = Trainer(
        setup,
        out_dir,
        log=log,
        progress=progress,
        hooks=run_hooks(setup, ctx, hooks),
        objective=obj,
        command=task.command if command == "" else command,
        extra_config=extra,
    )
    if trainer.writes_files:
        for name, text in setup.task.artifacts().items():
            trainer.folder.write_artifact(name, text)
    try:
        with _stopped_by_launcher(ctx):
            if state is None:
                log(run_line(setup, trainer, out_dir))
                return trainer.run(stop_after_epochs)
            return continue_run(trainer, state, log, stop_after_epochs)
    except (RuntimeError, LaunchStopped) as err:
        if ctx is None:
            raise
        raise lost_peer_error(ctx, err, out_dir, task.command) from None


class LaunchStopped(Exception):
    """torchrun ends the other processes of a launch (SIGTERM) when one of them dies."""


@contextmanager
def _stopped_by_launcher(ctx: DistributedContext | None) -> Iterator[None]:
    if ctx is None:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise LaunchStopped("the launcher stopped this process")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _owner(out_dir: Path, ctx: DistributedContext | None) -> Any:
    """The run folder's lock, held by the process that writes it (rank 0 of a launch)."""
    return lock(out_dir) if ctx is None or ctx.is_main else nullcontext()


def resumed_config(
    saved: Any, state: dict[str, Any], epochs: int | None, max_steps: int | None, data_dir: str | None
) -> Any:
    """The saved training config, lengthened to ``epochs`` / ``max_steps`` and relocated to ``data_dir``.

    The config in ``config.json`` must be the one the resume state was saved with: a
    hand edit would silently change the rest of the run, so any difference is refused.
    """
    cfg, out_dir = saved.train_cfg, saved.folder
    recorded = state.get("train_config_json")
    if isinstance(recorded, str):
        before, now = json.loads(recorded), cfg.to_dict()
        defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
        for key in sorted(set(before) | set(now)):
            if key in RESUMABLE_FIELDS + RELOCATION_FIELDS or before.get(key) == now.get(key):
                continue
            if key not in before and now.get(key) == defaults.get(key):
                continue  # a setting added after this run was saved, at its default
            raise ConfigError(
                f"{out_dir}/config.json has {key}={json.dumps(now.get(key))} but the run was trained with "
                f"{key}={json.dumps(before.get(key))}; --resume continues with the run's own settings: undo "
                "the edit, or start a new run with `--config` from this config.json and another --out."
            )
    done = int(state["position"][0]) if isinstance(state.get("position"), list) and state["position"] else 0
    if epochs is not None and epochs < done:
        raise ConfigError(
            f"{out_dir} has already trained {done} epochs; --epochs must be at least {done} to continue it."
        )
    changes = {k: v for k, v in (("epochs", epochs), ("max_steps", max_steps)) if v is not None}
    if data_dir is not None:
        changes.update(TaskDef.of(saved.task).relocate(saved, data_dir))
    return cfg.replace(**changes) if changes else cfg


def continue_run(
    trainer: Trainer, state: dict[str, Any], log: Log, stop_after_epochs: int | None = None
) -> dict[str, Any]:
    """Load the saved state, repair the run folder from it, and train on."""
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


def train_setup(
    setup: Setup,
    out_dir: str | Path,
    *,
    objective: dict[str, Any] | None = None,
    parts: Sequence[ObjectivePart] = (),
    log: Log = quiet,
    progress: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Train a prepared setup (in-memory data: a continual-learning task) in one process.

    Its folder cannot be resumed by ``resume`` (the data lives in memory only): the
    command that made it continues it (``paraformer continual --resume``) by calling this
    again with the same setup, objective and parts and ``resume=True``, which continues
    from the folder's training state when it has one.
    """
    out_dir = Path(out_dir)
    task = TaskDef.of(setup.task.name)
    with lock(out_dir):
        state = None
        if resume and (out_dir / TRAIN_STATE_FILE).is_file():
            state = load_train_state(out_dir)
        else:
            prepare_out_dir(out_dir)
        return _run(
            task,
            setup,
            out_dir,
            None,
            setup.cfg.branch_exec,
            objective,
            None,
            log,
            progress,
            (),
            state,
            None,
            parts,
            command=None,
        )
