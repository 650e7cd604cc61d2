"""Bad input and bad luck: one test per class of failure, each a one-line error and nothing lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from paraformer.cli import main
from paraformer.errors import CheckpointError, DataError
from paraformer.launch import resume, train
from paraformer.tasks.image import TrainConfig
from test_cli import one_line_error
from test_data import write_imagefolder, write_png

TINY = [
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
]
TINY_OVERRIDES = {"dim": 16, "heads": 2, "mlp_dim": 16, "num_branches": 2, "branch_depth": 1}


def tiny_config(**kw) -> TrainConfig:
    base = dict(model_overrides=TINY_OVERRIDES, epochs=2, limit_train=100, batch_size=50)
    return TrainConfig(**{**base, **kw})


def quiet(_: str) -> None:
    pass


def cli_train(tmp_path: Path, *extra: str, out: str = "run") -> int:
    return main(
        [
            "train",
            "--limit-train",
            "100",
            "--batch-size",
            "50",
            "--no-progress",
            *TINY,
            "--out",
            str(tmp_path / out),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "run"
    train(tiny_config(), out, log=quiet, progress=False)
    return out


def copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


# 1. types, wherever values come from --------------------------------------------------------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--set", "num_branches=true"], ("num_branches must be an integer", "True")),
        (["--set", "qkv_bias=no"], ("qkv_bias must be true or false",)),
        (["--set", "dim=1e400"], ("dim must be an integer",)),
        (["--seed", "123456789012345678901234567890"], ("seed",)),
        (["--device", "0"], ("device must be auto, cpu",)),
    ],
)
def test_bad_types_from_flags(tmp_path: Path, capsys, argv: list[str], words: tuple[str, ...]) -> None:
    one_line_error(capsys, cli_train(tmp_path, *argv), *words)


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"bf16": "no"}, ("bf16 must be true or false",)),
        ({"device": 0}, ("device must be a string",)),
        ({"model_overrides": [1]}, ("model_overrides must be a JSON object",)),
        ({"model": 7}, ("model must be a string",)),
    ],
)
def test_bad_types_from_config_files(tmp_path: Path, capsys, settings: dict, words: tuple[str, ...]) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    one_line_error(capsys, cli_train(tmp_path, "--config", str(path)), "settings.json", *words)


# 2. config.json read from disk is validated --------------------------------------------------


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda c: c.pop("data"), ("'data' section",)),
        (lambda c: c.pop("train"), ("'train' section",)),
        (lambda c: c["data"].update(mean="x"), ("config.json", "mean must be a list of numbers")),
        (lambda c: c["train"].update(epochs="2"), ("config.json", "epochs must be an integer")),
        (lambda c: c["data"].pop("classes"), ("config.json", "classes")),
        (lambda c: c["model"].update(dim=True), ("config.json", "dim must be an integer")),
    ],
)
def test_eval_and_resume_validate_every_section(finished: Path, tmp_path: Path, capsys, edit, words) -> None:
    run = copy_run(finished, tmp_path)
    shutil.rmtree(run / "best")
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))
    one_line_error(capsys, main(["eval", str(run)]), *words)
    one_line_error(capsys, main(["train", "--resume", "--out", str(run), "--no-progress"]), *words)


# 3. degenerate data --------------------------------------------------------------------------


def test_one_class_is_not_a_classifier(tmp_path: Path, capsys) -> None:
    root = write_imagefolder(tmp_path / "one", classes=("cat",), per_class=10)
    one_line_error(capsys, cli_train(tmp_path, "--dataset", f"imagefolder:{root}"), "1 class", "at least 2")


def test_too_few_images_for_a_test_split(tmp_path: Path, capsys) -> None:
    root = tmp_path / "few"
    for c in ("a", "b"):
        write_png(root / c / "0.png", np.zeros((8, 8, 3), np.uint8))
    one_line_error(
        capsys, cli_train(tmp_path, "--dataset", f"imagefolder:{root}"), "test split has no images"
    )


def test_too_few_images_for_validation(tmp_path: Path, capsys) -> None:
    root = write_imagefolder(tmp_path / "small", per_class=2)
    code = cli_train(tmp_path, "--dataset", f"imagefolder:{root}", "--val-fraction", "0.1")
    one_line_error(capsys, code, "--val-fraction 0")


def test_evaluating_zero_images_is_an_error() -> None:
    from paraformer.data import BatchTransform, ImageDataset
    from paraformer.models import create_model
    from paraformer.tasks.image_eval import evaluate

    empty = ImageDataset(
        torch.zeros(0, 1, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), ["a", "b"]
    )
    with pytest.raises(DataError, match="no images"):
        evaluate(create_model("paraformer_tiny_fmnist"), empty, BatchTransform((0.5,), (0.5,)))


def test_json_files_never_hold_nan(tmp_path: Path) -> None:
    from paraformer.checkpoint import RunFolder
    from paraformer.files import write_json

    write_json(tmp_path / "s.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": None, "b": [None, 1.0]}
    RunFolder(tmp_path, {}).write_metrics([{"epoch": 1, "val_loss": float("nan")}])
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()


# 4. divergence -------------------------------------------------------------------------------


def test_a_huge_learning_rate_exits_non_zero_and_saves_nothing(tmp_path: Path, capsys) -> None:
    one_line_error(
        capsys, cli_train(tmp_path, "--epochs", "1", "--lr", "1e9"), "diverged", "nothing was saved"
    )
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_diverged_epoch_never_replaces_the_last_good_checkpoint(tmp_path: Path) -> None:
    from paraformer.train import Hook

    class Poison(Hook):  # the weights become NaN during epoch 2, while the loss still looked fine
        def on_epoch_end(self, trainer, record) -> None:
            if record["epoch"] == 2:
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(float("nan"))

    out = tmp_path / "run"
    with pytest.raises(Exception, match="epoch 1 .* is kept") as err:
        train(tiny_config(epochs=3), out, log=quiet, progress=False, hooks=[Poison()])
    assert "diverged" in str(err.value)
    weights = load_file(str(out / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert json.loads((out / "best" / "config.json").read_text())["epoch"] == 1
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["position"][0] == 1


# 5. checkpoint write order ------------------------------------------------------------------


def test_a_kill_before_best_is_written_is_repaired_on_resume(tmp_path: Path, monkeypatch) -> None:
    import paraformer.checkpoint.run_folder as ck

    out = tmp_path / "run"
    reference = tmp_path / "ref"
    train(tiny_config(epochs=3), reference, log=quiet, progress=False)
    best_epoch = json.loads((reference / "summary.json").read_text())["selected_epoch"]

    original = ck.save_weights
    calls = {"best": 0}

    def killed(folder, weights, cfg, extra=None):
        if Path(folder).name == "best":
            calls["best"] += 1
            if calls["best"] == 2 or extra.get("epoch") == best_epoch:
                raise SystemExit("killed")  # like kill -9 between train_state.pt and best/
        return original(folder, weights, cfg, extra)

    monkeypatch.setattr(ck, "save_weights", killed)
    with pytest.raises(SystemExit):
        train(tiny_config(epochs=3), out, log=quiet, progress=False)
    monkeypatch.setattr(ck, "save_weights", original)
    (out / ".model.safetensors.abc.tmp").write_bytes(b"half a file")  # an orphan of the kill
    notes: list[str] = []
    summary = resume(out, log=notes.append, progress=False)
    assert not list(out.glob(".*.tmp")), "orphaned temporary files are removed"
    assert any("repaired" in n for n in notes)
    assert summary["selected_epoch"] == best_epoch
    assert json.loads((out / "best" / "config.json").read_text())["epoch"] == best_epoch
    a, b = (
        load_file(str(out / "best" / "model.safetensors")),
        load_file(str(reference / "best" / "model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_writes_are_fsynced_before_the_rename(tmp_path: Path, monkeypatch) -> None:
    import os

    from paraformer.files import atomic_write

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    atomic_write(tmp_path / "f", lambda tmp: tmp.write_text("x"))
    assert events[:2] == ["fsync", "replace"]


def test_eval_refuses_a_best_folder_that_disagrees_with_the_summary(finished: Path, tmp_path: Path, capsys):
    run = copy_run(finished, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    summary["selected_epoch"] = 7
    (run / "summary.json").write_text(json.dumps(summary))
    one_line_error(capsys, main(["eval", str(run)]), "--resume")


# 6. full disk and unwritable outputs -------------------------------------------------------


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(
    finished: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import shutil as sh

    run = copy_run(finished, tmp_path)
    before = (run / "train_state.pt").read_bytes()

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1234 vs 1200")

    monkeypatch.setattr(torch, "save", full)
    real_usage = sh.disk_usage
    monkeypatch.setattr(sh, "disk_usage", lambda p: real_usage(p)._replace(free=0))
    code = main(["train", "--resume", "--out", str(run), "--epochs", "3", "--no-progress"])
    one_line_error(capsys, code, "disk is full", "previous version is unchanged")
    assert (run / "train_state.pt").read_bytes() == before and not list(run.glob(".*.tmp"))


def test_out_naming_a_file_or_a_path_under_one(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, cli_train(tmp_path, out="file"), "is a file")
    one_line_error(capsys, cli_train(tmp_path, out="file/sub"), "is a file")


# 7. devices and sizes, before the data loads ----------------------------------------------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--device", "cuda:"], ("device must be",)),
        (["--device", "cuda"], ("not available", "available: cpu")),
        (["--device", "mps"], ("not available",)),
        (
            ["--set", "dim=1048576", "--set", "mlp_dim=1048576", "--set", "heads=1"],
            ("GiB", "make it smaller"),
        ),
    ],
)
def test_devices_and_sizes_fail_before_the_data_loads(
    tmp_path: Path, capsys, monkeypatch, argv, words
) -> None:
    import paraformer.tasks.image as setup

    def no_data(*a, **k):
        raise AssertionError("the data must not load before these checks")

    monkeypatch.setattr(setup, "load_dataset", no_data)
    one_line_error(capsys, cli_train(tmp_path, *argv), *words)


# 9. messages that mislead ------------------------------------------------------------------


def test_a_refused_train_state_is_called_untrusted_not_corrupt(
    finished: Path, tmp_path: Path, capsys
) -> None:
    import collections

    run = copy_run(finished, tmp_path)
    torch.save({"position": [0, 0, 0, 0], "x": collections.OrderedDict(a=print)}, run / "train_state.pt")
    err = one_line_error(capsys, main(["train", "--resume", "--out", str(run)]), "do not trust it")
    assert "weights_only=False" not in err and "corrupt" not in err


def test_a_missing_train_state_gives_one_way_out(finished: Path, tmp_path: Path, capsys) -> None:
    run = copy_run(finished, tmp_path)
    (run / "train_state.pt").unlink()
    first = one_line_error(capsys, main(["train", "--resume", "--out", str(run)]), "another --out")
    second = one_line_error(capsys, main(["train", "--out", str(run), "--no-progress"]), "another --out")
    assert "without --resume" not in first and "with --resume" not in second


def test_resume_cannot_shrink_a_finished_run(finished: Path, tmp_path: Path, capsys) -> None:
    run = copy_run(finished, tmp_path)
    before = (run / "summary.json").read_text()
    one_line_error(capsys, main(["train", "--resume", "--out", str(run), "--epochs", "1"]), "at least 2")
    assert (run / "summary.json").read_text() == before


def test_decode_errors_name_the_file(tmp_path: Path) -> None:
    from paraformer.data import load_dataset

    root = write_imagefolder(tmp_path / "tree", per_class=3)
    (root / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError) as err:
        load_dataset(f"imagefolder:{root}", progress=False)
    assert "broken.png" in str(err.value) and "BytesIO" not in str(err.value)


def test_checkpoint_errors_are_checkpoint_errors(tmp_path: Path) -> None:
    from paraformer.checkpoint import load_train_state

    with pytest.raises(CheckpointError, match="another --out"):
        load_train_state(tmp_path)
