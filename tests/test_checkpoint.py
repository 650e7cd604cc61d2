"""Checkpoint files: atomic writes, normal permissions, safe loading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from paraformer.checkpoint import load_model, load_train_state, save_model, save_train_state
from paraformer.errors import CheckpointError
from paraformer.files import WriteError, atomic_write
from paraformer.models import create_model


class Payload:
    """Any class that is not a tensor or plain container: weights_only loading must refuse it."""


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(WriteError, match="disk full; the previous version is unchanged"):
        atomic_write(target, failing)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f.txt", lambda tmp: tmp.write_text("x"))
    finally:
        os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


def test_model_round_trips_and_train_state_refuses_pickled_objects(tmp_path: Path) -> None:
    model = create_model("paraformer_tiny_cifar", dim=24, heads=2, mlp_dim=48, num_branches=2)
    save_model(tmp_path, model)
    loaded = load_model(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), loaded.eval()(x))
    save_train_state(tmp_path, {"position": [0, 0, 0, 0], "payload": Payload()})
    with pytest.raises(CheckpointError, match="train_state.pt"):
        load_train_state(tmp_path)
