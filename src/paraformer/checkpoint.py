"""Checkpoints as folders: ``model.safetensors`` + ``config.json`` (+ ``train_state.pt``).

Every file is written atomically (a temporary file in the same folder, then
``os.replace``), so an interrupted write never leaves a half-written checkpoint.
Nothing is ever unpickled: weights are safetensors, configs JSON, and the resume
state is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from paraformer.atomic import atomic_write
from paraformer.config import ImageModelConfig, config_from_dict
from paraformer.errors import CheckpointError, ConfigError
from paraformer.models import ImageClassifier, build_model

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAIN_STATE_FILE = "train_state.pt"


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; is {path.parent} a paraformer run or checkpoint folder?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file is corrupt.") from None


def save_model(folder: Path, model: ImageClassifier, extra_config: dict[str, Any] | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` (``{"model": ..., **extra}``)."""
    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(folder / MODEL_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    write_json(folder / CONFIG_FILE, {"model": model.cfg.to_dict(), **(extra_config or {})})


def load_config(folder: Path) -> tuple[ImageModelConfig, dict[str, Any]]:
    """The model config and the whole ``config.json`` of a checkpoint folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} does not exist or is not a folder; pass a run or checkpoint folder.")
    data = read_json(folder / CONFIG_FILE)
    if not isinstance(data, dict) or "model" not in data:
        raise CheckpointError(
            f"{folder / CONFIG_FILE} has no 'model' section; it is not a paraformer config."
        )
    try:
        return config_from_dict(data["model"]), data
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE}: invalid model config: {err}") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}); the file is corrupt."
        ) from None


def load_model(folder: Path, device: str | torch.device = "cpu") -> ImageClassifier:
    """Rebuild a model from its folder's config and load its weights."""
    folder = Path(folder)
    cfg, _ = load_config(folder)
    model = build_model(cfg)
    state = load_weights(folder / MODEL_FILE)
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / MODEL_FILE} does not match its config.json "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})."
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{folder / MODEL_FILE} does not match its config.json: {err}") from None
    return model.to(device)


def save_train_state(folder: Path, state: dict[str, Any]) -> None:
    atomic_write(Path(folder) / TRAIN_STATE_FILE, lambda tmp: torch.save(state, tmp))


def load_train_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / TRAIN_STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing, so the run cannot be resumed; start it again without --resume."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} cannot be read ({first_line}); the file is corrupt.") from None
    if not isinstance(state, dict) or "position" not in state:
        raise CheckpointError(f"{path} is not a paraformer training state.")
    return state
