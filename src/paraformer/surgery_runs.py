"""Surgery on run folders: what ``eval --sweep-branches``, ``compress``, ``export`` and ``expand`` do.

Each function reads a run folder, calls the pure functions of ``paraformer.surgery``
on its model with the run's own data splits (the same seeded validation split and
classes as in training), and writes a new folder or files. Selection (greedy
branches, the fine-tuning epoch) only ever reads the validation split; test figures
are measured after it, for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from paraformer.analysis.plots import plot_branches
from paraformer.checkpoint import load_model, read_json, save_weights, write_json
from paraformer.data import check_classes, select_classes
from paraformer.errors import ConfigError
from paraformer.models import build_model, count_params
from paraformer.runs import checkpoint_folder, run_datasets, run_transform
from paraformer.surgery import (
    check_export_format,
    compress,
    expand,
    export_onnx,
    greedy_order,
    require_image_paraformer,
    sweep,
)
from paraformer.train.checkpointing import SUMMARY_FILE, SavedRun, prepare_out_dir, read_run
from paraformer.train.evaluate import evaluate
from paraformer.train.expansion import train_expanded
from paraformer.train.loop import Trainer
from paraformer.train.setup import prepare

Log = Callable[[str], None]
SELECTIONS = ("prefix", "greedy")
BRANCHES_JSON, BRANCHES_PNG = "branches.json", "branches.png"


def _load(run_dir: str | Path, weights: str) -> tuple[Path, SavedRun, nn.Module]:
    folder = checkpoint_folder(Path(run_dir), weights)
    return folder, read_run(folder), load_model(folder).eval()


def sweep_run(
    run_dir: str | Path,
    *,
    weights: str = "best",
    data_dir: str | None = None,
    latency: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """For k = 1..N: validation and test accuracy, parameters, FLOPs and batch-1 latency.

    Writes ``branches.json`` and ``branches.png`` (accuracy against parameters, one
    point per k) into the run folder and returns ``{"rows": [...], ...}``.
    """
    run_dir = Path(run_dir)
    _, saved, model = _load(run_dir, weights)
    require_image_paraformer(model, "--sweep-branches")
    splits = ("val", "test") if saved.train_cfg.val_fraction > 0 else ("test",)
    data = run_datasets(saved, data_dir, splits, progress=progress)
    transform = run_transform(saved)
    rows = sweep(model, {s: (d, transform) for s, d in data.items()}, latency=latency)
    result = {
        "run": str(run_dir),
        "weights": weights,
        "model": saved.train_cfg.model,
        "dataset": saved.data.dataset,
        "num_branches": model.num_branches,
        "rows": rows,
    }
    write_json(run_dir / BRANCHES_JSON, result)
    plot_branches(rows, run_dir / BRANCHES_PNG, f"{saved.train_cfg.model}: first k branches")
    return {**result, "json": str(run_dir / BRANCHES_JSON), "png": str(run_dir / BRANCHES_PNG)}


def compress_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    branches: int | Sequence[int],
    select: str = "prefix",
    finetune_epochs: int = 0,
    finetune_lr: float | None = None,
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
    default a tenth of the run's lr; the best-validation epoch is kept). The folder
    loads like any run (``eval``, ``info``, ``export``); its ``summary.json`` holds the
    compression ratios against the full model and against its parameter-matched ViT
    twin, and validation and test accuracy of the kept model (and, with ``compare_full``,
    of the full model).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if select not in SELECTIONS:
        raise ConfigError(f"select must be one of {SELECTIONS}, got {select!r}.")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be an integer >= 0, got {finetune_epochs!r}.")
    _, saved, model = _load(run_dir, weights)
    require_image_paraformer(model, "compression")
    indices = model.branches.resolve(branches)  # a bad K or bad indices fail before any data loads
    if select == "greedy" and not isinstance(branches, int):
        raise ConfigError("--select greedy chooses the branches itself; give --branches K, not indices.")
    if saved.train_cfg.val_fraction == 0 and (select == "greedy" or finetune_epochs):
        raise ConfigError(
            f"{run_dir} was trained without a validation split (val_fraction=0), so greedy selection "
            "and fine-tuning have nothing to select on; use --select prefix without --finetune-epochs."
        )
    prepare_out_dir(out_dir)
    transform = run_transform(saved)
    val = run_datasets(saved, data_dir, ("val",))["val"] if saved.train_cfg.val_fraction > 0 else None
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
    }
    cfg = saved.train_cfg
    if finetune_epochs:
        lr = finetune_lr if finetune_lr is not None else cfg.lr / 10
        cfg = cfg.replace(epochs=finetune_epochs, lr=lr, warmup_fraction=0.0, warmup_epochs=None, max_steps=None)
        setup = prepare(cfg, log, progress, model=small)
        trainer = Trainer(setup, out_dir, log=log, progress=progress, command=None)
        trainer.folder.config_json["compressed_from"] = record
        trainer.run()
        small = load_model(checkpoint_folder(out_dir, "best")).eval()
    else:
        extra = {k: v for k, v in saved.config_json.items() if k != "model"}
        save_weights(out_dir, small.state_dict(), small.cfg, {**extra, "compressed_from": record})
    test = run_datasets(saved, data_dir, ("test",))["test"]  # read after everything is chosen
    for name, net in (("full", model), ("kept", small))[0 if compare_full else 1 :]:
        for split, data in (("val", val), ("test", test)):
            if data is not None:
                acc = evaluate(net, data, transform, batch_size=cfg.eval_batch_size).accuracy
                record[f"{split}_acc" if name == "kept" else f"full_{split}_acc"] = acc
    summary_path = out_dir / SUMMARY_FILE
    summary = read_json(summary_path) if summary_path.is_file() else {}
    write_json(summary_path, {**summary, "compression": record})
    return {**record, "out": str(out_dir)}


def export_run(
    run_dir: str | Path,
    *,
    format: str = "onnx",
    out: str | Path | None = None,
    weights: str = "best",
    data_dir: str | None = None,
    images: int = 64,
) -> dict[str, Any]:
    """Export a run's model (any image preset, compressed or not) and check it on real test images.

    Writes ``model.onnx`` in the run folder (or ``out``); the report holds the largest
    absolute difference from PyTorch's logits on ``images`` test images and the batch-1
    latency under onnxruntime beside PyTorch's.
    """
    check_export_format(format)
    run_dir = Path(run_dir)
    _, saved, model = _load(run_dir, weights)
    test = run_datasets(saved, data_dir, ("test",))["test"]
    example = run_transform(saved)(test.images[:images], train=False)
    path = Path(out) if out is not None else run_dir / "model.onnx"
    return {"run": str(run_dir), **export_onnx(model, path, example)}


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
    training settings of the run (epochs, lr, data_dir, limit_train...). Returns the
    summary, with test accuracy on the old and the new classes when ``classes`` is given.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _, saved, old = _load(run_dir, weights)
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
    prepare_out_dir(out_dir)
    new = expand(old, add_branches, num_classes, seed=cfg.seed)
    setup = prepare(cfg, log, progress, model=new)
    record = {
        "run": str(run_dir),
        "old_branches": old.num_branches,
        "added_branches": add_branches,
        "old_classes": old_seen,
        "new_classes": list(classes) if classes is not None else None,
        "unfreeze": unfreeze,
    }
    test, transform = setup.task.splits["test"], setup.task.transform
    summary = train_expanded(
        setup,
        out_dir,
        old.num_branches,
        unfreeze=unfreeze,
        log=log,
        progress=progress,
        extra_config={"expanded_from": record},
    )
    if classes is not None and summary.get("epochs_completed"):
        trained = load_model(checkpoint_folder(out_dir, "best")).eval()
        old_test, new_test = select_classes(test, old_seen), select_classes(test, classes)
        bs = cfg.eval_batch_size
        record["test_acc_old_classes_before"] = evaluate(old, old_test, transform, batch_size=bs).accuracy
        record["test_acc_old_classes"] = evaluate(trained, old_test, transform, batch_size=bs).accuracy
        record["test_acc_new_classes"] = evaluate(trained, new_test, transform, batch_size=bs).accuracy
    if summary.get("epochs_completed"):
        summary = {**summary, "expansion": record}
        write_json(out_dir / SUMMARY_FILE, summary)
    return summary
