"""The command line as a user meets it: output, JSON, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paraformer.cli import main

SMALL = [
    "--set",
    "dim=32",
    "--set",
    "heads=2",
    "--set",
    "mlp_dim=64",
    "--set",
    "num_branches=2",
    "--set",
    "branch_depth=1",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(
        [
            "train",
            "--epochs",
            "1",
            "--limit-train",
            "200",
            "--batch-size",
            "50",
            "--no-progress",
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert code == 0
    return out


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in last, (word, last)
    return last


def test_train_prints_a_summary_line(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (run_dir / "summary.json").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and summary["num_params"] > 0


def test_eval_json_reports_accuracy_and_params(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert 0.0 <= full["accuracy"] <= 1.0 and full["num_params"] > 0 and len(full["prefix_accuracy"]) == 2
    assert main(["eval", str(run_dir), "--json", "--branches", "1"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["num_params"] < full["num_params"] and one["branches"] == 1
    assert one["accuracy"] == pytest.approx(full["prefix_accuracy"][0])


def test_eval_human_output(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--split", "val", "--weights", "last"]) == 0
    out = capsys.readouterr().out
    assert "val accuracy" in out and "k=1" in out


def test_info_on_preset_and_run(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["info", "paraformer_paper"]) == 0
    out = capsys.readouterr().out
    assert "7,298,506" in out and "branches 8 x depth 2" in out
    assert main(["info", str(run_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"]["num_branches"] == 2 and info["flops_per_image"] > 0 and "summary" in info


def test_list_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    assert "paraformer_tiny_fmnist" in out and "vit_paper" in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--model", "paraformer_tiny_fmnst"], ("unknown model", "paraformer_tiny_fmnist")),
        (["train", "--dataset", "mnist"], ("mnist",)),
        (["train", "--set", "num_branches=0"], ("num_branches",)),
        (["train", "--set", "dim=100"], ("divisible by heads",)),
        (["train", "--set", "image_size=30"], ("divisible by patch_size",)),
        (["train", "--model", "paraformer_tiny_cifar"], ("channel",)),
        (["train", "--epochs", "0"], ("epochs",)),
        (["train", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent/x"], ("/nonexistent/x",)),
        (["train", "--resume"], ("--out",)),
        (["eval", "/nonexistent/run"], ("/nonexistent/run",)),
        (["info", "resnet50"], ("unknown model",)),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], words: tuple[str, ...], capsys, monkeypatch
) -> None:
    monkeypatch.setenv("PARAFORMER_OFFLINE", "1")
    one_line_error(capsys, main([*argv, "--no-progress"] if argv[0] == "train" else argv), *words)


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(capsys, main(["train", "--epochs", "three"]), "--epochs")


def test_corrupt_checkpoints_are_reported(run_dir: Path, tmp_path: Path, capsys) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    shutil.rmtree(broken / "best")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    one_line_error(capsys, main(["eval", str(broken)]), "model.safetensors", "corrupt")
    (broken / "train_state.pt").write_bytes(b"\x00garbage")
    one_line_error(capsys, main(["train", "--resume", "--out", str(broken)]), "train_state.pt")
    (broken / "config.json").write_text("{not json")
    one_line_error(capsys, main(["info", str(broken)]), "config.json")


def test_resume_refuses_changed_settings(run_dir: Path, capsys) -> None:
    one_line_error(capsys, main(["train", "--resume", "--out", str(run_dir), "--lr", "0.1"]), "lr")


def test_existing_run_without_resume(run_dir: Path, capsys) -> None:
    one_line_error(capsys, main(["train", "--out", str(run_dir), "--no-progress"]), "--resume")


def test_the_installed_command_gives_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "paraformer.cli", "train", "--set", "heads=5"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")


def test_config_file_sets_defaults_and_flags_override_it(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.json"
    settings = {
        "_note": "keys starting with an underscore are comments",
        "epochs": 1,
        "limit_train": 100,
        "batch_size": 50,
        "lr": 3e-3,
        "model_overrides": {"dim": 32, "heads": 2, "mlp_dim": 64, "num_branches": 2},
    }
    recipe.write_text(json.dumps(settings))
    out = tmp_path / "run"
    argv = ["train", "--config", str(recipe), "--set", "branch_depth=1", "--lr", "2e-3", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["lr"] == 2e-3 and saved["train"]["batch_size"] == 50
    assert saved["model"]["num_branches"] == 2 and saved["model"]["branch_depth"] == 1
    # a finished run's config.json is a recipe too
    again = tmp_path / "again"
    assert main(["train", "--config", str(out / "config.json"), "--no-progress", "--out", str(again)]) == 0
    assert json.loads((again / "config.json").read_text())["train"] == saved["train"]


def test_bad_config_file_is_one_line(tmp_path: Path, capsys) -> None:
    one_line_error(capsys, main(["train", "--config", "paper_cifar1000"]), "paper_cifar10")


# ---------------------------------------------------------------------------- launching


def _run_module(*args: str, cwd: Path, shell_pipe: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    if shell_pipe is not None:
        command = f"{sys.executable} -m paraformer {' '.join(args)} | {shell_pipe}"
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=120,
        )
    return subprocess.run(
        [sys.executable, "-m", "paraformer", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_python_dash_m_paraformer_works(tmp_path: Path) -> None:
    proc = _run_module("list-models", cwd=tmp_path)
    assert proc.returncode == 0 and "paraformer_tiny_fmnist" in proc.stdout
    proc = _run_module("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("paraformer ")


@pytest.mark.parametrize(
    "args, reader, lines",
    [
        (("list-models",), "head -2", 2),
        (("info", "paraformer_tiny_cifar"), "head -1", 1),
        (("list-models",), "true", 0),  # the reader is gone before the first write: always EPIPE
        (("info", "paraformer_tiny_cifar"), "true", 0),
    ],
)
def test_a_closed_pipe_ends_quietly(tmp_path: Path, args: tuple[str, ...], reader: str, lines: int) -> None:
    proc = _run_module(*args, cwd=tmp_path, shell_pipe=reader)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and len(proc.stdout.splitlines()) == lines


def test_without_model_the_preset_that_fits_the_data_is_chosen(tmp_path: Path, capsys) -> None:
    from test_data import write_imagefolder

    root = write_imagefolder(tmp_path / "rgb", per_class=12, size=32)
    argv = [
        "train",
        "--dataset",
        f"imagefolder:{root}",
        "--epochs",
        "1",
        "--no-progress",
        "--val-fraction",
        "0",
        "--set",
        "dim=16",
        "--set",
        "heads=2",
        "--set",
        "mlp_dim=16",
    ]
    assert main([*argv, "--out", str(tmp_path / "auto")]) == 0
    assert "paraformer_tiny_cifar" in capsys.readouterr().out
    saved = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert saved["train"]["model"] == "paraformer_tiny_cifar" and saved["model"]["in_channels"] == 3
    code = main([*argv, "--model", "paraformer_tiny_fmnist", "--out", str(tmp_path / "explicit")])
    one_line_error(capsys, code, "1-channel", "leave out --model")
