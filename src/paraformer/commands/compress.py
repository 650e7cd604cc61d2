"""``paraformer compress``: keep some branches of a trained ParaFormer (and fine-tune them)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from paraformer.checkpoint import (
    SUMMARY_FILE,
    checkpoint_folder,
    load_model,
    lock,
    prepare_out_dir,
    read_summary,
    save_weights,
    weights_are_finite,
)
from paraformer.commands.flags import (
    EXIT_INTERRUPTED,
    int_in,
    int_list,
    number_in,
    progress_arg,
    weights_arg,
)
from paraformer.commands.runs import image_splits, open_model
from paraformer.data import ImageDataset
from paraformer.errors import ConfigError
from paraformer.files import write_json
from paraformer.launch import resume, train
from paraformer.models import build_model, count_params
from paraformer.surgery import compress, greedy_order
from paraformer.surgery.select import require_image_paraformer
from paraformer.tasks import open_run
from paraformer.tasks.image import run_transform
from paraformer.tasks.image_eval import evaluate

Log = Callable[[str], None]
SELECTIONS = ("prefix", "greedy")


def compress_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    branches: int | Sequence[int],
    select: str = "prefix",
    finetune_epochs: int = 0,
    finetune_lr: float | None = None,
    distill: float = 0.0,
    distill_temperature: float = 2.0,
    weights: str = "best",
    data_dir: str | None = None,
    compare_full: bool = True,
    log: Log = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a run folder holding only some branches of a trained ParaFormer (plus embedding and head).

    ``branches`` is K (with ``select="prefix"`` the first K, with ``"greedy"`` the K that
    greedy selection on the validation split picks, in its order) or a list of indices.
    ``finetune_epochs`` then trains the kept branches briefly (at ``finetune_lr``,
    default a tenth of the run's lr; the best-validation epoch is kept), with
    ``distill`` > 0 adding that weight of distillation from the full model's logits.
    A fine-tuning run resumes like any run (``compress --resume --out DIR``). The
    folder loads like any run (``eval``, ``info``, ``export``); its ``summary.json``
    holds the compression ratios against the full model and against its
    parameter-matched ViT twin, and validation and test accuracy of the kept model
    (and, with ``compare_full``, of the full model).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if select not in SELECTIONS:
        raise ConfigError(f"select must be one of {SELECTIONS}, got {select!r}.")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be an integer >= 0, got {finetune_epochs!r}.")
    if distill and not finetune_epochs:
        raise ConfigError("--distill applies to fine-tuning; add --finetune-epochs E or drop --distill.")
    saved, model, folder = open_model(run_dir, weights, task="image", kind="run", command="compress")
    require_image_paraformer(model, "compression")
    if not weights_are_finite(model):
        raise ConfigError(
            f"{folder} holds non-finite (NaN or inf) weights; there is nothing sound to compress."
        )
    indices = model.branches.resolve(branches)  # a bad K or bad indices fail before any data loads
    if select == "greedy" and not isinstance(branches, int):
        raise ConfigError("--select greedy chooses the branches itself; give --branches K, not indices.")
    if saved.train_cfg.val_fraction == 0 and (select == "greedy" or finetune_epochs):
        raise ConfigError(
            f"{run_dir} was trained without a validation split (val_fraction=0), so greedy selection "
            "and fine-tuning have nothing to select on; use --select prefix without --finetune-epochs."
        )
    transform = run_transform(saved)
    val = image_splits(saved, data_dir, ("val",))["val"] if saved.train_cfg.val_fraction > 0 else None
    with lock(out_dir):
        prepare_out_dir(out_dir)
    if select == "greedy":
        indices = greedy_order(model, (val, transform), branches=len(indices))
        log(f"greedy order on the validation split: {indices}")
    small = compress(model, indices)
    full_params, kept = count_params(model), count_params(small)
    twin_params = count_params(build_model(model.cfg.vit_twin()))
    record = {
        "run": str(run_dir),
        "weights": weights,
        "select": select,
        "branches": indices,
        "of_branches": model.num_branches,
        "full_params": full_params,
        "vit_twin_params": twin_params,
        "num_params": kept,
        "ratio_vs_full": full_params / kept,
        "ratio_vs_vit_twin": twin_params / kept,
        "finetune_epochs": finetune_epochs,
        "distill": distill,
    }
    cfg = saved.train_cfg
    if finetune_epochs:
        lr = finetune_lr if finetune_lr is not None else cfg.lr / 10
        cfg = cfg.replace(
            epochs=finetune_epochs,
            lr=lr,
            warmup_fraction=0.0,
            warmup_epochs=None,
            max_steps=None,
            data_dir=data_dir or cfg.data_dir,
        )
        parts = (
            [
                {
                    "name": "distillation",
                    "teacher": str(folder.resolve()),
                    "weight": distill,
                    "temperature": distill_temperature,
                    "classes": None,
                }
            ]
            if distill
            else []
        )
        summary = train(
            cfg,
            out_dir,
            model=small,
            objective={"parts": parts},
            extra_config={"compressed_from": record},
            log=log,
            progress=progress,
        )
        if summary.get("interrupted"):
            return {**summary, "out": str(out_dir)}
    else:
        extra = {k: v for k, v in saved.config_json.items() if k != "model"}
        with lock(out_dir):
            save_weights(out_dir, small.state_dict(), small.cfg, {**extra, "compressed_from": record})
    return finish_compression(out_dir, data_dir, compare_full, model=model, val=val)


def finish_compression(
    out_dir: Path,
    data_dir: str | None,
    compare_full: bool = True,
    *,
    model: Any = None,
    val: ImageDataset | None = None,
) -> dict[str, Any]:
    """Test the kept model (and the full one) and write the ``compression`` record into ``summary.json``."""
    saved = open_run(out_dir, task="image", kind="run")
    record = dict(saved.config_json["compressed_from"])
    small = load_model(checkpoint_folder(out_dir, "best")).eval()
    source = Path(record["run"])
    compare_full = compare_full and (model is not None or source.is_dir())
    if model is None and compare_full:
        model = load_model(checkpoint_folder(source, record["weights"])).eval()
    transform, bs = run_transform(saved), saved.train_cfg.eval_batch_size
    if val is None and saved.train_cfg.val_fraction > 0:
        val = image_splits(saved, data_dir, ("val",))["val"]
    test = image_splits(saved, data_dir, ("test",))["test"]  # read after everything is chosen
    for name, net in (("full", model), ("kept", small))[0 if compare_full else 1 :]:
        for split, data in (("val", val), ("test", test)):
            if data is not None:
                acc = evaluate(net, data, transform, batch_size=bs).accuracy
                record[f"{split}_acc" if name == "kept" else f"full_{split}_acc"] = acc
    with lock(out_dir):
        write_json(out_dir / SUMMARY_FILE, {**read_summary(out_dir), "compression": record})
    return {**record, "out": str(out_dir)}


def _compress(args: argparse.Namespace) -> int:
    if args.resume:
        summary = resume(args.out, progress=not args.no_progress)
        if summary.get("interrupted"):
            return EXIT_INTERRUPTED
        r = finish_compression(args.out, args.data_dir)
    else:
        if args.run_dir is None:
            raise ConfigError(
                "give the run folder to compress (or --resume --out DIR to continue a fine-tune)."
            )
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
            distill=args.distill,
            distill_temperature=args.distill_temperature,
            weights=args.weights,
            data_dir=args.data_dir,
            progress=not args.no_progress,
        )
        if r.get("interrupted"):
            return EXIT_INTERRUPTED
    val = f", validation {r['val_acc']:.2%} (full {r['full_val_acc']:.2%})" if "full_val_acc" in r else ""
    print(
        f"done: kept branches {r['branches']} of {r['of_branches']} ({r['select']}"
        f"{', fine-tuned' if r['finetune_epochs'] else ''}): {r['num_params']:,} params, "
        f"{r['ratio_vs_full']:.2f}x smaller than the full model ({r['full_params']:,}), "
        f"{r['ratio_vs_vit_twin']:.2f}x smaller than its ViT twin ({r['vit_twin_params']:,}); "
        f"test accuracy {r['test_acc']:.2%} (full {r['full_test_acc']:.2%}){val}; run in {r['out']}"
    )
    return 0


def register(sub: Any, lm: Any) -> None:
    p = sub.add_parser(
        "compress",
        help="keep some branches of a ParaFormer run",
        description=compress_run.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, nargs="?", help="a run folder (trained, compressed or expanded)")
    weights_arg(p)
    p.add_argument(
        "--branches", type=int_in(1, 4096), metavar="K", help="keep K branches (chosen by --select)"
    )
    p.add_argument("--indices", type=int_list, metavar="I,J,...", help="keep these branches, in this order")
    p.add_argument(
        "--select",
        default="prefix",
        choices=SELECTIONS,
        help="prefix: branches 1..K (default); greedy: add the branch that most lowers validation loss",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int_in(0, 1 << 20),
        default=0,
        metavar="E",
        help="then train the kept branches",
    )
    p.add_argument(
        "--finetune-lr",
        type=number_in(0, low_open=True),
        help="learning rate of fine-tuning (default: the run's / 10)",
    )
    p.add_argument(
        "--distill",
        type=number_in(0),
        default=0.0,
        metavar="W",
        help="fine-tune with this weight of distillation from the full model's logits (default 0: off)",
    )
    p.add_argument(
        "--distill-temperature",
        type=number_in(0, low_open=True),
        default=2.0,
        metavar="T",
        help="temperature of the distillation (default 2)",
    )
    p.add_argument("--data-dir", help="where the dataset files are, if not where the run found them")
    p.add_argument("--out", type=Path, required=True, help="the new run folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted fine-tune in --out")
    progress_arg(p)
    p.set_defaults(func=_compress)
