"""Weights and configs on disk: ``model.safetensors`` + ``config.json`` (+ ``train_state.pt``).

Every file is written atomically (``paraformer.files``), so an interrupted write never
leaves a half-written checkpoint. Nothing is ever unpickled: weights are safetensors,
configs JSON, and the resume state is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from paraformer.config import ModelConfig
from paraformer.errors import CheckpointError, ConfigError
from paraformer.files import atomic_write, read_json, write_json
from paraformer.models import build_model, config_from_dict

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAIN_STATE_FILE = "train_state.pt"


def save_model(folder: Path, model: nn.Module, extra_config: dict[str, Any] | None = None) -> None:
    """Write ``model.safetensors`` and then ``config.json`` (``{"model": ..., **extra}``)."""
    save_weights(folder, model.state_dict(), model.cfg, extra_config)


def save_weights(
    folder: Path,
    weights: dict[str, torch.Tensor],
    cfg: ModelConfig,
    extra_config: dict[str, Any] | None = None,
) -> None:
    """``save_model`` from a state dict and its config (what a distributed run gathered on rank 0)."""
    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in weights.items()}

    def write(tmp: Path) -> None:
        try:
            save_file(state, str(tmp), metadata={"format": "pt"})
        except SafetensorError as err:
            raise OSError(str(err)) from None

    atomic_write(folder / MODEL_FILE, write)
    write_json(folder / CONFIG_FILE, {"model": cfg.to_dict(), **(extra_config or {})})


def load_config(folder: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config and the whole ``config.json`` of a checkpoint folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} does not exist or is not a folder; pass a run or checkpoint folder.")
    path = folder / CONFIG_FILE
    data = read_json(path)
    if not isinstance(data, dict) or "model" not in data:
        raise CheckpointError(f"{path} has no 'model' section; it is not a paraformer config.")
    try:
        return config_from_dict(data["model"]), data
    except ConfigError as err:
        raise CheckpointError(f"{path}: invalid model config: {err}") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}); the file is corrupt."
        ) from None


def load_model(folder: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from its folder's config and load its weights."""
    folder = Path(folder)
    cfg, _ = load_config(folder)
    model = build_model(cfg)
    load_state_into(model, load_weights(folder / MODEL_FILE), folder / MODEL_FILE)
    return model.to(device)


def state_mismatch(expected: dict[str, torch.Tensor], given: dict[str, Any]) -> str | None:
    """One phrase saying how ``given`` differs from ``expected`` (names, then shapes), or None."""
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if missing or unexpected:
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    for key, want in expected.items():
        got = given[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return f"{key} has shape {shape}, the model needs {tuple(want.shape)}"
    return None


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``state`` into ``model``, or say in one line how it does not match."""
    problem = state_mismatch(model.state_dict(), state)
    if problem is not None:
        raise CheckpointError(f"{source} does not match its config.json ({problem}).")
    model.load_state_dict(state)


def save_train_state(folder: Path, state: dict[str, Any]) -> None:
    atomic_write(Path(folder) / TRAIN_STATE_FILE, lambda tmp: torch.save(state, tmp))


def load_train_state(folder: Path) -> dict[str, Any]:
    """The resume state of a run, read with ``weights_only=True`` (nothing is unpickled)."""
    path = Path(folder) / TRAIN_STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing, so the run in {folder} cannot be resumed; train into another --out."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"{path} holds Python objects that paraformer never writes and will not load; "
                "it was not written by this tool or has been tampered with: do not trust it."
            ) from None
        first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise CheckpointError(f"{path} cannot be read ({first_line}); the file is corrupt.") from None
    if not isinstance(state, dict) or "position" not in state:
        raise CheckpointError(f"{path} is not a paraformer training state.")
    return state
