"""``paraformer expand``: grow a trained ParaFormer by new branches, trained on top of the old ones."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from paraformer.checkpoint import SUMMARY_FILE, checkpoint_folder, load_model, lock, read_summary
from paraformer.commands.flags import (
    EXIT_INTERRUPTED,
    config_flags,
    given_flags,
    int_in,
    progress_arg,
    weights_arg,
)
from paraformer.commands.runs import open_model
from paraformer.data import check_classes, select_classes
from paraformer.errors import ConfigError
from paraformer.files import write_json
from paraformer.launch import resume, train
from paraformer.surgery import expand
from paraformer.surgery.select import require_image_paraformer
from paraformer.tasks import open_run
from paraformer.tasks.image import TrainConfig, reopen, run_transform
from paraformer.tasks.image_eval import evaluate

Log = Callable[[str], None]


def expand_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    add_branches: int,
    classes: Sequence[int] | None = None,
    unfreeze: bool = False,
    weights: str = "best",
    overrides: dict[str, Any] | None = None,
    log: Log = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Add branches to a trained ParaFormer and train them on top of the frozen old ones.

    ``classes`` (class indices the run has not learned) restricts training to those
    classes, and the loss to their logits, and grows the head for them (class-incremental
    learning); the test split then holds every class seen so far. ``overrides`` change
    training settings of the run (epochs, lr, data_dir, limit_train...). The new run
    resumes like any run (``expand --resume --out DIR``). Returns the summary, with test
    accuracy on the old and the new classes when ``classes`` is given.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _, old, folder = open_model(run_dir, weights, task="image", kind="run", command="expand")
    saved = open_run(folder, task="image", kind="run")
    require_image_paraformer(old, "expansion")
    if isinstance(add_branches, bool) or not isinstance(add_branches, int) or add_branches < 1:
        raise ConfigError(f"--add-branches must be an integer >= 1, got {add_branches!r}.")
    base = saved.train_cfg
    old_seen = list(base.seen_classes or base.classes or range(old.cfg.num_classes))
    changes = dict(overrides or {})
    num_classes = None
    if classes is not None:
        classes = check_classes(classes)
        overlap = sorted(set(classes) & set(old_seen))
        if overlap:
            raise ConfigError(
                f"--classes: class(es) {overlap} were already learned by {run_dir} (classes {old_seen}); "
                "name new classes only, or leave out --classes to train on the run's own data."
            )
        changes.update(classes=tuple(classes), seen_classes=tuple(sorted({*old_seen, *classes})))
        num_classes = max(old.cfg.num_classes, max(classes) + 1)
    cfg = base.replace(**changes)
    new = expand(old, add_branches, num_classes, seed=cfg.seed)
    record = {
        "run": str(run_dir),
        "weights_folder": str(folder.resolve()),
        "old_branches": old.num_branches,
        "added_branches": add_branches,
        "old_classes": old_seen,
        "new_classes": list(classes) if classes is not None else None,
        "unfreeze": unfreeze,
    }
    summary = train(
        cfg,
        out_dir,
        model=new,
        objective={"first_branch": old.num_branches, "frozen_base": not unfreeze},
        extra_config={"expanded_from": record},
        log=log,
        progress=progress,
    )
    return finish_expansion(out_dir, summary, old)


def finish_expansion(out_dir: Path, summary: dict[str, Any], old: Any = None) -> dict[str, Any]:
    """Test the old and the new classes and write the ``expansion`` record into ``summary.json``."""
    if not summary.get("epochs_completed"):
        return summary
    saved = open_run(out_dir, task="image", kind="run")
    record = dict(saved.config_json["expanded_from"])
    classes = record.get("new_classes")
    if classes is not None:
        old = old if old is not None else load_model(Path(record["weights_folder"])).eval()
        trained = load_model(checkpoint_folder(out_dir, "best")).eval()
        test, transform = reopen(saved, None, ("test",))["test"], run_transform(saved)
        old_test, new_test = select_classes(test, record["old_classes"]), select_classes(test, classes)
        bs = saved.train_cfg.eval_batch_size
        record["test_acc_old_classes_before"] = evaluate(old, old_test, transform, batch_size=bs).accuracy
        record["test_acc_old_classes"] = evaluate(trained, old_test, transform, batch_size=bs).accuracy
        record["test_acc_new_classes"] = evaluate(trained, new_test, transform, batch_size=bs).accuracy
    summary = {**read_summary(out_dir), "expansion": record}
    with lock(out_dir):
        write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def _expand(args: argparse.Namespace) -> int:
    given = given_flags(args, args.config_fields)
    if args.resume:
        extra = sorted(set(given) - {"epochs", "max_steps"}) + (["add_branches"] if args.add_branches else [])
        if extra:
            raise ConfigError(
                f"--resume continues the expansion with its saved settings; drop {extra} "
                "(only --epochs and --max-steps may change)."
            )
        s = finish_expansion(args.out, resume(args.out, progress=not args.no_progress, **given))
    else:
        if args.run_dir is None or args.add_branches is None:
            raise ConfigError("give the run folder and --add-branches M (or --resume --out DIR to continue).")
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


def register(sub: Any, lm: Any) -> None:
    p = sub.add_parser(
        "expand",
        help="add branches to a ParaFormer run and train them",
        description=expand_run.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, nargs="?", help="a run folder (trained, compressed or expanded)")
    weights_arg(p)
    p.add_argument("--add-branches", type=int_in(1, 4096), metavar="M", help="branches to add")
    p.add_argument("--unfreeze", action="store_true", help="train the old branches and embedding too")
    fields = config_flags(p, TrainConfig)
    p.add_argument("--out", type=Path, required=True, help="the new run folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted expansion in --out")
    progress_arg(p)
    p.set_defaults(func=_expand, config_fields=fields)
