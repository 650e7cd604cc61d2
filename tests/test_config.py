"""Configs cannot drift: frozen, typed wherever values come from, flags generated from fields."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from paraformer import ParaFormerConfig, config_from_dict
from paraformer.cli import build_parser, main
from paraformer.errors import ConfigError
from paraformer.models import get_config
from paraformer.models.registry import preset as preset_of
from paraformer.tasks.image import TrainConfig
from paraformer.train.config import load_recipe


def test_presets_are_frozen_and_returned_as_copies() -> None:
    cfg = get_config("paraformer_tiny_cifar")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_branches = 99  # type: ignore[misc]
    preset = preset_of("paraformer_tiny_cifar").config
    assert cfg is not preset and cfg == preset
    changed = get_config("paraformer_tiny_cifar", num_branches=6)
    assert changed.num_branches == 6 and get_config("paraformer_tiny_cifar").num_branches == 4


def test_training_configs_are_frozen_including_their_overrides() -> None:
    cfg = TrainConfig(model_overrides={"dim": 32})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.model_overrides["dim"] = 64  # type: ignore[index]
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("num_branches", True, "num_branches must be an integer, got True"),
        ("qkv_bias", "no", "qkv_bias must be true or false, got 'no'"),
        ("qkv_bias", 1, "qkv_bias must be true or false"),
        ("dim", 2.5, "dim must be an integer"),
        ("dim", 10**30, "dim must be an integer"),
        ("dim", 10**9, "dim must be an integer in 1.."),
        ("pool", 3, "pool must be a string"),
        ("dropout", "0.1", "dropout must be a number"),
        ("gated_branches", [0, "a"], "gated_branches must be a list of integers"),
    ],
)
def test_model_fields_are_type_checked(field: str, value, words: str) -> None:
    data = {**get_config("paraformer_tiny_cifar").to_dict(), field: value}
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert words in str(err.value)


@pytest.mark.parametrize(
    "data, words",
    [
        ({"bf16": "no"}, "bf16 must be true or false, got 'no'"),
        ({"device": 0}, "device must be a string, got 0"),
        ({"model_overrides": [1]}, "model_overrides must be a JSON object"),
        ({"model": 3}, "model must be a string or null"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"lr": float("nan")}, "lr must be a number"),
        ({"seed": 2**70}, "seed must be an integer"),
        ({"device": "cuda:x"}, "device must be auto, cpu, cuda, cuda:N or mps"),
        ({"device": "tpu"}, "available here: cpu"),
        ({"max_steps": 0}, "max_steps"),
        ({"eval_every": -1}, "eval_every"),
    ],
)
def test_training_fields_are_type_checked(data: dict, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(data)
    assert words in str(err.value)


def test_a_config_file_with_a_wrong_type_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"bf16": "no"}))
    with pytest.raises(ConfigError, match=r"recipe.json: bf16 must be true or false"):
        load_recipe(path, TrainConfig)


def test_lists_become_tuples_and_round_trip() -> None:
    cfg = ParaFormerConfig(num_branches=3, gated_branches=[2])  # type: ignore[arg-type]
    assert cfg.gated_branches == (2,)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_every_cli_training_field_has_a_generated_flag_with_its_help() -> None:
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    flags = {a.dest: a for a in train._actions}
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata["cli"]:
            assert f.name not in flags
            continue
        action = flags[f.name]
        assert action.option_strings[0] == "--" + f.name.replace("_", "-")
        assert f.metadata["help"] in action.help
        if f.metadata["choices"]:
            assert tuple(action.choices) == f.metadata["choices"]
    help_text = train.format_help()
    assert "--max-steps" in help_text and "--eval-every" in help_text and "--no-bf16" in help_text


def test_flags_reach_the_config_with_their_types(tmp_path: Path) -> None:
    code = main(
        [
            "train",
            "--epochs",
            "1",
            "--limit-train",
            "60",
            "--no-progress",
            "--bf16",
            "--no-bf16",
            "--set",
            "dim=16",
            "--set",
            "heads=2",
            "--set",
            "mlp_dim=16",
            "--set",
            "num_branches=2",
            "--set",
            "branch_depth=1",
            "--out",
            str(tmp_path / "r"),
            "--max-steps",
            "3",
            "--val-fraction",
            "0",
        ]
    )
    assert code == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert saved["bf16"] is False and saved["max_steps"] == 3 and saved["limit_train"] == 60
    assert saved["model"] == "paraformer_tiny_fmnist"  # the preset that fits the data, recorded
