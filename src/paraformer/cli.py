"""The ``paraformer`` command line: a thin layer over documented Python functions.

    paraformer train [--model M] [--dataset D] [--mode fused|progressive|joint] ...
    paraformer eval RUN_DIR [--branches K] [--json]
    paraformer info MODEL_OR_RUN [--json]
    paraformer list-models

Problems with the input end in a one-line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from paraformer.errors import ParaformerError
from paraformer.train.config import (
    MODES,
    OPTIMIZERS,
    PREFIX_WEIGHTS,
    TrainConfig,
    list_recipes,
    load_recipe,
)

EXIT_USAGE = 2

# TrainConfig fields that have a flag of the same name (``--batch-size`` -> batch_size).
_TRAIN_FLAGS: tuple[str, ...] = (
    "model",
    "dataset",
    "data_dir",
    "mode",
    "prefix_weights",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "grad_clip",
    "label_smoothing",
    "bf16",
    "strong_augment",
    "strong_ops",
    "strong_magnitude",
    "crop_padding",
    "seed",
    "val_fraction",
    "limit_train",
    "device",
    "save_every_minutes",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit with code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set takes FIELD=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _train_command(args: argparse.Namespace) -> int:
    from paraformer.train import resume, train

    given = {name: getattr(args, name) for name in _TRAIN_FLAGS if getattr(args, name) is not None}
    overrides = dict(args.set or [])
    if args.resume:
        if args.out is None:
            raise ParaformerError("--resume needs --out DIR, the folder of the run to continue.")
        extra = sorted(set(given) - {"epochs"}) + (["--set"] if overrides else [])
        extra += ["--config"] if args.config else []
        if extra:
            raise ParaformerError(
                f"--resume continues the run with its saved settings; drop {', '.join(extra)} "
                "(only --epochs may change) or start a new run with another --out."
            )
        summary = resume(args.out, epochs=given.get("epochs"), progress=not args.no_progress)
    else:
        base = load_recipe(args.config) if args.config else {}
        model_overrides = {**base.pop("model_overrides", {}), **overrides}
        cfg = TrainConfig.from_dict({**base, **given, "model_overrides": model_overrides})
        out = (
            args.out
            or Path("runs") / f"{cfg.model}-{cfg.dataset.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        summary = train(cfg, out, progress=not args.no_progress)
        args.out = out
    if summary.get("interrupted"):
        return 130
    if summary.get("epochs_completed"):
        prefix = summary.get("final_test_acc_prefix")
        branches = f", first branch alone {prefix[0]:.1%}" if prefix else ""
        print(
            f"done: {summary['model']} ({summary['mode']}) {summary['num_params']:,} params, "
            f"final test accuracy {summary['final_test_acc']:.2%} (best-val epoch {summary['best_epoch']}: "
            f"{summary['best_test_acc']:.2%}){branches}, {summary['train_seconds']:.0f}s training, "
            f"run in {args.out}"
        )
    return 0


def _eval_command(args: argparse.Namespace) -> int:
    from paraformer.runs import evaluate_run

    result = evaluate_run(
        args.run_dir,
        branches=args.branches,
        split=args.split,
        weights=args.weights,
        data_dir=args.data_dir,
        device=args.device,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    branches = f" with {result['branches']} branch(es)" if result["branches"] else ""
    print(
        f"{result['run']} ({result['weights']} weights){branches}: {result['split']} accuracy "
        f"{result['accuracy']:.2%} on {result['num_samples']:,} images, loss {result['loss']:.4f}, "
        f"{result['num_params']:,} params"
    )
    if result["prefix_accuracy"] and args.branches is None:
        print(
            "accuracy with the first k branches: "
            + "  ".join(f"k={k}: {100 * a:.1f}%" for k, a in enumerate(result["prefix_accuracy"], start=1))
        )
    return 0


def _info_command(args: argparse.Namespace) -> int:
    from paraformer.runs import model_info

    info = model_info(args.model_or_run)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['name']} ({info['family']}, {info['source']}) {info['description']}".rstrip())
    cfg = info["config"]
    print(
        f"  input {cfg['in_channels']}x{cfg['image_size']}x{cfg['image_size']}, patch {cfg['patch_size']}, "
        f"dim {cfg['dim']}, heads {cfg['heads']}, MLP {cfg['mlp_dim']}, {cfg['num_classes']} classes"
    )
    print(
        f"  parameters {info['num_params']:,}; forward FLOPs per image {info['flops_per_image'] / 1e6:,.1f}M"
    )
    layout = info.get("layout")
    if layout:
        print(
            f"  branches {layout['num_branches']} x depth {layout['branch_depth']}: "
            f"{layout['params_per_branch']:,} params per branch, {layout['shared_params']:,} shared"
        )
        print(
            "  params with the first k branches: "
            + ", ".join(
                f"k={k}: {n / 1e6:.2f}M" for k, n in enumerate(layout["params_with_k_branches"], start=1)
            )
        )
    else:
        print(f"  {info['num_layers']} blocks in sequence")
    if "summary" in info:
        s = info["summary"]
        print(
            f"  trained {s['epochs_completed']}/{s['epochs']} epochs on {s['dataset']} ({s['mode']}): "
            f"final test accuracy {s['final_test_acc']:.2%}"
        )
    return 0


def _list_models_command(args: argparse.Namespace) -> int:
    from paraformer.models import build_model
    from paraformer.registry import describe_model, get_config, list_models

    for name in list_models():
        params = build_model(get_config(name)).num_params()
        print(f"{name:26s} {params / 1e6:6.2f}M  {describe_model(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from paraformer.runs import evaluate_run, model_info
    from paraformer.train.loop import train as train_fn

    parser = _Parser(
        prog="paraformer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version="paraformer 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    defaults = TrainConfig()

    p = sub.add_parser("train", help="train a model", description=train_fn.__doc__)
    p.add_argument(
        "--config",
        metavar="FILE_OR_RECIPE",
        help="start from a JSON file of training settings (or a run's config.json) or a shipped "
        f"recipe ({', '.join(list_recipes())}); other flags override it",
    )
    p.add_argument("--model", help=f"preset name (default {defaults.model}; see list-models)")
    p.add_argument(
        "--dataset",
        help="embedded (default, no files needed), fashion-mnist, cifar10, cifar100 or imagefolder:PATH",
    )
    p.add_argument("--data-dir", help="folder holding the dataset files (default $PARAFORMER_DATA_DIR)")
    p.add_argument("--mode", choices=MODES, help=f"ParaFormer training schedule (default {defaults.mode})")
    p.add_argument(
        "--prefix-weights", choices=PREFIX_WEIGHTS, help="weights of the prefix losses in fused mode"
    )
    p.add_argument("--epochs", type=int, help=f"number of epochs (default {defaults.epochs})")
    p.add_argument("--batch-size", type=int, help=f"default {defaults.batch_size}")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {defaults.optimizer}")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {defaults.lr:g})")
    p.add_argument("--weight-decay", type=float, help=f"default {defaults.weight_decay:g}")
    p.add_argument(
        "--warmup-epochs", type=float, help=f"linear warmup, then cosine (default {defaults.warmup_epochs:g})"
    )
    p.add_argument(
        "--grad-clip", type=float, help=f"max gradient norm, 0 = off (default {defaults.grad_clip:g})"
    )
    p.add_argument("--label-smoothing", type=float, help="default 0")
    p.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast (CPU and CUDA)")
    p.add_argument(
        "--strong-augment", action="store_true", default=None, help="add a RandAugment-style policy"
    )
    p.add_argument("--strong-ops", type=int, help="RandAugment N, operations per image (default 2)")
    p.add_argument("--strong-magnitude", type=int, help="RandAugment M, 0-30 (default 9; the paper uses 14)")
    p.add_argument(
        "--crop-padding",
        type=int,
        help="random-crop padding in pixels, 0 = off (default: input/8 for natural images, else input/16)",
    )
    p.add_argument("--seed", type=int, help="random seed (default 0); runs are deterministic per seed")
    p.add_argument(
        "--val-fraction",
        type=float,
        help=f"train images held out for validation (default {defaults.val_fraction:g})",
    )
    p.add_argument("--limit-train", type=int, help="use only N training images (class-balanced)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument(
        "--save-every-minutes", type=float, help="also checkpoint mid-epoch this often (default 5)"
    )
    p.add_argument(
        "--set",
        action="append",
        type=_parse_override,
        metavar="FIELD=VALUE",
        help="override a model config field, e.g. --set num_branches=8 (repeatable)",
    )
    p.add_argument("--out", type=Path, help="run folder (default runs/<model>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch only)")
    p.set_defaults(func=_train_command)

    p = sub.add_parser("eval", help="evaluate a trained run", description=evaluate_run.__doc__)
    p.add_argument("run_dir", type=Path, help="a run folder written by `paraformer train`")
    p.add_argument("--branches", type=int, help="use only the first K branches (ParaFormer)")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument(
        "--weights", default="best", choices=("best", "last"), help="best-validation or last weights"
    )
    p.add_argument("--data-dir", help="where the dataset files are, if not where the run found them")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval_command)

    p = sub.add_parser("info", help="describe a preset or a run", description=model_info.__doc__)
    p.add_argument("model_or_run", help="a preset name or a run folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_info_command)

    p = sub.add_parser("list-models", help="list the model presets", description="List the model presets.")
    p.set_defaults(func=_list_models_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``paraformer`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ParaformerError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
