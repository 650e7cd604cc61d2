"""Reading finished runs and models: evaluation and a description of the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from paraformer.checkpoint import load_config, load_model, read_json
from paraformer.data import BatchTransform, ImageDataset, load_dataset
from paraformer.errors import CheckpointError, ConfigError
from paraformer.models import build_model, is_branched, select_branches
from paraformer.parallel.apply import apply_execution
from paraformer.parallel.distributed import init_from_env
from paraformer.registry import describe_model, get_config, list_models
from paraformer.train.checkpointing import BEST_DIR, SUMMARY_FILE, SavedRun, read_run
from paraformer.train.devices import compile_model, resolve_device
from paraformer.train.evaluate import evaluate
from paraformer.train.setup import seen_test_set, training_splits

SPLITS = ("test", "val")


def checkpoint_folder(run_dir: Path, weights: str) -> Path:
    """The folder holding the weights to use: ``best/`` (when present) or the run's latest."""
    if weights not in ("best", "last"):
        raise ConfigError(f"weights must be 'best' or 'last', got {weights!r}.")
    if weights == "best" and (run_dir / BEST_DIR / "model.safetensors").is_file():
        _check_best_matches_summary(run_dir)
        return run_dir / BEST_DIR
    return run_dir


def _check_best_matches_summary(run_dir: Path) -> None:
    summary_path, best_config = run_dir / SUMMARY_FILE, run_dir / BEST_DIR / "config.json"
    if not summary_path.is_file():
        return
    summary, best = read_json(summary_path), read_json(best_config)
    selected = summary.get("selected_epoch") if isinstance(summary, dict) else None
    on_disk = best.get("epoch") if isinstance(best, dict) else None
    if isinstance(selected, int) and isinstance(on_disk, int) and selected != on_disk:
        raise CheckpointError(
            f"{run_dir / BEST_DIR} holds epoch {on_disk} but the run selected epoch {selected} (it was "
            f"interrupted while saving); repair it with `paraformer train --resume --out {run_dir}`."
        )


def run_datasets(
    saved: SavedRun, data_dir: str | None, splits: tuple[str, ...] = SPLITS, *, progress: bool = False
) -> dict[str, ImageDataset]:
    """The run's own validation and test images (the same seeded split and classes as in training)."""
    cfg = saved.train_cfg
    loaded = load_dataset(cfg.dataset, data_dir or cfg.data_dir, progress=progress)
    out = {}
    if "val" in splits:
        out["val"] = training_splits(loaded.train, cfg)[1]
        if len(out["val"]) == 0:
            raise ConfigError(
                f"{saved.folder} was trained without a validation split (val_fraction=0); use the test split."
            )
    if "test" in splits:
        out["test"] = seen_test_set(loaded.test, cfg)
    return out


def run_transform(saved: SavedRun) -> BatchTransform:
    """The evaluation transform of a run: its normalisation, at its model's input size."""
    return BatchTransform(saved.data.mean, saved.data.std, out_size=saved.model_cfg.image_size)


def kept_params(model: nn.Module, branches: int | None) -> int:
    """Parameters a model needs when only its first ``branches`` branches are kept."""
    if branches is None or not is_branched(model):
        return sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in select_branches(model, branches).parameters())


def evaluate_run(
    run_dir: str | Path,
    *,
    branches: int | None = None,
    split: str = "test",
    weights: str = "best",
    data_dir: str | None = None,
    device: str = "auto",
    compile: bool = False,
    branch_exec: str = "loop",
    branch_parallel: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of a trained run on its dataset's test (or validation) split.

    ``branches=k`` evaluates a ParaFormer on its first k branches only; the
    parameter count reported is then that of the k-branch model. ``compile``
    runs the model through torch.compile (with CUDA graphs on a GPU). ``branch_exec``
    and ``branch_parallel`` run the branches stacked or split over the processes of a
    torchrun launch, as in training; the figures are the same.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}.")
    run_dir = Path(run_dir)
    folder = checkpoint_folder(run_dir, weights)
    saved = read_run(folder)
    cfg = saved.train_cfg
    model = load_model(folder, resolve_device(device))
    if branches is not None and not is_branched(model):
        raise ConfigError(f"--branches applies to ParaFormer models; {cfg.model} is a {model.cfg.family}.")
    if branches is not None:
        model.branches.resolve(branches)  # a bad count fails before the data loads
    dataset = run_datasets(saved, data_dir, (split,), progress=progress)[split]
    transform = run_transform(saved)
    num_params = kept_params(model, branches)
    ctx = init_from_env(branch_parallel, device)
    example = transform(dataset.images[: cfg.eval_batch_size], train=False)
    model = apply_execution(model, branch_exec, example, ctx=ctx, training=False, log=lambda _: None)
    if compile:
        compile_model(model, inference=True)
    result = evaluate(
        model,
        dataset,
        transform,
        batch_size=cfg.eval_batch_size,
        branches=branches,
        prefixes=True,
        progress=progress,
        desc=f"eval {split}",
    )
    return {
        "run": str(run_dir),
        "weights": "best" if folder != run_dir else "last",
        "epoch": saved.config_json.get("epoch"),
        "split": split,
        "branches": branches if branches is not None else getattr(model, "num_branches", None),
        "accuracy": result.accuracy,
        "loss": result.loss,
        "num_samples": result.num_samples,
        "num_params": num_params,
        "prefix_accuracy": result.prefix_accuracy or None,
    }


def model_info(name_or_dir: str | Path) -> dict[str, Any]:
    """Parameters, FLOPs per image and branch layout of a preset or a saved run."""
    path = Path(name_or_dir)
    if str(name_or_dir) in list_models():
        cfg, source, description = get_config(str(name_or_dir)), "preset", describe_model(str(name_or_dir))
        extra: dict[str, Any] = {}
    elif path.is_dir():
        cfg, _ = load_config(path)
        source, description = "run", ""
        extra = {"summary": read_json(path / SUMMARY_FILE)} if (path / SUMMARY_FILE).is_file() else {}
    else:
        get_config(str(name_or_dir))  # raises the unknown-model error with a suggestion
        raise AssertionError("unreachable")
    model = build_model(cfg)
    info: dict[str, Any] = {
        "name": str(name_or_dir),
        "source": source,
        "description": description,
        "family": cfg.family,
        "num_params": sum(p.numel() for p in model.parameters()),
        "flops_per_image": model.flops(),
        "num_layers": cfg.num_layers,
        "config": cfg.to_dict(),
        **extra,
    }
    if is_branched(model):
        per_branch = sum(p.numel() for p in model.branches[0].parameters())
        info["layout"] = {
            "num_branches": model.num_branches,
            "branch_depth": cfg.branch_depth,
            "params_per_branch": per_branch,
            "shared_params": info["num_params"] - sum(p.numel() for p in model.branches.parameters()),
            "params_with_k_branches": [kept_params(model, k) for k in range(1, model.num_branches + 1)],
        }
    return info
