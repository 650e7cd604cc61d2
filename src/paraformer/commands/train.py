"""``paraformer train`` and ``paraformer lm train``: one verb, two tasks, the same parser machinery.

The flags are generated from the task's training config (``TrainConfig`` for images,
``LMTrainConfig`` for text); ``--resume`` continues a run with its saved settings
(only ``--epochs``/``--max-steps`` may change, ``--data-dir`` may point to moved data).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from paraformer.commands.flags import (
    EXIT_INTERRUPTED,
    config_flags,
    given_flags,
    is_other_rank,
    progress_arg,
    set_arg,
)
from paraformer.errors import ParaformerError
from paraformer.launch import RELOCATION_FIELDS, RESUMABLE_FIELDS, resume, train
from paraformer.tasks.image import TrainConfig
from paraformer.tasks.text import LMTrainConfig
from paraformer.train.config import list_recipes, load_recipe


def add_train_parser(sub: Any, name: str, cls: type, help_text: str, out_help: str) -> None:
    """A ``train`` verb for the task whose training config is ``cls``."""
    p = sub.add_parser(name, help=help_text, description=train.__doc__)
    if cls is TrainConfig:
        p.add_argument(
            "--config",
            metavar="FILE_OR_RECIPE",
            help="start from a JSON file of training settings (or a run's config.json) or a shipped "
            f"recipe ({', '.join(list_recipes())}); other flags override it",
        )
    fields = config_flags(p, cls)
    set_arg(p)
    p.add_argument("--out", type=Path, help=out_help)
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    progress_arg(p)
    p.set_defaults(func=run_train, config_fields=fields, config_class=cls)


def run_train(args: argparse.Namespace) -> int:
    """Train (or resume) and print the one-line summary."""
    cls = args.config_class
    given = given_flags(args, args.config_fields)
    overrides = dict(args.set or [])
    recipe = getattr(args, "config", None)
    if "warmup_epochs" in given:
        print(
            "note: --warmup-epochs is deprecated; use --warmup-fraction (warmup as a fraction of all steps)"
        )
    if args.resume:
        if args.out is None:
            raise ParaformerError("--resume needs --out DIR, the folder of the run to continue.")
        allowed = RESUMABLE_FIELDS + RELOCATION_FIELDS
        extra = [f"--{k.replace('_', '-')}" for k in sorted(set(given) - set(allowed))]
        extra += (["--set"] if overrides else []) + (["--config"] if recipe else [])
        if extra:
            raise ParaformerError(
                f"--resume continues the run with its saved settings; drop {', '.join(extra)} "
                "(only --epochs and --max-steps may change) or start a new run with another --out."
            )
        location = given.pop("data_dir", None) or given.pop("data", None)
        if location is not None and cls is LMTrainConfig:
            location = str(Path(location).expanduser().resolve().parent)  # the folder the text is in now
        summary = resume(args.out, progress=not args.no_progress, data_dir=location, **given)
    else:
        base = load_recipe(recipe, cls) if recipe else {}
        model_overrides = {**base.pop("model_overrides", {}), **overrides}
        cfg = cls.from_dict({**base, **given, "model_overrides": model_overrides})
        args.out = args.out or default_out(cfg)
        summary = train(cfg, args.out, progress=not args.no_progress)
    if summary.get("interrupted"):
        return EXIT_INTERRUPTED
    if summary.get("epochs_completed") and not is_other_rank():
        print(summary_line(summary, args.out))
    return 0


def default_out(cfg: Any) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if isinstance(cfg, LMTrainConfig):
        return Path("runs") / f"lm-{cfg.model or 'default'}-{Path(cfg.data).stem}-{stamp}"
    return Path("runs") / f"{cfg.model or 'auto'}-{cfg.dataset.split(':')[0]}-{stamp}"


def summary_line(s: dict[str, Any], out: Path) -> str:
    """The one line printed at the end of training: what was selected, and its test figures."""
    if "test_acc" not in s and "val_acc" not in s:
        return lm_summary_line(s, out)
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


def lm_summary_line(s: dict[str, Any], out: Path) -> str:
    """The one line printed at the end of a language-model run."""
    parts = [f"done: {s['model']} ({s['mode']}) {s['num_params']:,} params, {s['steps']} steps"]
    for split, name in (("val", "validation"), ("test", "test")):
        if isinstance(s.get(f"{split}_loss"), float):
            parts.append(
                f"{name} loss {s[f'{split}_loss']:.4f} (perplexity {s[f'{split}_ppl']:.2f}, "
                f"{s[f'{split}_bpc']:.3f} bits/char)"
            )
    parts.append(f"{s['train_seconds']:.0f}s training; run in {out}")
    return "; ".join(parts)


def register(sub: Any, lm: Any) -> None:
    add_train_parser(
        sub, "train", TrainConfig, "train a model", "run folder (default runs/<model>-<dataset>-<time>)"
    )
    add_train_parser(
        lm,
        "train",
        LMTrainConfig,
        "train a language model on a UTF-8 text file",
        "run folder (default runs/lm-<model>-<text>-<time>)",
    )
