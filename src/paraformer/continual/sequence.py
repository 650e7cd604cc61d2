"""A class-incremental sequence end to end: data split into tasks, one method, several seeds,
a run folder that survives a kill, and the accuracy matrices with their summaries.

The run folder (``out_dir``), written through ``paraformer.files`` and locked while in use:

- ``continual.json``: the sequence and method (``ContinualConfig``), the training settings,
  the data (name, content hash, class order, class names) and the model config. Written first.
- ``seed-<s>/task-<t>/``: the trainer's run folder of task ``t`` (``task-<t>-align/`` for
  the class-balanced fine-tune); an interrupted task resumes from its training state.
- ``seed-<s>/after-task-<t>/``: the model and what the method keeps (``method.safetensors``:
  memory, experts, auxiliary heads; ``method.json``) after task ``t``. ``after-task-0`` is
  kept; each later one replaces the one before.
- ``seed-<s>/progress.json``: the tasks done and their accuracy rows, written last after
  each task (the commit point of a task: a kill before it redoes the task's evaluation).
- ``results.json`` (every seed's matrices and figures, and their mean) and ``heatmap.png``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from paraformer.analysis.continual import (
    average_accuracy,
    average_forgetting,
    backward_transfer,
)
from paraformer.checkpoint import load_model, save_model
from paraformer.continual.config import ContinualConfig
from paraformer.continual.memory import memory_record
from paraformer.continual.methods import Context, MethodState, run_task
from paraformer.continual.parts import GroupHead
from paraformer.continual.predict import AuxHeads, Experts, accuracy_rows
from paraformer.data import ImageDataset, limit_dataset, train_val_split
from paraformer.data.base import DataSplits
from paraformer.errors import CheckpointError, ConfigError
from paraformer.files import atomic_write, read_json, write_json
from paraformer.models import count_params
from paraformer.tasks.image import TrainConfig
from paraformer.train.objectives import ReplayBuffer

Log = Callable[[str], None]
RUN_FILE = "continual.json"
RESULTS_FILE = "results.json"
PROGRESS_FILE = "progress.json"
HEATMAP_FILE = "heatmap.png"
METHOD_FILE = "method.safetensors"
FORMAT = 1


# ------------------------------------------------------------------------------ the tasks


@dataclass(frozen=True)
class Plan:
    """Which classes arrive when: ``order[j]`` (a dataset class) becomes class ``j`` of the sequence."""

    order: tuple[int, ...]
    tasks: int
    per_task: int
    names: tuple[str, ...]  # of the sequence's classes, in arrival order


def plan_tasks(ccfg: ContinualConfig, num_classes: int, names: Sequence[str], dataset: str) -> Plan:
    """The class order and task size, or a one-line error when the tasks do not fit the classes."""
    order = tuple(ccfg.class_order) if ccfg.class_order is not None else tuple(range(num_classes))
    bad = [c for c in order if c >= num_classes]
    if bad:
        raise ConfigError(
            f"--class-order names class(es) {bad}, but {dataset} has classes 0..{num_classes - 1}."
        )
    per_task = ccfg.classes_per_task
    if per_task is None:
        if len(order) % ccfg.tasks:
            fits = [d for d in range(1, len(order) + 1) if len(order) % d == 0]
            raise ConfigError(
                f"--tasks {ccfg.tasks} does not divide the {len(order)} classes of {dataset} into equal "
                f"tasks; use --tasks {', '.join(map(str, fits))} or set --classes-per-task."
            )
        per_task = len(order) // ccfg.tasks
    need = ccfg.tasks * per_task
    if need > len(order):
        raise ConfigError(
            f"--tasks {ccfg.tasks} x --classes-per-task {per_task} needs {need} classes, but {dataset} "
            f"has {len(order)}{' in --class-order' if ccfg.class_order is not None else ''}."
        )
    order = order[:need]
    return Plan(order, ccfg.tasks, per_task, tuple(names[c] for c in order))


def relabelled(data: ImageDataset, plan: Plan) -> ImageDataset:
    """The images of the sequence's classes, labelled by arrival: ``order[j]`` -> ``j``."""
    lut = torch.full((max(int(data.labels.max()) + 1, max(plan.order) + 1),), -1, dtype=torch.long)
    lut[torch.tensor(plan.order)] = torch.arange(len(plan.order))
    keep = torch.nonzero(lut[data.labels] >= 0).flatten()
    return ImageDataset(data.images[keep], lut[data.labels[keep]], list(plan.names))


@dataclass
class TaskData:
    train: list[ImageDataset]
    val: list[ImageDataset]
    test: list[ImageDataset]


def split_by_task(data: ImageDataset, plan: Plan) -> list[ImageDataset]:
    c = plan.per_task
    return [
        data.subset(torch.nonzero((data.labels >= t * c) & (data.labels < (t + 1) * c)).flatten())
        for t in range(plan.tasks)
    ]


def task_data(
    splits: DataSplits, plan: Plan, ccfg: ContinualConfig, tcfg: TrainConfig, seed: int
) -> TaskData:
    """Per task, its training, validation and test images (training subset and split seeded by ``seed``;
    the test images are the same for every seed)."""
    train = relabelled(splits.train, plan)
    if tcfg.limit_train is not None:
        train = limit_dataset(train, tcfg.limit_train, seed=seed)
    train, val = train_val_split(train, tcfg.val_fraction, seed=seed)
    test = relabelled(splits.test, plan)
    if ccfg.limit_test is not None:
        test = limit_dataset(test, ccfg.limit_test, seed=0)
    return TaskData(split_by_task(train, plan), split_by_task(val, plan), split_by_task(test, plan))


# ------------------------------------------------------------------------------ method state on disk


def save_state(folder: Path, state: MethodState, record: dict[str, Any]) -> None:
    """The model (safetensors + config.json) and what the method keeps, each file atomic."""
    tensors: dict[str, torch.Tensor] = {}
    if state.buffer is not None:
        tensors.update({"buffer.images": state.buffer.inputs, "buffer.labels": state.buffer.labels})
        if state.buffer.logits is not None:
            tensors["buffer.logits"] = state.buffer.logits
    tensors.update(state.experts.state())
    tensors.update(state.aux.state())
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_model(folder, state.model, {"kind": "checkpoint", "task": "image"})
    atomic_write(folder / METHOD_FILE, lambda tmp: save_file(tensors, str(tmp)))
    meta = {"experts": state.experts.prefixes, "aux_groups": [list(g) for g in state.aux.groups], **record}
    write_json(folder / "method.json", meta)


def load_state(folder: Path, device: torch.device) -> MethodState:
    model = load_model(folder, device)
    meta = read_json(folder / "method.json")
    try:
        tensors = load_file(str(folder / METHOD_FILE))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise CheckpointError(
            f"{folder / METHOD_FILE} cannot be read ({err}); the file is corrupt."
        ) from None
    buffer = None
    if "buffer.images" in tensors:
        buffer = ReplayBuffer(
            tensors["buffer.images"], tensors["buffer.labels"], tensors.get("buffer.logits")
        )
    dim, pool = model.cfg.dim, model.head.pool

    def heads(prefix: str, count: int) -> list[GroupHead]:
        out = []
        for i in range(count):
            rows = tensors[f"{prefix}.{i}.fc.weight"].shape[0]
            head = GroupHead(dim, rows, pool)
            head.load_state_dict(
                {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"{prefix}.{i}.")}
            )
            out.append(head.to(device).eval())
        return out

    experts = Experts(list(meta["experts"]), heads("expert", len(meta["experts"])))
    groups = [tuple(g) for g in meta["aux_groups"]]
    return MethodState(model, buffer, experts, AuxHeads(groups, heads("aux", len(groups))))


# ------------------------------------------------------------------------------ one seed


def first_task_key(tcfg: TrainConfig, model_cfg: Any, digest: str, plan: Plan, seed: int) -> str:
    """What task 0 depends on: equal keys give bit-identical models after task 0, whatever the method."""
    text = json.dumps(
        {
            "train": tcfg.to_dict(),
            "model": model_cfg.to_dict(),
            "data": digest,
            "order": plan.order,
            "seed": seed,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _empty_rows() -> dict[str, list[list[float]]]:
    return {"class_il": [], "task_il": [], "class_il_plain": []}


def run_seed(
    ctx: Context,
    plan: Plan,
    data: TaskData,
    base: nn.Module,
    key: str,
    *,
    first_task_from: Path | None = None,
    keep_runs: bool = True,
    splits: Sequence[str] = ("test", "val"),
) -> dict[str, Any] | None:
    """Every task of the sequence for one seed (continuing where ``ctx.folder`` stopped); None if interrupted.

    After each task the model is tested on the tasks so far, on each of ``splits`` the data has.
    """
    folder, c = ctx.folder, ctx.ccfg
    folder.mkdir(parents=True, exist_ok=True)
    device = next(base.parameters()).device
    progress_path = folder / PROGRESS_FILE
    prog: dict[str, Any] = {"tasks_done": 0, "first_task_key": key, "tasks": []}
    for split in splits:
        if min(len(d) for d in getattr(data, split)) > 0:
            prog[split] = _empty_rows()
    state = MethodState(base)
    if progress_path.is_file():
        prog = read_json(progress_path)
        if prog["tasks_done"]:
            state = load_state(folder / f"after-task-{prog['tasks_done'] - 1}", device)
    for t in range(prog["tasks_done"], plan.tasks):
        start = time.perf_counter()
        reused = _reuse_first_task(first_task_from, key, device) if t == 0 else None
        if reused is not None:
            model, budget = reused
            outcome = run_task_reused(ctx, state, model, budget, data.train)
        else:
            outcome = run_task(ctx, state, t, data.train)
        if outcome.interrupted:
            return None
        state = outcome.state
        rows = {}
        for split in ("test", "val"):
            if split in prog:
                sets = getattr(data, split)[: t + 1]
                rows[split] = accuracy_rows(
                    state.model,
                    sets,
                    ctx.transform,
                    plan.per_task,
                    routing=c.get("routing") or "none",
                    experts=state.experts,
                    aux=state.aux,
                )
                for k, v in rows[split].items():
                    prog[split][k].append(v)
        gates = [
            round(float(b.gate.detach()), 4)
            for b in getattr(state.model, "branches", [])
            if b.gate is not None
        ]
        record = {
            "task": t,
            "seconds": outcome.seconds,
            "steps": outcome.steps,
            "images_seen": outcome.images_seen,
            "wall_seconds": time.perf_counter() - start,
            "gates": gates,
            "align_gamma": outcome.align_gamma,
            "memory": memory_record(state.buffer, added_params(state, base, c)),
            "reused_first_task": reused is not None,
        }
        save_state(folder / f"after-task-{t}", state, record)
        prog["tasks_done"] = t + 1
        prog["tasks"].append(record)
        write_json(progress_path, prog)
        if t > 1:
            shutil.rmtree(folder / f"after-task-{t - 1}", ignore_errors=True)
        if not keep_runs:
            for name in (f"task-{t}", f"task-{t}-align"):
                shutil.rmtree(folder / name, ignore_errors=True)
        ctx.log(task_line(ctx.seed, t, plan, rows.get("test") or rows.get("val"), record))
    return seed_result(prog, state.model)


def run_task_reused(
    ctx: Context, state: MethodState, model: nn.Module, budget: dict[str, Any], trains: list
) -> Any:
    """Task 0 taken from another run with the same key, then what the method does after a task."""
    from paraformer.continual.methods import TaskOutcome, after_first_task

    out = TaskOutcome(MethodState(model), budget["seconds"], budget["steps"], budget["images_seen"])
    return after_first_task(ctx, out, trains[0])


def _reuse_first_task(source: Path | None, key: str, device: torch.device) -> tuple[nn.Module, dict] | None:
    """The model after task 0 of the run in ``source`` (a seed folder), if it has the same key."""
    if source is None or not (source / PROGRESS_FILE).is_file():
        return None
    prog = read_json(source / PROGRESS_FILE)
    if prog.get("first_task_key") != key or not prog.get("tasks_done"):
        return None
    return load_model(source / "after-task-0", device), prog["tasks"][0]


def added_params(state: MethodState, base: nn.Module, c: ContinualConfig) -> int:
    """Parameters a method keeps beyond the common backbone: new branches, and the heads routing reads."""
    added = count_params(state.model) - count_params(base)
    if c.method == "expand" and c.get("routing") != "none":
        added += state.experts.num_params()
        if c.get("routing") == "aux":
            added += state.aux.num_params()
    return added


def task_line(
    seed: int, t: int, plan: Plan, rows: dict[str, list[float]] | None, record: dict[str, Any]
) -> str:
    classes = ", ".join(plan.names[t * plan.per_task : (t + 1) * plan.per_task])
    parts = [f"seed {seed} task {t + 1}/{plan.tasks} ({classes})"]
    if rows:
        cil = rows["class_il"]
        parts.append(
            f"class-IL {100 * sum(cil) / len(cil):.1f}% [{' '.join(f'{100 * v:.0f}' for v in cil)}], "
            f"task-IL {100 * sum(rows['task_il']) / len(rows['task_il']):.1f}%"
        )
    parts.append(f"{record['seconds']:.0f} s training")
    if record["gates"]:
        parts.append("gates " + " ".join(f"{g:.2f}" for g in record["gates"]))
    return "; ".join(parts)


def matrix(rows: list[list[float]], size: int) -> torch.Tensor:
    out = torch.full((size, size), float("nan"))
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def seed_result(prog: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """One seed's matrices, their summaries, its memory and budget."""
    size = prog["tasks_done"]
    tasks = prog["tasks"]
    out: dict[str, Any] = {}
    for split in ("test", "val"):
        if split not in prog:
            continue
        figures = {}
        for key in ("class_il", "task_il", "class_il_plain"):
            m = matrix(prog[split][key], size)
            figures[key] = [[None if v != v else float(v) for v in row] for row in m.tolist()]
            figures[f"avg_acc_{key}"] = average_accuracy(m)
            figures[f"forgetting_{key}"] = average_forgetting(m)
            figures[f"bwt_{key}"] = backward_transfer(m)
        out[split] = figures
    out.update(
        params=count_params(model),
        branches=getattr(model, "num_branches", None),
        memory=tasks[-1]["memory"],
        gates=[t["gates"] for t in tasks],
        align_gamma=[t["align_gamma"] for t in tasks],
        train_seconds=sum(t["seconds"] for t in tasks),
        budget={
            "optimizer_steps": sum(t["steps"] for t in tasks),
            "images_seen": sum(t["images_seen"] for t in tasks),
            "train_seconds": sum(t["seconds"] for t in tasks),
        },
    )
    return out
