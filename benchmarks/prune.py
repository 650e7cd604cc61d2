"""CascadeFlow vs pruning heuristics: perplexity after removing layers, and rank stability.

Reads the runs that ``benchmarks/lm.py`` trained (``<runs>/<model>-s<seed>``, with the
half-way checkpoint in ``mid/``). For every training seed and K in ``--ks`` it removes
K of the 8 layers by each method (random over ``--random-seeds`` seeds), and measures
test perplexity (the test split is used by no method; the data-driven methods calibrate
on validation windows) without and with a short healing fine-tune (``--heal-steps`` at
a constant rate, through the same code as ``paraformer lm prune --heal-steps``).
FinerCut removes 2K sub-layers (attention or FFN), the same count of sub-layers as K
layers. Rank stability is the Spearman correlation of each scorer's layer ranking
between two training seeds (every pair) and between the half-way and the final
checkpoint of one run. Results are cached per seed (``--reuse``); all seeds' go to
benchmarks/results/prune-<model>.json, which ``python -m benchmarks.report`` renders.

    python benchmarks/prune.py --seeds 0 1 2 --reuse
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` package

import torch

from benchmarks.protocol import record_results, write_record
from benchmarks.render.prune import SCORERS
from benchmarks.render.prune import render as render_section
from paraformer.checkpoint import load_model, read_history
from paraformer.commands.lm import calibration_batches, heal_config
from paraformer.commands.runs import text_corpus
from paraformer.launch import train as train_lm
from paraformer.surgery.scores import (
    METHODS,
    angular_distances,
    block_influence,
    cascadeflow_scores,
    choose_removal,
    finercut_layer_scores,
    finercut_order,
    magnitude_scores,
    random_scores,
)
from paraformer.tasks import open_run
from paraformer.tasks.text import evaluate_tokens

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def layer_scores(
    method: str, model: torch.nn.Module, record: dict, batches: torch.Tensor, seed: int
) -> list[float]:
    if method.startswith("cascadeflow"):
        return cascadeflow_scores(record, "taylor" if method.endswith("taylor") else "norm")
    if method == "magnitude":
        return magnitude_scores(model)
    if method == "block-influence":
        return block_influence(model, batches)
    if method == "angular":
        return angular_distances(model, batches, 1)
    if method == "finercut":
        return finercut_layer_scores(finercut_order(model, batches), model.cfg.depth)
    return random_scores(model.cfg.depth, seed)


def removal_key(row: dict[str, Any]) -> tuple:
    return tuple(row["layers"]), tuple(row["attn"]), tuple(row["mlp"])


def ppl(model: torch.nn.Module, tokens: torch.Tensor, seq_len: int) -> float:
    return evaluate_tokens(model, tokens, seq_len, batch_size=32).ppl


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """All pruning results and layer rankings of one training seed (cached as JSON)."""
    cache = Path(args.out) / f"{args.model}-s{seed}.json"
    result: dict[str, Any] = json.loads(cache.read_text()) if args.reuse and cache.is_file() else {}
    folder = Path(args.runs) / f"{args.model}-s{seed}"
    saved = open_run(folder, task="text")
    corpus = text_corpus(saved, folder)
    seq_len = saved.data.seq_len
    batches = calibration_batches(corpus, seq_len, args.calib_windows)
    test = corpus.tokens["test"]

    def save() -> None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result, indent=1))

    rankings = result.setdefault("rankings", {})
    for ckpt, ckpt_dir in (("final", folder), ("mid", folder / "mid")):
        if ckpt in rankings:
            continue
        model = load_model(ckpt_dir).eval()
        record = read_history(ckpt_dir)[-1]
        rankings[ckpt] = {
            m: layer_scores(m, model, record, batches, seed * 1000 + (ckpt == "mid")) for m in SCORERS
        }
        log(f"seed {seed}: {ckpt} rankings")
        save()
    model = load_model(folder).eval()  # the final weights (the run's last checkpoint)
    record = read_history(folder)[-1]
    if "full" not in result:
        result["full"] = {"test_ppl": ppl(model, test, seq_len)}
    order = None
    rows = result.setdefault("rows", {})
    for k in args.ks:
        for method in SCORERS:
            for r in range(args.random_seeds if method == "random" else 1):
                key = f"{method}|{k}|{r}"
                heal = bool(args.heal_steps) and (method != "random" or r < args.heal_random_seeds)
                heal = heal and (method != "cascadeflow-taylor" or args.heal_taylor)
                row = rows.get(key)
                if row is not None and (not heal or "healed_test_ppl" in row):
                    continue
                if method == "finercut" and order is None:
                    order = finercut_order(model, batches)
                removal = choose_removal(
                    method,
                    model,
                    k,
                    grad_record=record,
                    batches=batches,
                    seed=1000 * seed + r,
                    finercut=order,
                )
                pruned = removal.apply(model).eval()
                if row is None:
                    row = {
                        "layers": removal.layers,
                        "attn": removal.attn,
                        "mlp": removal.mlp,
                        "params": pruned.num_params(),
                        "test_ppl": ppl(pruned, test, seq_len),
                    }
                same = next(
                    (
                        r
                        for r in rows.values()
                        if removal_key(r) == removal_key(row) and "healed_test_ppl" in r
                    ),
                    None,
                )
                if heal and same is not None:  # the same pruned model heals the same way (deterministic)
                    row.update(healed_test_ppl=same["healed_test_ppl"], healed_val_ppl=same["healed_val_ppl"])
                elif heal:
                    with tempfile.TemporaryDirectory() as tmp:
                        cfg = heal_config(saved, args.heal_steps, args.heal_lr).replace(grad_stats=False)
                        summary = train_lm(
                            cfg, Path(tmp) / "heal", log=lambda _m: None, progress=False, model=pruned
                        )
                    row.update(healed_test_ppl=summary["test_ppl"], healed_val_ppl=summary["val_ppl"])
                rows[key] = row
                healed = row.get("healed_test_ppl", float("nan"))
                log(f"seed {seed}: {key} test ppl {row['test_ppl']:.2f}, healed {healed:.2f}")
                save()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default=str(ROOT / "runs/bench-lm"))
    parser.add_argument("--out", default=str(ROOT / "runs/bench-prune"))
    parser.add_argument("--model", default="lm_uniform_small")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--random-seeds", type=int, default=5)
    parser.add_argument("--heal-steps", type=int, default=20)
    parser.add_argument("--heal-lr", type=float, default=3e-4)
    parser.add_argument(
        "--heal-random-seeds", type=int, default=1, help="random removals that are also healed"
    )
    parser.add_argument(
        "--heal-taylor", action="store_true", help="also heal the cascadeflow-taylor removals"
    )
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--no-report", action="store_true", help="cache the seeds only; no results file")
    args = parser.parse_args()
    assert set(SCORERS) <= set(METHODS)
    torch.set_num_threads(args.threads)
    results = {seed: run_seed(args, seed) for seed in args.seeds}
    if args.no_report:
        return
    record = record_results(f"prune-{args.model}", {"results": results}, seeds=args.seeds, config=vars(args))
    print(render_section(record).text, flush=True)
    log(f"wrote {write_record(record)}; render BENCHMARKS.md with: python -m benchmarks.report")


if __name__ == "__main__":
    main()
