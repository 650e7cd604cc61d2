"""`paraformer lm ...` as a user meets it: every command end to end, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from paraformer.checkpoint import load_model
from paraformer.cli import main

TINY = {
    "dim": 32,
    "depth": 4,
    "heads": [2, 2, 1, 1],
    "mlp_dims": [64, 48, 32, 16],
    "head_dim": 16,
    "context": 32,
}
TINY_FLAGS = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={json.dumps(v)}")]
TEXT = "".join(f"line {i}: to be, or not to be, that is the question {i % 5}.\n" for i in range(300))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PARAFORMER_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lm")
    (root / "text.txt").write_text(TEXT)
    out = root / "run"
    args = [
        "lm",
        "train",
        "--data",
        str(root / "text.txt"),
        "--model",
        "cascadeformer_small",
        "--max-steps",
        "8",
    ]
    code = main(
        [*args, "--eval-interval", "4", "--batch-size", "8", "--no-progress", "--out", str(out), *TINY_FLAGS]
    )
    assert code == 0
    return out


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in last, (word, last)
    return last


def test_train_writes_a_run_folder_with_its_tokenizer(lm_run: Path, capsys) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.jsonl",
        "summary.json",
        "best",
    ):
        assert (lm_run / name).exists(), name
    summary = json.loads((lm_run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["test_ppl"] > 1.0


def test_eval_sample_gfa_and_prune(lm_run: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["lm", "eval", str(lm_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and result["ppl"] > 1.0 and result["bpc"] > 0
    assert main(["lm", "sample", str(lm_run), "--prompt", "to be", "--tokens", "20", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("to be") and len(text.rstrip("\n")) >= 20
    assert main(["lm", "gfa", str(lm_run), "--tokens", "512", "--out", str(tmp_path)]) == 0
    assert "correlations" in capsys.readouterr().out
    gfa = json.loads((tmp_path / "gfa.json").read_text())
    assert gfa["theory"] == [4, 3, 2, 1] and len(gfa["importance"]) == 4 and (tmp_path / "gfa.png").is_file()
    for method in ("cascadeflow", "finercut", "random"):
        out = tmp_path / f"pruned-{method}"
        assert main(["lm", "prune", str(lm_run), "--remove", "2", "--method", method, "--out", str(out)]) == 0
        assert main(["lm", "eval", str(out), "--split", "val", "--json"]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["ppl"] > 1.0
    report = json.loads((tmp_path / "pruned-cascadeflow" / "prune.json").read_text())
    grads = [json.loads(line) for line in (lm_run / "metrics.jsonl").read_text().splitlines()][-1][
        "grad_norm_sum"
    ]
    assert report["removed_layers"] == sorted(sorted(range(4), key=lambda i: grads[i])[:2])
    assert load_model(tmp_path / "pruned-cascadeflow").cfg.depth == 2


def test_sample_decodes_the_same_greedy_text_with_and_without_the_kv_cache(lm_run: Path, capsys) -> None:
    greedy = ["lm", "sample", str(lm_run), "--prompt", "to be", "--tokens", "20", "--temperature", "0"]
    capsys.readouterr()
    assert main(greedy) == 0
    cached = capsys.readouterr().out
    assert main([*greedy, "--no-cache"]) == 0
    assert capsys.readouterr().out == cached and cached.startswith("to be")


def test_bench_reads_a_run_folder_beside_a_preset(lm_run: Path, capsys) -> None:
    small = [
        "--rounds",
        "1",
        "--prompt-len",
        "4",
        "--new-tokens",
        "4",
        "--decode-batch",
        "2",
        "--train-batch",
        "2",
    ]
    tiny = ["--set", "dim=32", "--set", "head_dim=8", "--set", "context=32"]
    capsys.readouterr()
    assert (
        main(["lm", "bench", str(lm_run), "lm_uniform_small", *tiny, *small, "--json", "--device", "cpu"])
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["models"][str(lm_run)]["params"] == load_model(lm_run / "best").num_params()
    assert r["models"]["lm_uniform_small"]["context"] == 32
    assert main(["lm", "bench", str(lm_run / "missing"), "--rounds", "1"]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_prune_with_healing_writes_a_run(lm_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "healed"
    args = ["lm", "prune", str(lm_run), "--remove", "1", "--method", "magnitude", "--heal-steps", "3"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "prune.json").read_text())
    assert report["heal_steps"] == 3 and report["test_ppl"] > 1.0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_resume_needs_only_the_folder(lm_run: Path, capsys) -> None:
    assert main(["lm", "train", "--resume", "--out", str(lm_run), "--max-steps", "10", "--no-progress"]) == 0
    assert json.loads((lm_run / "summary.json").read_text())["steps"] == 10
    code = main(["lm", "train", "--resume", "--out", str(lm_run), "--lr", "0.1"])
    one_line_error(capsys, code, "--lr")


# ---------------------------------------------------------------------------- bad input


def _train(tmp_path: Path, text: bytes | str, *extra: str) -> int:
    path = tmp_path / "t.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return main(
        ["lm", "train", "--data", str(path), "--out", str(tmp_path / "r"), "--max-steps", "1", *extra]
    )


@pytest.mark.parametrize(
    ("text", "extra", "words"),
    [
        ("", [], ["is empty"]),
        (b"\xff\xfe bad bytes", [], ["not UTF-8", "offset 0"]),
        ("short text", TINY_FLAGS, ["fewer than one context", "--seq-len"]),
        (TEXT, [*TINY_FLAGS, "--seq-len", "64"], ["beyond the model's context of 32"]),
        (TEXT, [*TINY_FLAGS, "--set", "mlp_dims=[64,32,0,16]"], ["mlp_dims[2] is 0", "zero width"]),
        (TEXT, ["--model", "vit_tiny_cifar"], ["not a language model"]),
        (TEXT, ["--tokenizer", "bpe", "--vocab-size", "100"], ["vocab_size must be >= 257"]),
    ],
)
def test_bad_training_input_is_a_one_line_error(tmp_path, capsys, text, extra, words) -> None:
    one_line_error(capsys, _train(tmp_path, text, *extra), *words)


def test_data_is_required_and_a_missing_file_is_named(tmp_path, capsys) -> None:
    one_line_error(capsys, main(["lm", "train", "--max-steps", "1"]), "--data")
    one_line_error(capsys, main(["lm", "train", "--data", str(tmp_path / "nope.txt")]), "nope.txt")


def test_removing_k_of_k_layers_and_unknown_methods_are_refused(lm_run: Path, tmp_path, capsys) -> None:
    code = main(["lm", "prune", str(lm_run), "--remove", "4", "--out", str(tmp_path / "p")])
    one_line_error(capsys, code, "--remove 4", "1..3")
    code = main(
        ["lm", "prune", str(lm_run), "--remove", "1", "--method", "best", "--out", str(tmp_path / "p")]
    )
    one_line_error(capsys, code, "--method", "best")


def test_vision_and_language_runs_are_not_mixed_up(lm_run: Path, tmp_path, capsys) -> None:
    vision = tmp_path / "vision"
    small = ["--set", "dim=16", "--set", "heads=2", "--set", "mlp_dim=16", "--set", "num_branches=2"]
    args = ["train", "--epochs", "1", "--limit-train", "100", "--batch-size", "50", "--no-progress"]
    assert main([*args, "--out", str(vision), *small, "--set", "branch_depth=1"]) == 0
    for command in (["eval"], ["sample"], ["gfa"], ["prune", "--remove", "1", "--out", str(tmp_path / "p")]):
        one_line_error(capsys, main(["lm", command[0], str(vision), *command[1:]]), "not a language model")
    assert main(["eval", str(lm_run)]) == 0  # one `eval` for every task
    assert "perplexity" in capsys.readouterr().out


def test_a_paraformer_lm_run_evaluates_every_prefix_and_is_not_layer_pruned(tmp_path, capsys) -> None:
    (tmp_path / "t.txt").write_text(TEXT)
    para = ["--set", "dim=32", "--set", "heads=2", "--set", "head_dim=16", "--set", "mlp_dim=32"]
    para += ["--set", "num_branches=3", "--set", "branch_depth=1", "--set", "context=32"]
    out = tmp_path / "para"
    args = [
        "lm",
        "train",
        "--data",
        str(tmp_path / "t.txt"),
        "--model",
        "paraformer_lm_small",
        "--max-steps",
        "3",
    ]
    assert main([*args, "--out", str(out), "--no-progress", *para]) == 0
    capsys.readouterr()
    assert main(["lm", "eval", str(out), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["ppl_prefix"]) == 3
    one_line_error(
        capsys, main(["lm", "prune", str(out), "--remove", "1", "--out", str(tmp_path / "p")]), "sequential"
    )
    assert main(["lm", "gfa", str(out), "--no-importance"]) == 0
    assert torch.isfinite(torch.tensor(json.loads((out / "gfa.json").read_text())["grad_norm"])).all()
