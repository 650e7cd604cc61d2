"""Parity: every flag that means the same thing works the same for images and text.

Each test runs once per task: a real `kill -9` and a real Ctrl-C of the CLI, then
``--resume``, end bit-identical to an uninterrupted run (also for runs made by
``compress --finetune-epochs`` and ``expand``); ``--branch-parallel`` under torchrun keeps
the per-layer gradient statistics; ``--max-steps``, ``--seed``, ``--eval-every``,
``--branch-exec`` and ``--bf16`` mean the same for both (``--compile``: slow).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paraformer.cli import main
from test_parallel import torchrun

ROOT = Path(__file__).resolve().parents[1]
TEXT = "".join(
    f"{w} the quick brown fox jumps over the lazy dog {i % 7}.\n" for i, w in enumerate("ab" * 300)
)
IMAGE_FLAGS = ["--limit-train", "300", "--batch-size", "25", "--val-fraction", "0.2"]
IMAGE_FLAGS += [
    a for kv in ("dim=16", "heads=2", "mlp_dim=16", "num_branches=3", "branch_depth=1") for a in ("--set", kv)
]
TEXT_FLAGS = ["--batch-size", "8", "--eval-interval", "6", "--model", "paraformer_lm_small"]
TEXT_FLAGS += [
    a
    for kv in (
        "dim=32",
        "heads=2",
        "head_dim=16",
        "mlp_dim=32",
        "num_branches=3",
        "branch_depth=1",
        "context=32",
    )
    for a in ("--set", kv)
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PARAFORMER_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _one_thread():
    """In-process runs use one thread, as the interrupted subprocesses do.

    ``--branch-exec auto`` keys its measured choice by the thread count: with equal
    counts the subprocess reuses the straight run's cached choice, so both runs take the
    same path (a different path is a different, though equally valid, float result).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_argv(task: str, tmp_path: Path, out: Path, *extra: str) -> list[str]:
    if task == "image":
        return ["train", *IMAGE_FLAGS, "--out", str(out), "--no-progress", *extra]
    text = tmp_path / "text.txt"
    if not text.exists():
        text.write_text(TEXT)
    return ["lm", "train", "--data", str(text), *TEXT_FLAGS, "--out", str(out), "--no-progress", *extra]


def resume_argv(task: str, out: Path) -> list[str]:
    return (["train"] if task == "image" else ["lm", "train"]) + [
        "--resume",
        "--out",
        str(out),
        "--no-progress",
    ]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def interrupted(argv: list[str], out: Path, sig: int, cwd: Path) -> int:
    """Run the CLI in a subprocess, send ``sig`` once it has saved a mid-epoch state, return its exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "paraformer", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while not (out / "train_state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.communicate(timeout=240)
    return proc.returncode


# ------------------------------------------------------------------------------ --resume


@pytest.mark.parametrize("task", ["image", "text"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_resume_after_a_kill_or_ctrl_c_is_bit_identical(task: str, sig: int, tmp_path: Path) -> None:
    # a checkpoint every 30 ms, so that the signal lands mid-epoch
    extra = ["--epochs", "2", "--save-every-minutes", "0.0005", "--seed", "4"]
    assert main(train_argv(task, tmp_path, tmp_path / "straight", *extra)) == 0
    cut = tmp_path / "cut"
    code = interrupted(train_argv(task, tmp_path, cut, *extra), cut, sig, tmp_path)
    assert code in ((-9, 0) if sig == signal.SIGKILL else (130, 0)), code
    assert main(resume_argv(task, cut)) == 0
    assert same_weights(tmp_path / "straight", cut)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("parity") / "base"
    assert main(train_argv("image", out.parent, out, "--epochs", "1", "--save-every-minutes", "0.0005")) == 0
    return out


@pytest.mark.parametrize(
    "verb",
    [
        ["compress", "--branches", "2", "--finetune-epochs", "2", "--distill", "0.5"],
        ["expand", "--add-branches", "2", "--epochs", "2"],
    ],
    ids=["compress-finetune", "expand"],
)
def test_compress_and_expand_runs_resume_bit_identically(
    image_run: Path, tmp_path: Path, verb: list[str]
) -> None:
    argv = [verb[0], str(image_run), *verb[1:], "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    cut = tmp_path / "cut"
    code = interrupted([*argv, "--out", str(cut)], cut, signal.SIGKILL, tmp_path)
    assert code in (-9, 0), code
    assert main([verb[0], "--resume", "--out", str(cut), "--no-progress"]) == 0
    assert same_weights(tmp_path / "straight", cut)
    summary = json.loads((cut / "summary.json").read_text())
    assert ("compression" if verb[0] == "compress" else "expansion") in summary
    saved = json.loads((cut / "config.json").read_text())
    assert saved["objective"]["frozen_base"] == (verb[0] == "expand")


# ------------------------------------------------------------------------------ the flags


@pytest.mark.parametrize("task", ["image", "text"])
def test_max_steps_seed_and_eval_every_mean_the_same_for_both(task: str, tmp_path: Path) -> None:
    assert (
        main(
            train_argv(task, tmp_path, tmp_path / "a", "--max-steps", "7", "--eval-every", "1", "--seed", "2")
        )
        == 0
    )
    assert (
        main(
            train_argv(task, tmp_path, tmp_path / "b", "--max-steps", "7", "--eval-every", "1", "--seed", "2")
        )
        == 0
    )
    assert main(train_argv(task, tmp_path, tmp_path / "c", "--max-steps", "7", "--seed", "3")) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["steps"] == 7
    history = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all("test_loss" in h for h in history), "--eval-every 1 measures the test split every epoch"
    assert same_weights(tmp_path / "a", tmp_path / "b"), "a seed fixes the run"
    assert not same_weights(tmp_path / "a", tmp_path / "c"), "another seed gives another run"


@pytest.mark.parametrize("task", ["image", "text"])
def test_branch_exec_is_recorded_and_gives_the_same_run(task: str, tmp_path: Path) -> None:
    for path in ("loop", "stacked"):
        assert (
            main(train_argv(task, tmp_path, tmp_path / path, "--max-steps", "4", "--branch-exec", path)) == 0
        )
        assert json.loads((tmp_path / path / "config.json").read_text())["execution"]["branch_exec"] == path
    a, b = weights(tmp_path / "loop"), weights(tmp_path / "stacked")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("task", ["image", "text"])
def test_bf16_trains_both(task: str, tmp_path: Path) -> None:
    assert main(train_argv(task, tmp_path, tmp_path / "r", "--max-steps", "3", "--bf16")) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["bf16"] is True


@pytest.mark.slow
@pytest.mark.parametrize("task", ["image", "text"])
def test_compile_trains_both(task: str, tmp_path: Path) -> None:
    assert main(train_argv(task, tmp_path, tmp_path / "r", "--max-steps", "3", "--compile")) == 0


# ------------------------------------------------------------------------------ torchrun


def test_branch_parallel_language_models_keep_their_gradient_statistics(tmp_path: Path) -> None:
    argv = train_argv("text", tmp_path, Path("par"), "--max-steps", "6", "--branch-parallel", "2")
    proc = torchrun(2, "-m", "paraformer", *argv, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(train_argv("text", tmp_path, tmp_path / "one", "--max-steps", "6")) == 0
    par, one = (
        [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()][-1]
        for d in ("par", "one")
    )
    assert len(par["grad_norm_sum"]) == 3 and par["grad_steps"] == one["grad_steps"] == 6
    torch.testing.assert_close(
        torch.tensor(par["grad_norm_sum"]), torch.tensor(one["grad_norm_sum"]), rtol=1e-2, atol=1e-6
    )
    assert main(["lm", "gfa", str(tmp_path / "par"), "--no-importance"]) == 0
