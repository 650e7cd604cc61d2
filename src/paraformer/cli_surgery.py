"""``paraformer compress | export | expand`` and ``eval --sweep-branches``: shrink and grow runs.

A thin layer like ``cli.py``: each command calls one function of
``paraformer.surgery_runs`` (whose docstring is its help text) and prints a short
report. ``cli.py`` passes in its flag helpers, so this module does not import it back.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paraformer.errors import ConfigError

EXIT_INTERRUPTED = 130


def sweep_command(args: argparse.Namespace) -> int:
    """``paraformer eval RUN --sweep-branches``: the table, ``branches.json`` and ``branches.png``."""
    from paraformer.surgery_runs import sweep_run

    if args.branches is not None or args.split != "test":
        raise ConfigError("--sweep-branches measures every k on both splits; drop --branches and --split.")
    result = sweep_run(args.run_dir, weights=args.weights, data_dir=args.data_dir, progress=not args.json)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['run']}: the first k of {result['num_branches']} branches ({result['dataset']})")
    print(
        f"{'k':>3} {'params':>11} {'MFLOPs/img':>11} {'latency ms':>11} {'val acc %':>10} {'test acc %':>11}"
    )
    for r in result["rows"]:
        val = f"{100 * r['val_acc']:10.2f}" if "val_acc" in r else f"{'n/a':>10}"
        print(
            f"{r['branches']:>3} {r['params']:>11,} {r['flops_per_image'] / 1e6:>11.2f} "
            f"{r['latency_ms']:>11.2f} {val} {100 * r['test_acc']:>11.2f}"
        )
    print(f"wrote {result['json']} and {result['png']}")
    return 0


def _compress(args: argparse.Namespace) -> int:
    from paraformer.surgery_runs import compress_run

    if (args.branches is None) == (args.indices is None):
        raise ConfigError("give the branches to keep: --branches K or --indices I,J,... (one of them).")
    if args.indices is not None and args.select != "prefix":
        raise ConfigError("--indices names the branches itself; drop --select.")
    r = compress_run(
        args.run_dir,
        args.out,
        branches=args.branches if args.branches is not None else list(args.indices),
        select=args.select,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        weights=args.weights,
        data_dir=args.data_dir,
        progress=not args.no_progress,
    )
    val = f", validation {r['val_acc']:.2%} (full {r['full_val_acc']:.2%})" if "val_acc" in r else ""
    print(
        f"done: kept branches {r['branches']} of {r['of_branches']} ({r['select']}"
        f"{', fine-tuned' if r['finetune_epochs'] else ''}): {r['num_params']:,} params, "
        f"{r['ratio_vs_full']:.2f}x smaller than the full model ({r['full_params']:,}), "
        f"{r['ratio_vs_vit_twin']:.2f}x smaller than its ViT twin ({r['vit_twin_params']:,}); "
        f"test accuracy {r['test_acc']:.2%} (full {r['full_test_acc']:.2%}){val}; run in {r['out']}"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from paraformer.surgery_runs import export_run

    r = export_run(
        args.run_dir,
        format=args.format,
        out=args.out,
        weights=args.weights,
        data_dir=args.data_dir,
        images=args.images,
    )
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"wrote {r['path']} ({r['bytes'] / 1e6:.2f} MB, opset {r['opset']}, {r['num_params']:,} params)")
    if r["max_abs_diff"] is None:
        print("onnxruntime is not installed: not checked (pip install 'paraformer[export]')")
        print(f"batch-1 latency: PyTorch {r['torch_latency_ms']:.3f} ms")
    else:
        print(
            f"checked on {r['checked_images']} test images: max abs difference from PyTorch "
            f"{r['max_abs_diff']:.2e}"
        )
        print(
            f"batch-1 latency: onnxruntime {r['onnxruntime_latency_ms']:.3f} ms, "
            f"PyTorch {r['torch_latency_ms']:.3f} ms"
        )
    return 0


def _expand(args: argparse.Namespace) -> int:
    from paraformer.surgery_runs import expand_run

    given = {n: getattr(args, n) for n in args.config_fields if getattr(args, n) is not None}
    if "model" in given:
        raise ConfigError("expand keeps the run's model; drop --model.")
    classes = given.pop("classes", None)
    s = expand_run(
        args.run_dir,
        args.out,
        add_branches=args.add_branches,
        classes=classes,
        unfreeze=args.unfreeze,
        weights=args.weights,
        overrides=given,
        progress=not args.no_progress,
    )
    if s.get("interrupted"):
        return EXIT_INTERRUPTED
    e = s.get("expansion", {})
    parts = [
        f"done: {e.get('old_branches')} + {e.get('added_branches')} branches, {s['num_params']:,} params; "
        f"test accuracy {s['test_acc']:.2%} on the classes seen so far"
    ]
    if "test_acc_old_classes" in e:
        parts.append(
            f"old classes {e['test_acc_old_classes']:.2%} (before {e['test_acc_old_classes_before']:.2%}), "
            f"new classes {e['test_acc_new_classes']:.2%}"
        )
    print("; ".join(parts) + f"; run in {args.out}")
    return 0


def add_surgery_parsers(
    sub: Any, config_flags: Callable[..., list[str]], int_list: Callable[[str], tuple[int, ...]]
) -> None:
    """The ``compress``, ``export`` and ``expand`` sub-commands."""
    from paraformer.surgery import EXPORT_FORMATS
    from paraformer.surgery_runs import SELECTIONS, compress_run, expand_run, export_run
    from paraformer.train.config import TrainConfig

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir", type=Path, help="a run folder (trained, compressed or expanded)")
        p.add_argument(
            "--weights", default="best", choices=("best", "last"), help="best-validation or last weights"
        )

    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "compress",
        help="keep some branches of a ParaFormer run",
        description=compress_run.__doc__,
        formatter_class=fmt,
    )
    common(p)
    p.add_argument("--branches", type=int, metavar="K", help="keep K branches (chosen by --select)")
    p.add_argument("--indices", type=int_list, metavar="I,J,...", help="keep these branches, in this order")
    p.add_argument(
        "--select",
        default="prefix",
        choices=SELECTIONS,
        help="prefix: branches 1..K (default); greedy: add the branch that most lowers validation loss",
    )
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="E", help="then train the kept branches")
    p.add_argument("--finetune-lr", type=float, help="learning rate of fine-tuning (default: the run's / 10)")
    p.add_argument("--data-dir", help="where the dataset files are, if not where the run found them")
    p.add_argument("--out", type=Path, required=True, help="the new run folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_compress)

    p = sub.add_parser(
        "export", help="export a run's model (ONNX)", description=export_run.__doc__, formatter_class=fmt
    )
    common(p)
    p.add_argument(
        "--format", default="onnx", help=f"export format: {', '.join(EXPORT_FORMATS)} (default onnx)"
    )
    p.add_argument("--out", type=Path, help="the file to write (default RUN_DIR/model.onnx)")
    p.add_argument("--images", type=int, default=64, help="test images to check the export on (default 64)")
    p.add_argument("--data-dir", help="where the dataset files are, if not where the run found them")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "expand",
        help="add branches to a ParaFormer run and train them",
        description=expand_run.__doc__,
        formatter_class=fmt,
    )
    common(p)
    p.add_argument("--add-branches", type=int, required=True, metavar="M", help="branches to add")
    p.add_argument("--unfreeze", action="store_true", help="train the old branches and embedding too")
    fields = config_flags(p, TrainConfig)
    p.add_argument("--out", type=Path, required=True, help="the new run folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch only)")
    p.set_defaults(func=_expand, config_fields=fields)
