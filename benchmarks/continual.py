"""Continual learning on Split Fashion-MNIST and Split CIFAR-10, through the library (issue 23).

Five tasks of two classes each, in class order (0,1), (2,3), ..., (8,9). Every arm is a run
of ``paraformer.continual.run_continual`` (what ``paraformer continual`` runs): one trainer,
the methods as objective parts, no training loop here. After each task every arm is tested
on every task so far: the accuracy matrix ``R[i, j]``, class-incremental (no task id: the
argmax over every class seen so far) and task-incremental (the argmax over the task's classes).

Arms (``ARMS``), on the same ParaFormer backbone, initial weights per seed, data, optimizer,
lr, batch and epochs per task:

  finetune            the whole model on each task in turn (lower bound)
  joint               the whole model on the data of every task so far (upper bound)
  lwf                 Learning without Forgetting: distillation of the previous model's old classes
  er, derpp           experience replay and DER++ with a 200-image memory
  er-eq               experience replay given the bytes of ``expand``'s added parameters
  expand              exemplar-free ParaFormer expansion (the library's defaults for --method expand)
  expand-200          expansion with a 200-image memory
  expand-200-no-*     the ablation: expand-200 without one part (aux head, distillation, weight
                      aligning, gate learning-rate multiplier)
  expand-plain        expansion as it was before issue 23 (no aux head, distillation, aligning, gate lr)

The lr and the epochs per task are chosen on validation data only (``--choose``: joint
training on the first two tasks, seed 0, the validation images held out of the training
images), never on test; the choice is recorded and reused by later runs (``--reuse``).

    python benchmarks/continual.py --datasets fashion-mnist --data-dir ../shared/datasets --reuse
    python benchmarks/continual.py --quick --no-write --data-dir ../shared/datasets   # smoke run

Every seed's matrices, figures, memory and budget go to benchmarks/results/continual-<dataset>.json
(written after every arm; ``--reuse`` keeps what is there); ``python -m benchmarks.report`` renders them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch

from benchmarks.protocol import budget, load_now, load_results, record_results, write_record
from benchmarks.render.continual import render as render_section
from paraformer.continual import ContinualConfig, resume_continual, run_continual
from paraformer.continual.memory import sample_bytes
from paraformer.continual.sequence import RUN_FILE
from paraformer.models import build_model, count_params, get_config
from paraformer.surgery import expand
from paraformer.tasks.image import TrainConfig

PRESETS = {"fashion-mnist": "paraformer_tiny_fmnist", "cifar10": "paraformer_tiny_cifar"}
IMAGE = {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
WITHOUT = {"aux_weight": 0.0, "distill": 0.0, "align": "none", "gate_lr": 1.0}
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "finetune": ("finetune", {}),
    "lwf": ("lwf", {}),
    "er": ("er", {"buffer": 200}),
    "derpp": ("derpp", {"buffer": 200}),
    "er-eq": ("er", {"buffer": "equal"}),  # sized from expand's added bytes
    "expand": ("expand", {}),
    "expand-200": ("expand", {"buffer": 200}),
    "expand-200-no-aux": ("expand", {"buffer": 200, "aux_weight": 0.0}),
    "expand-200-no-distill": ("expand", {"buffer": 200, "distill": 0.0}),
    "expand-200-no-align": ("expand", {"buffer": 200, "align": "none"}),
    "expand-200-no-gate-lr": ("expand", {"buffer": 200, "gate_lr": 1.0}),
    "expand-plain": ("expand", dict(WITHOUT)),
    "joint": ("joint", {}),
}
MAIN = ["finetune", "lwf", "er", "derpp", "er-eq", "expand", "expand-200", "expand-plain", "joint"]


# ------------------------------------------------------------------------------------ settings


def train_config(
    dataset: str, args: argparse.Namespace, lr: float, epochs: int, limit: int | None = None
) -> TrainConfig:
    """The training recipe every arm uses (per task: AdamW, warmup then cosine, batch, grad clip)."""
    return TrainConfig(
        dataset=dataset,
        data_dir=args.data_dir,
        limit_train=limit or args.limit_train,
        val_fraction=0.1,
        model=PRESETS[dataset],
        model_overrides={
            "dim": args.dim,
            "heads": args.heads,
            "mlp_dim": 4 * args.dim,
            "num_branches": args.branches,
            "branch_depth": args.branch_depth,
        },
        mode="fused",
        epochs=epochs,
        batch_size=args.batch_size,
        lr=lr,
        weight_decay=0.05,
        grad_clip=1.0,
        device="cpu",
        branch_exec="loop",
    )


def added_bytes(dataset: str, args: argparse.Namespace, options: dict[str, Any]) -> int:
    """Bytes of the parameters ``expand`` with ``options`` adds over the sequence (branches, heads kept)."""
    cfg = ContinualConfig(method="expand", **options)
    model_cfg = get_config(PRESETS[dataset], **train_config(dataset, args, 1e-3, 1).model_overrides)
    base = build_model(model_cfg.replace(num_classes=10))
    grown = base
    for _ in range(args.tasks - 1):
        grown = expand(grown, cfg.get("add_branches"))
    extra = count_params(grown) - count_params(base)
    dim, c = model_cfg.dim, 10 // args.tasks
    if cfg.get("routing") != "none":  # a copy of the head's norm and rows per task
        extra += args.tasks * (2 * dim + c * (dim + 1))
        if cfg.get("routing") == "aux":
            extra += (args.tasks - 1) * (2 * dim + (c + 1) * (dim + 1))
    return 4 * extra


def arm_config(arm: str, dataset: str, args: argparse.Namespace) -> ContinualConfig:
    method, options = ARMS[arm]
    options = dict(options)
    if options.get("buffer") == "equal":
        options["buffer"] = added_bytes(dataset, args, ARMS["expand"][1]) // sample_bytes(IMAGE[dataset])
    return ContinualConfig(method=method, tasks=args.tasks, limit_test=args.limit_test, **options)


# ------------------------------------------------------------------------------------ running


def flat(result: dict[str, Any]) -> dict[str, Any]:
    """One seed of one arm as the raw file keeps it: test matrices and figures, validation figures."""
    test = result["test"]
    out = {k: v for k, v in test.items()}
    if "val" in result:
        out["val"] = {k: v for k, v in result["val"].items() if not isinstance(v, list)}
    for key in ("params", "branches", "memory", "gates", "align_gamma", "train_seconds"):
        out[key] = result[key]
    b = result["budget"]
    out["budget"] = budget(
        optimizer_steps=b["optimizer_steps"],
        seen=b["images_seen"],
        train_seconds=b["train_seconds"],
        load={"end": load_now()},
    )
    return out


def run_arm(
    arm: str, dataset: str, args: argparse.Namespace, seed: int, lr: float, epochs: int, log: Any
) -> dict[str, Any]:
    """One seed of one arm, in its resumable continual run folder under --runs."""
    folder = Path(args.runs) / dataset / arm
    cfg, tcfg = arm_config(arm, dataset, args), train_config(dataset, args, lr, epochs)
    common = dict(log=log, keep_runs=False, first_task_from=Path(args.runs) / dataset / "finetune")
    if (folder / RUN_FILE).is_file():
        changes = {**cfg.to_dict(), **{k: v for k, v in tcfg.to_dict().items() if k != "model_overrides"}}
        results = resume_continual(folder, seeds=[seed], changes=changes, **common)
    else:
        results = run_continual(cfg, tcfg, folder, seeds=[seed], **common)
    return flat(results["seeds"][str(seed)])


def choose(dataset: str, args: argparse.Namespace, log: Any) -> tuple[float, int, list[dict[str, Any]]]:
    """(lr, epochs per task) by validation accuracy of joint training on the first two tasks, seed 0.

    The smallest number of epochs within ``--converged`` points of the best validation accuracy
    (at the best lr) is taken: training longer changes nothing measurable there.
    """
    table = []
    limit = args.limit_train * 4 // 10  # the same images per class as the whole sequence
    for lr in args.lrs:
        for epochs in args.epoch_choices:
            folder = Path(args.runs) / dataset / "choice" / f"lr{lr:g}-e{epochs}"
            cfg = ContinualConfig(method="joint", tasks=2, classes_per_task=2)
            tcfg = train_config(dataset, args, lr, epochs, limit)
            if (folder / RUN_FILE).is_file():
                r = resume_continual(folder, log=log, keep_runs=False, splits=("val",))
            else:
                r = run_continual(cfg, tcfg, folder, seeds=[0], log=log, keep_runs=False, splits=("val",))
            acc = r["seeds"]["0"]["val"]["avg_acc_class_il"]
            table.append(
                {
                    "lr": lr,
                    "epochs": epochs,
                    "val_acc": acc,
                    "train_seconds": r["seeds"]["0"]["train_seconds"],
                }
            )
            log(f"choice {dataset}: lr {lr:g}, {epochs} epochs: validation accuracy {100 * acc:.2f}%")
    best = max(table, key=lambda row: row["val_acc"])
    at_lr = [row for row in table if row["lr"] == best["lr"]]
    pick = min(
        (row for row in at_lr if row["val_acc"] >= best["val_acc"] - args.converged / 100),
        key=lambda r: r["epochs"],
    )
    return pick["lr"], pick["epochs"], table


SETTINGS = ("limit_train", "limit_test", "batch_size", "dim", "heads", "branches", "branch_depth", "tasks")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda line: print("   ", line, flush=True)  # noqa: E731
    for dataset in args.datasets:
        name = f"continual-{dataset}"
        saved = load_results(name) if args.reuse else None
        if saved is not None and "arms" not in saved["payload"]:
            saved = None  # a file of the earlier benchmark: start afresh
        results: dict[str, dict[str, Any]] = {}
        choice: dict[str, Any] = {}
        wall = 0.0
        if saved is not None:
            differ = [k for k in SETTINGS if saved["config"].get(k) != getattr(args, k)]
            if differ:
                raise SystemExit(
                    f"--reuse: {name} was recorded with other {differ}; use those or drop --reuse."
                )
            results, choice = saved["payload"]["results"], saved["payload"]["choice"]
            wall = saved["payload"].get("wall_seconds", 0.0)
        started = time.time()
        if args.lr is not None and args.epochs is not None:
            choice = {
                "lr": args.lr,
                "epochs": args.epochs,
                "chosen_by": "given on the command line",
                "table": [],
            }
        elif not choice:
            lr, epochs, table = choose(dataset, args, log)
            choice = {
                "lr": lr,
                "epochs": epochs,
                "table": table,
                "chosen_by": f"validation accuracy of joint training on the first two tasks, seed 0, over lr "
                f"{args.lrs} x epochs {args.epoch_choices}: the fewest epochs within {args.converged:g} "
                "points of the best (at the best lr); test never read",
            }
        lr, epochs = choice["lr"], choice["epochs"]
        log(f"{dataset}: lr {lr:g}, {epochs} epochs per task ({choice['chosen_by']})")
        arms = {
            a: {"method": ARMS[a][0], "options": arm_config(a, dataset, args).resolved()} for a in args.arms
        }
        for seed in args.seeds:
            for arm in args.arms:
                if arm in results.get(str(seed), {}):
                    continue
                t0 = time.time()
                results.setdefault(str(seed), {})[arm] = run_arm(arm, dataset, args, seed, lr, epochs, log)
                r = results[str(seed)][arm]
                log(
                    f"{dataset} seed {seed} {arm}: class-IL {100 * r['avg_acc_class_il']:.1f}%, task-IL "
                    f"{100 * r['avg_acc_task_il']:.1f}%, forgetting {100 * r['forgetting_class_il']:.1f} "
                    f"({time.time() - t0:.0f} s, load {load_now()})"
                )
                wall_now = wall + time.time() - started
                record = save(name, args, arms, results, choice, wall_now, saved)
        if args.seeds:
            record = save(name, args, arms, results, choice, wall + time.time() - started, saved)
            print(render_section(record).text, flush=True)


def save(
    name: str,
    args: argparse.Namespace,
    arms: dict,
    results: dict,
    choice: dict,
    wall: float,
    saved: dict | None,
) -> dict:
    all_arms = {**(saved["payload"]["arms"] if saved else {}), **arms}
    payload = {
        "arms": all_arms,
        "choice": choice,
        "chosen_by": choice["chosen_by"],
        "wall_seconds": wall,
        "results": results,
    }
    config = {
        k: v for k, v in vars(args).items() if k not in ("reuse", "no_write", "datasets", "seeds", "arms")
    }
    config.update(lr=choice["lr"], epochs=choice["epochs"])
    seeds = sorted(results, key=int)
    record = record_results(name, payload, seeds=seeds, config=config)
    if not args.no_write:
        write_record(record)
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["fashion-mnist", "cifar10"], choices=list(PRESETS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs", default="runs/continual-bench", help="folder of the arms' continual run folders")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument(
        "--limit-train", type=int, default=11112, help="training images in all (10%% held out for validation)"
    )
    p.add_argument(
        "--limit-test", type=int, default=5000, help="test images in all (the same for every seed)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3], help="lr choices (validation)")
    p.add_argument("--epoch-choices", type=int, nargs="+", default=[2, 4, 8], help="epochs per task choices")
    p.add_argument(
        "--converged", type=float, default=0.5, help="points from the best that count as converged"
    )
    p.add_argument("--lr", type=float, default=None, help="skip the validation choice: use this lr")
    p.add_argument(
        "--epochs", type=int, default=None, help="skip the validation choice: these epochs per task"
    )
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--branches", type=int, default=4)
    p.add_argument("--branch-depth", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reuse", action="store_true", help="keep the (seed, arm) results already recorded")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 epoch, 1 seed, no choice")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/ (a smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.limit_train, args.limit_test = args.seeds[:1], 300, 200
        args.lr, args.epochs, args.dim, args.branches = args.lr or 3e-3, 1, 32, 2
        args.runs = str(Path(args.runs) / "quick")
    return args


if __name__ == "__main__":
    main()
