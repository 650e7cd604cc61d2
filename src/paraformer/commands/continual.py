"""``paraformer continual``: a class-incremental sequence of tasks, one method, tested after each task."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from paraformer.commands.flags import (
    EXIT_INTERRUPTED,
    config_flags,
    given_flags,
    int_list,
    json_arg,
    print_json,
    progress_arg,
    set_arg,
)
from paraformer.continual import ContinualConfig, resume_continual, run_continual
from paraformer.continual.sequence import HEATMAP_FILE, RESULTS_FILE
from paraformer.errors import ConfigError
from paraformer.tasks.image import TrainConfig

# Training settings that a continual sequence sets itself (--seeds, the tasks' classes) or does not use.
SKIPPED = ("seed", "classes", "max_steps", "eval_every", "branch_parallel", "deep_supervision", "grad_stats")


def _continual(args: argparse.Namespace) -> int:
    cgiven = given_flags(args, args.continual_fields)
    tgiven = given_flags(args, args.train_fields)
    overrides = dict(args.set or [])
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    progress = not args.no_progress
    if args.seeds is not None and (not args.seeds or min(args.seeds) < 0):
        raise ConfigError(f"--seeds must list seeds >= 0, got {args.seeds!r}.")
    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out DIR, the folder of the continual run to continue.")
        if overrides:
            raise ConfigError("--resume continues the run with its own model; drop --set.")
        results = resume_continual(
            args.out, seeds=args.seeds, changes={**cgiven, **tgiven}, log=log, progress=progress
        )
    else:
        ccfg = ContinualConfig.from_dict(cgiven)
        tcfg = TrainConfig.from_dict(
            {"branch_exec": "loop", **tgiven, "model_overrides": overrides}  # no timing per task on CPU
        )
        args.out = (
            args.out
            or Path("runs")
            / f"continual-{ccfg.method}-{tcfg.dataset.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        results = run_continual(ccfg, tcfg, args.out, seeds=args.seeds or [0], log=log, progress=progress)
    if results.get("interrupted"):
        return EXIT_INTERRUPTED
    if args.json:
        print_json(results)
    else:
        print(report(results, args.out))
    return 0


def _pct(value: float | None) -> str:
    return "  -  " if value is None else f"{100 * value:5.1f}"


def matrix_lines(rows: list[list[float | None]], names: list[str]) -> list[str]:
    head = "          " + " ".join(f"{n[:5]:>5}" for n in names)
    return [head] + [f"after T{i + 1:<2} " + " ".join(_pct(v) for v in row) for i, row in enumerate(rows)]


def _spread(results: dict[str, Any], split: str, key: str) -> str:
    values = [r[split][key] for r in results["seeds"].values() if r[split][key] is not None]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{100 * mean:.1f}%"
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{100 * mean:.1f}% ± {100 * sd:.1f}"


def report(results: dict[str, Any], out: Path) -> str:
    """The printed summary: matrices, averages, forgetting, memory, time."""
    mean, opts = results["mean"], results["options"]
    split = "test" if "test" in mean else "val"
    c = results["classes_per_task"]
    names = [f"T{t + 1}" for t in range(results["tasks"])]
    options = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in opts.items())
    seeds = ", ".join(results["seeds"])
    runs = list(results["seeds"].values())
    memory = runs[0]["memory"]
    lines = [
        f"{results['method']} on {results['dataset']}: {results['tasks']} tasks of {c} classes"
        + (f" ({options})" if options else "")
        + f"; seeds {seeds}",
        f"class-IL accuracy % on the {split} images of each task (mean over seeds):",
        *matrix_lines(mean[split]["class_il"], names),
        "task-IL accuracy %:",
        *matrix_lines(mean[split]["task_il"], names),
        f"average accuracy: class-IL {_spread(results, split, 'avg_acc_class_il')}, "
        f"task-IL {_spread(results, split, 'avg_acc_task_il')}",
        f"average forgetting (class-IL) {_spread(results, split, 'forgetting_class_il')}, "
        f"backward transfer {_spread(results, split, 'bwt_class_il')}; task-IL forgetting "
        f"{_spread(results, split, 'forgetting_task_il')}",
        f"at the end: {runs[0]['params']:,} parameters; memory beyond the backbone "
        f"{memory['total_bytes']:,} bytes ({memory['stored_samples']} stored images: "
        f"{memory['stored_bytes']:,} bytes; {memory['added_params']:,} added parameters: "
        f"{memory['added_param_bytes']:,} bytes)",
        f"training time {sum(r['train_seconds'] for r in runs):.0f} s (all tasks and seeds)",
    ]
    if runs[0]["gates"] and runs[0]["gates"][-1]:
        lines.append(
            "gates of the added branches at the end (seed "
            + next(iter(results["seeds"]))
            + "): "
            + " ".join(f"{g:.2f}" for g in runs[0]["gates"][-1])
        )
    lines.append(f"results in {out / RESULTS_FILE}, heatmap {out / HEATMAP_FILE}")
    return "\n".join(lines)


def register(sub: Any, lm: Any) -> None:
    p = sub.add_parser(
        "continual",
        help="class-incremental learning: tasks of new classes, one method (expand, er, derpp, lwf...)",
        description=run_continual.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    continual_fields = config_flags(p, ContinualConfig)
    train_fields = config_flags(p, TrainConfig, skip=SKIPPED)
    set_arg(p)
    p.add_argument("--seeds", type=int_list, metavar="S,T,...", help="seeds to run, e.g. 0,1,2 (default 0)")
    p.add_argument(
        "--out", type=Path, help="the run folder (default runs/continual-<method>-<dataset>-<time>)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out: finished tasks are kept, an interrupted task resumes (--seeds adds "
        "seeds)",
    )
    json_arg(p)
    progress_arg(p)
    p.set_defaults(func=_continual, continual_fields=continual_fields, train_fields=train_fields)
