"""Uniform vs CascadeFormer (tapered) vs widening vs ParaFormer-LM on one text, side by side.

Every model has the same parameter count and trains on the same token budget (same
steps, batch, window, optimiser, seeds). For each model and seed the script trains a
run with ``paraformer.launch.train`` (the code behind ``paraformer lm
train``), saves a mid-training checkpoint (``mid/``, for the pruning benchmark's rank
stability), and runs the gradient fan-in analysis. Speed is measured afterwards in one
process, the models taking turns (interleaved rounds, median): training tokens/s,
inference tokens/s (batch 32) and batch-1 generation latency per token; reported as
ratios to the uniform model. Every run's summary and budget, the gradient fan-in records
and the per-round speeds go to benchmarks/results/lm.json; ``python -m benchmarks.report``
renders them (sections lm-compare and lm-gfa, and the gfa-*.png plots).

    python benchmarks/lm.py --data ../shared/datasets/text/tinyshakespeare.txt --reuse
    python benchmarks/lm.py --seeds 1 --no-report --reuse     # another seed in a second process
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch

from benchmarks.protocol import budget, record_results, write_record
from benchmarks.render.lm import render_compare, render_gfa
from paraformer.commands.lm import gfa_run
from paraformer.launch import resume as resume_lm
from paraformer.launch import train as train_lm
from paraformer.models import create_model
from paraformer.tasks.text import LMTrainConfig
from paraformer.train.objectives import make_objective as make_strategy

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("lm_uniform_small", "cascadeformer_small", "lm_widening_small", "paraformer_lm_small")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_dir(args: argparse.Namespace, arm: str, seed: int) -> Path:
    return Path(args.out) / f"{arm.replace('+', '-')}-s{seed}"


def train_arm(args: argparse.Namespace, arm: str, seed: int) -> dict[str, Any]:
    """Train (or read back / resume) one run; keep a copy of the half-way checkpoint in mid/."""
    model, deep = arm.split("+")[0], arm.endswith("+ds")
    folder = run_dir(args, arm, seed)
    summary_path = folder / "summary.json"
    if args.reuse and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("complete") and (folder / "mid").is_dir():
            return summary
    cfg = LMTrainConfig(
        data=args.data,
        model=model,
        seed=seed,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_interval=args.eval_interval,
        warmup_epochs=args.warmup_steps / args.eval_interval,
        deep_supervision=deep,
        seq_len=args.seq_len,
        device="cpu",
    )
    half = args.steps // args.eval_interval // 2
    quiet = lambda _msg: None  # noqa: E731
    if args.reuse and (folder / "mid" / "model.safetensors").is_file():
        log(f"resume {folder.name}")
        summary = resume_lm(folder, log=quiet, progress=False)
    else:
        if folder.exists():
            shutil.rmtree(folder)
        log(f"train {folder.name}")
        train_lm(cfg, folder, log=quiet, progress=False, stop_after_epochs=half)
        mid = folder / "mid"
        mid.mkdir(exist_ok=True)
        for name in ("model.safetensors", "config.json", "metrics.jsonl", "tokenizer.json"):
            shutil.copy2(folder / name, mid / name)
        summary = resume_lm(folder, log=quiet, progress=False)
    log(f"done {folder.name}: val loss {summary.get('val_loss'):.4f}")
    return summary


def finished(args: argparse.Namespace, arm: str, seed: int) -> bool:
    path = run_dir(args, arm, seed) / "summary.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("complete"))


def gfa_arm(args: argparse.Namespace, arm: str, seed: int) -> dict[str, Any]:
    folder = run_dir(args, arm, seed)
    path = folder / "gfa.json"
    if args.reuse and path.is_file():
        return json.loads(path.read_text())
    return gfa_run(folder, tokens=args.gfa_tokens, device="cpu")


# ---------------------------------------------------------------------------- speed


def speed(args: argparse.Namespace, models: list[str]) -> dict[str, dict[str, list[float]]]:
    """Per interleaved round: training tok/s, inference tok/s and generation ms/token at batch 1."""
    torch.manual_seed(0)
    built = {m: create_model(m, vocab_size=65) for m in models}
    t, b = args.seq_len, args.batch_size
    x = torch.randint(0, 65, (b, t))
    prompt = torch.randint(0, 65, (1, t // 2))
    samples: dict[str, dict[str, list[float]]] = {
        m: {"train": [], "infer": [], "latency": []} for m in models
    }
    opts = {m: torch.optim.AdamW(built[m].parameters(), lr=1e-4) for m in models}
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for m in models:
            model, opt = built[m], opts[m]
            strategy = make_strategy(model, "fused", "uniform", _loss)

            def step(
                loss: torch.Tensor, opt: torch.optim.Optimizer = opt, model: torch.nn.Module = model
            ) -> None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()

            model.train()
            start = time.perf_counter()
            for _ in range(args.speed_steps):
                strategy.train_batch(model, x, x, "train", step)
            train_s = (time.perf_counter() - start) / args.speed_steps
            model.eval()
            with torch.no_grad():
                start = time.perf_counter()
                for _ in range(args.speed_steps):
                    model(x)
                infer_s = (time.perf_counter() - start) / args.speed_steps
                start = time.perf_counter()
                model.generate(
                    prompt, t // 2, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(0)
                )
                gen_s = (time.perf_counter() - start) / (t // 2)
            if rnd:
                samples[m]["train"].append(b * t / train_s)
                samples[m]["infer"].append(b * t / infer_s)
                samples[m]["latency"].append(1000 * gen_s)
    return samples


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/text/tinyshakespeare.txt"))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument(
        "--deep-supervision", action="store_true", help="also train the uniform model with it"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--eval-interval", type=int, default=50)
    parser.add_argument("--gfa-tokens", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=5, help="speed: interleaved rounds")
    parser.add_argument("--speed-steps", type=int, default=3, help="speed: steps per model per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "runs/bench-lm"))
    parser.add_argument(
        "--reuse", action="store_true", help="read back finished runs, resume interrupted ones"
    )
    parser.add_argument("--no-report", action="store_true", help="train only; no speed, no results file")
    parser.add_argument("--report-only", action="store_true", help="train nothing; report the finished runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arms = list(args.models) + (["lm_uniform_small+ds"] if args.deep_supervision else [])
    args.reuse = args.reuse or args.report_only
    results: dict[str, dict[int, dict]] = {a: {} for a in arms}
    gfas: dict[str, dict[int, dict]] = {a: {} for a in arms}
    for seed in args.seeds:
        for arm in arms:
            if args.report_only and not finished(args, arm, seed):
                log(f"skip {run_dir(args, arm, seed).name}: not trained (--report-only)")
                continue
            results[arm][seed] = train_arm(args, arm, seed)
            gfas[arm][seed] = gfa_arm(args, arm, seed)
    if args.no_report:
        return
    log("speed")
    speeds = speed(args, list(args.models))
    for runs in results.values():  # the budget each run spent, beside its summary
        for seed, s in runs.items():
            tokens = s["steps"] * args.batch_size * args.seq_len
            spent = budget(
                optimizer_steps=s["steps"], seen=tokens, unit="tokens", train_seconds=s["train_seconds"]
            )
            runs[seed] = {**s, "budget": spent}
    payload = {"results": results, "gfa": gfas, "speed": speeds}
    record = record_results("lm", payload, seeds=args.seeds, config=vars(args))
    print(render_compare(record).text, "", render_gfa(record).text, sep="\n", flush=True)
    log(f"wrote {write_record(record)}; render BENCHMARKS.md with: python -m benchmarks.report")


if __name__ == "__main__":
    main()
