"""Reading finished runs and models: evaluation and a description of the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from paraformer.checkpoint import load_config, load_model, read_json
from paraformer.data import BatchTransform, load_dataset
from paraformer.errors import CheckpointError, ConfigError
from paraformer.models import ImageClassifier, ParaFormer, build_model
from paraformer.registry import describe_model, get_config, list_models
from paraformer.train.config import TrainConfig
from paraformer.train.evaluate import evaluate
from paraformer.train.loop import resolve_device, training_splits


def _checkpoint_folder(run_dir: Path, weights: str) -> Path:
    if weights not in ("best", "last"):
        raise ConfigError(f"weights must be 'best' or 'last', got {weights!r}.")
    if weights == "best" and (run_dir / "best" / "model.safetensors").is_file():
        return run_dir / "best"
    return run_dir


def kept_params(model: ImageClassifier, branches: int | None) -> int:
    """Parameters a model needs when only its first ``branches`` branches are kept."""
    if branches is None or not isinstance(model, ParaFormer):
        return model.num_params()
    unused = model.branches[len(model.branch_indices(branches)) :]
    return model.num_params() - sum(p.numel() for p in unused.parameters())


def evaluate_run(
    run_dir: str | Path,
    *,
    branches: int | None = None,
    split: str = "test",
    weights: str = "best",
    data_dir: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of a trained run on its dataset's test (or validation) split.

    ``branches=k`` evaluates a ParaFormer on its first k branches only; the
    parameter count reported is then that of the k-branch model.
    """
    run_dir = Path(run_dir)
    folder = _checkpoint_folder(run_dir, weights)
    _, saved = load_config(folder)
    if "train" not in saved or "data" not in saved:
        raise CheckpointError(
            f"{folder / 'config.json'} has no training/data section; it is not a training run."
        )
    cfg = TrainConfig.from_dict(saved["train"])
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}.")
    model = load_model(folder, resolve_device(device))
    if branches is not None and not isinstance(model, ParaFormer):
        raise ConfigError(f"--branches applies to ParaFormer models; {cfg.model} is a {model.cfg.family}.")
    splits = load_dataset(cfg.dataset, data_dir or cfg.data_dir, progress=progress)
    dataset = splits.test
    if split == "val":
        dataset = training_splits(splits.train, cfg)[1]
        if len(dataset) == 0:
            raise ConfigError(
                "this run was trained without a validation split (val_fraction=0); use --split test."
            )
    transform = BatchTransform(
        tuple(saved["data"]["mean"]), tuple(saved["data"]["std"]), out_size=model.cfg.image_size
    )
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
        "split": split,
        "branches": branches if branches is not None else getattr(model, "num_branches", None),
        "accuracy": result.accuracy,
        "loss": result.loss,
        "num_samples": result.num_samples,
        "num_params": kept_params(model, branches),
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
        extra = {"summary": read_json(path / "summary.json")} if (path / "summary.json").is_file() else {}
    else:
        get_config(str(name_or_dir))  # raises the unknown-model error with a suggestion
        raise AssertionError("unreachable")
    model = build_model(cfg)
    info: dict[str, Any] = {
        "name": str(name_or_dir),
        "source": source,
        "description": description,
        "family": cfg.family,
        "num_params": model.num_params(),
        "flops_per_image": model.flops(),
        "num_layers": cfg.num_layers,
        "config": cfg.to_dict(),
        **extra,
    }
    if isinstance(model, ParaFormer):
        per_branch = sum(p.numel() for p in model.branches[0].parameters())
        info["layout"] = {
            "num_branches": model.num_branches,
            "branch_depth": cfg.branch_depth,
            "params_per_branch": per_branch,
            "shared_params": model.num_params() - per_branch * model.num_branches,
            "params_with_k_branches": [kept_params(model, k) for k in range(1, model.num_branches + 1)],
        }
    return info
