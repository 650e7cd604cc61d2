"""Fused and parallel branches against the loop, the ViT twin and pipeline parallelism.

Part 1, one process (``--threads`` torch threads, 1 by default = P = 1):
  - inference latency at batch 1 and ``--big-batch`` of the paper model (224 px,
    patch 16, dim 192, 8 x 2) and its depth-16 ViT twin: the branch loop, the stacked
    (fused) branches and the ViT, each eager and ``torch.compile``'d;
  - training throughput (fused objective, AdamW) of the CPU-scale model (32 px,
    patch 4, dim 192, 8 x 2) at the batch a user trains with (``--train-batch``).
Part 2, processes launched with ``torch.distributed.run`` (gloo, one thread per rank):
  training throughput at global batch ``--dist-batch`` of the CPU-scale model for
  ParaFormer in one process, branch-parallel over 2 ranks, and the authors' approach
  (branch groups in 2 threads of one process); and for its ViT twin in one process,
  with DDP, with ``torch.distributed.pipelining`` GPipe and 1F1B over 2 stages
  (``--microbatches``), and with FairScale's ``Pipe`` where it runs.
Variants take turns round by round (``--rounds``), so machine noise hits them alike;
every round's time goes to benchmarks/results/parallel-<part>.json, and
``python -m benchmarks.report`` renders the medians and the ratios paired by round.

    python benchmarks/parallel.py                 # both parts
    python benchmarks/parallel.py --quick --no-write
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch
import torch.nn.functional as F

from benchmarks.protocol import record_results, write_record
from benchmarks.render.speed import render_distributed, render_single
from paraformer.models import create_model
from paraformer.parallel import fuse_branches
from paraformer.train.devices import compile_model

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
CPU_MODEL = dict(dim=192, heads=3, mlp_dim=768, dropout=0.0, emb_dropout=0.0)
DIST_CONFIGS = (
    "para-1",
    "para-bp2",
    "para-threads2",
    "vit-1",
    "vit-ddp2",
    "vit-gpipe2",
    "vit-1f1b2",
    "vit-fairscale2",
)
# ---------------------------------------------------------------------------- models


def paraformer(preset: str, **kw: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(preset, **kw)


def cpu_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    return paraformer("paraformer_small_cifar", **CPU_MODEL), paraformer("vit_small_cifar", **CPU_MODEL)


def timed(fn: Any, rounds_out: list[float]) -> None:
    start = time.perf_counter()
    fn()
    rounds_out.append(time.perf_counter() - start)


def interleave(variants: dict[str, Any], rounds: int, reps: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each variant in each round, taking turns; the first round warms up."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds + 1):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            if r:
                times[name].append((time.perf_counter() - start) / reps)
    return times


# ---------------------------------------------------------------------------- part 1: one process


def inference_variants(batch: int, compile_too: bool) -> dict[str, Any]:
    para = paraformer("paraformer_paper", dropout=0.0, emb_dropout=0.0).eval()
    vit = paraformer("vit_paper", dropout=0.0, emb_dropout=0.0).eval()
    models = {"ViT twin": vit, "branch loop": para, "stacked branches": fuse_branches(para, "stacked").eval()}
    if compile_too:
        for name in list(models):
            compiled = copy.deepcopy(models[name])
            compile_model(compiled, inference=True)
            models[f"{name}, compiled"] = compiled
    x = torch.randn(batch, 3, 224, 224)

    def call(m: torch.nn.Module) -> Any:
        def run() -> None:
            with torch.no_grad():
                m(x)

        return run

    return {name: call(m) for name, m in models.items()}


def training_variants(batch: int, compile_too: bool) -> dict[str, Any]:
    para, vit = cpu_pair()
    models = {"ViT twin": vit, "branch loop": para, "stacked branches": fuse_branches(para, "stacked")}
    if compile_too:
        for name in list(models):
            compiled = copy.deepcopy(models[name])
            compile_model(compiled)
            models[f"{name}, compiled"] = compiled
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step(m: torch.nn.Module) -> Any:
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        m.train()

        def run() -> None:
            if hasattr(m, "prefix_logits"):  # the fused objective: every prefix's loss
                loss = torch.stack([F.cross_entropy(p, y) for p in m.prefix_logits(x)]).mean()
            else:
                loss = F.cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run

    return {name: step(m) for name, m in models.items()}


def part_one(args: argparse.Namespace) -> dict[str, Any]:
    """Per case (inference at batch 1 and big batch, a training step): every variant's time per round."""
    torch.set_num_threads(args.threads)
    cases = [
        ("inference, batch 1", lambda: inference_variants(1, not args.no_compile), 5),
        (
            f"inference, batch {args.big_batch}",
            lambda: inference_variants(args.big_batch, not args.no_compile),
            1,
        ),
        (
            f"training step, batch {args.train_batch}",
            lambda: training_variants(args.train_batch, not args.no_compile),
            1,
        ),
    ]
    out = []
    for title, make, reps in cases:
        print(f"== {title}", flush=True)
        out.append({"title": title, "reps": reps, "times": interleave(make(), args.rounds, reps)})
    return {"cases": out}


# ---------------------------------------------------------------------------- part 2: processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one distributed configuration for ``--steps`` steps; rank 0's timings."""
    nproc = 2 if config.endswith(("bp2", "ddp2", "gpipe2", "1f1b2")) else 1
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        worker = [
            str(HERE),
            "--worker",
            config,
            "--steps",
            str(args.steps),
            "--dist-batch",
            str(args.dist_batch),
            "--microbatches",
            str(args.microbatches),
            "--result",
            str(out),
        ]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(str(p) for p in (ROOT / "src", ROOT, ROOT / "benchmarks")),
        }
        if nproc == 1:
            command = [sys.executable, *worker]
        else:
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
                *worker,
            ]
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0 or not out.is_file():
            tail = [line for line in proc.stderr.splitlines() if line.strip()][-3:]
            return {"error": f"exit {proc.returncode}: {' / '.join(tail)[-400:]}"}
        return json.loads(out.read_text())


def part_two(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per step of every configuration in every round (rounds launch each in turn)."""
    runs: dict[str, list[float]] = {c: [] for c in args.configs}
    errors: dict[str, str] = {}
    for r in range(args.dist_rounds):
        for config in args.configs:
            if config in errors:
                continue
            print(f"== round {r + 1}: {config}", flush=True)
            result = launch(config, args)
            if "error" in result:
                errors[config] = result["error"]
                print(f"   {result['error']}", flush=True)
            else:
                runs[config].append(result["seconds_per_step"])
                print(f"   {args.dist_batch / result['seconds_per_step']:.1f} images/s", flush=True)
    return {"runs": runs, "errors": errors}


# ---------------------------------------------------------------------------- workers


def worker(args: argparse.Namespace) -> None:
    """One process of a configuration: time ``--steps`` training steps, rank 0 writes the result."""
    torch.set_num_threads(1)
    config, batch = args.worker, args.dist_batch
    para, vit = cpu_pair()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    rank = int(os.environ.get("RANK", "0"))
    step = {
        "para-1": _single_step,
        "para-bp2": _branch_parallel_step,
        "para-threads2": _threads_step,
        "vit-1": _single_step,
        "vit-ddp2": _ddp_step,
        "vit-gpipe2": _pipeline_step,
        "vit-1f1b2": _pipeline_step,
        "vit-fairscale2": _fairscale_step,
    }[config](config, para if config.startswith("para") else vit, x, y, args)
    for _ in range(2):
        step()
    barrier = _barrier()
    barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    barrier()
    seconds = (time.perf_counter() - start) / args.steps
    if rank == 0:
        Path(args.result).write_text(json.dumps({"seconds_per_step": seconds}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if config == "vit-fairscale2":
        os._exit(0)  # FairScale's Pipe joins its worker threads in __del__ and never returns on CPU


def _barrier() -> Any:
    if torch.distributed.is_initialized():
        return torch.distributed.barrier
    return lambda: None


def _objective(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "prefix_logits"):
        return torch.stack([F.cross_entropy(p, y) for p in model.prefix_logits(x)]).mean()
    return F.cross_entropy(model(x), y)


def _train_step(model: torch.nn.Module, loss_fn: Any) -> Any:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    return step


def _single_step(config: str, model: torch.nn.Module, x, y, args) -> Any:
    return _train_step(model, lambda: _objective(model, x, y))


def _branch_parallel_step(config: str, model: torch.nn.Module, x, y, args) -> Any:
    from paraformer.parallel.apply import apply_execution
    from paraformer.parallel.distributed import init_from_env

    ctx = init_from_env(2)
    local = apply_execution(model, "loop", x, ctx=ctx, log=lambda _: None)
    return _train_step(local, lambda: _objective(local, x, y))


def _threads_step(config: str, model: torch.nn.Module, x, y, args) -> Any:
    """The authors' way: branch groups driven by threads in one process, outputs summed."""
    groups = [list(range(0, 4)), list(range(4, 8))]

    def objective() -> torch.Tensor:
        tokens = model.embed_input(x)
        outs: list[Any] = [None, None]

        def run(g: int) -> None:
            torch.set_num_threads(1)
            outs[g] = torch.stack([model.head_input(o) for o in model.branches.run(tokens, groups[g])])

        threads = [threading.Thread(target=run, args=(g,)) for g in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sums = torch.cat(outs).cumsum(dim=0)
        return torch.stack([F.cross_entropy(p, y) for p in model.head_logits(sums)]).mean()

    return _train_step(model, objective)


def _ddp_step(config: str, model: torch.nn.Module, x, y, args) -> Any:
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    xs, ys = x[rank::world], y[rank::world]
    return _train_step(ddp, lambda: F.cross_entropy(ddp(xs), ys))


class _Stage(torch.nn.Module):
    """Half of the ViT twin: embedding + first blocks, or the last blocks + head."""

    def __init__(self, vit: torch.nn.Module, first: bool) -> None:
        super().__init__()
        half = len(vit.blocks) // 2
        self.first = first
        self.embed = vit.embed if first else None
        self.blocks = torch.nn.Sequential(*(list(vit.blocks)[:half] if first else list(vit.blocks)[half:]))
        self.head = None if first else vit.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            return self.blocks(self.embed(x))
        return self.head(self.blocks(x))


def _pipeline_step(config: str, model: torch.nn.Module, x, y, args) -> Any:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    stage_module = _Stage(model, first=rank == 0)
    stage = PipelineStage(stage_module, rank, 2, torch.device("cpu"))
    kind = ScheduleGPipe if config == "vit-gpipe2" else Schedule1F1B
    schedule = kind(stage, n_microbatches=args.microbatches, loss_fn=F.cross_entropy)
    opt = torch.optim.AdamW(stage_module.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if rank == 0:
            schedule.step(x)
        else:
            schedule.step(target=y, losses=[])
        opt.step()

    return step


def _fairscale_step(config: str, model: torch.nn.Module, x, y, args) -> Any:
    from fairscale.nn import Pipe

    half = len(model.blocks) // 2
    layers = torch.nn.Sequential(model.embed, *model.blocks, model.head)
    pipe = Pipe(layers, balance=[1 + half, half + 1], devices=["cpu", "cpu"], chunks=args.microbatches)
    return _train_step(pipe, lambda: F.cross_entropy(pipe(x), y))


# ---------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts", nargs="+", default=["single", "distributed"], choices=["single", "distributed"]
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big-batch", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--configs", nargs="+", default=list(DIST_CONFIGS), choices=DIST_CONFIGS)
    parser.add_argument("--dist-batch", type=int, default=64)
    parser.add_argument("--dist-rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check that everything runs")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", choices=DIST_CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.rounds, args.big_batch, args.train_batch, args.dist_rounds, args.steps = 1, 8, 16, 1, 1
        args.dist_batch = 16
    parts = {"single": (part_one, render_single), "distributed": (part_two, render_distributed)}
    config = {k: v for k, v in vars(args).items() if k not in ("worker", "result")}
    for part in args.parts:  # each part its own results file, so either can be re-run alone
        measure, render = parts[part]
        record = record_results(f"parallel-{part}", measure(args), seeds=[], config=config)
        print(render(record).text, flush=True)
        if not args.no_write:
            print(f"wrote {write_record(record)}; render BENCHMARKS.md with: python -m benchmarks.report")


if __name__ == "__main__":
    main()
