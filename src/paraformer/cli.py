"""The ``paraformer`` command line: a thin layer over documented Python functions.

    paraformer train [--model M] [--dataset D] [--mode fused|progressive|joint] ...
    paraformer eval RUN_DIR [--branches K | --sweep-branches] [--json]
    paraformer compress RUN_DIR --branches K [--select prefix|greedy] [--finetune-epochs E] --out DIR
    paraformer export RUN_DIR --format onnx
    paraformer expand RUN_DIR --add-branches M [--classes 5,6] [--epochs E] [--unfreeze] --out DIR
    paraformer info MODEL_OR_RUN [--json]
    paraformer list-models
    paraformer lm train | eval | sample | gfa | prune   (language models; see `paraformer lm -h`)

Problems with the input end in a one-line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any, NoReturn

from paraformer.errors import ParaformerError
from paraformer.train.config import LoopConfig, TrainConfig, list_recipes, load_recipe

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
RESUMABLE_FIELDS = ("epochs", "max_steps")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit with code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


# ---------------------------------------------------------------------------- flags from configs


def config_flags(parser: argparse.ArgumentParser, cls: type[LoopConfig]) -> list[str]:
    """Add one flag per CLI field of the config dataclass ``cls``; return the field names.

    The flag, its type, choices and help text all come from the field, so a new field
    appears in ``--help`` without a second edit. Booleans get ``--x/--no-x``.
    """
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", False):
            continue
        kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default is None or "default" in meta["help"] else f" (default {default})"
        kwargs: dict[str, Any] = {"help": meta["help"] + shown, "default": None, "dest": f.name}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kwargs["type"] = int_list
            kwargs["metavar"] = meta.get("metavar") or "I,J,..."
        else:
            kwargs["type"] = kind
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
        names.append(f.name)
    return names


def int_list(text: str) -> tuple[int, ...]:
    """``"5,6"`` -> ``(5, 6)``: a comma-separated list of integers (``""`` is the empty list)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 5,6, got {text!r}"
        ) from None


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set takes FIELD=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def given_flags(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


# ---------------------------------------------------------------------------- commands


def _train_command(args: argparse.Namespace) -> int:
    from paraformer.train import resume, train

    given = given_flags(args, args.config_fields)
    overrides = dict(args.set or [])
    if args.resume:
        if args.out is None:
            raise ParaformerError("--resume needs --out DIR, the folder of the run to continue.")
        extra = [f"--{k.replace('_', '-')}" for k in sorted(set(given) - set(RESUMABLE_FIELDS))]
        extra += (["--set"] if overrides else []) + (["--config"] if args.config else [])
        if extra:
            raise ParaformerError(
                f"--resume continues the run with its saved settings; drop {', '.join(extra)} "
                "(only --epochs and --max-steps may change) or start a new run with another --out."
            )
        summary = resume(args.out, progress=not args.no_progress, **given)
    else:
        base = load_recipe(args.config) if args.config else {}
        model_overrides = {**base.pop("model_overrides", {}), **overrides}
        cfg = TrainConfig.from_dict({**base, **given, "model_overrides": model_overrides})
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = args.out or Path("runs") / f"{cfg.model or 'auto'}-{cfg.dataset.split(':')[0]}-{stamp}"
        summary = train(cfg, args.out, progress=not args.no_progress)
    if summary.get("interrupted"):
        return EXIT_INTERRUPTED
    if summary.get("epochs_completed") and not _other_rank():
        print(summary_line(summary, args.out))
    return 0


def _other_rank() -> bool:
    """True in every process of a distributed launch but the first (which alone prints results)."""
    return os.environ.get("RANK", "0") not in ("", "0")


def summary_line(s: dict[str, Any], out: Path) -> str:
    """The one line printed at the end of training: what was selected, and its test figures."""
    prefix = s.get("test_acc_prefix")
    branches = f", first branch alone {prefix[0]:.1%}" if prefix else ""
    how = (
        f"best-validation epoch {s['selected_epoch']} (val {s['val_acc']:.2%})"
        if s["selection"].startswith("best")
        else f"last epoch {s['selected_epoch']}, no validation split"
    )
    return (
        f"done: {s['model']} ({s['mode']}) {s['num_params']:,} params; {how}: test accuracy "
        f"{s['test_acc']:.2%}{branches}; {s['train_seconds']:.0f}s training; run in {out}"
    )


def _eval_command(args: argparse.Namespace) -> int:
    from paraformer.runs import evaluate_run

    if args.sweep_branches:
        from paraformer.cli_surgery import sweep_command

        return sweep_command(args)
    result = evaluate_run(
        args.run_dir,
        branches=args.branches,
        split=args.split,
        weights=args.weights,
        data_dir=args.data_dir,
        device=args.device,
        compile=args.compile,
        branch_exec=args.branch_exec,
        branch_parallel=args.branch_parallel,
        progress=not args.json and not _other_rank(),
    )
    if _other_rank():
        return 0
    if args.json:
        print(json.dumps(result))
        return 0
    branches = f" with {result['branches']} branch(es)" if result["branches"] else ""
    epoch = f", epoch {result['epoch']}" if result.get("epoch") else ""
    print(
        f"{result['run']} ({result['weights']} weights{epoch}){branches}: {result['split']} accuracy "
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
    if "image_size" in cfg:
        print(
            f"  input {cfg['in_channels']}x{cfg['image_size']}x{cfg['image_size']}, "
            f"patch {cfg['patch_size']}, "
            f"dim {cfg['dim']}, heads {cfg['heads']}, MLP {cfg['mlp_dim']}, {cfg['num_classes']} classes"
        )
    print(
        f"  parameters {info['num_params']:,}; forward FLOPs per sample {info['flops_per_image'] / 1e6:,.1f}M"
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
    summary = info.get("summary")
    if isinstance(summary, dict) and "epochs_completed" in summary:
        acc = summary.get("test_acc", summary.get("final_test_acc"))
        acc_text = f": test accuracy {acc:.2%}" if isinstance(acc, (int, float)) else ""
        print(
            f"  trained {summary['epochs_completed']}/{summary.get('epochs')} epochs on "
            f"{summary.get('dataset')} ({summary.get('mode')}){acc_text}"
        )
    if isinstance(summary, dict) and isinstance(summary.get("compression"), dict):
        c = summary["compression"]
        print(
            f"  compressed from {c.get('run')}: branches {c.get('branches')} of {c.get('of_branches')} "
            f"({c.get('select')}), {c.get('ratio_vs_full', 0):.2f}x fewer parameters than the full model"
        )
    if isinstance(summary, dict) and isinstance(summary.get("expansion"), dict):
        e = summary["expansion"]
        classes = f", new classes {e['new_classes']}" if e.get("new_classes") else ""
        print(
            f"  expanded from {e.get('run')}: {e.get('old_branches')} frozen + "
            f"{e.get('added_branches')} new branches{classes}"
        )
    return 0


def _list_models_command(args: argparse.Namespace) -> int:
    from paraformer.models import build_model
    from paraformer.registry import describe_model, get_config, list_models

    for name in list_models():
        params = sum(p.numel() for p in build_model(get_config(name)).parameters())
        print(f"{name:26s} {params / 1e6:6.2f}M  {describe_model(name)}")
    return 0


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from paraformer import __version__
    from paraformer.runs import evaluate_run, model_info
    from paraformer.train import train as train_fn

    parser = _Parser(
        prog="paraformer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"paraformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model", description=train_fn.__doc__)
    p.add_argument(
        "--config",
        metavar="FILE_OR_RECIPE",
        help="start from a JSON file of training settings (or a run's config.json) or a shipped "
        f"recipe ({', '.join(list_recipes())}); other flags override it",
    )
    fields = config_flags(p, TrainConfig)
    p.add_argument(
        "--set",
        action="append",
        type=_parse_override,
        metavar="FIELD=VALUE",
        help="override a model config field, e.g. --set num_branches=8 (repeatable; VALUE is JSON)",
    )
    p.add_argument("--out", type=Path, help="run folder (default runs/<model>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch only)")
    p.set_defaults(func=_train_command, config_fields=fields)

    p = sub.add_parser("eval", help="evaluate a trained run", description=evaluate_run.__doc__)
    p.add_argument("run_dir", type=Path, help="a run folder written by `paraformer train`")
    p.add_argument("--branches", type=int, help="use only the first K branches (ParaFormer)")
    p.add_argument(
        "--sweep-branches",
        action="store_true",
        help="for k = 1..N: validation and test accuracy, parameters, FLOPs and batch-1 latency of the "
        "first k branches; writes branches.json and branches.png into the run folder",
    )
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument(
        "--weights", default="best", choices=("best", "last"), help="best-validation or last weights"
    )
    p.add_argument("--data-dir", help="where the dataset files are, if not where the run found them")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA graphs on a GPU)")
    p.add_argument(
        "--branch-exec",
        default="loop",
        choices=("loop", "stacked", "auto"),
        help="as for train (default loop)",
    )
    p.add_argument(
        "--branch-parallel",
        type=int,
        default=1,
        metavar="P",
        help="split the branches over P torchrun processes",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval_command)

    p = sub.add_parser("info", help="describe a preset or a run", description=model_info.__doc__)
    p.add_argument("model_or_run", help="a preset name or a run folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_info_command)

    p = sub.add_parser("list-models", help="list the model presets", description="List the model presets.")
    p.set_defaults(func=_list_models_command)

    from paraformer.cli_surgery import add_surgery_parsers

    add_surgery_parsers(sub, config_flags, int_list)

    from paraformer.cli_lm import add_lm_parser

    add_lm_parser(sub, config_flags, _parse_override)
    return parser


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (``paraformer list-models | head``): stop quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the final flush at exit cannot fail again
    except (OSError, ValueError):
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``paraformer`` command."""
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's exit flush
        return code
    except ParaformerError as err:
        rank = os.environ.get("RANK", "0")
        print(f"error{'' if rank in ('', '0') else f' (rank {rank})'}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        from paraformer.parallel.distributed import shutdown

        shutdown()  # a torchrun launch leaves its process group cleanly


if __name__ == "__main__":
    sys.exit(main())
