"""prepare_for_inference where users meet it: eval --latency, eval --sweep-branches, export of the
merged graph, and the latency benchmark's raw file, renderer and claim rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchmarks import claims
from benchmarks.render import REGISTRY
from benchmarks.render.latency import render

import paraformer
from paraformer.cli import main
from paraformer.parallel.inference import inference_latency

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--limit-train", "200", "--batch-size", "25", "--val-fraction", "0.2", "--epochs", "1"]
FLAGS += [a for kv in ("dim=16", "heads=2", "mlp_dim=16", "num_branches=3") for a in ("--set", kv)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inference") / "run"
    assert main(["train", *FLAGS, "--out", str(out), "--no-progress"]) == 0
    return out


def test_the_entry_points_are_public() -> None:
    assert paraformer.prepare_for_inference is paraformer.parallel.prepare_for_inference
    model = paraformer.create_model("paraformer_tiny_fmnist").eval()
    x = model.example_input(2)
    fast = paraformer.prepare_for_inference(model, x, paths=["eager", "merged"], rounds=2)
    assert fast.inference_path in ("eager", "merged")
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-4)


def test_inference_latency_names_the_path_and_every_candidate() -> None:
    model = paraformer.create_model("vit_tiny_fmnist").eval()
    r = inference_latency(model, model.example_input(1), paths=["eager", "merged"], rounds=2)
    assert r["inference_path"] in r["timings_ms"] and set(r["timings_ms"]) == {"eager", "merged"}
    assert r["latency_ms"] == r["timings_ms"][r["inference_path"]] > 0


def test_eval_latency_reports_the_prepared_path(run: Path, capsys) -> None:
    assert main(["eval", str(run), "--latency", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["inference_path"] in ("eager", "merged", "threads") and r["latency_ms"] > 0
    assert r["eager_latency_ms"] > 0
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] is None, "latency is measured on request"


def test_sweep_rows_carry_the_inference_path(run: Path, capsys) -> None:
    assert main(["eval", str(run), "--sweep-branches", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["branches"] for r in rows] == [1, 2, 3]
    assert all(r["inference_path"] in ("eager", "merged", "threads") and r["latency_ms"] > 0 for r in rows)


def test_export_writes_the_merged_graph_and_checks_it(run: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--out", str(out), "--images", "20", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["graph"] == "merged" and r["checked_images"] == 20
    assert r["max_abs_diff"] < 1e-4, "the merged graph computes the original model's logits"
    assert r["torch_inference_path"] in ("eager", "merged", "threads")


def test_latency_benchmark_writes_a_record_that_renders_and_feeds_its_claims(tmp_path: Path) -> None:
    cmd = [sys.executable, "benchmarks/latency.py", "--models", "paraformer_tiny_fmnist", "--batches", "1"]
    cmd += ["--rounds", "2", "--warmup", "1", "--paths", "eager", "merged", "--threads", "1"]
    cmd += ["--results-dir", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
    record = json.loads((tmp_path / "latency.json").read_text())
    assert record["benchmark"] == "latency" and record["config"]["rounds"] == 2
    (result,) = record["payload"]["results"]
    assert set(result["paths"]["paraformer"]) == {"eager", "merged"}
    assert len(result["paths"]["vit"]["eager"]["rounds_ms"]) == 2
    section = render(record)
    assert "paraformer_tiny_fmnist" in section.text and len(section.comparisons) == 1
    rows = [c for c in claims.CLAIMS if c.source == "latency"]
    assert len(rows) == 6, "batch 1 and batch 64 for the small and paper models"
    assert rows[0].evidence(record).compared == [], "a record without that model gives no evidence"


def test_gpu_script_dry_run_writes_every_gpu_row(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (folder,) = tmp_path.glob("gpu-dry-run-*")
    written = {p.name for p in folder.glob("*.json")}
    assert written == {
        "latency-gpu.json",
        "throughput-gpu.json",
        "throughput-gpu-bf16.json",
        "gpu-recipe.json",
    }
    for name in written:  # each renders as the report will render the GPU rows
        record = json.loads((folder / name).read_text())
        kind = {"latency-gpu": "latency", "gpu-recipe": "gpu-recipe"}.get(record["benchmark"], "throughput")
        assert REGISTRY[kind](record).text.startswith("### ")
    bad = subprocess.run(["bash", "benchmarks/gpu.sh", "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown argument --fast")
