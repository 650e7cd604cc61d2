"""Do tapers that cut cost keep the uniform model's perplexity, and are they faster? (issue 24)

CascadeFormer's claim: at the same training budget a depth-tapered LM matches a uniform
model's perplexity with 8.6% lower latency and 9.4% higher throughput. The arms here are
the cost-cutting presets (``paraformer.models.lm_presets.cost_presets``): an FFN-only
taper, a heads-and-FFN taper and a residual-width taper (22-35% fewer FLOPs per token
than uniform), their widening mirrors, and a uniform model narrowed to about the same
FLOPs (the control: does tapering beat simply shrinking?).

Two budgets, both against the uniform model's run of the same seed:

- **equal tokens**: every arm trains ``--steps`` steps of ``--batch-size`` x ``--seq-len`` tokens;
- **equal time** (``<model>@time``): the cheaper arms train ``--steps`` x r steps, where r is
  their training throughput over the uniform model's, measured side by side before any
  training (models taking turns, ``commands.lm_bench.bench``); r and the load while it was
  measured are recorded with every run, and each arm's warmup and decay are fractions of
  its own steps (the trainer's ``warmup_fraction``).

For every equal-token run the script then measures, on the trained run folders, models
taking turns round by round (``bench``): prefill, decode ms/token at batch 1, decode
tokens/s at batch 32 and training tokens/s. Test perplexity comes from each run's best
validation checkpoint. Everything per seed and per round goes to
``benchmarks/results/taper.json``; ``python -m benchmarks.report`` renders the table, the
paired comparisons, the aims and the perplexity-vs-latency plot.

    python benchmarks/taper.py --seeds 0 1 2 3 4 --reuse --threads 1
    python benchmarks/taper.py --sizes 64 96 --seeds 0 --reuse --threads 1   # the extra sizes (curves)
    python benchmarks/taper.py --report-only                                 # write the results file
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch

from benchmarks.protocol import load_now, record_results, write_json, write_record
from benchmarks.render.taper import render
from benchmarks.runs import finished, kept, log, run_budget, run_load, train_or_reuse
from paraformer.commands.lm_bench import bench
from paraformer.commands.runs import open_model
from paraformer.models import create_model
from paraformer.tasks.text import LMTrainConfig

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (
    "uniform",
    "lm_narrow",
    "taper_ffn",
    "taper_attn_ffn",
    "taper_resid",
    "widen_ffn",
    "widen_attn_ffn",
    "widen_resid",
)
EQUAL_TIME = ("lm_narrow", "taper_ffn", "taper_attn_ffn", "taper_resid")
SPEED_METRICS = ("prefill_ms", "decode_ms_per_token", "decode_tokens_per_s", "train_tokens_per_s")


def preset(variant: str, size: int) -> str:
    if variant == "uniform":
        return "lm_uniform_small" if size == 128 else f"lm_uniform_d{size}"
    return f"{variant}_d{size}"


def run_dir(args: argparse.Namespace, arm: str, seed: int) -> Path:
    return Path(args.out) / f"{arm.replace('@', '-')}-s{seed}"


def train_config(args: argparse.Namespace, model: str, seed: int, steps: int) -> LMTrainConfig:
    return LMTrainConfig(
        data=args.data,
        model=model,
        seed=seed,
        max_steps=steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_fraction=args.warmup_fraction,
        eval_interval=args.eval_interval,
        device="cpu",
    )


# ---------------------------------------------------------------------------- equal-time sizing


def throughput_ratios(args: argparse.Namespace, size: int) -> dict[str, Any]:
    """Training tokens/s of each equal-time arm over the uniform model's, measured side by side once
    (cached in the run folder, so every seed and every resume uses the same ratio)."""
    path = Path(args.out) / f"throughput-d{size}.json"
    if path.is_file():
        return json.loads(path.read_text())
    names = [preset("uniform", size), *(preset(v, size) for v in args.equal_time)]
    torch.manual_seed(0)
    models = {n: create_model(n, vocab_size=65) for n in names}
    log(f"measuring training throughput side by side for the equal-time arms (dim {size})")
    before = load_now()
    r = bench(
        models,
        prompt_len=4,
        new_tokens=1,
        decode_batch=1,
        train_batch=args.batch_size,
        seq_len=args.seq_len,
        rounds=args.ratio_rounds,
        train_steps=2,
        prefill_repeats=1,
    )
    per_round = {n: r["models"][n]["rounds"]["train_tokens_per_s"] for n in names}
    out = {
        "ratio": {n: r["models"][n]["speedup"]["train_tokens_per_s"] for n in names[1:]},
        "geometric_mean_ratio": {
            n: math.exp(
                statistics.fmean(
                    math.log(a / b) for a, b in zip(per_round[n], per_round[names[0]], strict=True)
                )
            )
            for n in names[1:]
        },
        "flops_ratio": {
            n: models[names[0]].flops_per_token() / models[n].flops_per_token() for n in names[1:]
        },
        "train_tokens_per_s": per_round,
        "load": {"before": before, "after": load_now()},
        "rounds": args.ratio_rounds,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, out)
    return out


# ---------------------------------------------------------------------------- one seed


def arms_of(args: argparse.Namespace, size: int) -> list[tuple[str, int, float | None]]:
    """(arm, steps, budget ratio) of every run at this size: equal tokens, then equal time."""
    arms = [(preset(v, size), args.steps, None) for v in args.models]
    timed = [v for v in args.equal_time if v in args.models and v != "uniform"]
    if timed and not args.no_equal_time:
        ratios = throughput_ratios(args, size)["ratio"]
        for v in timed:
            r = ratios[preset(v, size)]
            arms.append((f"{preset(v, size)}@time", max(1, round(args.steps * r)), r))
    return arms


def train_seed(args: argparse.Namespace, size: int, seed: int) -> dict[str, dict[str, Any]]:
    out = {}
    for arm, steps, ratio in arms_of(args, size):
        folder = run_dir(args, arm, seed)
        if args.report_only:
            summary = finished(folder)
            if summary is None:
                continue
        else:
            cfg = train_config(args, arm.split("@")[0], seed, steps)
            summary = train_or_reuse(cfg, folder, reuse=args.reuse)
        extra = {}
        if ratio is not None:
            uniform = run_dir(args, preset("uniform", size), seed)
            extra = dict(
                budget_ratio=ratio, load={"this_run": run_load(folder), "uniform_run": run_load(uniform)}
            )
        row = kept(summary)
        row["budget"] = run_budget(summary, args.batch_size * args.seq_len, **extra)
        out[arm] = row
    return out


def speed_seed(args: argparse.Namespace, size: int, seed: int) -> dict[str, Any] | None:
    """Speed of the trained equal-token runs of one seed, models taking turns (cached)."""
    path = Path(args.out) / f"speed-d{size}-s{seed}.json"
    arms = [preset(v, size) for v in args.models]
    folders = {a: run_dir(args, a, seed) for a in arms if finished(run_dir(args, a, seed))}
    cached = json.loads(path.read_text()) if path.is_file() else None
    if cached is not None and (args.report_only or set(folders) <= set(cached["models"])):
        return cached
    if preset("uniform", size) not in folders or args.report_only:
        return None  # measured again, all models together, once every finished arm can take part
    log(f"speed, dim {size}, seed {seed}: {len(folders)} models taking turns, {args.rounds} rounds")
    models = {a: open_model(f, "best", "cpu", task="text", command="taper")[1] for a, f in folders.items()}
    models = {preset("uniform", size): models.pop(preset("uniform", size)), **models}  # uniform first
    half = args.seq_len // 2
    r = bench(
        models,
        prompt_len=half,
        new_tokens=half,
        decode_batch=args.decode_batch,
        train_batch=args.batch_size,
        seq_len=args.seq_len,
        rounds=args.rounds,
    )
    out = {
        "settings": r["settings"],
        "load_average": r["load_average"],
        "models": {
            a: {k: row[k] for k in ("params", "flops_per_token", "rounds", "speedup")}
            | {"context": row["context"]}
            for a, row in r["models"].items()
        },
    }
    write_json(path, out)
    return out


# ---------------------------------------------------------------------------- the results file


def per_round(speeds: dict[str, dict[int, Any]]) -> dict[str, dict[str, list[float]]]:
    """metric -> arm -> values of every round, seeds in order (the same index = the same round)."""
    out: dict[str, dict[str, list[float]]] = {m: {} for m in SPEED_METRICS}
    for by_seed in speeds.values():
        for seed in sorted(by_seed):
            for arm, row in by_seed[seed]["models"].items():
                for m in SPEED_METRICS:
                    out[m].setdefault(arm, []).extend(row["rounds"][m])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/text/tinyshakespeare.txt"))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128], choices=[64, 96, 128])
    parser.add_argument("--models", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--equal-time", nargs="*", default=list(EQUAL_TIME), choices=VARIANTS)
    parser.add_argument("--no-equal-time", action="store_true", help="train the equal-token arms only")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-fraction", type=float, default=0.1)
    parser.add_argument("--eval-interval", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5, help="speed: rounds per seed, models taking turns")
    parser.add_argument(
        "--ratio-rounds", type=int, default=25, help="equal-time sizing: rounds (the median of their ratios)"
    )
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "runs/bench-taper"))
    parser.add_argument(
        "--reuse", action="store_true", help="read back finished runs, resume interrupted ones"
    )
    parser.add_argument("--report-only", action="store_true", help="train nothing; write the results file")
    parser.add_argument("--no-report", action="store_true", help="train and measure only; no results file")
    parser.add_argument("--results-name", default="taper")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.reuse = args.reuse or args.report_only
    sizes = {}
    for size in args.sizes:
        runs: dict[str, dict[int, Any]] = {}
        speeds: dict[int, Any] = {}
        for seed in args.seeds:
            for arm, row in train_seed(args, size, seed).items():
                runs.setdefault(arm, {})[seed] = row
            speed = speed_seed(args, size, seed)
            if speed is not None:
                speeds[seed] = speed
        ratios_path = Path(args.out) / f"throughput-d{size}.json"
        sizes[str(size)] = {
            "runs": runs,
            "speed": speeds,
            "throughput": json.loads(ratios_path.read_text()) if ratios_path.is_file() else None,
        }
    if args.no_report:
        return
    # Merge with sizes recorded earlier (the extra sizes run in another invocation).
    from benchmarks.protocol import load_results

    old = load_results(args.results_name)
    if old is not None:
        sizes = {**old["payload"].get("sizes", {}), **sizes}
    main_size = "128" if "128" in sizes else sorted(sizes)[-1]
    main_runs = sizes[main_size]["runs"]
    payload = {
        "main_size": int(main_size),
        "sizes": sizes,
        "per_seed": {
            "test_ppl": {a: {str(s): r["test_ppl"] for s, r in by.items()} for a, by in main_runs.items()}
        },
        "per_round": per_round({main_size: {int(k): v for k, v in sizes[main_size]["speed"].items()}}),
        "flops_per_token": {
            preset(v, int(size)): create_model(preset(v, int(size)), vocab_size=65).flops_per_token()
            for size in sizes
            for v in VARIANTS
        },
    }
    seeds = sorted({int(s) for by in main_runs.values() for s in by})
    record = record_results(args.results_name, payload, seeds=seeds, config=vars(args))
    print(render(record).text, flush=True)
    log(f"wrote {write_record(record)}; render BENCHMARKS.md with: python -m benchmarks.report")


if __name__ == "__main__":
    main()
