"""Start or resume a continual-learning sequence in a run folder; aggregate its seeds.

``run_continual(ccfg, tcfg, out_dir, seeds=...)`` starts one; ``resume_continual(out_dir)``
continues it with its own settings (finished tasks are kept, an interrupted task resumes
from its training state; more seeds may be added). See ``sequence.py`` for the folder.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paraformer.analysis.continual import plot_accuracy_matrices
from paraformer.checkpoint import CONFIG_FILE, lock
from paraformer.continual.config import ContinualConfig
from paraformer.continual.methods import Context
from paraformer.continual.sequence import (
    FORMAT,
    HEATMAP_FILE,
    RESULTS_FILE,
    RUN_FILE,
    Plan,
    first_task_key,
    plan_tasks,
    run_seed,
    task_data,
)
from paraformer.data import BatchTransform, load_dataset
from paraformer.data.base import DataSplits
from paraformer.errors import CheckpointError, ConfigError, DataError
from paraformer.files import atomic_write, read_json, write_json
from paraformer.models import build_model, check_input, default_model, get_config, is_branched
from paraformer.tasks.image import TrainConfig, dataset_sha256, training_transform
from paraformer.train.devices import resolve_device

Log = Callable[[str], None]
RESUMABLE = ("data_dir",)  # training settings --resume may change (the data's content hash is checked)


@dataclass
class Prepared:
    splits: DataSplits
    digest: str
    plan: Plan
    model_cfg: Any
    transform: BatchTransform
    device: torch.device


def prepare(ccfg: ContinualConfig, tcfg: TrainConfig, log: Log, progress: bool = False) -> Prepared:
    """Load the data, plan the tasks and choose the model; bad combinations fail here in one line."""
    splits = load_dataset(tcfg.dataset, tcfg.data_dir, progress=progress, log=log)
    plan = plan_tasks(ccfg, splits.train.num_classes, splits.train.classes, splits.name)
    name = tcfg.model or default_model(
        "image", channels=splits.train.channels, image_size=splits.train.image_size
    )
    model_cfg = get_config(name, **tcfg.model_overrides).replace(num_classes=len(plan.order))
    check_input(model_cfg, name, channels=splits.train.channels)
    if ccfg.method == "expand" and not is_branched(build_model(model_cfg)):
        raise ConfigError(
            f"--method expand adds branches to a ParaFormer; {name} is not one (pick a paraformer_* model)."
        )
    transform = training_transform(tcfg, splits, model_cfg.image_size)
    prepared = Prepared(
        splits, dataset_sha256(splits), plan, model_cfg, transform, resolve_device(tcfg.device)
    )
    sizes = task_data(splits, plan, ccfg, tcfg, seed=0)
    images = sum(len(d) for d in sizes.train)
    if (ccfg.get("buffer") or 0) > images:
        raise ConfigError(
            f"--buffer {ccfg.get('buffer')} is larger than the {images} training images of the whole "
            "sequence; use a smaller buffer (or more data: --limit-train)."
        )
    if min(len(d) for d in sizes.train) == 0:
        raise DataError(f"a task of {splits.name} has no training images; use more data (--limit-train).")
    return prepared


def base_model(p: Prepared, seed: int) -> nn.Module:
    """The initial model of a seed: the same weights for every method."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(p.model_cfg).to(p.device)


def run_continual(
    ccfg: ContinualConfig,
    tcfg: TrainConfig,
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = (0,),
    log: Log = print,
    progress: bool = False,
    keep_runs: bool = True,
    first_task_from: str | Path | None = None,
    splits: Sequence[str] = ("test", "val"),
) -> dict[str, Any]:
    """Train ``ccfg.method`` through the sequence for each seed; write and return the results.

    ``first_task_from`` (another continual run folder) takes each seed's model after task 0
    from there when it was trained with the same settings, data and seed (task 0 trains
    the same way for every method). ``keep_runs=False`` deletes each task's trainer run
    folder once the task is done. ``splits`` are the splits tested after each task
    (``("val",)`` to choose settings without reading the test images).
    """
    out_dir = Path(out_dir)
    with lock(out_dir):
        if (out_dir / RUN_FILE).is_file():
            raise ConfigError(
                f"{out_dir} already holds a continual run; continue it with --resume or choose another --out."
            )
        if (out_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"{out_dir} holds a training run; choose another --out for a continual run.")
        p = prepare(ccfg, tcfg, log)
        write_json(out_dir / RUN_FILE, run_record(ccfg, tcfg, p, list(seeds)))
        return _run_seeds(
            ccfg, tcfg, p, out_dir, list(seeds), log, progress, keep_runs, first_task_from, splits
        )


def resume_continual(
    out_dir: str | Path,
    *,
    seeds: Sequence[int] | None = None,
    changes: dict[str, Any] | None = None,
    log: Log = print,
    progress: bool = False,
    keep_runs: bool = True,
    first_task_from: str | Path | None = None,
    splits: Sequence[str] = ("test", "val"),
) -> dict[str, Any]:
    """Continue the sequence in ``out_dir`` with its own settings (and any new ``seeds``).

    ``changes`` are settings given again (flag name -> value); each must equal the run's,
    except ``data_dir`` (the data's content hash must match).
    """
    out_dir = Path(out_dir)
    path = out_dir / RUN_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{out_dir} holds no continual run to resume (no {RUN_FILE}); start one without --resume."
        )
    with lock(out_dir):
        saved = read_json(path)
        if not isinstance(saved, dict) or saved.get("kind") != "continual":
            raise CheckpointError(f"{path} is not a continual run's record; the file is corrupt.")
        ccfg = ContinualConfig.from_dict(saved["continual"], f"{path} 'continual' section")
        tcfg = TrainConfig.from_dict(saved["train"], f"{path} 'train' section")
        ccfg, tcfg = _check_changes(ccfg, tcfg, changes or {}, saved, out_dir)
        all_seeds = list(dict.fromkeys([*saved["seeds"], *(seeds or [])]))
        p = prepare(ccfg, tcfg, log)
        if p.digest != saved["data"]["sha256"]:
            raise DataError(
                f"the {tcfg.dataset} data found is not the data {out_dir} trained on (its content hash "
                "differs); point --data-dir to that data."
            )
        write_json(path, {**saved, "seeds": all_seeds, "train": tcfg.to_dict()})
        return _run_seeds(
            ccfg, tcfg, p, out_dir, all_seeds, log, progress, keep_runs, first_task_from, splits
        )


def _check_changes(
    ccfg: ContinualConfig, tcfg: TrainConfig, changes: dict[str, Any], saved: dict[str, Any], out_dir: Path
) -> tuple[ContinualConfig, TrainConfig]:
    cdict, tdict = ccfg.to_dict(), tcfg.to_dict()
    given_order = changes.get("class_order")
    order = saved["data"]["class_order"]
    if given_order is not None and list(given_order)[: len(order)] != list(order):
        raise ConfigError(
            f"{out_dir} learns classes in the order {','.join(map(str, order))}; it cannot continue with "
            f"--class-order {','.join(map(str, given_order))}: drop --class-order or start a new run with "
            "another --out."
        )
    for key, value in changes.items():
        if key == "class_order" or key in RESUMABLE:
            continue
        before = cdict[key] if key in cdict else tdict.get(key)
        if (list(before) if isinstance(before, tuple) else before) != (
            list(value) if isinstance(value, tuple) else value
        ):
            raise ConfigError(
                f"{out_dir} was run with --{key.replace('_', '-')} {before}; --resume continues it with its "
                f"own settings: drop --{key.replace('_', '-')} or start a new run with another --out."
            )
    if "data_dir" in changes:
        tcfg = tcfg.replace(data_dir=changes["data_dir"])
    return ccfg, tcfg


def run_record(ccfg: ContinualConfig, tcfg: TrainConfig, p: Prepared, seeds: list[int]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": "continual",
        "continual": ccfg.to_dict(),
        "options": ccfg.resolved(),
        "train": tcfg.to_dict(),
        "model": p.model_cfg.to_dict(),
        "data": {
            "dataset": p.splits.name,
            "sha256": p.digest,
            "class_order": list(p.plan.order),
            "class_names": list(p.plan.names),
            "tasks": p.plan.tasks,
            "classes_per_task": p.plan.per_task,
        },
        "seeds": seeds,
    }


def _run_seeds(
    ccfg: ContinualConfig,
    tcfg: TrainConfig,
    p: Prepared,
    out_dir: Path,
    seeds: list[int],
    log: Log,
    progress: bool,
    keep_runs: bool,
    first_task_from: str | Path | None,
    splits: Sequence[str] = ("test", "val"),
) -> dict[str, Any]:
    per_seed: dict[str, Any] = {}
    for seed in seeds:
        data = task_data(p.splits, p.plan, ccfg, tcfg, seed)
        base = base_model(p, seed)
        ctx = Context(ccfg, tcfg, seed, p.plan.per_task, p.transform, out_dir / f"seed-{seed}", log, progress)
        key = first_task_key(tcfg, p.model_cfg, p.digest, p.plan, seed)
        source = None if first_task_from is None else Path(first_task_from) / f"seed-{seed}"
        result = run_seed(
            ctx, p.plan, data, base, key, first_task_from=source, keep_runs=keep_runs, splits=splits
        )
        if result is None:
            log(
                f"interrupted in seed {seed}; the finished tasks are kept. Continue with: "
                f"paraformer continual --resume --out {out_dir}"
            )
            return {"interrupted": True, "seed": seed}
        per_seed[str(seed)] = result
    results = aggregate(ccfg, p, per_seed)
    write_json(out_dir / RESULTS_FILE, results)
    split = "test" if "test" in results["mean"] else "val"
    panels = {f"{k.replace('_', '-')} ({split})": results["mean"][split][k] for k in ("class_il", "task_il")}
    title = f"{ccfg.method} on {p.splits.name}: accuracy % (mean over seeds {', '.join(per_seed)})"
    atomic_write(
        out_dir / HEATMAP_FILE,
        lambda tmp: plot_accuracy_matrices(panels, tmp, title, names=_task_names(p.plan)),
    )
    return results


def _task_names(plan: Plan) -> list[str]:
    c = plan.per_task
    return ["+".join(plan.names[t * c : (t + 1) * c])[:18] for t in range(plan.tasks)]


def _mean(values: list[Any]) -> float | None:
    xs = [float(v) for v in values if v is not None and v == v]
    return statistics.fmean(xs) if xs else None


def aggregate(ccfg: ContinualConfig, p: Prepared, per_seed: dict[str, Any]) -> dict[str, Any]:
    """Every seed's figures and their means (matrices entry by entry)."""
    runs = list(per_seed.values())
    mean: dict[str, Any] = {}
    for split in ("test", "val"):
        if split not in runs[0]:
            continue
        figures: dict[str, Any] = {}
        for key, value in runs[0][split].items():
            if isinstance(value, list):
                figures[key] = [
                    [_mean([r[split][key][i][j] for r in runs]) for j in range(len(row))]
                    for i, row in enumerate(value)
                ]
            else:
                figures[key] = _mean([r[split][key] for r in runs])
        mean[split] = figures
    mean["memory_bytes"] = _mean([r["memory"]["total_bytes"] for r in runs])
    mean["params"] = _mean([r["params"] for r in runs])
    mean["train_seconds"] = _mean([r["train_seconds"] for r in runs])
    return {
        "format": FORMAT,
        "method": ccfg.method,
        "options": ccfg.resolved(),
        "dataset": p.splits.name,
        "class_order": list(p.plan.order),
        "class_names": list(p.plan.names),
        "tasks": p.plan.tasks,
        "classes_per_task": p.plan.per_task,
        "seeds": per_seed,
        "mean": mean,
    }
