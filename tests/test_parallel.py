"""Fused branches equal the loop; branch parallelism over gloo equals one process; checkpoints travel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distributed_worker import batch, objectives, reference_grads, tiny_model
from paraformer.checkpoint import load_model, save_model
from paraformer.errors import ConfigError
from paraformer.models import append_branches, build_model, get_config, list_models, select_branches
from paraformer.parallel import calibration
from paraformer.parallel.apply import apply_execution
from paraformer.parallel.branch import split_branches
from paraformer.parallel.distributed import init_from_env
from paraformer.parallel.fused import FusedBranchStack, fuse_branches

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- fused == loop


def preset_inputs(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A small, dropout-free model of the preset's family, a batch and its targets."""
    cfg = get_config(name)
    torch.manual_seed(0)
    if hasattr(cfg, "image_size"):
        cfg = cfg.replace(image_size=cfg.patch_size * 2, dropout=0.0, emb_dropout=0.0)
        x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
        return build_model(cfg), x, torch.randint(0, cfg.num_classes, (3,))
    cfg = cfg.replace(dropout=0.0, context=8, vocab_size=11)
    tokens = torch.randint(0, 11, (3, 9))
    return build_model(cfg), tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("name", [n for n in list_models() if n.startswith("paraformer_")])
@pytest.mark.parametrize("path", ["loop", "stacked"])
def test_fused_equals_the_loop_for_every_preset(name: str, path: str) -> None:
    reference, x, y = preset_inputs(name)
    reference.train()
    fused = fuse_branches(reference, path).train()
    assert isinstance(fused.branches, FusedBranchStack)
    for model in (reference, fused):
        objective = sum(l for l in objectives(model, x, y).values())  # noqa: E741
        objective.backward()
    with torch.no_grad():
        torch.testing.assert_close(fused(x, branches=[2, 0]), reference(x, branches=[2, 0]))
    expected, got = reference_grads(reference), reference_grads(fused)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_both_paths_load_each_others_weights(tmp_path: Path) -> None:
    model = append_branches(tiny_model(4), 1)  # a gated branch too
    fused = fuse_branches(model, "stacked")
    assert fused.state_dict().keys() == model.state_dict().keys()
    save_model(tmp_path / "fused", fused)
    back = load_model(tmp_path / "fused").eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(back(x), model.eval()(x))
    again = fuse_branches(build_model(model.cfg), "stacked").eval()
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again(x), model(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        select_branches(fused, [4, 1])(x), model(x, branches=[4, 1]), rtol=1e-5, atol=1e-6
    )


def test_auto_measures_once_then_uses_the_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PARAFORMER_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_measure(stack, x, count):
        calls.append(tuple(x.shape))
        return {"loop": 1.0, "stacked": 0.5 if x.shape[0] == 1 else 2.0}

    monkeypatch.setattr(calibration, "measure", fake_measure)
    fused = fuse_branches(tiny_model(3), "auto").eval()
    with torch.no_grad():
        fused(torch.randn(1, 3, 8, 8))
        fused(torch.randn(4, 3, 8, 8))
        fused(torch.randn(1, 3, 8, 8))
    assert sorted(fused.branches.choices.values()) == ["loop", "stacked"] and len(calls) == 2
    saved = json.loads((tmp_path / "branch-paths.json").read_text())
    assert sorted(v["choice"] for v in saved.values()) == ["loop", "stacked"]
    fresh = fuse_branches(tiny_model(3), "auto").eval()  # a new process would read the disk cache
    with torch.no_grad():
        fresh(torch.randn(1, 3, 8, 8))
    assert len(calls) == 2


@pytest.mark.parametrize("stacked_seconds, kept", [(0.5, "stacked"), (0.99, "loop")])
def test_auto_keeps_the_loop_unless_stacked_is_measurably_faster(monkeypatch, stacked_seconds, kept) -> None:
    monkeypatch.setenv("PARAFORMER_NO_CACHE", "1")
    monkeypatch.setattr(calibration, "measure", lambda *a: {"loop": 1.0, "stacked": stacked_seconds})
    model = tiny_model(3)
    out = apply_execution(model, "auto", torch.randn(4, 3, 8, 8), log=lambda _: None)
    assert list(out.branches.choices.values()) == [kept]
    assert out.state_dict().keys() == model.state_dict().keys(), "the same parameters whatever the path"


def test_fused_branches_compile() -> None:
    fused = fuse_branches(tiny_model(3), "stacked").eval()
    x = torch.randn(2, 3, 8, 8)
    expected = fused(x)
    fused.compile()
    torch.testing.assert_close(fused(x), expected)


# ---------------------------------------------------------------------------- branch parallelism


def test_branch_groups_are_contiguous_and_balanced() -> None:
    assert split_branches(5, 2) == [(0, 3), (3, 5)]
    assert split_branches(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    with pytest.raises(ConfigError, match="at most 3 ranks"):
        split_branches(3, 4)


def test_branch_parallel_without_a_launch_is_a_one_line_error(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node 2"):
        init_from_env(2)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="must divide"):
        init_from_env(2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_command(nproc: int, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        *args,
    ]
    return command, env


def torchrun_popen(nproc: int, *args: str, cwd: Path):
    """A running torchrun launch, and a function giving the PID of one of its ranks."""
    command, env = _torchrun_command(nproc, *args)
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
    )

    def rank_pid(rank: int, wait_for: Path) -> int:
        """The PID of the launch's process with this rank (found by its environment and folder)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if wait_for.exists():
                for entry in Path("/proc").iterdir():
                    try:
                        environ = (entry / "environ").read_bytes().split(b"\0")
                        here = (entry / "cwd").resolve() == Path(cwd).resolve()
                    except (OSError, ValueError):
                        continue
                    if (
                        here
                        and f"RANK={rank}".encode() in environ
                        and b"LOCAL_RANK=" + str(rank).encode() in environ
                    ):
                        return int(entry.name)
            time.sleep(0.1)
        pytest.fail(f"rank {rank} of the launch was not found")

    return proc, rank_pid


def torchrun(nproc: int, *args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Launch ``nproc`` local processes on 127.0.0.1 (gloo), one torch thread each."""
    command, env = _torchrun_command(nproc, *args)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{nproc} processes did not finish within {timeout}s")
    if proc.returncode != 0 and ("Operation not permitted" in proc.stderr or "EADDRNOTAVAIL" in proc.stderr):
        pytest.skip("this machine cannot open local sockets for a process group")
    return proc


@pytest.mark.parametrize("nproc, branch_parallel, path", [(2, 2, "loop"), (2, 2, "stacked"), (4, 2, "loop")])
def test_distributed_losses_and_gradients_equal_one_process(tmp_path: Path, nproc, branch_parallel, path):
    proc = torchrun(
        nproc,
        str(ROOT / "tests" / "distributed_worker.py"),
        str(tmp_path),
        str(branch_parallel),
        path,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(nproc)]
    model = tiny_model()
    x, y = batch()
    for name, loss in objectives(model, x, y).items():
        model.zero_grad(set_to_none=True)
        loss.backward()
        expected = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
        data_parallel = nproc // branch_parallel
        losses = torch.stack([r[f"{name}/loss"] for r in ranks])
        torch.testing.assert_close(losses.view(data_parallel, branch_parallel).mean(0)[0], loss.detach())
        for key, grad in expected.items():
            owners = [r[f"{name}/{key}"] for r in ranks if f"{name}/{key}" in r]
            assert owners, f"no rank holds the gradient of {key}"
            for got in owners:  # replicated parameters: every rank holds the same gradient
                torch.testing.assert_close(got, grad, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
    reference = tiny_model().state_dict()
    gathered = {k.removeprefix("state/"): v for k, v in ranks[0].items() if k.startswith("state/")}
    assert gathered.keys() == reference.keys()
    assert all(torch.equal(gathered[k], reference[k]) for k in reference)


def test_a_branch_parallel_run_matches_one_process_and_its_checkpoints_travel(tmp_path: Path) -> None:
    common = [
        "--epochs",
        "2",
        "--limit-train",
        "200",
        "--batch-size",
        "50",
        "--no-progress",
        "--set",
        "dim=16",
        "--set",
        "heads=2",
        "--set",
        "mlp_dim=16",
        "--set",
        "num_branches=3",
        "--set",
        "branch_depth=1",
        "--branch-exec",
        "loop",
        "--val-fraction",
        "0.2",
    ]
    proc = torchrun(
        2, "-m", "paraformer", "train", "--branch-parallel", "2", *common, "--out", "par", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done:") == 1, "only rank 0 reports"
    from paraformer.cli import main

    assert main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    par, one = (
        load_file(str(tmp_path / "par" / "model.safetensors")),
        load_file(str(tmp_path / "one" / "model.safetensors")),
    )
    assert par.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(par[key], one[key], rtol=1e-3, atol=1e-4, msg=key)
    # the parallel checkpoint loads in one process, and a one-process checkpoint evaluates in parallel
    assert main(["eval", str(tmp_path / "par"), "--json"]) == 0
    proc = torchrun(
        2, "-m", "paraformer", "eval", str(tmp_path / "one"), "--branch-parallel", "2", "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    parallel_eval = json.loads(proc.stdout.strip().splitlines()[-1])
    assert main(["eval", str(tmp_path / "one"), "--json"]) == 0
    # resuming with another layout is refused with one line
    proc = torchrun(4, "-m", "paraformer", "train", "--resume", "--out", "par", "--epochs", "3", cwd=tmp_path)
    ours = [line for line in proc.stderr.splitlines() if "error" in line and "same layout" in line]
    assert proc.returncode != 0 and len(ours) == 4, proc.stderr[-2000:]  # one line per process
    assert "src/paraformer/" not in proc.stderr, "no traceback from our processes (torchrun prints its own)"
    assert parallel_eval["num_samples"] == 1000 and 0 <= parallel_eval["accuracy"] <= 1
