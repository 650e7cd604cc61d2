"""Continual learning on Split Fashion-MNIST and Split CIFAR-10 (issue 14, item 5).

Five tasks of two classes each, in class order (0,1), (2,3), ..., (8,9). After each
task every method is tested on every task seen so far, giving the accuracy matrix
``R[i, j]`` (task j after training task i) in two settings: class-incremental (one head,
no task id: argmax over every class seen so far) and task-incremental (argmax over the
task's two classes). Methods, on the same ParaFormer backbone, optimizer, lr, batch,
epochs per task and augmentation:

  expansion   ParaFormer expansion: per new task, ``--add-branches`` gated zero-init
              branches are appended and the head grows by the task's classes; the old
              branches (and the embedding) are frozen; progressive approximation on top
              of the frozen sum (the prefix losses of the new branches only)
  finetune    the whole model trained on each task in turn (lower bound)
  replay      fine-tuning plus experience replay from a 200-image class-balanced buffer
  lwf         Learning without Forgetting: cross-entropy plus distillation on the old
              classes' logits of the model from the end of the previous task
  joint       trained on all tasks' data seen so far at every stage (upper bound)

The lr and the epochs per task are chosen on validation data only (held-out 10% of the
first two tasks' training images, joint training on those 4 classes, seed 0), never on
test; test images are read only for the reported matrices.

    python benchmarks/continual.py --data-dir ../shared/datasets                  # recorded run
    python benchmarks/continual.py --quick --no-write --data-dir ../shared/datasets  # smoke run

Every seed's accuracy matrices, figures and budget (optimizer steps, images seen, seconds)
go to benchmarks/results/continual-<dataset>.json; ``python -m benchmarks.report`` renders them.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch
import torch.nn.functional as F

from benchmarks.protocol import budget, load_results, record_results, write_record
from benchmarks.render.continual import render as render_section
from paraformer.analysis.continual import (
    average_accuracy,
    average_forgetting,
    class_balanced_buffer,
    class_splits,
    distillation_loss,
    masked_accuracy,
    seen_classes,
)
from paraformer.continual import train_expansion
from paraformer.data import ImageDataset, limit_dataset, load_dataset, train_val_split, transform_for
from paraformer.models import create_model
from paraformer.surgery import expand
from paraformer.tasks.image import TrainConfig
from paraformer.train.optim import make_optimizer
from paraformer.train.schedule import warmup_cosine

METHODS = ("expansion", "expansion-open", "finetune", "replay", "lwf", "joint")
PRESETS = {"fashion-mnist": "paraformer_tiny_fmnist", "cifar10": "paraformer_tiny_cifar"}
Log = Callable[[str], None]


# ------------------------------------------------------------------------------------- data


def task_data(
    dataset: str, args: argparse.Namespace, seed: int
) -> tuple[list[ImageDataset], list[ImageDataset], list[ImageDataset], Any, list[tuple[int, ...]]]:
    """Per task: train, validation and test subsets, plus the batch transform and the class split."""
    splits = load_dataset(dataset, args.data_dir, download=False, progress=False)
    tasks = class_splits(splits.train.num_classes, 2)
    trains, vals, tests = [], [], []
    for k, classes in enumerate(tasks):
        tr = splits.train.subset(
            torch.nonzero(torch.isin(splits.train.labels, torch.tensor(classes))).flatten()
        )
        te = splits.test.subset(
            torch.nonzero(torch.isin(splits.test.labels, torch.tensor(classes))).flatten()
        )
        tr = limit_dataset(tr, args.limit_train, seed=seed * 100 + k)
        tr, va = train_val_split(tr, 0.1, seed=seed * 100 + k)
        trains.append(tr)
        vals.append(va)
        tests.append(limit_dataset(te, args.limit_test, seed=k))  # the same test images for every seed
    image_size = 28 if dataset == "fashion-mnist" else 32
    return trains, vals, tests, transform_for(splits, image_size), tasks


def concat(datasets: list[ImageDataset]) -> ImageDataset:
    return ImageDataset(
        torch.cat([d.images for d in datasets]), torch.cat([d.labels for d in datasets]), datasets[0].classes
    )


# ------------------------------------------------------------------------------------ models


def backbone(dataset: str, args: argparse.Namespace, seed: int, num_classes: int = 10) -> torch.nn.Module:
    """The initial model: the same weights for every method (a 2-class head grown to ``num_classes``).

    Built first with the first task's 2 classes, so the baselines' 10-class head only adds
    (masked) rows: every method starts task 1 from identical embedding, branches and seen rows.
    """
    torch.manual_seed(seed)
    model = create_model(
        PRESETS[dataset],
        dim=args.dim,
        heads=args.heads,
        mlp_dim=4 * args.dim,
        num_branches=args.branches,
        branch_depth=args.branch_depth,
        num_classes=2,
    )
    return model if num_classes == 2 else expand(model, 0, num_classes, seed=seed)


def loop_config(args: argparse.Namespace, seed: int) -> TrainConfig:
    """The library's training recipe at this benchmark's settings (every method trains by it)."""
    return TrainConfig(
        dataset="in-memory",
        mode="fused",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=0.05,
        warmup_epochs=args.warmup_epochs,
        grad_clip=1.0,
        seed=seed,
        branch_exec="loop",
        device="cpu",
        val_fraction=0.0,
    )


# ---------------------------------------------------------------------------------- training


def prefix_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n_seen: int) -> Any:
    """Mean cross-entropy over the seen classes of every prefix (fused progressive approximation)."""
    logits = model.prefix_logits(x)[..., :n_seen]  # (N, B, n_seen)
    losses = torch.stack([F.cross_entropy(lk, y) for lk in logits])
    return losses.mean(), logits[-1]


def train_task(
    model: torch.nn.Module,
    data: ImageDataset,
    n_seen: int,
    args: argparse.Namespace,
    transform: Any,
    seed: int,
    *,
    buffer: ImageDataset | None = None,
    teacher: torch.nn.Module | None = None,
    n_old: int = 0,
) -> tuple[int, int]:
    """``epochs`` of AdamW on ``data`` (+ a replay batch from ``buffer``, + LwF on ``teacher``).

    Returns (optimizer steps, images seen), replayed images included.
    """
    cfg = loop_config(args, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(model, cfg)  # AdamW, no decay on norms, biases, embeddings, gates
    batches = math.ceil(len(data) / args.batch_size)
    total, warmup, step = batches * args.epochs, round(args.warmup_epochs * batches), 0
    gen = torch.Generator().manual_seed(seed)
    model.train()
    seen = 0
    for _ in range(args.epochs):
        order = torch.randperm(len(data), generator=gen)
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            images, labels = data.images[idx], data.labels[idx]
            if buffer is not None and len(buffer):
                pick = torch.randint(0, len(buffer), (args.replay_batch,), generator=gen)
                images = torch.cat([images, buffer.images[pick]])
                labels = torch.cat([labels, buffer.labels[pick]])
            seen += len(images)
            x = transform(images, train=True, generator=gen)
            loss, logits = prefix_loss(model, x, labels, n_seen)
            if teacher is not None and n_old:
                with torch.no_grad():
                    old = teacher(x)[:, :n_old]
                loss = loss + args.lwf_weight * distillation_loss(
                    logits[:, :n_old], old, args.lwf_temperature
                )
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, total, warmup, cfg.lr, cfg.min_lr_ratio)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
    return step, seen


@torch.no_grad()
def logits_of(model: torch.nn.Module, data: ImageDataset, transform: Any) -> torch.Tensor:
    model.eval()
    out = [model(transform(data.images[i : i + 500], train=False)) for i in range(0, len(data), 500)]
    model.train()
    return torch.cat(out)


def evaluate(
    model: torch.nn.Module, tests: list[ImageDataset], tasks: list[tuple[int, ...]], upto: int, transform: Any
) -> tuple[list[float], list[float]]:
    """Class-IL and task-IL accuracy on tasks ``0..upto`` after training task ``upto``."""
    seen = seen_classes(tasks, upto)
    cil, til = [], []
    for j in range(upto + 1):
        logits = logits_of(model, tests[j], transform)
        cil.append(masked_accuracy(logits, tests[j].labels, seen))
        til.append(masked_accuracy(logits, tests[j].labels, tasks[j]))
    return cil, til


def run_method(
    method: str, dataset: str, data: tuple, args: argparse.Namespace, seed: int, log: Log
) -> dict[str, Any]:
    """Train ``method`` through all tasks; its class-IL and task-IL matrices, size and time."""
    trains, _, tests, transform, tasks = data
    t_count = len(tasks)
    cil = torch.full((t_count, t_count), float("nan"))
    til = torch.full((t_count, t_count), float("nan"))
    per_task = len(tasks[0])
    expansion = method.startswith("expansion")
    model = backbone(dataset, args, seed, per_task if expansion else 10)
    buffer: ImageDataset | None = None
    seconds, steps, seen = 0.0, 0, 0
    gen = torch.Generator().manual_seed(seed)
    for t in range(t_count):
        n_seen = per_task * (t + 1)
        begin = time.perf_counter()
        if expansion and t:
            # What users run: surgery.expand, then train_expansion (old branches and embedding frozen).
            old_branches = model.num_branches
            grown = expand(model, args.add_branches, n_seen, seed=seed * 1000 + t)
            if method == "expansion-open":  # ablation: the new branches start fully on (output changes)
                with torch.no_grad():
                    for branch in list(grown.branches)[old_branches:]:
                        branch.gate.fill_(1.0)
            cfg = loop_config(args, seed * 1000 + t)
            # as `paraformer expand --classes` does: the loss reads only the new task's logits
            model, summary = train_expansion(
                grown, old_branches, trains[t], transform=transform, cfg=cfg, loss_classes=list(tasks[t])
            )
            check_frozen(grown, model, old_branches)
            task_steps, task_seen = summary["steps"], len(trains[t]) * summary["epochs_completed"]
        else:
            task_steps, task_seen = train_task(
                model,
                concat(trains[: t + 1]) if method == "joint" else trains[t],
                n_seen,
                args,
                transform,
                seed * 1000 + t,
                buffer=buffer if method == "replay" else None,
                teacher=copy.deepcopy(model).eval() if method == "lwf" and t else None,
                n_old=per_task * t,
            )
        seconds += time.perf_counter() - begin
        steps, seen = steps + task_steps, seen + task_seen
        if method == "replay":  # class-balanced: 200 / (classes seen) images per class
            pool = concat([buffer, trains[t]]) if buffer is not None else trains[t]
            buffer = pool.subset(class_balanced_buffer(pool.labels, args.buffer, gen))
        c, k = evaluate(model, tests, tasks, t, transform)
        cil[t, : t + 1], til[t, : t + 1] = torch.tensor(c), torch.tensor(k)
        log(f"{method} seed {seed} task {t}: class-IL {fmt_row(c)} | task-IL {fmt_row(k)} ({seconds:.0f} s)")
    return {
        "class_il": cil.tolist(),
        "task_il": til.tolist(),
        "avg_acc_class_il": average_accuracy(cil),
        "avg_acc_task_il": average_accuracy(til),
        "forgetting_class_il": average_forgetting(cil),
        "forgetting_task_il": average_forgetting(til),
        "params": sum(p.numel() for p in model.parameters()),
        "branches": model.num_branches,
        "stored_images": len(buffer) if buffer is not None else 0,
        "gates": [round(float(b.gate.detach()), 4) for b in model.branches if b.gate is not None],
        "train_seconds": seconds,
        "budget": budget(optimizer_steps=steps, seen=seen, train_seconds=seconds),
    }


def check_frozen(before: torch.nn.Module, after: torch.nn.Module, old_branches: int) -> None:
    """The embedding and the old branches must come out of expansion training bit-identical."""
    a, b = before.state_dict(), after.state_dict()
    for key, value in a.items():
        if key.startswith("embed.") or (
            key.startswith("branches.") and int(key.split(".")[1]) < old_branches
        ):
            assert torch.equal(value, b[key]), f"expansion training changed the frozen weight {key}"


def fmt_row(values: list[float]) -> str:
    return " ".join(f"{100 * v:5.1f}" for v in values)


# ------------------------------------------------------------------------ validation choice


def choose_lr_epochs(dataset: str, args: argparse.Namespace, log: Log) -> tuple[float, int]:
    """(lr, epochs) by validation accuracy of joint training on the first two tasks, seed 0."""
    trains, vals, _, transform, tasks = task_data(dataset, args, seed=0)
    data, val = concat(trains[:2]), concat(vals[:2])
    n_seen = len(seen_classes(tasks, 1))
    best: tuple[float, float, int] = (-1.0, args.lrs[0], 1)
    for epochs in sorted(args.epoch_choices):  # one run per choice: the schedule spans its epochs
        for lr in args.lrs:
            model = backbone(dataset, args, seed=0)
            trial = argparse.Namespace(**{**vars(args), "lr": lr, "epochs": epochs})
            train_task(model, data, n_seen, trial, transform, seed=0)
            acc = masked_accuracy(logits_of(model, val, transform), val.labels, range(n_seen))
            log(f"choice {dataset}: lr {lr:g}, {epochs} epoch(s): validation accuracy {100 * acc:.2f}")
            if acc > best[0] + 1e-9:  # ties go to fewer epochs, then the lr tried first
                best = (acc, lr, epochs)
    return best[1], best[2]


# ------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["fashion-mnist", "cifar10"], choices=list(PRESETS))
    p.add_argument(
        "--methods", nargs="+", default=[m for m in METHODS if m != "expansion-open"], choices=METHODS
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--limit-train", type=int, default=1000, help="training images per task (10%% validation)")
    p.add_argument("--limit-test", type=int, default=1000, help="test images per task")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2], help="lr choices (validation)")
    p.add_argument("--epoch-choices", type=int, nargs="+", default=[2, 3], help="epochs per task choices")
    p.add_argument("--lr", type=float, default=None, help="skip the validation choice: use this lr")
    p.add_argument("--epochs", type=int, default=None, help="skip the validation choice: these epochs")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="per task, then cosine decay")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--branches", type=int, default=4)
    p.add_argument("--branch-depth", type=int, default=2)
    p.add_argument("--add-branches", type=int, default=1, help="branches expansion adds per new task")
    p.add_argument("--buffer", type=int, default=200, help="replay buffer size (images)")
    p.add_argument("--replay-batch", type=int, default=32, help="buffer images added to each batch")
    p.add_argument("--lwf-weight", type=float, default=1.0)
    p.add_argument("--lwf-temperature", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 epoch, 1 seed, no choice")
    p.add_argument(
        "--add-to-recorded",
        action="store_true",
        help="run --methods with the recorded run's settings and seeds and merge them into its results",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="with --add-to-recorded: run nothing, print the recorded section",
    )
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/ (a smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.limit_train, args.limit_test = args.seeds[:1], 60, 40
        args.lr, args.epochs, args.dim, args.branches = args.lr or 1e-3, 1, 32, 2
    return args


def choice_text(args: argparse.Namespace) -> str:
    return (
        "chosen by validation accuracy of joint training on the first two tasks, seed 0, "
        f"over lr {args.lrs} x epochs {args.epoch_choices}; test never read"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda line: print("   ", line, flush=True)  # noqa: E731
    command = "python benchmarks/continual.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for dataset in args.datasets:
        started = time.time()
        name = f"continual-{dataset}"
        results: dict[int, dict[str, dict[str, Any]]] = {}
        if args.add_to_recorded:  # same settings and seeds as the recorded run; these methods (re)run
            saved = load_results(name)
            if args.render_only:
                print(render_section(saved).text, flush=True)
                continue
            methods = args.methods
            args_d = argparse.Namespace(**{**saved["config"], "methods": methods})
            payload = saved["payload"]
            chosen_by, wall = payload.get("chosen_by", choice_text(args_d)), payload.get("wall_seconds", 0.0)
            command = f"{saved['command']}; then {command}"
            results = {int(seed): r for seed, r in payload["results"].items()}
            args_d.seeds = sorted(results)
        else:
            wall = 0.0
            chosen_by = "given on the command line"
            args_d = args
            if args.lr is None or args.epochs is None:
                lr, epochs = choose_lr_epochs(dataset, args, log)
                chosen_by = choice_text(args)
                args_d = argparse.Namespace(
                    **{**vars(args), "lr": args.lr or lr, "epochs": args.epochs or epochs}
                )
        log(f"{dataset}: lr {args_d.lr:g}, {args_d.epochs} epoch(s) per task ({chosen_by})")
        for seed in args_d.seeds:
            data = task_data(dataset, args_d, seed)
            for m in args_d.methods:
                results.setdefault(seed, {})[m] = run_method(m, dataset, data, args_d, seed, log)
        wall += time.time() - started
        args_d.methods = [m for m in METHODS if all(m in r for r in results.values())]
        payload = {"chosen_by": chosen_by, "wall_seconds": wall, "results": results}
        skip = ("add_to_recorded", "render_only", "no_write")  # how this command ran, not the settings
        config = {k: v for k, v in vars(args_d).items() if k not in skip}
        record = record_results(name, payload, command=command, seeds=sorted(results), config=config)
        print(render_section(record).text, flush=True)
        if not args.no_write:
            print(f"wrote {write_record(record)}; render BENCHMARKS.md with: python -m benchmarks.report")


if __name__ == "__main__":
    main()
