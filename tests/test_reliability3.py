"""Reliability, round 3: nothing lost by export, concurrent runs or edited configs; every bad
input a one-line error; defaults that fit the data. One test per item of the issue."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from paraformer.checkpoint import lock
from paraformer.cli import main
from paraformer.launch import resume, train
from paraformer.tasks.image import TrainConfig, fit_budget
from test_cli import one_line_error
from test_data import write_imagefolder
from test_reliability import TINY, cli_train, quiet, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argv: str, cwd: Path | None = None, shell_prefix: str = "") -> subprocess.CompletedProcess:
    """The CLI in a fresh process (optionally behind a shell prefix such as a ulimit)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = " ".join([shell_prefix, sys.executable, "-m", "paraformer", *(f"'{a}'" for a in argv)])
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("r3") / "run"
    train(tiny_config(epochs=1), out, log=quiet, progress=False)
    return out


def copy_run(src: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


# 1. a failed export keeps the good file ----------------------------------------------------


def test_a_failed_export_keeps_the_previous_onnx_file(run: Path, tmp_path: Path) -> None:
    folder = copy_run(run, tmp_path)
    assert main(["export", str(folder)]) == 0
    good = (folder / "model.onnx").read_bytes()
    proc = run_cli("export", str(folder), shell_prefix="ulimit -f 20;")  # 20 KiB: the export cannot fit
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "previous version is unchanged" in proc.stderr and "Traceback" not in proc.stderr
    assert (folder / "model.onnx").read_bytes() == good
    assert not list(folder.glob(".*.tmp"))


def test_export_out_errors_are_one_line(run: Path, tmp_path: Path, capsys) -> None:
    one_line_error(capsys, main(["export", str(run), "--out", str(tmp_path)]), "is a folder")
    assert main(["export", str(run), "--out", str(tmp_path / "new" / "deep" / "m.onnx")]) == 0
    readonly = copy_run(run, tmp_path, "ro")
    readonly.chmod(0o555)
    try:
        if os.geteuid() != 0:  # root writes anywhere: the check means something only for users
            one_line_error(capsys, main(["export", str(readonly)]), "cannot write")
    finally:
        readonly.chmod(0o755)


# 2. one process owns a run folder ------------------------------------------------------------


def test_a_second_process_on_the_same_out_is_refused_naming_the_owner(tmp_path: Path, capsys) -> None:
    out = tmp_path / "race"
    with lock(out):  # this process holds the folder, as a running `train` would
        one_line_error(capsys, cli_train(tmp_path, out="race"), "in use by process", str(os.getpid()))
    assert not (out / "config.json").exists(), "nothing was written into the held folder"


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "stale"
    out.mkdir()
    (out / ".lock").write_text("999999")  # a PID that holds nothing: its process is gone
    assert cli_train(tmp_path, out="stale") == 0
    assert (out / "summary.json").is_file()


def test_two_concurrent_trainings_cannot_both_write_one_folder(tmp_path: Path) -> None:
    args = ["train", "--limit-train", "100", "--batch-size", "50", "--no-progress", *TINY, "--out", "race"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "paraformer", *args, "--seed", str(seed)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    loser = results[[p.returncode for p in procs].index(2)][1]
    assert ("in use by process" in loser or "already holds a run" in loser) and "Traceback" not in loser
    seed = json.loads((tmp_path / "race" / "config.json").read_text())["train"]["seed"]
    best = json.loads((tmp_path / "race" / "best" / "config.json").read_text())["train"]["seed"]
    assert seed == best, "config.json and best/ come from the same run"


# 3. a hand-edited config.json is refused on resume -------------------------------------------


@pytest.mark.parametrize("field, value", [("lr", 0.5), ("batch_size", 7)])
def test_resume_refuses_a_hand_edited_config(run: Path, tmp_path: Path, capsys, field: str, value) -> None:
    folder = copy_run(run, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    before = config["train"][field]
    config["train"][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    code = main(["train", "--resume", "--out", str(folder), "--epochs", "2", "--no-progress"])
    one_line_error(capsys, code, field, json.dumps(value), json.dumps(before), "new run")


# 5. range checks before numeric conversion -----------------------------------------------------


def test_a_huge_integer_for_a_float_field_is_one_line(tmp_path: Path, capsys) -> None:
    one_line_error(capsys, cli_train(tmp_path, "--set", "dropout=1" + "0" * 400), "dropout must be a number")


# 6. strict JSON on stdout; non-finite weights are refused --------------------------------------


def nan_run(run: Path, tmp_path: Path) -> Path:
    folder = copy_run(run, tmp_path, "nan")
    for sub in (folder, folder / "best"):
        if (sub / "model.safetensors").is_file():
            weights = load_file(str(sub / "model.safetensors"))
            weights = {
                k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                for k, v in weights.items()
            }
            save_file(weights, str(sub / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("argv", [["eval", "--json"], ["export", "--json"], ["compress", "--branches", "1"]])
def test_nan_weights_are_refused_in_one_line(run: Path, tmp_path: Path, capsys, argv: list[str]) -> None:
    folder = nan_run(run, tmp_path)
    extra = ["--out", str(tmp_path / "c")] if argv[0] == "compress" else []
    one_line_error(capsys, main([argv[0], str(folder), *argv[1:], *extra]), "non-finite")
    assert not (tmp_path / "c" / "model.safetensors").exists()


def test_json_output_is_strict_even_for_undefined_figures(tmp_path: Path, capsys) -> None:
    text = tmp_path / "t.txt"
    text.write_text("abcdefgh " * 400)
    argv = [
        "lm",
        "train",
        "--data",
        str(text),
        "--max-steps",
        "3",
        "--eval-interval",
        "3",
        "--batch-size",
        "4",
    ]
    argv += ["--set", "depth=1", "--set", "heads=[1]", "--set", "mlp_dims=[16]", "--set", "dim=16"]
    argv += ["--set", "head_dim=16", "--set", "context=16", "--out", str(tmp_path / "one"), "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["lm", "gfa", str(tmp_path / "one"), "--json", "--tokens", "64"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))
    assert result["correlations"]["theory~grad"]["spearman"] is None
    assert "undefined" in result["correlations"]["theory~grad"]


# 7. image folders read regular files only --------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "device-link"])
def test_image_folders_refuse_what_is_not_a_regular_file(tmp_path: Path, capsys, kind: str) -> None:
    root = tmp_path / "imgs"
    write_imagefolder(root, classes=("a", "b"), per_class=6)
    bad = root / "train" / "a" / "bad.png"
    if kind == "fifo":
        os.mkfifo(bad)
    else:
        bad.symlink_to("/dev/zero")
    code = cli_train(tmp_path, "--dataset", f"imagefolder:{root}")
    one_line_error(capsys, code, "bad.png", "not a regular file")


# 8, 11, 12. every integer flag is range-checked, devices and augmentation bounded ----------------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["export", "{run}", "--images", "0"], ("--images", "0 is out of range")),
        (["export", "{run}", "--images", "-1"], ("--images", "-1 is out of range")),
        (["eval", "{run}", "--branches", "-3"], ("--branches", "out of range")),
        (["lm", "sample", "{run}", "--tokens", "0"], ("--tokens", "out of range")),
        (["train", "--device", "cuda:99999999999999999999"], ("device must be",)),
        (["train", "--strong-ops", "100000000"], ("strong_ops must be an integer in 0..8",)),
        (["train", "--crop-padding", "100000"], ("crop_padding", "too large for 28px")),
    ],
)
def test_flags_are_range_checked(
    run: Path, tmp_path: Path, capsys, argv: list[str], words: tuple[str, ...]
) -> None:
    argv = [a.replace("{run}", str(run)) for a in argv]
    if argv[0] == "train":
        argv += ["--limit-train", "100", "--out", str(tmp_path / "x"), "--no-progress", *TINY]
    one_line_error(capsys, main(argv), *words)


# 9. one class after --classes is not a classifier --------------------------------------------


def test_a_single_class_run_is_refused(tmp_path: Path, capsys) -> None:
    one_line_error(capsys, cli_train(tmp_path, "--classes", "3"), "1 class", "at least 2")


# 10. reading a run folder validates what it reads ---------------------------------------------


def test_info_validates_the_summary(run: Path, tmp_path: Path, capsys) -> None:
    folder = copy_run(run, tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    summary["test_acc"] = "high"
    (folder / "summary.json").write_text(json.dumps(summary))
    one_line_error(capsys, main(["info", str(folder)]), "summary.json", "test_acc must be a number")


# 13. sampling settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, words", [(["--temperature", "inf"], "--temperature"), (["--top-k", "-5"], "--top-k")]
)
def test_sampling_settings_are_checked(tmp_path: Path, capsys, flags, words) -> None:
    one_line_error(capsys, main(["lm", "sample", str(tmp_path), *flags]), words)


# 14. stdout that cannot be written ----------------------------------------------------------------


def test_a_full_stdout_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("list-models", shell_prefix="exec >/dev/full;")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "cannot write the output" in proc.stderr


def test_a_closed_stdout_is_handled(tmp_path: Path) -> None:
    proc = run_cli("info", "paraformer_tiny_fmnist", shell_prefix="exec >&-;")
    assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr


# 15. "does not match" says what differs in one line ------------------------------------------


def test_a_mismatched_checkpoint_names_the_tensor_and_both_shapes(run: Path, tmp_path: Path, capsys) -> None:
    folder = copy_run(run, tmp_path)
    config = json.loads((folder / "best" / "config.json").read_text())
    config["model"]["mlp_dim"] = 24
    (folder / "best" / "config.json").write_text(json.dumps(config))
    one_line_error(capsys, main(["eval", str(folder)]), "does not match", "has shape", "needs")


# 16. a lost torchrun rank ------------------------------------------------------------------------


def test_a_killed_rank_leaves_one_line_per_survivor(tmp_path: Path) -> None:
    from test_parallel import torchrun_popen

    args = ["train", "--branch-parallel", "2", "--limit-train", "400", "--batch-size", "20", "--epochs", "50"]
    args += [*TINY, "--no-progress", "--out", "par", "--branch-exec", "loop"]
    proc, children = torchrun_popen(2, "-m", "paraformer", *args, cwd=tmp_path)
    victim = children(1, tmp_path / "par" / "config.json")
    os.kill(victim, 9)
    _, err = proc.communicate(timeout=300)
    ours = [line for line in err.splitlines() if "rank 1 stopped" in line]
    assert len(ours) == 1, err[-3000:]
    assert "--resume --out par" in ours[0] and "torchrun" in ours[0]


# 17. messages name the real problem ----------------------------------------------------------------


def test_text_messages_name_the_real_problem(tmp_path: Path, capsys) -> None:
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf")
    one_line_error(
        capsys, main(["lm", "train", "--data", str(bom), "--out", str(tmp_path / "r")]), "byte-order mark"
    )


# 18. --branch-exec auto is recorded and reused on resume ------------------------------------------


def test_auto_branch_execution_is_recorded_and_reused_on_resume(tmp_path: Path, monkeypatch, capsys) -> None:
    from paraformer.parallel import calibration

    monkeypatch.setenv("PARAFORMER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration, "measure", lambda *a, **k: {"loop": 1.0, "stacked": 0.5})
    cfg = tiny_config(epochs=2, branch_exec="auto")
    train(cfg, tmp_path / "r", log=print, progress=False, stop_after_epochs=1)
    assert "cached in" in capsys.readouterr().out
    recorded = json.loads((tmp_path / "r" / "config.json").read_text())["execution"]["branch_exec"]
    assert recorded == "stacked"
    monkeypatch.setattr(calibration, "measure", lambda *a, **k: {"loop": 0.5, "stacked": 1.0})
    (tmp_path / "cache" / "branch-paths.json").unlink()  # a new measurement would now pick the loop
    resume(tmp_path / "r", log=quiet, progress=False)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["execution"]["branch_exec"] == "stacked"


# 19. defaults that fit the data -------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_train, batch, epochs",
    [(1_134, 32, 23), (5_400, 64, 10), (9_000, 64, 10), (54_000, 128, 10), (60, 32, 100)],
)
def test_the_default_budget_is_sized_by_the_training_set(num_train: int, batch: int, epochs: int) -> None:
    cfg, why = fit_budget(TrainConfig(), num_train)
    assert (cfg.batch_size, cfg.epochs) == (batch, epochs) and f"{num_train:,}" in why
    kept, note = fit_budget(TrainConfig(batch_size=16, epochs=3), num_train)
    assert (kept.batch_size, kept.epochs, note) == (16, 3, None), "what the user sets is kept"


def test_the_chosen_budget_is_printed_and_recorded(tmp_path: Path, capsys) -> None:
    root = tmp_path / "imgs"
    write_imagefolder(root, classes=("a", "b"), per_class=40)
    assert (
        main(
            [
                "train",
                "--dataset",
                f"imagefolder:{root}",
                *TINY,
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "budget: batch size 32 and epochs" in capsys.readouterr().out
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert saved["batch_size"] == 32 and saved["epochs"] >= 10
